"""Property tests for the E1394 record codec: mutated captures, random bytes and round trips."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labmw.errors import CodecError
from labmw.wire.astm_records import (
    Delimiters,
    FieldValue,
    Record,
    build_record,
    decode_message,
    encode_records,
    split_unframed,
)

from samples import ASTM_SAMPLES, astm_sample_texts  # noqa: E402 - shared test corpus

SAMPLES = ASTM_SAMPLES
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])




TEXTS = astm_sample_texts()
ENCODINGS = st.sampled_from(["latin-1", "utf-8", "ascii", "cp1251", "utf-16"])
# Bytes worth inserting: delimiters of every dialect, escapes, line ends and a few odd ones.
INTERESTING = st.sampled_from(
    list(b"|\\^&`@!~H\r\nRPOLQ0123456789") + [0x00, 0x02, 0x17, 0x80, 0xC3, 0xFF]
)


@st.composite
def mutated_texts(draw: st.DrawFn) -> bytes:
    """A sample message text with a few bytes inserted, deleted or replaced."""
    data = bytearray(draw(st.sampled_from(TEXTS)))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.one_of(INTERESTING, st.integers(0, 255)))
        if action == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if action == "delete":
                del data[pos]
            else:
                data[pos] = byte
    return bytes(data)


def _decode_or_codec_error(data: bytes, encoding: str) -> list[Record] | None:
    """Decode, allowing only CodecError to escape; check the shape of what comes back."""
    try:
        records = decode_message(data, encoding)
    except CodecError:
        return None
    assert records and all(isinstance(r, Record) and r.fields for r in records)
    assert any(r.type == "H" for r in records)
    for record in records:
        for n in range(1, len(record.fields) + 2):
            record.text(n)
            record.repeats(n)
            record.component(n, 2, repeat=2)
    return records


@FUZZ
@given(mutated_texts(), ENCODINGS)
def test_mutated_captures_decode_or_raise_codec_error(data: bytes, encoding: str) -> None:
    """Any mutation of a real capture either decodes into records or raises CodecError."""
    _decode_or_codec_error(data, encoding)


@FUZZ
@given(st.binary(max_size=400), ENCODINGS)
def test_random_bytes_decode_or_raise_codec_error(data: bytes, encoding: str) -> None:
    """Arbitrary bytes either decode into records or raise CodecError."""
    _decode_or_codec_error(data, encoding)


@FUZZ
@given(st.binary(max_size=400), st.booleans())
def test_random_bytes_split_or_raise_codec_error(data: bytes, frame_numbers: bool) -> None:
    """split_unframed returns CR-terminated H..L messages or raises CodecError."""
    try:
        messages = split_unframed(data, frame_numbers=frame_numbers)
    except CodecError:
        return
    for message in messages:
        assert message.startswith(b"H") and message.endswith(b"\r")


PUNCTUATION = "|\\^&`@!~#$%*+,-./:;<=>?[]_{}'\""


@st.composite
def delimiter_sets(draw: st.DrawFn) -> Delimiters:
    """Four different punctuation characters."""
    chars = draw(st.lists(st.sampled_from(PUNCTUATION), min_size=4, max_size=4, unique=True))
    return Delimiters(*chars)


# Data text: printable latin-1 plus every delimiter candidate and escape letters, so values often
# contain characters that must be escaped and near-miss escape sequences.
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(PUNCTUATION + "FSRExX &"),
        st.characters(min_codepoint=0x20, max_codepoint=0xFF),
    ),
    max_size=12,
)
FIELD = st.one_of(
    TEXT,
    st.lists(TEXT, max_size=3),
    st.lists(st.one_of(TEXT, st.lists(TEXT, max_size=4)), max_size=3),
)
BODY_TYPES = st.sampled_from(["P", "O", "R", "C", "Q", "M"])


@st.composite
def messages(draw: st.DrawFn) -> tuple[Delimiters, list[list[FieldValue]]]:
    """Delimiters plus H, a few body records with random values, and L."""
    delimiters = draw(delimiter_sets())
    header: list[FieldValue] = ["H", "", *draw(st.lists(FIELD, max_size=4))]
    count = draw(st.integers(0, 4))
    body = [[draw(BODY_TYPES), *draw(st.lists(FIELD, max_size=8))] for _ in range(count)]
    return delimiters, [header, *body, ["L", "1", "N"]]


def _expected_components(repeat: str | list[str]) -> list[str]:
    """What ``Record.components`` returns for one repeat value (an empty repeat has none)."""
    comps = [repeat] if isinstance(repeat, str) else list(repeat)
    return [] if comps in ([], [""]) else comps


@FUZZ
@given(messages())
def test_encode_then_decode_round_trips(message: tuple[Delimiters, list[list[FieldValue]]]) -> None:
    """decode(encode(values)) gives the built records, and every value reads back unescaped."""
    delimiters, values = message
    data = encode_records(values, delimiters)
    records = decode_message(data)
    assert records == [build_record(v, delimiters) for v in values]
    assert encode_records(records, delimiters) == data
    for record, fields in zip(records, values, strict=True):
        for n, value in enumerate(fields, start=1):
            if record.type == "H" and n == 2:
                assert record.raw(2) == delimiters.declaration()
            elif isinstance(value, str):
                assert record.text(n) == value
                assert record.components(n) == _expected_components(value)
            else:
                for index, repeat in enumerate(value, start=1):
                    assert record.components(n, index) == _expected_components(repeat)

"""The tuned ASTM receive path against its oracles (astm_reference.py), and its own new behaviour.

The reader's regex fast path, the Adler-32 checksum, the record scan that skips records, the decoder
that builds records without Record.__init__ and the memoized accessors must give exactly what the
straightforward implementations gave, on real captures mutated at random and cut at random points.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

from astm_reference import (
    RefFrameReader,
    ref_checksum,
    ref_component,
    ref_components,
    ref_decode_message,
    ref_frame_problem,
    ref_scan_records,
    ref_text,
)
from astm_script import FRAMED_SAMPLES, session_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from samples import ASTM_SAMPLES, frame_text_for_tests

from labmw.errors import CodecError
from labmw.wire.astm_frames import (
    DEFAULT_DELIMITER,
    Frame,
    FrameReader,
    Token,
    build_frame,
    checksum,
    frame_problem,
    scan_records,
)
from labmw.wire.astm_records import Delimiters, Record, decode_message, split_unframed

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SESSIONS = [session_bytes(name) for name in FRAMED_SAMPLES]
# Bytes that steer the reader, the scan and the record codec, so mutations hit their branches.
SPECIAL = st.sampled_from(b"\x01\x02\x03\x04\x05\x06\x0a\x10\x15\x17\r\n|\\^&`!HLR0123456789AF")
A_BYTE = st.one_of(SPECIAL, st.integers(0, 255))


def _texts() -> list[bytes]:
    texts = [frame_text_for_tests((ASTM_SAMPLES / name).read_bytes()) for name in FRAMED_SAMPLES]
    return texts + split_unframed((ASTM_SAMPLES / "roche_psm_1.astm").read_bytes())


TEXTS = _texts()


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """One or two corpus items back to back, with random insertions, deletions and replacements."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(corpus), min_size=1, max_size=2))))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(("insert", "delete", "replace")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "insert":
            data[at:at] = bytes(draw(st.lists(A_BYTE, min_size=1, max_size=4)))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "replace" and data:
            data[at] = draw(A_BYTE)
    return bytes(data)


def _drain(reader: FrameReader | RefFrameReader) -> list[Token]:
    tokens = []
    while (token := reader.next_token()) is not None:
        tokens.append(token)
    return tokens


@FUZZ
@given(data=mutated(SESSIONS), points=st.lists(st.integers(0, 10**6), max_size=10),
       max_text=st.sampled_from([8, 60, 240, 63_993]))  # fmt: skip
def test_reader_matches_the_oracle_at_every_split(data: bytes, points: list[int], max_text: int) -> None:
    """FrameReader yields the oracle's tokens and holds as many bytes, however the input is cut."""
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    reader, oracle = FrameReader(max_text=max_text), RefFrameReader(max_text=max_text)
    for a, b in zip(marks, marks[1:], strict=False):
        reader.feed(data[a:b])
        oracle.feed(data[a:b])
        tokens = _drain(reader)
        assert tokens == _drain(oracle)
        assert reader.buffered == oracle.buffered
        for token in tokens:
            if isinstance(token, Frame):
                assert token.text == token.raw[2 : token.end]
                assert frame_problem(token) == ref_frame_problem(token)
                assert token.expected_checksum == ref_checksum(token.raw[1 : token.end + 1])
                received = token.raw[token.end + 1 : token.end + 3]
                assert token.checksum_ok == (received.upper() == ref_checksum(token.raw[1 : token.end + 1]))


def test_reader_matches_the_oracle_at_the_text_limit() -> None:
    """Frames one byte either side of max_text (FN present or missing, trailer or none) read as before."""
    for size in range(8, 13):
        for fn in (b"1", b""):
            for trailer in (b"\r\n", b"\n", b""):
                data = b"\x02" + fn + b"x" * size + b"\x03AB" + trailer + b"\x05"
                reader, oracle = FrameReader(max_text=10), RefFrameReader(max_text=10)
                reader.feed(data)
                oracle.feed(data)
                assert _drain(reader) == _drain(oracle)


@FUZZ
@given(body=st.one_of(st.binary(max_size=2000), st.builds(bytes, st.lists(st.just(0xFF), max_size=70_000))))
def test_checksum_equals_the_plain_byte_sum(body: bytes) -> None:
    """The Adler-32 checksum equals the byte sum modulo 256, below, at and far past 256 bytes."""
    assert checksum(body) == ref_checksum(body)


def test_checksum_at_the_adler_chunk_edges() -> None:
    """Bodies of 255..257 and 64,000 bytes of 0xFF (the largest sums) give the summed checksum."""
    for size in (0, 1, 255, 256, 257, 512, 513, 64_000):
        assert checksum(b"\xff" * size) == ref_checksum(b"\xff" * size)


@FUZZ
@given(text=st.builds(bytes, st.lists(st.sampled_from(b"HL|!x\rR"), max_size=40)),
       head=st.builds(bytes, st.lists(st.sampled_from(b"HL|!x"), max_size=2)),
       delimiter=st.sampled_from(b"|!x"), final=st.booleans())  # fmt: skip
def test_scan_matches_the_oracle(text: bytes, head: bytes, delimiter: int, final: bool) -> None:
    """scan_records finds the same message ends, open head and delimiter as the record-by-record scan."""
    scan = scan_records(text, head=head, delimiter=delimiter, final=final)
    assert (scan.ends, scan.head, scan.delimiter) == ref_scan_records(text, head=head, delimiter=delimiter,
                                                                      final=final)  # fmt: skip


def test_scan_chained_over_every_cut_of_the_captures() -> None:
    """Scanning each capture's text cut at every point, in two pieces, matches the oracle."""
    for text in TEXTS:
        for cut in range(len(text) + 1):
            head, delimiter = b"", DEFAULT_DELIMITER
            for piece, final in ((text[:cut], False), (text[cut:], True)):
                scan = scan_records(piece, head=head, delimiter=delimiter, final=final)
                expected = ref_scan_records(piece, head=head, delimiter=delimiter, final=final)
                assert (scan.ends, scan.head, scan.delimiter) == expected
                head, delimiter = scan.head, scan.delimiter


def _decoded(data: bytes, encoding: str, decode: Callable[[bytes, str], list[Record]]) -> list[Record] | str:
    try:
        return decode(data, encoding)
    except CodecError as exc:
        return f"CodecError: {exc}"


@FUZZ
@given(data=mutated(TEXTS), encoding=st.sampled_from(["latin-1", "utf-8", "cp1251", "utf-16"]))
def test_decode_and_accessors_match_the_oracle(data: bytes, encoding: str) -> None:
    """decode_message gives the oracle's records (or error); every accessor gives the oracle's answer."""
    records = _decoded(data, encoding, decode_message)
    assert records == _decoded(data, encoding, ref_decode_message)
    if isinstance(records, str):
        return
    for record in records:
        for n in range(1, len(record.fields) + 2):
            assert record.text(n) == ref_text(record, n)
            for r in (3, 1, 2):  # out of order: the memo must not depend on the first question
                assert record.components(n, r) == ref_components(record, n, r)
                for c in (1, 2, 4):
                    assert record.component(n, c, r) == ref_component(record, n, c, r)


def test_decode_matches_the_oracle_on_delimiter_changes_and_line_ends() -> None:
    """Records before any H, repeated and changed declarations, bad ones, LF and CR LF decode as before."""
    cases = [b"P|1\rH|\\^&\rR|1|a^b\\c\r", b"H|\\^&\rP|1\rH|\\^&\rR|1|a^b\\c\rH!`^&\rR!1!a^b`c|d\rL!1\r",
             b"H|\\^&\rH|^^&\r", b"H|\\^&\nR|1|a^b\r\nL|1\n", b"H\r", b"\r\n\r", b"P|1\rL|1\r"]  # fmt: skip
    for data in cases:
        records = _decoded(data, "latin-1", decode_message)
        assert records == _decoded(data, "latin-1", ref_decode_message)
        for record in records if isinstance(records, list) else []:
            assert [record.components(n, r) for n in range(1, 5) for r in (1, 2)] == [
                ref_components(record, n, r) for n in range(1, 5) for r in (1, 2)]


@FUZZ
@given(data=mutated(TEXTS))
def test_split_fields_agrees_with_the_accessors(data: bytes) -> None:
    """split_fields gives each field's text when it has no parts, else components(n, r) for every r."""
    try:
        records = decode_message(data)
    except CodecError:
        return
    for record in records:
        split = record.split_fields()
        assert len(split) == len(record.fields)
        d = record.delimiters
        for n, (parts, raw) in enumerate(zip(split, record.fields, strict=True), start=1):
            if isinstance(parts, str):
                assert (n == 2 and record.type == "H") or (d.repeat not in raw and d.component not in raw)
                assert parts == record.text(n)
            else:
                assert len(parts) == raw.count(d.repeat) + 1
                assert parts == [record.components(n, r) for r in range(1, len(parts) + 1)]


def test_split_fields_of_a_result_record() -> None:
    """A result record splits into python-astm's shape: plain fields stay text, R-3 into components."""
    records = decode_message(b"H|\\^&|||c311^1\rR|1|^^^GLU\\^^^ALT|1&S&2|mg/dl||N\rL|1|N\r")
    assert records[0].split_fields() == ["H", "\\^&", "", "", [["c311", "1"]]]
    assert records[1].split_fields() == ["R", "1", [["", "", "", "GLU"], ["", "", "", "ALT"]], "1^2", "mg/dl", "",
                                         "N"]  # fmt: skip
    assert records[2].split_fields() == ["L", "1", "N"]


def test_split_fields_keeps_empty_repeats_and_declaration() -> None:
    """Empty repeats are [], an escape inside a component is decoded, another dialect's H-2 stays whole."""
    record = decode_message(b"H|`^&\rO|1|`a^b&F&c``|\r")[1]
    assert record.split_fields() == ["O", "1", [[], ["a", "b|c"], [], []], ""]
    assert decode_message(b"H|`^&\r")[0].split_fields() == ["H", "`^&"]


def test_decoded_record_is_an_ordinary_record() -> None:
    """A record the decoder built equals, hashes, prints, copies and pickles like Record(...), before
    and after its fields are split."""
    decoded = decode_message(b"H|\\^&\rR|1|^^^ALT|35|U/L\r")[1]
    built = Record(("R", "1", "^^^ALT", "35", "U/L"), Delimiters())
    for _ in range(2):
        assert decoded == built and hash(decoded) == hash(built) and repr(decoded) == repr(built)
        assert copy.copy(decoded) == built and pickle.loads(pickle.dumps(decoded)) == built
        assert decoded.component(3, 4) == built.component(3, 4) == "ALT"


def test_walking_every_repeat_splits_the_field_once() -> None:
    """components(n, r) over 2,000 repeats reads one memoized split (it used to re-split per repeat)."""
    record = decode_message(b"H|\\^&\rO|1||" + b"\\".join(b"^^^T%d" % i for i in range(2000)) + b"\r")[1]
    assert [record.component(4, 4, r) for r in range(1, 2001)] == [f"T{i}" for i in range(2000)]
    assert record._split is not None and list(record._split) == [4]


def test_reader_leaves_the_trailer_buffered_until_the_next_call() -> None:
    """After a frame the reader still holds its CR LF (what a link awaiting a commit counts)."""
    reader = FrameReader()
    reader.feed(build_frame(1, b"H|\\^&\r", final=True))  # ends in CR LF
    assert isinstance(reader.next_token(), Frame) and reader.buffered == 2
    assert reader.next_token() is None and reader.buffered == 0


def test_frame_built_by_hand_is_judged_in_full() -> None:
    """A Frame made with Frame(raw, end) has its text and gets every check; only the reader vouches."""
    raw = b"\x021a\nb\x0300"
    frame = Frame(raw, raw.index(b"\x03"))
    assert frame.text == b"a\nb"
    assert frame_problem(frame) == "restricted byte 0x0A in frame text"
    assert frame.fn == 1 and Frame(b"\x02\x0300", 1).fn is None

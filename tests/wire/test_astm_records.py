"""Tests for the E1394 record codec (labmw.wire.astm_records) against real captures and dialects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labmw.errors import CodecError
from labmw.wire.astm_records import (
    Delimiters,
    Record,
    build_record,
    decode_message,
    encode_records,
    split_unframed,
)

from samples import ASTM_SAMPLES, frame_text_for_tests  # noqa: E402 - shared test corpus

SAMPLES = ASTM_SAMPLES
UNFRAMED = {"roche_psm_1.astm", "snibe_maglumi_1.astm"}  # record streams (the MAGLUMI sends no FN/checksum)
FRAMED = sorted(p.name for p in SAMPLES.glob("*.astm") if p.name not in UNFRAMED)





def sample_records(name: str) -> list[Record]:
    """Decode one framed sample file."""
    return decode_message(frame_text_for_tests((SAMPLES / name).read_bytes()))


def test_samples_are_present() -> None:
    """The sample directory holds the framed captures and the PSM stream this module uses."""
    assert len(FRAMED) >= 7
    assert (SAMPLES / "roche_psm_1.astm").is_file()


@pytest.mark.parametrize("name", FRAMED)
def test_every_framed_sample_decodes(name: str) -> None:
    """Each framed capture decodes into one H..L message of known record types."""
    records = sample_records(name)
    assert records[0].type == "H"
    assert records[-1].type == "L"
    assert [r.type for r in records].count("H") == 1
    assert {r.type for r in records} <= set("HPORCML")


def test_psm_sample_decodes_through_split_unframed() -> None:
    """The PSM raw-records stream yields one message with ten patients under one H and L."""
    messages = split_unframed((SAMPLES / "roche_psm_1.astm").read_bytes())
    assert len(messages) == 1
    records = decode_message(messages[0])
    types = [r.type for r in records]
    assert types[0] == "H" and types[-1] == "L"
    assert types.count("P") == 10
    assert records[0].component(5, 1) == "PSM"
    assert records[3].raw(3) == "^^^ALPL^^^^148.1"


def test_record_cut_across_frames_is_whole() -> None:
    """The e411 record split mid-field by an ETB frame is rebuilt before splitting."""
    records = sample_records("roche_cobas_e411_1.astm")
    results = [r for r in records if r.type == "R"]
    assert results[1].raw(3) == "^^^7/1/not"
    assert results[1].text(4) == "9.61"
    assert results[6].raw(3) == "^^^1/1/not"


def test_header_delimiter_field_is_never_split() -> None:
    """H-2 is returned whole by every accessor even though it holds the delimiters."""
    header = sample_records("roche_cobas_c311_1.astm")[0]
    assert header.raw(2) == "\\^&"
    assert header.text(2) == "\\^&"
    assert header.repeats(2) == ["\\^&"]
    assert header.components(2) == ["\\^&"]
    assert header.component(2, 1) == "\\^&"
    assert header.component(5, 1) == "c311"


def test_erba_backtick_repeat_dialect() -> None:
    """The Erba header declares a backtick repeat delimiter, so a backslash is plain data."""
    records = sample_records("erba_em200_1.astm")
    assert records[0].delimiters == Delimiters(repeat="`")
    built = decode_message(b"H|`^&\rR|1|^^^GLU`^^^ALT|a\\b\rL|1|N\r")
    assert built[1].repeats(3) == ["^^^GLU", "^^^ALT"]
    assert built[1].component(3, 4, repeat=2) == "ALT"
    assert built[1].text(4) == "a\\b"


def test_genexpert_style_delimiters() -> None:
    """A GeneXpert ``H|@^\\`` header: ``@`` separates repeats and ``\\`` escapes."""
    text = b"H|@^\\|||Cepheid^GX\rR|1|^MTB-RIF^^Xpert@^RIF|NOT DETECTED^|a\\S\\b\\E\\c\rL|1|N\r"
    records = decode_message(text)
    assert records[1].delimiters == Delimiters("|", "@", "^", "\\")
    assert records[1].component(3, 2) == "MTB-RIF"
    assert records[1].repeats(3) == ["^MTB-RIF^^Xpert", "^RIF"]
    assert records[1].text(4) == "NOT DETECTED^"
    assert records[1].text(5) == "a^b\\c"
    assert records[0].raw(2) == "@^\\"


def test_escape_sequences_are_decoded_after_splitting() -> None:
    """``&F& &S& &R& &E&`` become data characters and never act as delimiters."""
    record = decode_message(b"H|\\^&\rR|1|a&F&b&S&c&R&d&E&e^x&S&y\rL|1\r")[1]
    assert record.raw(3) == "a&F&b&S&c&R&d&E&e^x&S&y"
    assert record.text(3) == "a|b^c\\d&e^x^y"
    assert record.components(3) == ["a|b^c\\d&e", "x^y"]
    assert record.repeats(3) == ["a|b^c\\d&e^x^y"]


def test_unknown_and_unpaired_escapes_are_kept_literally() -> None:
    """Hex, highlight and stray escape characters come back exactly as sent."""
    record = decode_message(b"H|\\^&\rC|1|I|&X0D&-&H&bold&N&|A & B\rL|1\r")[1]
    assert record.text(4) == "&X0D&-&H&bold&N&"
    assert record.text(5) == "A & B"


def test_records_before_a_header_use_default_delimiters() -> None:
    """A record ahead of the first H is split with ``|\\^&``; later records use the H's set."""
    records = decode_message(b"C|1|a\\b\rH|`^&\rR|1|a`b\\c\rL|1\r")
    assert records[0].delimiters == Delimiters()
    assert records[0].repeats(3) == ["a", "b"]
    assert records[2].repeats(3) == ["a", "b\\c"]


def test_each_header_sets_the_delimiters_that_follow() -> None:
    """Two messages in one text each use the delimiters of their own H."""
    records = decode_message(b"H|\\^&\rR|1|x^y\rL|1\rH!`^&!!\rR!1!x^y`z\rL!1\r")
    assert records[1].components(3) == ["x", "y"]
    assert records[3].delimiters.field == "!"
    assert records[4].raw(3) == "x^y`z"
    assert records[4].repeats(3) == ["x^y", "z"]


def test_line_endings_and_blank_lines_are_tolerated() -> None:
    """CR, LF, CR LF, empty lines and a missing final CR all split records the same way."""
    records = decode_message(b"\rH|\\^&\r\r\nP|1\n\rL|1|N")
    assert [r.fields for r in records] == [("H", "\\^&"), ("P", "1"), ("L", "1", "N")]


def test_absent_fields_and_components_are_empty() -> None:
    """Omitted trailing fields, repeats and components read as empty, never as errors."""
    record = decode_message(b"H|\\^&\rP|1\rR|1|^^^ALT\\^^^AST|\rL|1\r")[1]
    assert record.raw(6) == ""
    assert record.text(6) == ""
    assert record.repeats(6) == []
    assert record.components(6) == []
    assert record.component(6, 2) == ""
    result = decode_message(b"H|\\^&\rR|1|^^^ALT\\^^^AST|\rL|1\r")[1]
    assert result.component(3, 4, repeat=2) == "AST"
    assert result.component(3, 4, repeat=3) == ""
    assert result.component(3, 9) == ""
    assert result.text(4) == ""


def test_positions_below_one_are_rejected() -> None:
    """Field, component and repeat positions are 1-based; 0 is a caller bug."""
    record = decode_message(b"H|\\^&\rR|1|^^^ALT\rL|1\r")[1]
    with pytest.raises(ValueError):
        record.raw(0)
    with pytest.raises(ValueError):
        record.component(3, 0)
    with pytest.raises(ValueError):
        record.components(3, repeat=0)


@pytest.mark.parametrize("text", [b"", b"\r\r\n", b"P|1\rR|1|^^^ALT|5\rL|1\r"])
def test_decode_rejects_empty_and_headerless_input(text: bytes) -> None:
    """A message needs records and an H record."""
    with pytest.raises(CodecError):
        decode_message(text)


@pytest.mark.parametrize("header", [b"H", b"H|\\^", b"H|\\^^|", b"Habcd|", b"H| ^&|", b"H|\\^|"])
def test_decode_rejects_unusable_header_delimiters(header: bytes) -> None:
    """Missing, repeated, alphanumeric or blank delimiters in H-2 are a codec error."""
    with pytest.raises(CodecError, match="record 1"):
        decode_message(header + b"\rL|1\r")


def test_undecodable_bytes_name_the_offset() -> None:
    """A byte the codec cannot decode raises CodecError giving its offset."""
    with pytest.raises(CodecError, match="byte offset 12"):
        decode_message(b"H|\\^&\rP|1|||\xff\rL|1\r", "utf-8")


def test_unknown_encoding_is_a_codec_error() -> None:
    """An encoding name Python does not know is reported as a CodecError."""
    with pytest.raises(CodecError, match="unknown encoding"):
        decode_message(b"H|\\^&\rL|1\r", "no-such-codec")


def test_decoding_uses_the_given_codec() -> None:
    """UTF-8 text decodes with the utf-8 codec; latin-1 yields the same records as mojibake."""
    data = "H|\\^&\rP|1||||Müller^Jörg\rL|1\r".encode()
    assert decode_message(data, "utf-8")[1].component(6, 1) == "Müller"
    latin = decode_message(data)
    assert len(latin) == 3
    assert latin[1].component(6, 2) == "JÃ¶rg"


def test_build_record_escapes_delimiters_in_values() -> None:
    """Delimiter characters inside values are written as escape sequences."""
    record = build_record(["R", "1", [["", "", "", "A|B"]], "x^y&z\\w"])
    assert record.raw(3) == "^^^A&F&B"
    assert record.raw(4) == "x&S&y&E&z&R&w"
    assert record.component(3, 4) == "A|B"
    assert record.text(4) == "x^y&z\\w"


def test_build_record_repeats_and_components() -> None:
    """A list is repeats; a nested list is the components of one repeat."""
    record = build_record(["O", "1", "S1", "", ["^^^ALT", ["", "", "", "AST"]]])
    assert record.raw(5) == "&S&&S&&S&ALT\\^^^AST"
    assert record.repeats(5) == ["^^^ALT", "^^^AST"]


def test_encode_writes_the_header_declaration() -> None:
    """The H record always declares the delimiters the encoder uses."""
    backtick = Delimiters(repeat="`")
    assert encode_records([["H"], ["L", "1", "N"]], backtick) == b"H|`^&\rL|1|N\r"
    data = encode_records([["H", "", "", "", [["host", "1"]]], ["R", "1", ["a", "b"]]], backtick)
    assert data == b"H|`^&|||host^1\rR|1|a`b\r"


@pytest.mark.parametrize("value", ["line\rbreak", "new\nline", "\x02stx", "etb\x17"])
def test_encode_rejects_restricted_characters(value: str) -> None:
    """CR, LF and E1381 restricted characters cannot be carried in record text."""
    with pytest.raises(CodecError):
        encode_records([["H"], ["C", "1", "I", value]])


def test_encode_rejects_characters_outside_the_codec() -> None:
    """A character the analyzer's codec lacks is a CodecError, not a silent replacement."""
    with pytest.raises(CodecError, match="cannot be encoded"):
        encode_records([["H"], ["C", "1", "I", "5 €"]])
    utf8 = encode_records([["H"], ["C", "1", "I", "5 €"]], encoding="utf-8")
    assert utf8.endswith("€\r".encode())


def test_encode_rejects_caller_mistakes() -> None:
    """A foreign H-2 or a record built with other delimiters is a programming error."""
    with pytest.raises(ValueError):
        encode_records([["H", "~!%"]])
    foreign = build_record(["R", "1"], Delimiters(repeat="`"))
    with pytest.raises(ValueError):
        encode_records([["H"], foreign])


@pytest.mark.parametrize("name", FRAMED)
def test_decoded_samples_encode_back_to_the_same_records(name: str) -> None:
    """Re-encoding a decoded capture and decoding again gives equal records."""
    records = sample_records(name)
    data = encode_records(records, records[0].delimiters)
    assert decode_message(data) == records


def test_encode_is_byte_exact_for_a_clean_capture() -> None:
    """The c311 text, one CR-terminated record per line, re-encodes byte for byte."""
    text = frame_text_for_tests((SAMPLES / "roche_cobas_c311_1.astm").read_bytes())
    assert encode_records(decode_message(text)) == text


def test_split_unframed_without_frame_digits() -> None:
    """Plain CR LF raw records split into one message per H..L."""
    data = b"H|\\^&\r\nR|1|^^^ALT|5\r\nL|1|N\r\n\r\nH|\\^&\r\nL|1|N"
    assert split_unframed(data, frame_numbers=False) == [
        b"H|\\^&\rR|1|^^^ALT|5\rL|1|N\r",
        b"H|\\^&\rL|1|N\r",
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"1H|\\^&\nR|1\n3L|1\n",  # a record without its frame digit
        b"1H|\\^&\n2L|1\n3R|1\n",  # a record after L
        b"1R|1\n2H|\\^&\n3L|1\n",  # a record before H
        b"1H|\\^&\n2R|1\n",  # the data ends inside a message
        b"1H|\\^&\n2H|\\^&\n3L|1\n",  # a new H before the L
        b"1H|\\^&\n8L|1\n",  # 8 is not a frame number
    ],
)
def test_split_unframed_rejects_malformed_streams(data: bytes) -> None:
    """Raw-record streams that are not clean H..L sequences raise CodecError."""
    with pytest.raises(CodecError):
        split_unframed(data)


def test_split_unframed_strips_frame_digits() -> None:
    """Each record loses its leading frame digit and gains a CR."""
    assert split_unframed(b"1H|\\^&\r\n2P|1\r\n3L|1|N") == [b"H|\\^&\rP|1\rL|1|N\r"]


@pytest.mark.parametrize(
    "chars",
    [("a", "\\", "^", "&"), ("|", "|", "^", "&"), ("|", "\\", " ", "&"), ("||", "\\", "^", "&")],
)
def test_delimiters_are_validated(chars: tuple[str, str, str, str]) -> None:
    """Delimiters must be four different single punctuation characters."""
    with pytest.raises(ValueError):
        Delimiters(*chars)


def test_records_are_validated() -> None:
    """A record needs a type and its fields cannot contain the field delimiter or a line break."""
    with pytest.raises(ValueError):
        Record(())
    with pytest.raises(ValueError):
        Record(("R", "a|b"))
    with pytest.raises(ValueError):
        Record(("R", "a\rb"))
    assert Record(("R", "1")).type == "R"

"""HL7 codec: escaping, timestamps, parse_ack and build_ack, checked with python-hl7 and hl7apy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from labmw.errors import CodecError, LocalProtocolError
from labmw.wire.hl7_codec import Ack, build_ack, escape, format_ts, parse_ack

INBOUND = (
    "MSH|^~\\&|BS-240|MINDRAY|LABMW|LAB|20240501101500+0200||ORU^R01^ORU_R01|MSG00042|P|2.5.1\r"
    "PID|||P1||DOE^JANE\r"
    "OBR|1||S1|ALT^ALT^L\r"
    "OBX|1|NM|ALT^ALT^L||75|U/L|||||F\r"
).encode()
NOW = datetime(2024, 5, 1, 8, 15, 30, tzinfo=timezone.utc)


def test_escape_default_delimiters() -> None:
    """Each default encoding character becomes its HL7 escape sequence."""
    assert escape("a|b^c~d\\e&f") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"


def test_escape_leaves_plain_and_non_ascii_text_alone() -> None:
    """Ordinary text, including UTF-8 letters, passes unchanged."""
    assert escape("Müller 5.0 U/L <5") == "Müller 5.0 U/L <5"


def test_escape_hex_escapes_control_characters() -> None:
    """CR, LF and MLLP framing bytes cannot appear raw in a field, so they are hex-escaped."""
    assert escape("a\rb\nc\x0bd\x1ce") == "a\\X0D\\b\\X0A\\c\\X0B\\d\\X1C\\e"


def test_escape_round_trips_through_python_hl7() -> None:
    """python-hl7 unescapes what escape() wrote back to the original text."""
    text = "x|y^z~w\\v&u\r\nend"
    message = hl7.parse(f"MSH|^~\\&|A\rNTE|1|O|{escape(text)}")
    assert message["NTE.F3"] == text
    assert len(message) == 2


def test_format_ts_naive_and_aware() -> None:
    """Naive times get no offset; aware times get their own +/-HHMM offset."""
    assert format_ts(None) == ""
    assert format_ts(datetime(2024, 5, 1, 8, 5, 9)) == "20240501080509"
    assert format_ts(datetime(2024, 5, 1, 8, 5, 9, tzinfo=timezone.utc)) == "20240501080509+0000"
    minus = timezone(-timedelta(hours=3, minutes=30))
    assert format_ts(datetime(2024, 5, 1, 8, 5, 9, tzinfo=minus)) == "20240501080509-0330"


def test_parse_ack_reads_python_hl7_create_ack() -> None:
    """An ACK built by python-hl7's create_ack is read back with code, MSA-2 and MSH-9."""
    ack_text = str(hl7.parse(INBOUND).create_ack("AA", message_id="ACK1"))
    ack = parse_ack(ack_text.encode())
    assert ack == Ack(code="AA", control_id="MSG00042", text="", message_type="ACK^R01^ACK")


def test_parse_ack_collects_msa3_and_err_texts() -> None:
    """MSA-3, ERR-8 and the ERR-3 text are all reported, unescaped and without repeats."""
    payload = (
        b"MSH|^~\\&|LIS||LABMW||20240501||ACK^R01^ACK|9|P|2.5.1\r"
        b"MSA|AE|MSG7|bad value \\F\\ in OBX\r"
        b"ERR|||102^Data type error^HL70357|E||||bad value \\F\\ in OBX\r"
    )
    ack = parse_ack(payload)
    assert ack.code == "AE"
    assert ack.control_id == "MSG7"
    assert ack.text == "bad value | in OBX; Data type error"


def test_parse_ack_reads_v231_err_segment() -> None:
    """A v2.3.1-style ERR-1 (segment^seq^field^code&text) contributes its text."""
    payload = (
        b"MSH|^~\\&|LIS||LABMW||20240501||ACK|9|P|2.3.1\r"
        b"MSA|AR|MSG7\r"
        b"ERR|MSH^1^9^200&Unsupported message type&HL70357\r"
    )
    ack = parse_ack(payload)
    assert (ack.code, ack.text, ack.message_type) == ("AR", "Unsupported message type", "ACK")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not hl7 at all",
        b"MSH|^~\\&|LIS||LABMW||20240501||ACK^R01^ACK|9|P|2.5.1\r",
        b"MSH|^~\\&|LIS||LABMW||20240501||ACK^R01^ACK|9|P|2.5.1\rMSA||MSG7\r",
        b"MSH|^~\\&|LIS\xff\xfe|\rMSA|AA|1\r",
        b"MSH",
        b"MSH|^~\\&|LIS\nMSA|AA|1\n",
    ],
    ids=["empty", "text", "no-msa", "empty-msa1", "bad-utf8", "short-msh", "lf-separated"],
)
def test_parse_ack_rejects_non_acks(payload: bytes) -> None:
    """Anything that is not an HL7 message with a valued MSA-1 raises CodecError."""
    with pytest.raises(CodecError):
        parse_ack(payload)


def test_parse_ack_honours_encoding() -> None:
    """A Latin-1 ACK text is decoded with the encoding given."""
    payload = "MSH|^~\\&|LIS||LABMW||20240501||ACK^R01^ACK|9|P|2.5.1\rMSA|AE|7|Größe\r"
    assert parse_ack(payload.encode("latin-1"), encoding="latin-1").text == "Größe"


def test_build_ack_fields_as_seen_by_python_hl7() -> None:
    """The ACK swaps sender and receiver, pairs MSA-2 with MSH-10 and uses ACK^R01^ACK."""
    ack = hl7.parse(build_ack(INBOUND, "AA", control_id="A1", now=NOW))
    assert str(ack.segment("MSH")(9)) == "ACK^R01^ACK"
    assert ack["MSH.F3"] == "LABMW" and ack["MSH.F4"] == "LAB"
    assert ack["MSH.F5"] == "BS-240" and ack["MSH.F6"] == "MINDRAY"
    assert ack["MSH.F7"] == "20240501081530+0000"
    assert ack["MSH.F10"] == "A1"
    assert (ack["MSH.F11"], ack["MSH.F12"]) == ("P", "2.5.1")
    assert ack["MSA.F1"] == "AA"
    assert ack["MSA.F2"] == "MSG00042"
    assert [str(segment[0]) for segment in ack] == ["MSH", "MSA"]


def test_build_ack_accepts_a_parsed_message() -> None:
    """Passing an hl7.Message gives the same bytes as passing the raw payload."""
    from_bytes = build_ack(INBOUND, "AA", control_id="A1", now=NOW)
    assert build_ack(hl7.parse(INBOUND), "AA", control_id="A1", now=NOW) == from_bytes


def test_build_ack_error_adds_err_segment() -> None:
    """AE carries MSA-3 text and a v2.5 ERR with the table 0357 code, severity E."""
    ack = hl7.parse(build_ack(INBOUND, "AE", text="OBX-5 not numeric", control_id="A2", now=NOW))
    assert ack["MSA.F3"] == "OBX-5 not numeric"
    err = ack.segment("ERR")
    assert str(err(3)) == "207^Application internal error^HL70357"
    assert ack["ERR.F4"] == "E"
    assert ack["ERR.F8"] == "OBX-5 not numeric"


def test_build_ack_reject_with_explicit_error_code() -> None:
    """AR with error_code 200 names 'Unsupported message type' in ERR-3."""
    ack = hl7.parse(build_ack(INBOUND, "AR", error_code="200", control_id="A3", now=NOW))
    assert str(ack.segment("ERR")(3)) == "200^Unsupported message type^HL70357"
    assert ack["MSA.F1"] == "AR"


def test_build_ack_escapes_text() -> None:
    """Text containing delimiters is escaped in MSA-3 and comes back intact."""
    raw = build_ack(INBOUND, "AE", text="bad | and ^ here", control_id="A|4", now=NOW)
    assert b"bad \\F\\ and \\S\\ here" in raw
    ack = parse_ack(raw)
    assert ack.text.startswith("bad | and ^ here")
    assert hl7.parse(raw)["MSH.F10"] == "A|4"


def test_build_ack_uses_inbound_delimiters() -> None:
    """An inbound message with non-default delimiters is answered in the same delimiters."""
    inbound = b"MSH#$~\\&#DEV#FAC#LABMW#LAB#20240501##ORU$R01#7#P#2.5\r"
    raw = build_ack(inbound, "AE", text="a#b", control_id="A5", now=NOW)
    assert raw.startswith(
        b"MSH#$~\\&#LABMW#LAB#DEV#FAC#20240501081530+0000##ACK$R01$ACK#A5#P#2.5\r"
    )
    assert b"MSA#AE#7#a\\F\\b\r" in raw


def test_build_ack_validates_in_hl7apy_strict() -> None:
    """hl7apy's strict v2.5.1 validation accepts our positive and negative ACKs."""
    for code in ("AA", "AE"):
        raw = build_ack(INBOUND, code, text="x", control_id="A6", now=NOW)
        message = parse_message(raw.decode(), validation_level=VALIDATION_LEVEL.STRICT)
        assert message.validate()


@pytest.mark.parametrize(
    ("code", "error_code"),
    [("XX", None), ("AE", "999"), ("AA", "207")],
    ids=["unknown-code", "unknown-error-code", "error-code-with-aa"],
)
def test_build_ack_rejects_caller_mistakes(code: str, error_code: str | None) -> None:
    """Codes outside tables 0008/0357 or contradictory arguments are a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        build_ack(INBOUND, code, error_code=error_code, control_id="A7", now=NOW)


def test_build_ack_needs_aware_now() -> None:
    """MSH-7 must carry an offset, so a naive 'now' is refused."""
    with pytest.raises(LocalProtocolError):
        build_ack(INBOUND, "AA", control_id="A8", now=datetime(2024, 5, 1))


def test_build_ack_rejects_unparsable_inbound() -> None:
    """Bytes that are not HL7 cannot be acknowledged by build_ack."""
    with pytest.raises(CodecError):
        build_ack(b"\x00garbage", "AE", control_id="A9", now=NOW)


def test_parse_ack_turns_python_hl7_assertions_into_codec_errors() -> None:
    """A malformed MSH-2 makes python-hl7 assert; parse_ack answers CodecError (found by fuzzing)."""
    with pytest.raises(CodecError):
        parse_ack(b"MSH~^~\\&|LIS|F|LABMW|F|20261125||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|abc-1|ok\r")


@pytest.mark.parametrize("with_err", [False, True], ids=["fast-path", "full-parser"])
def test_parse_ack_one_msa2_reading_and_case_insensitive_codes(with_err: bool) -> None:
    """Issue #10 item 5: MSA-2 `abcd-7^LIS` is `abcd-7` and `aa` is AA, whether or not an ERR segment
    sends the ACK through python-hl7 (the two paths used to disagree on MSA-2)."""
    payload = (b"MSH|^~\\&|LIS||LABMW||20240501||ACK^R01^ACK|9|P|2.5.1\r"
               b"MSA|aa|abcd-7^LIS~other|fine^x\r"
               + (b"ERR|||0^Message accepted^HL70357|I\r" if with_err else b""))
    ack = parse_ack(payload)
    assert (ack.code, ack.control_id) == ("AA", "abcd-7")
    assert ack.text.startswith("fine")

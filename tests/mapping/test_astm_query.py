"""Tests for host-query answers (labmw.mapping.astm_query): "no order" replies that echo Q-3 exactly."""

from __future__ import annotations

import pytest

from labmw.errors import CodecError
from labmw.mapping.astm_lis2a import AstmProfile, map_message
from labmw.mapping.astm_query import QUERY_MODES, QueryKey, answer_note, answer_queries, read_query
from labmw.wire.astm_frames import frame_texts
from labmw.wire.astm_records import Record, decode_message

# The e411 manual's queries (pp.50-52), cobas type and Elecsys type, and the IDS-iSYS manual's.
COBAS = b"H|\\^&|||cobas-e411^1|||||host|TSREQ^REAL|P|1\rQ|1|^^000004^40^0^5^^S1^SC||ALL||||||||O\rL|1|N\r"
ELECSYS = b"H|\\^&||||||||||P||\rQ|1|^000004^40^0^5^^SAMPLE^NORMAL||ALL||||||||O\rL|1|I\r"
ISYS = b"H|\\^&\rQ|1|^7148344||ALL||||||||O\rL|1\r"


def queries(text: bytes) -> list[Record]:
    """The Q records of a message."""
    return [r for r in decode_message(text) if r.type == "Q"]


def reply_records(text: bytes, **kwargs: object) -> list[Record]:
    """The records of the single reply to the single query in ``text``."""
    (reply,) = answer_queries(queries(text), sender_name="LABMW", **kwargs)  # type: ignore[arg-type]
    return decode_message(reply)


def test_cobas_type_reply_echoes_sample_id_and_instrument_fields() -> None:
    """The cobas-type query gets H(TSDWN^REPLY) P O L with O-3 000004, O-4 40^0^5^^S1^SC and O-26 Y."""
    h, p, o, last = reply_records(COBAS)
    assert (h.type, p.type, o.type, last.type) == ("H", "P", "O", "L")
    assert h.component(5, 1) == "LABMW" and h.components(11) == ["TSDWN", "REPLY"] and h.text(12) == "P"
    assert (o.raw(3), o.raw(4), o.raw(5), o.raw(26)) == ("000004", "40^0^5^^S1^SC", "", "Y")
    assert len(o.fields) == 26 and (p.raw(2), last.raw(3)) == ("1", "N")


def test_cobas_type_reply_text_is_exact() -> None:
    """The whole reply text, byte for byte (the e411 manual's example 2 with O-26 Y)."""
    (reply,) = answer_queries(queries(COBAS), sender_name="host^1")
    assert reply == (b"H|\\^&|||host&S&1||||||TSDWN^REPLY|P|1\rP|1\r"
                     b"O|1|000004|40^0^5^^S1^SC" + b"|" * 22 + b"Y\rL|1|N\r")  # fmt: skip


def test_elecsys_type_and_e1394_layouts_take_component_two() -> None:
    """Elecsys ^ID^seq... and IDS-iSYS ^ID put the specimen ID in Q-3 component 2."""
    o = reply_records(ELECSYS)[2]
    assert (o.raw(3), o.raw(4), o.raw(26)) == ("000004", "40^0^5^^SAMPLE^NORMAL", "Y")
    o = reply_records(ISYS)[2]
    assert (o.raw(3), o.raw(4), o.raw(26)) == ("7148344", "", "Y")


def test_a_profile_can_name_the_component() -> None:
    """An Elecsys rack query without a sample ID, read with component 2: O-3 empty, O-4 the rest, O-26 Z."""
    text = b"H|\\^&\rQ|1|^^3^0007^2^^SAMPLE^NORMAL||ALL||||||||O\rL|1|I\r"
    o = reply_records(text, specimen_component=2)[2]
    assert (o.raw(3), o.raw(4), o.raw(26)) == ("", "3^0007^2^^SAMPLE^NORMAL", "Z")


def test_query_without_a_specimen_is_answered_z() -> None:
    """A query naming no specimen (empty Q-3, or only a patient ID) gets O-26 Z."""
    for q3 in (b"", b"PAT1", b"^^"):
        o = reply_records(b"H|\\^&\rQ|1|" + q3 + b"||ALL\rL|1\r")[2]
        assert o.raw(26) == "Z" and o.raw(3) == ""


def test_echo_is_raw_escapes_included() -> None:
    """Escape sequences in the specimen fields come back exactly as sent, known or not."""
    text = b"H|\\^&\rQ|1|^A&S&1&X0D&^7^^S1||ALL||||||||O\rL|1\r"
    o = reply_records(text)[2]
    assert (o.raw(3), o.raw(4)) == ("A&S&1&X0D&", "7^^S1")
    assert read_query(queries(text)[0]).specimen_id == "A^1&X0D&"


def test_reply_uses_the_query_delimiters() -> None:
    """A GeneXpert-style H|@^\\ query gets a reply declaring and using the same delimiters."""
    text = b"H|@^\\|||Xpert\rQ|1|^SPEC-1^9||ALL||||||||O\rL|1\r"
    (reply,) = answer_queries(queries(text), sender_name="LAB^MW")
    assert reply.startswith(b"H|@^\\|||LAB\\S\\MW|")
    records = decode_message(reply)
    assert records[0].text(5) == "LAB^MW" and (records[2].raw(3), records[2].raw(4)) == ("SPEC-1", "9")


def test_one_reply_per_query_in_order_and_cancels_get_none() -> None:
    """Three Q records, the middle one a cancel (Q-13 A): two replies, in query order."""
    text = (b"H|\\^&\rQ|1|^^S1^1||ALL||||||||O\rQ|2|^^S2^2||ALL||||||||A\r"
            b"Q|3|^^S3^3||ALL||||||||O\rL|1\r")  # fmt: skip
    replies = answer_queries(queries(text), sender_name="LABMW")
    assert [decode_message(r)[2].raw(3) for r in replies] == ["S1", "S3"]
    assert read_query(queries(text)[1]) == QueryKey(specimen_id="S2", o3="S2", o4="2", cancel=True)


def test_mode_ignore_answers_nothing() -> None:
    """Query mode "ignore" builds no reply; an unknown mode is refused."""
    assert QUERY_MODES == ("no-order", "ignore")
    assert answer_queries(queries(COBAS), sender_name="LABMW", mode="ignore") == []
    with pytest.raises(ValueError, match="query mode"):
        answer_queries(queries(COBAS), sender_name="LABMW", mode="forward")


def test_header_comment_can_be_left_out() -> None:
    """With no header comment H-11 is empty."""
    assert reply_records(COBAS, header_comment=())[0].raw(11) == ""


def test_reply_is_a_valid_message_for_the_link_and_the_mapper() -> None:
    """The reply frames without restricted bytes and maps with no problems and no results."""
    (reply,) = answer_queries(queries(COBAS), sender_name="LABMW")
    assert b"".join(text for text, _ in frame_texts(reply)) == reply
    mapped = map_message(decode_message(reply), analyzer="c501", profile=AstmProfile())
    assert mapped.problems == () and mapped.results == () and mapped.sender == "LABMW"


def test_encoding_applies_to_the_sender_name() -> None:
    """The sender name is written in the analyzer's encoding; what cannot be written raises CodecError."""
    (latin,) = answer_queries(queries(ISYS), sender_name="Gerät", encoding="latin-1")
    (utf8,) = answer_queries(queries(ISYS), sender_name="Gerät", encoding="utf-8")
    assert b"Ger\xe4t" in latin and "Gerät".encode() in utf8
    with pytest.raises(CodecError):
        answer_queries(queries(ISYS), sender_name="€", encoding="latin-1")
    with pytest.raises(CodecError):
        answer_queries(queries(ISYS), sender_name="a\rb")


def test_read_query_refuses_other_records() -> None:
    """read_query takes Q records only, and component numbers from 1."""
    with pytest.raises(ValueError, match="Q record"):
        read_query(decode_message(ISYS)[0])
    with pytest.raises(ValueError, match="start at 1"):
        read_query(queries(ISYS)[0], specimen_component=0)


def test_answer_note_says_how_a_query_was_answered() -> None:
    """The audit wording: Y, Z, a cancel, mode ignore, and a reply that could not be built."""
    key = read_query(queries(COBAS)[0])
    assert answer_note(key, mode="no-order") == "no order (Y)"
    assert answer_note(QueryKey(specimen_id="", o3="", o4="", cancel=False), mode="no-order") == "no record (Z)"
    assert answer_note(QueryKey(specimen_id="S", o3="S", o4="", cancel=True), mode="no-order").startswith("none")
    assert answer_note(key, mode="ignore") == "none: query_mode is ignore"
    assert answer_note(key, mode="no-order", error="bad name") == "none: reply not built: bad name"

"""Tests for the LIS2-A2 mapping (labmw.mapping.astm_lis2a) on real captures and edge cases."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labmw.errors import CodecError, LabmwError
from labmw.mapping.astm_lis2a import (
    AstmProfile,
    MappedMessage,
    map_message,
    parse_astm_date,
    parse_astm_datetime,
    parse_value,
)
from labmw.model import Result
from labmw.wire.astm_records import decode_message, split_unframed

from samples import ASTM_SAMPLES, astm_sample_texts, frame_text_for_tests  # noqa: E402 - shared test corpus

SAMPLES = ASTM_SAMPLES
DEFAULT = AstmProfile()




def map_sample(name: str, profile: AstmProfile = DEFAULT) -> MappedMessage:
    """Unframe, decode and map one framed sample capture."""
    text = frame_text_for_tests((SAMPLES / name).read_bytes())
    return map_message(decode_message(text), analyzer="an1", profile=profile)


def map_text(text: bytes, profile: AstmProfile = DEFAULT) -> MappedMessage:
    """Decode and map a message written in the test."""
    return map_message(decode_message(text), analyzer="an1", profile=profile)


def by_code(message: MappedMessage, code: str) -> Result:
    """The only result with this test code."""
    (result,) = [r for r in message.results if r.test_code == code]
    return result


def test_labgate_alt_result() -> None:
    """The Roche/labgate ALT result ALTL = 12.000 keeps its precision, empty units and status F."""
    message = map_sample("roche_cobas_labgate_1.astm")
    alt = by_code(message, "ALTL")
    assert alt.raw_value == "12.000"
    assert alt.value == Decimal("12.000") and str(alt.value) == "12.000"
    assert alt.comparator is None
    assert alt.units == ""
    assert alt.status == "F"
    assert alt.instrument_flags == ("N",)
    assert alt.completed_at == datetime(2020, 4, 13, 11, 1, 3)
    assert alt.specimen_id == "99900001"
    assert (alt.patient_id, alt.patient_name, alt.birth_date, alt.sex) == (
        "PID_1", "Surname^Name", date(1970, 1, 1), "M",
    )
    assert alt.sequence == 2
    assert alt.analyzer == "an1"
    assert message.processing_id == "P"
    assert message.problems == ()


def test_e411_comparator_and_qualitative_values() -> None:
    """``<3.00`` with LL parses with its comparator; ``-1^0.282`` stays non-numeric raw text."""
    message = map_sample("roche_cobas_e411_1.astm")
    below = by_code(message, "3")
    assert (below.comparator, below.value, below.raw_value) == ("<", Decimal("3.00"), "<3.00")
    assert below.instrument_flags == ("LL",)
    qualitative = by_code(message, "5")
    assert qualitative.raw_value == "-1^0.282"
    assert (qualitative.value, qualitative.comparator) == (None, None)
    assert qualitative.units == "COI"
    assert by_code(message, "7").value == Decimal("9.61")  # record cut across two frames
    assert {r.specimen_id for r in message.results} == {"000002327"}
    assert message.results[0].collected_at == datetime(2019, 1, 10, 15, 54, 45)
    assert message.sender == "cobas-e411"
    assert [r.sequence for r in message.results] == [1, 2, 3, 4, 5, 6, 7]


def test_pentra_dashes_with_status_x() -> None:
    """The Pentra's ``-----`` with status X maps with no value and keeps its flag."""
    message = map_sample("horiba_pentra_xlr_1.astm")
    basophils = by_code(message, "BAS#")
    assert basophils.raw_value == "-----"
    assert (basophils.value, basophils.status, basophils.instrument_flags) == (None, "X", ("HH",))
    assert by_code(message, "WBC").status == "W"
    assert by_code(message, "RBC").status == "F"
    assert by_code(message, "WBC").specimen_id == "S1234"
    assert by_code(message, "WBC").collected_at == datetime(2022, 5, 27)
    assert (basophils.patient_name, basophils.birth_date, basophils.sex) == (
        "Mohale^Rita", date(1977, 12, 1), "F",
    )
    assert message.sender == "ABX"
    assert message.problems == ()


def test_pentra_loinc_in_component_five() -> None:
    """With test_code_component=5 the Pentra's LOINC codes become the test codes."""
    message = map_sample("horiba_pentra_xlr_1.astm", AstmProfile(test_code_component=5))
    assert message.results[0].test_code == "804-5"
    assert len(message.results) == 21


def test_sysmex_code_in_component_five() -> None:
    """Sysmex puts its code in component 5; names with ``/`` are kept whole."""
    message = map_sample("sysmex_xn550_1.astm", AstmProfile(test_code_component=5))
    assert len(message.results) == 41
    assert message.results[0].test_code == "WBC"
    assert by_code(message, "RBC").units == "10*6/uL"
    assert by_code(message, "Blasts/Abn_Lympho?").raw_value == "40"
    eosinophilia = by_code(message, "Eosinophilia")
    assert eosinophilia.raw_value == ""
    assert (eosinophilia.value, eosinophilia.instrument_flags) == (None, ("A",))
    assert by_code(message, "DIST_PLT").raw_value == "PNG\\20240628\\2024_06_27_13_54_27_PLT.PNG"
    first = message.results[0]
    assert (first.patient_id, first.patient_name, first.birth_date, first.sex) == (
        "37182", "^Jim^Brown", date(1987, 6, 26), "M",
    )
    assert message.sender == "XN-550"


def test_sysmex_missing_specimen_is_reported_per_result() -> None:
    """The XN-550's empty O-3 and O-4 component 1 map to specimen "" with one problem per result."""
    message = map_sample("sysmex_xn550_1.astm", AstmProfile(test_code_component=5))
    assert {r.specimen_id for r in message.results} == {""}
    assert len(message.problems) == 41
    assert "result 1, test WBC) has no specimen ID" in message.problems[0]


def test_sysmex_default_component_reports_missing_codes() -> None:
    """With the default component 4 every Sysmex R record is kept and held TEST_CODE_MISSING, not dropped."""
    message = map_sample("sysmex_xn550_1.astm")
    assert len(message.results) == 41
    assert all("TEST_CODE_MISSING" in r.gates and not r.test_code for r in message.results)
    assert message.results[0].test_id == "^^^^WBC^1" and message.results[0].raw_value == "8.13"
    assert message.problems[0] == (
        "R record at line 6 (result 1) has no test code in R-3 component 4; held as TEST_CODE_MISSING"
    )
    assert len(message.problems) == 82  # and no specimen ID in O-3 for each


def test_sysmex_specimen_in_o4_component_3() -> None:
    """XP/XN put the sample number in O-4 component 3: --specimen-field O-4 --specimen-component 3."""
    message = map_sample("sysmex_xn550_1.astm", AstmProfile(test_code_component=5, specimen_field=4,
                                                             specimen_component=3))
    assert {r.specimen_id for r in message.results} == {"27"}
    assert not any(r.gates for r in message.results) and message.problems == ()


def test_c311_composite_padded_specimen() -> None:
    """Component 2 of the c311's composite O-3 is the padded specimen ID, stripped."""
    message = map_sample("roche_cobas_c311_1.astm", AstmProfile(specimen_component=2))
    assert {r.specimen_id for r in message.results} == {"CL-PL-24-0370"}
    codes = [r.test_code for r in message.results]
    assert codes == ["685", "687", "712", "158", "735", "717", "690"]
    assert by_code(message, "685").units == "U/l"
    assert message.problems == ()
    default = map_sample("roche_cobas_c311_1.astm")
    assert default.results[0].specimen_id == "11625"


def test_c111_specimen_from_o4_and_m_record_reported() -> None:
    """The c111 leaves O-3 empty (O-4 is used) and its M record is reported as not mapped."""
    message = map_sample("roche_cobas_c111_1.astm")
    (result,) = message.results
    assert (result.test_code, result.value, result.units) == ("413", Decimal("40.13"), "g/L")
    assert result.specimen_id == "T20 10134GA D28"
    assert result.completed_at == datetime(2023, 8, 3, 13, 17)
    assert message.problems == ("M record at line 6 (manufacturer information) is not mapped",)


def test_erba_backtick_dialect_maps() -> None:
    """The Erba message maps with its own delimiters; O-3 component 1 is what it sends."""
    message = map_sample("erba_em200_1.astm")
    (glucose,) = message.results
    assert (glucose.test_code, glucose.raw_value, glucose.units) == ("GLU", "115.5", "mg/dl")
    assert glucose.instrument_flags == ("H",)
    assert glucose.instrument_range == "^DEFAULT"
    assert glucose.specimen_id == "Asha Singh"  # the Erba puts the name in O-3 (docs/ASTM.md §2.5)
    assert glucose.sex == "F"


def test_psm_message_through_split_unframed() -> None:
    """All PSM results map with running sequence numbers and the right patient per P record."""
    (text,) = split_unframed((SAMPLES / "roche_psm_1.astm").read_bytes())
    records = decode_message(text)
    message = map_message(records, analyzer="psm", profile=DEFAULT)
    assert len(message.results) == sum(1 for r in records if r.type == "R")
    assert [r.sequence for r in message.results] == list(range(1, len(message.results) + 1))
    alts = [r for r in message.results if r.test_code == "ALTL"]
    assert [(a.patient_id, a.specimen_id, a.raw_value) for a in alts[:2]] == [
        ("WT36840", "WT36840", "10.55941"),
        ("WT36862", "WT36862", "11.77982"),
    ]
    assert message.problems == ()
    assert message.sender == "PSM"


def test_patient_fields_from_p_record() -> None:
    """P-3 ID, P-6 name, P-8 birth date and P-9 sex reach every result under the P."""
    message = map_text(
        b"H|\\^&\rP|1||PAT1||DOE^JOHN||19800101|M\rO|1|SPEC1\rR|1|^^^ALTL|35|U/L\rL|1|N\r"
    )
    (result,) = message.results
    assert (result.patient_id, result.patient_name, result.birth_date, result.sex) == (
        "PAT1", "DOE^JOHN", date(1980, 1, 1), "M",
    )
    assert (result.specimen_id, result.value, result.units) == ("SPEC1", Decimal("35"), "U/L")
    assert result.status == ""  # empty R-9 is kept empty, not defaulted
    assert message.problems == ()


def test_patient_id_fallbacks_and_context_reset() -> None:
    """P-4 then P-5 stand in for P-3, and a new P clears the previous patient and order."""
    message = map_text(
        b"H|\\^&\rP|1|||LAB7\rO|1|S1\rR|1|^^^A|1\rP|2|||ID3\rO|1|S2\rR|1|^^^B|2\r"
        b"P|3\rR|1|^^^C|3\rL|1|N\r"
    )
    pairs = [(r.patient_id, r.specimen_id) for r in message.results]
    assert pairs == [("LAB7", "S1"), ("ID3", "S2"), ("", "")]
    assert message.problems == (
        "R record at line 9 (result 3, test C) has no specimen ID: no O record precedes it",
    )


@pytest.mark.parametrize(
    ("sent", "expected"),
    [("M", "M"), ("f", "F"), ("Male", "M"), ("FEMALE", "F"), ("U", "U"), ("", ""), (" F ", "F")],
)
def test_sex_normalisation(sent: str, expected: str) -> None:
    """P-9 letters and words map to M, F, U or ""."""
    message = map_text(f"H|\\^&\rP|1||X||||19800101|{sent}\rO|1|S\rR|1|^^^A|1\rL|1\r".encode())
    assert message.results[0].sex == expected
    assert message.problems == ()


def test_unknown_sex_and_bad_birth_date_are_problems() -> None:
    """An unknown P-9 becomes U and an impossible P-8 None, each with a problem naming the field."""
    message = map_text(b"H|\\^&\rP|1||X||||19801345|Q\rO|1|S\rR|1|^^^A|1\rL|1\r")
    result = message.results[0]
    assert (result.birth_date, result.sex) == (None, "U")
    assert any("P-8" in p for p in message.problems)
    assert any("P-9" in p for p in message.problems)
    assert not any("19801345" in p for p in message.problems)  # PHI stays out of problem text


def test_bad_timestamps_are_problems() -> None:
    """Malformed O-8 and R-13 times map to None with a problem each."""
    message = map_text(b"H|\\^&\rO|1|S|||||2024\rR|1|^^^A|1|||||F||||20241301\rL|1\r")
    result = message.results[0]
    assert (result.collected_at, result.completed_at) == (None, None)
    assert [p.split(" in ")[-1] for p in message.problems] == ["O-8", "R-13"]


def test_result_without_test_code_is_reported_and_keeps_numbering() -> None:
    """An R with no code is kept and held TEST_CODE_MISSING, is reported, and counts for the sequence."""
    message = map_text(b"H|\\^&\rO|1|S\rR|1|^^^|5\rR|2|^^^ALT|7\rL|1\r")
    assert message.problems == (
        "R record at line 3 (result 1) has no test code in R-3 component 4; held as TEST_CODE_MISSING",
    )
    assert [(r.test_code, r.sequence, r.gates) for r in message.results] == [
        ("", 1, ("TEST_CODE_MISSING",)), ("ALT", 2, ())]


@pytest.mark.parametrize(
    ("field", "component", "code"),
    [
        ("^^^685/", 4, "685"),
        ("^^^8/1/not", 4, "8"),
        ("^^^ 685/2 ", 4, "685"),
        ("^^^^Blasts/Abn", 5, "Blasts/Abn"),
        ("^MTB-RIF^^Xpert", 2, "MTB-RIF"),
        ("^^^ALTL^^^^148.1", 4, "ALTL"),
        ("^^^1/2X", 4, "1"),
    ],
)
def test_test_code_extraction(field: str, component: int, code: str) -> None:
    """Numeric Roche host codes lose their /dilution suffix; other codes are kept whole."""
    profile = AstmProfile(test_code_component=component)
    message = map_text(f"H|\\^&\rO|1|S\rR|1|{field}|1\rL|1\r".encode(), profile)
    assert message.results[0].test_code == code


def test_other_record_types() -> None:
    """Q records are returned; C and L are silent; S, unknown types and a missing H are reported."""
    query = b"Q|1|^^000004^40^0^5^^S1^SC||ALL||||||||O"
    message = map_text(b"H|\\^&|||e411^1|||||host|TSREQ^REAL|P|1\r" + query + b"\rC|1|I|x\rL|1|N\r")
    assert [q.component(3, 3) for q in message.queries] == ["000004"]
    assert message.problems == ()
    assert message.sender == "e411"
    headless = decode_message(b"X|1\rH|\\^&\rS|1\rZ|1\rL|1\r")[2:]
    odd = map_message(headless, analyzer="a", profile=DEFAULT)
    assert odd.problems == (
        "S record at line 1 (scientific information) is not mapped",
        "Z record at line 2 has unknown record type 'Z' and was not mapped",
        "message has no H record",
    )


def test_flags_drop_empty_repeats_and_range_is_text() -> None:
    """R-7 repeats become flags without empties; R-6 stays text."""
    message = map_text(
        b"H|\\^&\rO|1|S\rR|1|^^^A|5|U/L|84.0 - 94.0^REFERENCE_RANGE|H\\\\ W |N|C\rL|1\r"
    )
    result = message.results[0]
    assert result.instrument_flags == ("H", "W")
    assert result.instrument_range == "84.0 - 94.0^REFERENCE_RANGE"
    assert result.status == "C"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<3.00", ("<", Decimal("3.00"))),
        (">= 250", (">=", Decimal("250"))),
        ("<=.5", ("<=", Decimal(".5"))),
        (">1000", (">", Decimal("1000"))),
        ("  5.5", (None, Decimal("5.5"))),
        (".995455", (None, Decimal("0.995455"))),
        ("12.000", (None, Decimal("12.000"))),
        ("-2.5", (None, Decimal("-2.5"))),
        ("-----", (None, None)),
        ("NA", (None, None)),
        ("-1^0.282", (None, None)),
        ("NOT DETECTED^", (None, None)),
        ("", (None, None)),
        ("1.2.3", (None, None)),
        ("<", (None, None)),
        ("1e5", (None, None)),
        ("٣", (None, None)),
    ],
)
def test_parse_value(text: str, expected: tuple[str | None, Decimal | None]) -> None:
    """Comparator and number are split out; anything else is non-numeric."""
    assert parse_value(text) == expected


def test_parse_value_keeps_written_precision() -> None:
    """The Decimal keeps trailing zeros exactly as the instrument wrote them."""
    assert str(parse_value("12.000")[1]) == "12.000"
    assert str(parse_value("<3.00")[1]) == "3.00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20200413110103", datetime(2020, 4, 13, 11, 1, 3)),
        ("202205260000", datetime(2022, 5, 26, 0, 0)),
        ("20181120", datetime(2018, 11, 20)),
        (" 20181120 ", datetime(2018, 11, 20)),
        ("", None),
        ("2018112", None),
        ("20181320", None),
        ("20180230", None),
        ("20181120256000", None),
        ("2018-11-20", None),
    ],
)
def test_parse_astm_datetime(text: str, expected: datetime | None) -> None:
    """8, 12 or 14 digits of a real date parse as naive datetimes; the rest gives None."""
    assert parse_astm_datetime(text) == expected


def test_parse_astm_date() -> None:
    """A date is the date part of any accepted timestamp."""
    assert parse_astm_date("19770101") == date(1977, 1, 1)
    assert parse_astm_date("19770101120000") == date(1977, 1, 1)
    assert parse_astm_date("1977") is None


def test_profile_validation_and_finality() -> None:
    """Component numbers start at 1, the codec must exist, and final statuses are configurable."""
    with pytest.raises(ValueError):
        AstmProfile(test_code_component=0)
    with pytest.raises(ValueError):
        AstmProfile(specimen_component=0)
    with pytest.raises(ValueError):
        AstmProfile(encoding="no-such-codec")
    assert DEFAULT.is_final("F") and DEFAULT.is_final("C") and not DEFAULT.is_final("W")
    assert AstmProfile(final_statuses=("F",)).is_final("C") is False


TEXTS = astm_sample_texts()


@st.composite
def mutated_texts(draw: st.DrawFn) -> bytes:
    """A sample message text with a few bytes inserted, deleted or replaced."""
    data = bytearray(draw(st.sampled_from(TEXTS)))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        interesting = st.sampled_from(list(b"|\\^&`HPORCQL\r0123456789.<> "))
        byte = draw(st.one_of(interesting, st.integers(0, 255)))
        if draw(st.booleans()):
            data.insert(pos, byte)
        elif data:
            data[pos] = byte
    return bytes(data)


@settings(max_examples=200, deadline=None)
@given(mutated_texts(), st.integers(1, 6), st.integers(1, 4))
def test_mapping_mutated_captures_raises_only_labmw_errors(
    data: bytes, code: int, specimen: int
) -> None:
    """Whatever decodes maps without any exception except LabmwError subclasses."""
    try:
        records = decode_message(data)
    except CodecError:
        return
    profile = AstmProfile(test_code_component=code, specimen_component=specimen)
    try:
        message = map_message(records, analyzer="fuzz", profile=profile)
    except LabmwError:
        return
    assert all(isinstance(r, Result) and (r.test_code or "TEST_CODE_MISSING" in r.gates) and r.sequence >= 1
               for r in message.results)
    assert all(isinstance(p, str) and p for p in message.problems)


def test_comment_records_after_a_result_stay_with_it() -> None:
    """#11: C records right after an R belong to that result (shown in review, sent as NTE); others do not."""
    text = (b"H|\\^&|||c501\rP|1||P1\rO|1|S1||^^^ALTL\rC|1|I|order comment|G\r"
            b"R|1|^^^ALTL|30|U/L||Samp.S||F\rC|1|I|sample^short|G\rC|2|I|repeat advised|G\r"
            b"R|2|^^^ASTL|25|U/L||N||F\rL|1|N\r")
    mapped = map_text(text)
    alt, ast = by_code(mapped, "ALTL"), by_code(mapped, "ASTL")
    assert alt.comments == ("sample short", "repeat advised") and alt.instrument_flags == ("Samp.S",)
    assert ast.comments == ()

"""Tests for labmw.rules.engine: flags, applied range, notes and decisions for one result."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labmw.errors import RuleError
from labmw.model import AgeBound, DeltaRule, Evaluation, Grading, Method, PreviousResult, RangeRule, Result
from labmw.rules.age import parse_age
from labmw.rules.engine import evaluate
from labmw.rules.gates import DEFAULT_TEXTS, GatePolicy

COLLECTED = datetime(2026, 11, 22, 8, 0)
ADULT = date(1980, 5, 1)

# The acceptance method: ALT-T, U/L, measuring 5-7000, critical high 1000, M 18y+ 9-59, F 18y+ 8-41.
ALT_T = Method(
    name="ALT-T",
    analyte="ALT",
    units="U/L",
    measuring_low=Decimal(5),
    measuring_high=Decimal(7000),
    critical_high=Decimal(1000),
    ranges=(
        RangeRule(low=Decimal(9), high=Decimal(59), sex="M", age_min=parse_age("18y")),
        RangeRule(low=Decimal(8), high=Decimal(41), sex="F", age_min=parse_age("18y")),
    ),
)


def result(raw: str = "85", **changes: Any) -> Result:
    """An ALT result for an adult male, value parsed from ``raw`` as the mapping layer would."""
    comparator = next((c for c in ("<=", ">=", "<", ">") if raw.startswith(c)), None)
    number = raw[len(comparator) :] if comparator else raw
    try:
        value: Decimal | None = Decimal(number)
    except ArithmeticError:
        value = None
    base = Result(
        analyzer="cobas-1",
        test_code="ALTL",
        raw_value=raw,
        value=value,
        comparator=comparator,
        units="U/L",
        collected_at=COLLECTED,
        specimen_id="S1",
        patient_id="P1",
        patient_name="DOE^JANE",
        birth_date=ADULT,
        sex="M",
    )
    return replace(base, **changes)


def decision(evaluation: Evaluation, rule: str) -> tuple[str, dict[str, str]]:
    """The outcome and inputs of the one decision of ``rule``."""
    (found,) = [d for d in evaluation.decisions if d.rule == rule]
    return found.outcome, found.inputs


@pytest.mark.parametrize(
    ("res", "flags", "applied", "gates"),
    [
        (result("85"), ("H",), "9-59", ()),
        (result("45", sex="F"), ("H",), "8-41", ()),
        (result("44"), (), "9-59", ()),
        (result("59"), (), "9-59", ()),  # equal to a limit is inside
        (result("9"), (), "9-59", ()),
        (result("8.9"), ("L",), "9-59", ()),
        (result("1250"), ("HH",), "9-59", ()),
        (result("1000"), ("HH",), "9-59", ()),  # critical is inclusive
        (result("8000"), ("HH", ">"), "9-59", ("NEEDS_DILUTION",)),  # never released as a raw above-range number
        (result("4"), ("L", "<"), "9-59", ()),
        (result("<5"), ("L", "<"), "9-59", ()),  # <5 is below the lower limit 9
        (result(">7000"), ("HH", ">"), "9-59", ("NEEDS_DILUTION",)),  # above critical-high 1000 whatever it is
        (result("<=5"), ("L",), "9-59", ()),  # may be 5, inside the measuring range, but below 9
        (result("85", status="P"), (), "", ("RESULT_STATUS",)),
        (result("85", sex=""), ("H",), "8-59", ("DEMOG_INCOMPLETE",)),
        (result("50", sex=""), (), "8-59", ("DEMOG_INCOMPLETE",)),
        (result("85", birth_date=date(2008, 11, 23)), (), "", ("NO_RANGE",)),  # 17 years, adult ranges only
        (result("85", birth_date=date(2008, 11, 22)), ("H",), "9-59", ()),  # 18th birthday
    ],
)
def test_acceptance_cases(res: Result, flags: tuple[str, ...], applied: str, gates: tuple[str, ...]) -> None:
    """The ALT-T acceptance table: flags in table-0078 order, the OBX-7 applied range, the gates that hold."""
    evaluation = evaluate(res, ALT_T)
    assert evaluation.method == "ALT-T"
    assert evaluation.flags == flags
    assert evaluation.applied_range == applied
    assert evaluation.gates == gates
    assert evaluation.hold is bool(gates)


def test_high_result_carries_a_grading_note() -> None:
    """H and HH come with the multiple of the applied upper limit."""
    assert evaluate(result("85"), ALT_T).notes == ("1.4 x ULN 59",)
    assert "21.2 x ULN 59" in evaluate(result("1250"), ALT_T).notes


def test_reference_decision_records_its_inputs() -> None:
    """The reference-range decision keeps value, sex, age, range and limits as strings."""
    outcome, inputs = decision(evaluate(result("85"), ALT_T), "reference_range")
    assert outcome == "H"
    assert inputs["value"] == "85"
    assert inputs["sex"] == "M"
    assert inputs["age"] == "46y"
    assert inputs["range"] == "9-59"
    assert inputs["partition"] == "M 18y+"
    assert (inputs["low"], inputs["high"]) == ("9", "59")
    decisions = evaluate(result("85"), ALT_T).decisions
    assert all(isinstance(v, str) for d in decisions for v in d.inputs.values())


def test_no_patient_name_or_birth_date_in_notes_or_decisions() -> None:
    """Notes and decision inputs never carry the patient's name or birth date."""
    evaluation = evaluate(result("85", sex=""), ALT_T)
    texts = list(evaluation.notes) + [v for d in evaluation.decisions for v in d.inputs.values()]
    assert not any("DOE" in t or "1980" in t for t in texts)


def test_missing_sex_uses_widest_band_and_says_so() -> None:
    """Sex not sent: widest adult band 8-59 and an incomplete-demographics note."""
    evaluation = evaluate(result("85", sex=""), ALT_T)
    assert evaluation.applied_range == "8-59"
    assert evaluation.notes[0] == (
        "incomplete demographics: sex not sent: widest band 8-59 of 2 candidate ranges applied"
    )
    assert decision(evaluation, "reference_range")[1]["incomplete_demographics"] == "true"


def test_seventeen_year_old_gets_no_range_and_a_reason() -> None:
    """A 17-year-old against adult-only ranges: no L/H, no OBX-7, and a note why."""
    evaluation = evaluate(result("85", birth_date=date(2008, 11, 23)), ALT_T)
    assert evaluation.notes == (
        "no reference range for sex M, age 17y: forwarded without L/H flags",
    )
    assert decision(evaluation, "reference_range")[0] == "no range"


def test_critical_applies_without_a_reference_range() -> None:
    """HH fires on the critical limit even when no range matched; no grading without a ULN."""
    evaluation = evaluate(result("1250", birth_date=date(2010, 1, 1)), ALT_T)
    assert evaluation.flags == ("HH",)
    assert evaluation.applied_range == ""
    assert not any("ULN" in n for n in evaluation.notes)


def test_critical_low_replaces_low() -> None:
    """LL replaces L at or below the critical low limit."""
    method = replace(ALT_T, critical_low=Decimal(3), measuring_low=None)
    assert evaluate(result("3"), method).flags == ("LL",)
    assert evaluate(result("4"), method).flags == ("L",)


def test_unmapped_test_code_is_held_by_default() -> None:
    """No method: gate METHOD_UNKNOWN holds it; the reviewer's reason names the test code."""
    evaluation = evaluate(result("85"), None)
    assert evaluation.flags == () and evaluation.hold and evaluation.gates == ("METHOD_UNKNOWN",)
    assert evaluation.review_notes == (
        "METHOD_UNKNOWN: test code ALTL is mapped to no method: its rules cannot be applied",)
    assert decision(evaluation, "method") == ("unmapped", {"test_code": "ALTL", "analyzer": "cobas-1"})
    assert decision(evaluation, "gate.METHOD_UNKNOWN")[0] == "hold"


def test_unmapped_test_code_forwarded_when_the_analyzer_says_so() -> None:
    """``unmapped = "forward"``: released with the clinician's NTE, no hold, decision 'forward'."""
    evaluation = evaluate(result("85"), None, policy=GatePolicy(unmapped="forward"))
    assert not evaluation.hold and evaluation.gates == ()
    assert DEFAULT_TEXTS["METHOD_UNKNOWN"] in evaluation.notes
    assert decision(evaluation, "gate.METHOD_UNKNOWN")[0] == "forward"


@pytest.mark.parametrize(
    ("res", "rule", "note", "gate"),
    [
        (result("85", status="P"), "status", "status P is not final: not range-checked", "RESULT_STATUS"),
        (result("8000", status="X"), "status", "status X is not final: not range-checked", "RESULT_STATUS"),
        (result("hemolysed"), "value", "value is not numeric: not range-checked", "ABSURD"),
        (
            result("85", units="ukat/L"),
            "units",
            "units ukat/L not checked: method ALT-T expects U/L",
            "UNIT_UNKNOWN",
        ),
    ],
)
def test_results_that_are_not_checked(res: Result, rule: str, note: str, gate: str) -> None:
    """Non-final, non-numeric and foreign-unit results get no flags, a note, and are held by their gate."""
    previous = PreviousResult(value=Decimal(1), collected_at=datetime(2026, 11, 21))
    evaluation = evaluate(res, replace(ALT_T, delta=DELTA), previous=previous)
    assert evaluation.flags == ()
    assert evaluation.applied_range == ""
    assert evaluation.notes == (note,)
    assert [d.rule for d in evaluation.decisions if not d.rule.startswith("gate.")] == [rule]
    assert evaluation.gates == (gate,) and evaluation.hold
    assert decision(evaluation, f"gate.{gate}")[0] == "hold"


def test_a_gate_set_to_flag_releases_with_the_clinician_text() -> None:
    """A method's ``gates = {RESULT_STATUS = "flag"}``: no hold, the reviewed NTE text instead."""
    method = replace(ALT_T, gates=(("RESULT_STATUS", "flag"),))
    evaluation = evaluate(result("85", status="P"), method, policy=GatePolicy(texts={"RESULT_STATUS": "Prelim."}))
    assert not evaluation.hold and evaluation.flagged_gates == ("RESULT_STATUS",)
    assert "Prelim." in evaluation.notes and evaluation.review_notes == ()
    # The analyzer's setting applies when the method has none; the method's wins over it.
    assert not evaluate(result("85", status="P"), ALT_T, policy=GatePolicy(actions={"RESULT_STATUS": "flag"})).hold
    strict = replace(ALT_T, gates=(("RESULT_STATUS", "hold"),))
    assert evaluate(result("85", status="P"), strict, policy=GatePolicy(actions={"RESULT_STATUS": "flag"})).hold


@pytest.mark.parametrize(("status", "units"), [("", ""), ("C", "u/l"), (" f ", " U/L ")])
def test_empty_status_and_units_mean_final_and_method_units(status: str, units: str) -> None:
    """Empty status counts as final, empty units as the method's; units ignore case."""
    assert evaluate(result("85", status=status, units=units), ALT_T).flags == ("H",)


@pytest.mark.parametrize(
    ("raw", "method", "flags", "note"),
    [
        (">1500", ALT_T, ("HH",), ""),  # above critical-high 1000 whatever the true value
        (">1000", ALT_T, ("HH",), ""),  # > 1000 is >= 1000
        (">=1000", ALT_T, ("HH",), ""),
        (">500", ALT_T, ("H",), ">500 does not decide the critical limit 1000"),
        (">30", ALT_T, (), ">30 does not decide the critical limit 1000 or upper reference limit 59"),
        (">59", replace(ALT_T, critical_high=None), ("H",), ""),
        (">=59", replace(ALT_T, critical_high=None), (), ">=59 does not decide the upper reference limit 59"),
        ("<8", replace(ALT_T, measuring_low=None, ranges=(RangeRule(low=Decimal(10), high=Decimal(49)),)),
         ("L",), ""),
        ("<30", replace(ALT_T, measuring_low=None, ranges=(RangeRule(low=Decimal(10), high=Decimal(49)),)),
         (), "<30 does not decide the lower reference limit 10"),
        ("<9", ALT_T, ("L",), ""),  # < 9 is below the lower limit 9
        ("<=9", ALT_T, (), "<=9 does not decide the lower reference limit 9"),
    ],
)
def test_comparator_values_are_judged_against_every_limit_they_decide(
    raw: str, method: Method, flags: tuple[str, ...], note: str
) -> None:
    """'>X' is above every limit <= X, '<X' below every limit >= X; an open limit is said in a note."""
    evaluation = evaluate(result(raw), method)
    assert tuple(f for f in evaluation.flags if f not in ("<", ">")) == flags
    if note:
        assert note in evaluation.notes
    else:
        assert not any("does not decide" in n for n in evaluation.notes)


def test_comparator_grade_is_a_lower_bound() -> None:
    """'>1500' with ULN 59 and CTCAE grades: at least grade 4 (> 20 x ULN)."""
    method = replace(ALT_T, grading=Grading(scheme="CTCAE v5.0", above_uln=(Decimal(1), Decimal(3), Decimal(5),
                                                                             Decimal(20))))
    assert decision(evaluate(result(">1500"), method), "grading")[0] == "at least grade 4"


DELTA = DeltaRule(abs_change=Decimal(20), pct_change=Decimal(50))
PREVIOUS = PreviousResult(
    value=Decimal(40), collected_at=datetime(2026, 11, 20, 8, 0), specimen_id="S0"
)


def test_delta_appends_u_after_range_and_measuring_flags() -> None:
    """A significant rise adds U last and explains it in a note."""
    method = replace(ALT_T, delta=DELTA)
    evaluation = evaluate(result("8000"), method, previous=PREVIOUS)
    assert evaluation.flags == ("HH", ">", "U")
    assert "delta: 8000 vs 40 at 2026-11-20 08:00 (+7960, +19900.0%)" in evaluation.notes
    outcome, inputs = decision(evaluation, "delta")
    assert outcome == "U"
    assert inputs["previous_value"] == "40"
    assert inputs["previous_specimen"] == "S0"


def test_delta_down() -> None:
    """A significant fall adds D."""
    previous = replace(PREVIOUS, value=Decimal(120))
    assert evaluate(result("44"), replace(ALT_T, delta=DELTA), previous=previous).flags == ("D",)


def test_delta_hold_holds_instead_of_flagging() -> None:
    """With action hold the result is held and gets no U/D flag."""
    method = replace(ALT_T, delta=replace(DELTA, action="hold"))
    evaluation = evaluate(result("85"), method, previous=PREVIOUS)
    assert evaluation.hold is True
    assert evaluation.flags == ("H",)
    assert decision(evaluation, "delta")[0] == "hold U"
    assert "held for review by the delta rule" in evaluation.notes


@pytest.mark.parametrize(
    ("previous", "outcome", "reason"),
    [
        (None, "skipped", "no previous result"),
        (
            replace(PREVIOUS, collected_at=datetime(2026, 11, 1)),
            "skipped",
            "previous result older than 7 days",
        ),
        (replace(PREVIOUS, value=Decimal(80)), "not fired", None),
    ],
)
def test_delta_that_does_not_fire_is_still_recorded(
    previous: PreviousResult | None, outcome: str, reason: str | None
) -> None:
    """A configured delta rule that does not fire leaves a decision saying why."""
    evaluation = evaluate(result("85"), replace(ALT_T, delta=DELTA), previous=previous)
    assert evaluation.flags == ("H",)
    got, inputs = decision(evaluation, "delta")
    assert got == outcome
    assert inputs.get("reason") == reason


def test_delta_uses_completion_time_without_collection_time() -> None:
    """Without a collection time the completion time stands in, for age and delta alike."""
    res = result("85", collected_at=None, completed_at=COLLECTED)
    assert evaluate(res, replace(ALT_T, delta=DELTA), previous=PREVIOUS).flags == ("H", "U")


def test_misconfigured_method_raises_rule_error() -> None:
    """A delta rule with an invalid action or an age bound with an unknown unit raises RuleError."""
    with pytest.raises(RuleError):
        bad_delta = replace(ALT_T, delta=replace(DELTA, action="page"))
        evaluate(result("85"), bad_delta, previous=PREVIOUS)
    bad_range = RangeRule(low=Decimal(1), high=Decimal(2), age_min=AgeBound(amount=1, unit="w"))
    with pytest.raises(RuleError):
        evaluate(result("85"), replace(ALT_T, ranges=(bad_range,)))


LIMITS = st.decimals(min_value=0, max_value=10_000, places=2)


@st.composite
def range_and_value_inside(draw: st.DrawFn) -> tuple[Decimal, Decimal, Decimal]:
    """A reference range low-high and a value between its limits, both included."""
    low = draw(LIMITS)
    high = low + draw(LIMITS)
    return low, high, draw(st.decimals(min_value=low, max_value=high, places=2))


@given(case=range_and_value_inside())
def test_value_inside_applied_range_never_gets_l_or_h(
    case: tuple[Decimal, Decimal, Decimal],
) -> None:
    """Any value between the applied limits (inclusive) gets neither L nor H."""
    low, high, value = case
    method = Method(name="M", analyte="A", units="U/L", ranges=(RangeRule(low=low, high=high),))
    evaluation = evaluate(result(str(value)), method)
    assert evaluation.applied_range == f"{low}-{high}"
    assert not {"L", "H"} & set(evaluation.flags)


NOT_FINAL = st.text(alphabet="ABDEGHIJKNOPRSXZ", min_size=1, max_size=2)


@given(status=NOT_FINAL, value=st.decimals(min_value=-100_000, max_value=100_000, places=1))
def test_non_final_results_never_get_flags(status: str, value: Decimal) -> None:
    """Whatever the value, a result whose status is not F or C gets no flags at all."""
    method = replace(ALT_T, critical_low=Decimal(3))
    evaluation = evaluate(result(str(value), status=status), method)
    assert evaluation.flags == ()


@given(raw=st.text(max_size=12))
def test_non_numeric_results_never_get_flags(raw: str) -> None:
    """A result without a numeric value gets no range, critical or measuring flags."""
    evaluation = evaluate(result("85", raw_value=raw, value=None, comparator=None), ALT_T)
    assert evaluation.flags == ()
    assert evaluation.applied_range == ""

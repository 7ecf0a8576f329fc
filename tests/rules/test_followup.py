"""The engine with the follow-up rules: units, pending review, thresholds, both delta rules, Hy's law."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal

import pytest

from labmw.model import (
    AbruptRise,
    AltDeltaTiers,
    DecisionThreshold,
    DeltaRule,
    Grading,
    HysLawRule,
    ImplausibleFall,
    Method,
    PreviousResult,
    RangeRule,
    RelatedResult,
    Result,
    SignificantChange,
    UnitConversion,
)
from labmw.rules.age import parse_age
from labmw.rules.engine import evaluate
from labmw.rules.scenario import Scenario, run_scenario

# The numbers of CLINICAL.md 3.5 and 2.3, as the shipped library configures them.
TIERS = AltDeltaTiers(
    window_days=Decimal(7),
    significant_change=SignificantChange(ratio_up=Decimal("1.45"), ratio_down=Decimal("0.69"),
                                         min_change=Decimal(20), min_change_uln=Decimal("0.5")),
    implausible_fall=ImplausibleFall(previous_above_uln=Decimal(3), half_life_hours=Decimal(47),
                                     fraction_of_expected=Decimal("0.5")),
    abrupt_rise=AbruptRise(ratio=Decimal(5), min_rise=Decimal(300), within_hours=Decimal(48)),
)
HYS_LAW = HysLawRule(aminotransferase_uln=Decimal(3), bilirubin_uln=Decimal(2), alp_uln=Decimal(2),
                     window_hours=Decimal(24))

AT = datetime(2026, 11, 22, 8, 0)
METHOD = Method(
    name="ALT-T", analyte="ALT", units="U/L", measuring_low=Decimal(5), measuring_high=Decimal(700),
    critical_high=Decimal(1000),
    ranges=(RangeRule(low=Decimal(9), high=Decimal(59), sex="M", age_min=parse_age("18y")),
            RangeRule(low=Decimal(8), high=Decimal(41), sex="F", age_min=parse_age("18y")),
            RangeRule(low=Decimal(5), high=Decimal(51), age_max=parse_age("1y"), status="pending review"),
            RangeRule(low=Decimal(1), high=Decimal(2), age_max=parse_age("18y"), status="disabled")),
    conversions=(UnitConversion(units="ukat/L", factor=Decimal(60)),),
    grading=Grading(scheme="CTCAE v5.0", above_uln=(Decimal(1), Decimal(3), Decimal(5), Decimal(20))),
    alt_delta=TIERS, hys_law=HYS_LAW,
)


def result(value: str, **changes: object) -> Result:
    """An adult man's ALT result (value parsed as the mapping layer would)."""
    base = Result(analyzer="a", test_code="ALTL", raw_value=value, value=Decimal(value), units="U/L",
                  collected_at=AT, specimen_id="S2", patient_id="P1", birth_date=date(1980, 1, 1), sex="M")
    return replace(base, **changes)  # type: ignore[arg-type]


def previous(value: str, at: datetime, **changes: object) -> PreviousResult:
    """A previous result of another specimen."""
    return replace(PreviousResult(value=Decimal(value), collected_at=at, specimen_id="S1"), **changes)  # type: ignore[arg-type]


def test_ukat_result_is_checked_in_u_per_l_and_shown_in_ukat() -> None:
    """1.02 ukat/L = 61.2 U/L: H against 9-59, OBX-7 0.15-0.98, the conversion in the NTE."""
    evaluation = evaluate(result("1.02", units="µkat/L"), METHOD)
    assert evaluation.flags == ("H",)
    assert evaluation.applied_range == "0.15-0.98"
    assert evaluation.notes[0] == "1.02 µkat/L = 61.20 U/L (x 60): checked in U/L"
    assert evaluation.notes[1] == "1.0 x ULN 59: CTCAE v5.0 grade 1 (> 1 x ULN)"


def test_measuring_range_applies_to_the_converted_value() -> None:
    """12 ukat/L = 720 U/L is above the 5-700 U/L measuring range."""
    assert evaluate(result("12", units="ukat/L"), METHOD).flags == ("H", ">")


def test_previous_in_ukat_is_converted_and_unknown_units_are_not_compared() -> None:
    """0.80 ukat/L = 48 U/L before; a previous in mmol/L is skipped with the reason."""
    before = previous("0.80", datetime(2026, 11, 19, 8, 0), units="ukat/L")
    evaluation = evaluate(result("120"), METHOD, previous=before)
    assert evaluation.flags == ("H", "U")
    assert any(n.startswith("delta U (ALT significant change): 120 vs 48.00 U/L") for n in evaluation.notes)
    foreign = evaluate(result("120"), METHOD, previous=replace(before, units="mmol/L"))
    assert foreign.flags == ("H",)
    reasons = {d.inputs["reason"] for d in foreign.decisions if d.rule.startswith("alt_delta.")}
    assert reasons == {"previous result in mmol/L: no conversion to U/L"}


def test_pending_review_range_is_applied_and_said() -> None:
    """An infant's range pending review still flags, and the NTE says it is pending review."""
    evaluation = evaluate(result("60", birth_date=date(2026, 6, 1), sex="F"), METHOD)
    assert evaluation.flags == ("H",)
    assert "reference range 5-51 (any sex <1y) is pending laboratory review" in evaluation.notes


def test_disabled_range_is_never_applied() -> None:
    """A 10-year-old matches only a disabled row: no range, and the reason."""
    evaluation = evaluate(result("60", birth_date=date(2016, 1, 1)), METHOD)
    assert evaluation.applied_range == "" and evaluation.flags == ()


def test_pending_review_method_is_said() -> None:
    """A method pending review says so first."""
    evaluation = evaluate(result("40"), replace(METHOD, status="pending review"))
    assert evaluation.notes[0] == "method ALT-T is pending laboratory review"


def test_enabled_threshold_adds_a_note_never_a_flag() -> None:
    """ACG 33 (M) enabled: 40 U/L gets a note and no flag; a woman is not judged by it."""
    acg = DecisionThreshold(name="ACG 2017", value=Decimal(33), sex="M", age_min=parse_age("18y"), enabled=True)
    method = replace(METHOD, thresholds=(acg,))
    evaluation = evaluate(result("40"), method)
    assert evaluation.flags == ()
    assert evaluation.notes == ("above decision limit ACG 2017 33 (M 18y+): not a reference interval",)
    assert not [d for d in evaluate(result("40", sex="F"), method).decisions if d.rule == "threshold"]


def test_simple_and_tiered_deltas_give_one_flag() -> None:
    """Both delta rules firing on the same rise add a single U."""
    method = replace(METHOD, delta=DeltaRule(abs_change=Decimal(20)))
    evaluation = evaluate(result("118"), method, previous=previous("59", datetime(2026, 11, 20, 8, 0)))
    assert evaluation.flags == ("H", "U")
    assert {d.rule: d.outcome for d in evaluation.decisions}["delta"] == "U"


def test_tier_hold_holds_and_explains() -> None:
    """800 -> 150 in 12 h: held, D kept, and the NTE names the earlier value, time and change."""
    evaluation = evaluate(result("150"), METHOD, previous=previous("800", datetime(2026, 11, 21, 20, 0)))
    assert evaluation.hold and evaluation.flags == ("H", "D")
    assert any(n.startswith("delta hold (ALT implausible fall): 150 vs 800 U/L at 2026-11-21 20:00, -650 U/L")
               for n in evaluation.notes)
    assert evaluation.notes[-1] == "held for review by the ALT delta rule"


@pytest.mark.parametrize("specimen", ["S2", "S1"])
def test_correction_is_checked_and_never_compared_with_what_it_corrects(specimen: str) -> None:
    """Status C is range-checked; the delta skips a previous result of the same specimen only."""
    evaluation = evaluate(result("150", status="C"), METHOD,
                          previous=previous("800", datetime(2026, 11, 21, 20, 0), specimen_id=specimen))
    outcomes = {d.rule: d.outcome for d in evaluation.decisions}
    assert outcomes["status"] == "corrected"
    assert outcomes["alt_delta.implausible_fall"] == ("skipped" if specimen == "S2" else "hold")
    assert evaluation.hold is (specimen == "S1")


def test_hys_law_note_through_the_engine() -> None:
    """Related TBIL and ALP make a 200 U/L ALT a Hy's-law candidate: a note, no extra flag."""
    related = (RelatedResult(analyte="TBIL", value=Decimal(45), uln=Decimal(21), collected_at=AT),
               RelatedResult(analyte="ALP", value=Decimal(90), uln=Decimal(130), collected_at=AT))
    evaluation = evaluate(result("200"), METHOD, related=related)
    assert evaluation.flags == ("H",)
    assert any(n.startswith("Hy's-law candidate") for n in evaluation.notes)


def test_grade_recorded_for_audit_even_inside_the_range() -> None:
    """A scale and a ULN always leave a grading decision; inside the range it is 'not graded'."""
    evaluation = evaluate(result("40"), METHOD)
    assert {d.rule: d.outcome for d in evaluation.decisions}["grading"] == "not graded"
    assert not any("ULN" in n for n in evaluation.notes)


def test_scenario_dash_value_is_not_numeric() -> None:
    """'-----' from an analyzer is never range-checked."""
    evaluation = run_scenario({"ALT-T": METHOD}, Scenario(method="ALT-T", value="-----", at=AT, sex="M", age="45y"))
    assert evaluation.flags == () and evaluation.notes == ("value is not numeric: not range-checked",)

"""Autoverification gates and range-configuration checks (labmw.rules.gates, labmw.rules.range_checks)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from labmw.config import parse
from labmw.errors import ConfigError
from labmw.model import Method, RangeRule, Result
from labmw.rules.age import parse_age
from labmw.rules.engine import evaluate
from labmw.rules.gates import GATE_NAMES, GATES, FlagRule, GatePolicy, Suspension
from labmw.rules.range_checks import ambiguous_pairs, coverage_gaps

METHOD = Method(
    name="ALT-G", analyte="ALT", units="U/L", measuring_low=Decimal(5), measuring_high=Decimal(700),
    critical_high=Decimal(1000), absurd_low=Decimal(0), absurd_high=Decimal(20000),
    ranges=(RangeRule(low=Decimal(0), high=Decimal(41), sex="M", age_min=parse_age("18y")),
            RangeRule(low=Decimal(0), high=Decimal(33), sex="F", age_min=parse_age("18y")),
            RangeRule(low=Decimal(5), high=Decimal(51), age_max=parse_age("18y"), status="pending review")),
)


def result(value: str = "30", **changes: Any) -> Result:
    number = value.lstrip("<>=")
    try:
        parsed: Decimal | None = Decimal(number)
    except ArithmeticError:
        parsed = None
    comparator = value[: len(value) - len(number)] or None
    base = Result(analyzer="c501", test_code="ALTL", raw_value=value, value=parsed, comparator=comparator,
                  units="U/L", collected_at=datetime(2026, 11, 25, 8), specimen_id="S1", patient_id="P1",
                  birth_date=date(1980, 1, 1), sex="M")
    return replace(base, **changes)


def test_gate_list_is_in_clinical_order_and_extensible_by_one_entry() -> None:
    """CLINICAL.md 4.2: the kill switch, identity, flags, QC (step 3), status, value gates, range gates."""
    assert GATE_NAMES == ("AUTOVERIFY_SUSPENDED", "METHOD_UNKNOWN", "INSTRUMENT_FLAG", "QC_FAILED", "QC_EXPIRED",
                          "RESULT_STATUS",
                          "UNIT_UNKNOWN", "NEEDS_DILUTION", "ABSURD", "DEMOG_INCOMPLETE", "NO_RANGE",
                          "RANGE_UNAPPROVED")
    assert len({g.name for g in GATES}) == len(GATES)


def test_an_ordinary_result_passes_every_gate_and_each_outcome_is_recorded() -> None:
    evaluation = evaluate(result("30"), METHOD)
    assert not evaluation.hold and evaluation.flags == ()
    outcomes = {d.rule: d.outcome for d in evaluation.decisions if d.rule.startswith("gate.")}
    # The QC gates are judged only where a control material applies (none here: no QC state given).
    assert outcomes == {f"gate.{name}": "pass" for name in GATE_NAMES if not name.startswith("QC_")}


@pytest.mark.parametrize(
    ("res", "gates"),
    [
        (result("25000"), ("NEEDS_DILUTION", "ABSURD")),
        (result("0"), ("ABSURD",)),
        (result("-3"), ("ABSURD",)),
        (result("-----"), ("ABSURD",)),
        (result(">700"), ("NEEDS_DILUTION",)),
        (result(">=700"), ("NEEDS_DILUTION",)),
        (result("701"), ("NEEDS_DILUTION",)),
        (result("30", birth_date=None), ("DEMOG_INCOMPLETE", "RANGE_UNAPPROVED")),
        (result("30", sex="U"), ("DEMOG_INCOMPLETE",)),
        (result("30", birth_date=date(2015, 1, 1)), ("RANGE_UNAPPROVED",)),
        (result("30", instrument_flags=("E",)), ("INSTRUMENT_FLAG",)),
        (result("30", units="mg/dL"), ("UNIT_UNKNOWN",)),
        (result("30", status="P"), ("RESULT_STATUS",)),
    ],
)
def test_what_the_rules_cannot_judge_is_held_with_its_gate(res: Result, gates: tuple[str, ...]) -> None:
    evaluation = evaluate(res, METHOD)
    assert evaluation.gates == gates and evaluation.hold
    assert all(any(note.startswith(f"{g}: ") for note in evaluation.review_notes) for g in gates)
    assert not any(g in note for g in gates for note in evaluation.notes), "gate reasons never go to the LIS"


@pytest.mark.parametrize("value", ["700", "<5", "5", "<=700", "<800"])
def test_values_the_gates_can_judge_pass(value: str) -> None:
    assert "NEEDS_DILUTION" not in evaluate(result(value), METHOD).gates


def test_no_range_in_an_age_gap() -> None:
    method = replace(METHOD, ranges=METHOD.ranges[:2])
    evaluation = evaluate(result("30", birth_date=date(2015, 1, 1)), method)
    assert evaluation.gates == ("NO_RANGE",) and evaluation.applied_range == ""


def test_flag_table_and_table_0078() -> None:
    """Table-0078 flags need no entry; the analyzer's table decides the rest; an unnamed one holds."""
    assert not evaluate(result("30", instrument_flags=("H", "N", "")), METHOD).hold
    table = {"Samp.S": FlagRule(action="hold"), "W1": FlagRule(action="ignore"), "Lip": FlagRule(action="flag")}
    policy = GatePolicy(flags=table, texts={"INSTRUMENT_FLAG": "Lipaemic sample."})
    assert evaluate(result("30", instrument_flags=("Samp.S",)), METHOD, policy=policy).gates == ("INSTRUMENT_FLAG",)
    assert not evaluate(result("30", instrument_flags=("W1",)), METHOD, policy=policy).hold
    flagged = evaluate(result("30", instrument_flags=("Lip",)), METHOD, policy=policy)
    assert not flagged.hold and "Lipaemic sample." in flagged.notes and flagged.flagged_gates == ("INSTRUMENT_FLAG",)
    assert evaluate(result("30", instrument_flags=("Lip", "E")), METHOD, policy=policy).hold


def test_suspension_scope() -> None:
    """A suspension of one analyzer or method holds only its results."""
    for suspension, held in ((Suspension(analyzer="c501"), True), (Suspension(analyzer="other"), False),
                             (Suspension(method="ALT-G"), True), (Suspension(method="X"), False),
                             (Suspension(), True)):
        evaluation = evaluate(result("30"), METHOD, policy=GatePolicy(suspensions=(suspension,)))
        assert evaluation.hold is held, suspension
        assert ("AUTOVERIFY_SUSPENDED" in evaluation.gates) is held
    # The kill switch cannot be set to "flag".
    method = replace(METHOD, gates=(("AUTOVERIFY_SUSPENDED", "flag"),))
    assert evaluate(result("30"), method, policy=GatePolicy(suspensions=(Suspension(),))).hold


def test_widest_band_is_an_opt_in_and_never_grades() -> None:
    """DEMOG_INCOMPLETE set to flag: the widest band applies with the NTE; no ULN multiple from it."""
    method = replace(METHOD, gates=(("DEMOG_INCOMPLETE", "flag"),), ranges=METHOD.ranges[:2])
    evaluation = evaluate(result("45", sex=""), method)
    assert not evaluation.hold and evaluation.flags == ("H",) and evaluation.applied_range == "0-41"
    assert not any("x ULN" in note for note in evaluation.notes)
    assert ("grading", "not graded") in [(d.rule, d.outcome) for d in evaluation.decisions]


def test_rules_version_is_stamped() -> None:
    assert evaluate(result("30"), METHOD, rules_version="abc").rules_version == "abc"


def test_instrument_comments_travel_as_notes() -> None:
    evaluation = evaluate(result("30", comments=("sample short",)), METHOD)
    assert evaluation.notes[0] == "instrument comment: sample short"


def test_alert_limit_gives_a_note_never_hh() -> None:
    method = replace(METHOD, critical_high=None, alert_high=Decimal(500), measuring_high=None)
    evaluation = evaluate(result("600"), method)
    assert evaluation.flags == ("H",) and "at or above alert limit 500 (not a critical value)" in evaluation.notes


# --- range configuration checks -----------------------------------------------------------------------
def rule(sex: str | None = None, age_min: str | None = None, age_max: str | None = None, **kw: Any) -> RangeRule:
    return RangeRule(low=Decimal(1), high=Decimal(2), sex=sex, age_min=parse_age(age_min) if age_min else None,
                     age_max=parse_age(age_max) if age_max else None, **kw)


@pytest.mark.parametrize(
    ("ranges", "pairs"),
    [
        ((rule("M", "18y"), rule("F", "18y")), []),
        ((rule("M", "18y"), rule(None, "18y")), []),  # narrower in sex, same ages
        ((rule("M", "18y"), rule("M", "40y")), []),  # narrower in age
        ((rule("M", "18y"), rule("M", "18y")), [(0, 1)]),  # the same partition twice
        ((rule("M", "18y"), rule(None, "10y", "30y")), [(0, 1)]),  # neither narrower in both
        ((rule(None, None, "1y"), rule(None, "1y", "13y")), []),  # adjacent, half-open
        ((rule("M", "18y"), rule("M", "18y", status="disabled")), []),
    ],
)
def test_ambiguous_pairs(ranges: tuple[RangeRule, ...], pairs: list[tuple[int, int]]) -> None:
    assert ambiguous_pairs(replace(METHOD, ranges=ranges)) == pairs


def test_coverage_gaps_name_sex_and_ages() -> None:
    method = replace(METHOD, ranges=(rule(None, None, "13y"), rule("M", "20y"), rule("F", "13y")))
    assert coverage_gaps(method) == ["ALT-G: no range for sex M aged 13y to <20y"]
    assert coverage_gaps(replace(method, ranges=())) == ["ALT-G: no range for sex M aged birth to 120y",
                                                         "ALT-G: no range for sex F aged birth to 120y"]


def doc(**method: Any) -> dict[str, Any]:
    base = {"analyte": "ALT", "units": "U/L", "ranges": [{"sex": "M", "age_min": "18y", "low": 9, "high": 59}]}
    return {"methods": {"A": {**base, **method}}}


@pytest.mark.parametrize(
    ("document", "key", "text"),
    [
        (doc(ranges=[{"sex": "M", "low": 1, "high": 2}, {"sex": "M", "low": 1, "high": 3}]), "methods.A.ranges[1]",
         "ambiguous: ranges[0] (M all ages 1-2) and ranges[1] (M all ages 1-3)"),
        (doc(ranges=[{"age_min": "20y", "age_max": "10y", "low": 1, "high": 2}]), "methods.A.ranges[0].age_min",
         "age_min 20y must be below age_max 10y"),
        (doc(gates={"NOPE": "hold"}), "methods.A.gates.NOPE", "unknown gate"),
        (doc(gates={"ABSURD": "maybe"}), "methods.A.gates.ABSURD", "expected one of hold, flag"),
        ({**doc(), "analyzers": {"x": {"protocol": "astm", "transport": "tcp-server", "listen": "127.0.0.1:1",
                                       "flags": {"E": {"action": "drop"}}}}}, "analyzers.x.flags.E.action",
         "expected one of hold, flag, ignore"),
        ({**doc(), "autoverify": {"texts": {"NOPE": "x"}}}, "autoverify.texts.NOPE", "unknown gate"),
    ],
)
def test_config_refuses_misleading_rules(document: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(document, Path("lab.toml"))
    assert key in str(info.value) and text in str(info.value)

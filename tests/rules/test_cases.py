"""Tests for labmw.rules.cases: reading a cases file, checking it, and measuring rule coverage."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from labmw.errors import RuleError
from labmw.model import Method, RangeRule
from labmw.rules.age import parse_age
from labmw.rules.cases import check_cases, load_cases, method_rules
from labmw.rules.gates import GATE_NAMES

NOW = datetime(2026, 3, 1, 8, 0)
METHOD = Method(
    name="ALT-T", analyte="ALT", units="U/L", critical_high=Decimal(1000),
    ranges=(RangeRule(low=Decimal(9), high=Decimal(59), sex="M", age_min=parse_age("18y")),
            RangeRule(low=Decimal(8), high=Decimal(41), sex="F", age_min=parse_age("18y"))),
)
METHODS = {"ALT-T": METHOD}


def case(**changes: Any) -> dict[str, Any]:
    """A passing case (ALT-T man, 61 U/L -> H) with ``changes`` applied."""
    base: dict[str, Any] = {"name": "man 61", "method": "ALT-T", "sex": "M", "age": "45y", "value": "61",
                            "flags": ["H"], "hold": False}
    return {**base, **changes}


def run(*cases: dict[str, Any]):  # noqa: ANN201
    """Load and check the given cases against ALT-T."""
    return check_cases(METHODS, load_cases({"cases": list(cases)}, now=NOW))


def test_a_matching_case_passes() -> None:
    """Flags, hold, range, notes and decisions that match give no mismatch."""
    report = run(case(range="9-59", decisions={"reference_range": "H"}, notes=[], absent_notes=["ULN 41"]))
    assert report.failed == () and report.ok(require_coverage=False)


@pytest.mark.parametrize(
    ("changes", "mismatch"),
    [({"flags": []}, "flags: expected none, got H"),
     ({"hold": True}, "hold: expected hold, got no hold"),
     ({"range": "8-41"}, "range: expected 8-41, got 9-59"),
     ({"notes": ["grade 4"]}, "notes: none contains 'grade 4'"),
     ({"absent_notes": ["x ULN"]}, "notes: one contains 'x ULN', expected none to"),
     ({"decisions": {"critical": "HH"}}, "decision critical: expected 'HH', got not critical")],
)
def test_each_kind_of_mismatch_is_reported(changes: dict[str, Any], mismatch: str) -> None:
    """Every expectation that differs is named with what was expected and what came out."""
    report = run(case(**changes))
    assert report.failed[0].mismatches == (mismatch,)
    assert not report.ok(require_coverage=False)
    assert report.lines()[0] == f"FAIL  man 61: {mismatch}"


def test_coverage_comes_from_what_cases_did() -> None:
    """A rule counts as covered only by a case where it fired and one where it was judged and did not."""
    report = run(case(), case(name="man 57", value="57", flags=[]))
    assert len(method_rules(METHOD)) == 3
    assert report.rules == 3 + len(GATE_NAMES)  # every gate is a rule too, covered once for all methods
    assert _method_gaps(report) == (
        "ALT-T reference_range F 18y+: no positive and no negative case",
        "ALT-T critical: no positive case",
    )
    assert report.ok(require_coverage=False) and not report.ok(require_coverage=True)


def test_coverage_complete() -> None:
    """With both kinds of case for every rule there are no gaps."""
    report = run(case(), case(name="m57", value="57", flags=[]), case(name="f43", sex="F", value="43"),
                 case(name="f39", sex="F", value="39", flags=[]), case(name="hh", value="1000", flags=["HH"]))
    assert _method_gaps(report) == ()


def _method_gaps(report: Any) -> tuple[str, ...]:
    return tuple(g for g in report.gaps if not g.startswith("gate "))


def test_every_gate_needs_a_positive_and_a_negative_case() -> None:
    """Gates are rules of rules check: ordinary cases only pass them, so each lacks a positive case."""
    report = run(case(), case(name="man 57", value="57", flags=[]))
    gate_gaps = [g for g in report.gaps if g.startswith("gate ")]
    # ALT-T has no measuring range: NEEDS_DILUTION is never judged for it; the QC gates are judged
    # only where a case names the QC state of its analyzer x method.
    unjudged = ("NEEDS_DILUTION", "QC_FAILED", "QC_EXPIRED")
    assert gate_gaps == [f"gate {name}: no positive {'and no negative ' if name in unjudged else ''}case"
                         for name in GATE_NAMES]
    held = run(case(), case(name="suspended", suspended=True, flags=["H"], hold=True, gates=["AUTOVERIFY_SUSPENDED"]),
               case(name="unmapped", method="", test_code="XYZ", flags=[], hold=True, gates=["METHOD_UNKNOWN"]),
               case(name="bad flag", instrument_flags=["E"], hold=True, gates=["INSTRUMENT_FLAG"]),
               case(name="prelim", status="P", flags=[], hold=True, gates=["RESULT_STATUS"]),
               case(name="units", units="mmol/L", flags=[], hold=True, gates=["UNIT_UNKNOWN"]),
               case(name="dashes", value="-----", flags=[], hold=True, gates=["ABSURD"]),
               case(name="no sex", sex="", hold=True, gates=["DEMOG_INCOMPLETE"]),
               case(name="child", age="10y", flags=[], hold=True, gates=["NO_RANGE"]),
               case(name="qc failed", qc="QC_FAILED", flags=["H"], hold=True, gates=["QC_FAILED"]),
               case(name="qc expired", qc="QC_EXPIRED", flags=["H"], hold=True, gates=["QC_EXPIRED"]),
               case(name="qc ok", qc="ok"))
    assert held.failed == ()
    assert [g for g in held.gaps if g.startswith("gate ")] == [
        "gate NEEDS_DILUTION: no positive and no negative case",  # ALT-T has no measuring range
        "gate RANGE_UNAPPROVED: no positive case"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [({}, "at least one"),
     ({"cases": [case(flags="H")]}, r"cases\[0\].flags: required"),
     ({"cases": [case(hold="no")]}, r"cases\[0\].hold: required"),
     ({"cases": [case(colour="red")]}, r"cases\[0\].colour: unknown key"),
     ({"cases": [{k: v for k, v in case().items() if k != "method"}]}, r"cases\[0\].method: required"),
     ({"cases": [case(value=61)]}, r"cases\[0\].value: expected a string"),
     ({"cases": [case(decisions=["H"])]}, r"cases\[0\].decisions"),
     ({"cases": [case()], "extra": 1}, "extra: unknown key"),
     ({"at": "soon", "cases": [case()]}, "at: expected an ISO date-time")],
)
def test_bad_case_files_name_the_key(doc: dict[str, Any], message: str) -> None:
    """A malformed cases file raises RuleError naming the key and what is expected."""
    with pytest.raises(RuleError, match=message):
        load_cases(doc, now=NOW)


def test_a_case_with_an_unknown_method_names_the_case() -> None:
    """Running a case whose method is not configured names the case and the configured methods."""
    with pytest.raises(RuleError, match=r"case 'man 61': unknown method 'ALT-X' \(configured: ALT-T\)"):
        run(case(method="ALT-X"))


def test_file_level_at_sets_the_collection_time() -> None:
    """``at`` at the top of the file is every case's collection time unless the case sets its own."""
    cases = load_cases({"at": "2026-01-15T08:00", "cases": [case(), case(at="2026-02-01T00:00")]}, now=NOW)
    assert [c.scenario.at for c in cases] == [datetime(2026, 1, 15, 8, 0), datetime(2026, 2, 1)]

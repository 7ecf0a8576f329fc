"""The shipped ALT method library: what `labmw init` writes, what config/labmw.toml carries, and the
shipped rule cases run against it."""

from __future__ import annotations

import re
import tomllib
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from labmw.config import Settings, parse
from labmw.config_edit import shipped_library
from labmw.model import Method
from labmw.rules.gates import GATE_NAMES
from labmw.rules.cases import check_cases, load_cases, method_rules
from labmw.rules.scenario import Scenario, run_scenario

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 1, 8, 0)


def library() -> Settings:
    """The shipped library, parsed as `labmw init` would."""
    return parse(tomllib.loads(shipped_library()), ROOT / "labmw" / "data" / "methods.toml")


METHODS = library().methods


def test_shipped_config_carries_the_same_methods_as_the_library() -> None:
    """config/labmw.toml has exactly the methods of labmw/data/methods.toml, number for number."""
    shipped = parse(tomllib.loads((ROOT / "config" / "labmw.toml").read_text(encoding="utf-8")),
                    ROOT / "config" / "labmw.toml")
    assert dict(shipped.methods) == dict(METHODS)


def test_library_has_the_methods_of_the_clinical_table() -> None:
    """P5P, no-P5P and the vendor-specific methods of CLINICAL.md 1.4, with their LOINC codes."""
    assert {name: m.loinc for name, m in METHODS.items()} == {
        "ALT-P5P": "1743-4", "ALT-NOP5P": "1744-2", "ALT-SIEMENS-ADVIA": "1742-6",
        "ALT-BECKMAN-AU": "1744-2", "ALT-VITROS": "1743-4",
    }


@pytest.mark.parametrize(
    ("method", "sex", "flagged", "not_flagged"),
    [("ALT-P5P", "M", "61", "57"), ("ALT-P5P", "F", "43", "39"),
     ("ALT-NOP5P", "M", "44", "39"), ("ALT-NOP5P", "F", "35", "31")],
)
def test_adult_alt_is_flagged_per_sex_as_the_sources_say(method: str, sex: str, flagged: str, not_flagged: str) -> None:
    """Issue 4's acceptance: Ceriotti 2010 (P5P) and Roche ALTL (no P5P) adult limits per sex."""
    def flags(value: str) -> tuple[str, ...]:
        return run_scenario(METHODS, Scenario(method=method, value=value, at=NOW, sex=sex, age="45y")).flags

    assert flags(flagged) == ("H",)
    assert flags(not_flagged) == ()


def test_verify_rows_ship_pending_review_and_thresholds_ship_off() -> None:
    """[VERIFY]/Review rows are 'pending review'; every decision threshold is present and disabled."""
    vitros, beckman = METHODS["ALT-VITROS"], METHODS["ALT-BECKMAN-AU"]
    assert vitros.status == beckman.status == "pending review"
    assert all(r.status == "pending review" for r in vitros.ranges + beckman.ranges)
    for method in METHODS.values():
        pediatric = [r for r in method.ranges if r.age_max is not None and r.status != "disabled"]
        assert len(pediatric) == 4 and all(r.status == "pending review" for r in pediatric)
        names = {t.name for t in method.thresholds}
        assert {"ACG 2017", "Prati 2002", "SAFETY 2010"} <= names
        assert not any(t.enabled for t in method.thresholds)
    assert "Valenti 2021" in {t.name for t in METHODS["ALT-P5P"].thresholds}


def test_alt_methods_ship_the_tiers_grading_units_and_hys_law() -> None:
    """Every ALT method has the 3.5 tiers (7-day window), CTCAE v5.0, ukat/L and the Hy's-law note."""
    for method in METHODS.values():
        assert method.alt_delta is not None and method.delta is None
        assert method.delta_window_days == Decimal(7)
        assert method.alt_delta.implausible_fall is not None
        # Sherman 2022: 34.6 h clearance in 91,086 patients (#11 item 9); 47 h held plausible falls.
        assert method.alt_delta.implausible_fall.half_life_hours == Decimal("34.6")
        assert method.grading is not None and method.grading.scheme == "CTCAE v5.0"
        assert {c.units for c in method.conversions} == {"ukat/L", "IU/L"}
        assert method.hys_law is not None and method.hys_law.enabled
        assert method.critical_high == Decimal(1000)


def test_every_number_in_the_library_has_its_source_beside_it() -> None:
    """No line that sets a number (or an array element) lacks a comment."""
    for number, line in enumerate(shipped_library().splitlines(), start=1):
        code = line.split("#", 1)[0]
        sets_number = re.fullmatch(r"\s*[\w_]+\s*=\s*[-+]?[\d.]+\s*", code) or re.fullmatch(r"\s*[\d.]+,\s*", code)
        if sets_number:
            assert "#" in line, f"methods.toml line {number} has a number without its source: {line!r}"


def test_method_json_shows_the_new_fields() -> None:
    """`method list --json` carries status, thresholds, tiers, grading, conversions, Hy's law."""
    from labmw.cli.config_cmd import method_json

    shown = method_json(METHODS["ALT-P5P"])
    assert shown["status"] == "active" and shown["delta_window_days"] == "7"
    assert shown["alt_delta"]["implausible_fall"]["half_life_hours"] == "34.6"
    assert shown["grading"]["above_uln"] == ["1", "3", "5", "20"]
    assert {"ACG 2017", "Valenti 2021"} <= {t["name"] for t in shown["thresholds"]}
    assert shown["hys_law"]["bilirubin"] == ["TBIL"]
    assert {r["status"] for r in shown["ranges"]} == {"active", "pending review", "disabled"}


def test_shipped_cases_pass_and_cover_every_shipped_rule() -> None:
    """config/cases/alt.toml passes against the library, each rule with a positive and a negative case."""
    doc = tomllib.loads((ROOT / "config" / "cases" / "alt.toml").read_text(encoding="utf-8"))
    report = check_cases(METHODS, load_cases(doc, now=NOW))
    assert [f"{r.case.name}: {r.mismatches}" for r in report.failed] == []
    assert report.gaps == ()
    assert report.rules == sum(len(method_rules(m)) for m in METHODS.values()) + len(GATE_NAMES)
    assert {c.scenario.method for c in load_cases(doc, now=NOW)} - {""} == set(METHODS)


def test_shipped_cases_catch_a_changed_limit() -> None:
    """Moving one Ceriotti limit makes the shipped cases fail: they test the numbers, not themselves."""
    doc = tomllib.loads((ROOT / "config" / "cases" / "alt.toml").read_text(encoding="utf-8"))
    p5p: Method = METHODS["ALT-P5P"]
    from dataclasses import replace

    moved = replace(p5p, ranges=(replace(p5p.ranges[0], high=Decimal(62)),) + p5p.ranges[1:])
    report = check_cases({**METHODS, "ALT-P5P": moved}, load_cases(doc, now=NOW))
    assert any("61 is above 59" in r.case.name for r in report.failed)

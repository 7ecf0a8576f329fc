"""`labmw rules test` and `labmw rules check` through Typer's CliRunner, on a config made by `labmw init`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labmw.cli import app, rules_cmd

# The lead wires rules_cmd into labmw.cli; until then (and harmlessly after) register it here once.
if not any(group.name == "rules" for group in app.registered_groups):
    rules_cmd.register(app)

runner = CliRunner()
CASES = Path(__file__).resolve().parents[2] / "config" / "cases" / "alt.toml"


def invoke(config: Path, *args: str):  # noqa: ANN201
    return runner.invoke(app, ["--config", str(config), *args])


@pytest.fixture(name="config", scope="module")
def _config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `labmw init` config shared by the read-only tests of this module."""
    tmp = tmp_path_factory.mktemp("rules")
    path = tmp / "lab.toml"
    result = invoke(path, "init", "--data-dir", str(tmp / "data"))
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("command", [["rules"], ["rules", "test"], ["rules", "check"]])
def test_help(command: list[str]) -> None:
    """`--help` works for the group and both commands."""
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_shipped_cases_pass_against_the_init_config(config: Path) -> None:
    """`rules check config/cases/alt.toml` passes on what `labmw init` writes, every rule covered."""
    result = invoke(config, "rules", "check", str(CASES), "--require-coverage")
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output
    assert "has a positive and a negative case" in result.output


def test_a_mismatching_case_file_exits_non_zero(config: Path, tmp_path: Path) -> None:
    """A case that expects the wrong flag fails, names the case and the difference, exits 1."""
    cases = tmp_path / "bad.toml"
    cases.write_text('[[cases]]\nname = "man 61 expected normal"\nmethod = "ALT-P5P"\nsex = "M"\nage = "45y"\n'
                     'value = "61"\nflags = []\nhold = false\n')
    result = invoke(config, "rules", "check", str(cases))
    assert result.exit_code == 1
    assert "FAIL  man 61 expected normal: flags: expected none, got H" in result.output
    assert "1 cases: 0 passed, 1 failed" in result.output


def test_coverage_gaps_fail_only_when_required(config: Path, tmp_path: Path) -> None:
    """One passing case leaves gaps: reported always, an error only with --require-coverage."""
    cases = tmp_path / "one.toml"
    cases.write_text('[[cases]]\nmethod = "ALT-P5P"\nsex = "M"\nage = "45y"\nvalue = "61"\nflags = ["H"]\n'
                     'hold = false\n')
    assert invoke(config, "rules", "check", str(cases)).exit_code == 0
    result = invoke(config, "rules", "check", str(cases), "--require-coverage")
    assert result.exit_code == 1 and "ALT-P5P alt_delta.abrupt_rise: no positive and no negative case" in result.output


@pytest.mark.parametrize(
    ("method", "sex", "high", "normal"),
    [("ALT-P5P", "M", "61", "57"), ("ALT-P5P", "F", "43", "39"),
     ("ALT-NOP5P", "M", "44", "39"), ("ALT-NOP5P", "F", "35", "31")],
)
def test_rules_test_flags_adult_alt_per_sex(config: Path, method: str, sex: str, high: str, normal: str) -> None:
    """Issue 4's acceptance numbers through `rules test`."""
    flagged = invoke(config, "rules", "test", "--method", method, "--value", high, "--sex", sex, "--age", "45y")
    assert flagged.exit_code == 0, flagged.output
    assert "flags: H\n" in flagged.output and "hold: no\n" in flagged.output
    plain = invoke(config, "rules", "test", "--method", method, "--value", normal, "--sex", sex, "--age", "45y")
    assert "flags: none\n" in plain.output


def test_rules_test_prints_hold_and_every_reason(config: Path) -> None:
    """800 -> 150 in 12 h: hold, D, and the reasons of every rule judged."""
    result = invoke(config, "rules", "test", "--method", "ALT-P5P", "--value", "150", "--sex", "F", "--age", "45y",
                    "--previous", "800@12h", "--at", "2026-11-22T08:00")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == ["method: ALT-P5P", "flags: H D", "hold: yes", "applied range: 8-41"]
    assert "  delta hold (ALT implausible fall): 150 vs 800 U/L at 2026-11-21 20:00, -650 U/L (-81.3%) in 12 h; " \
           "clearance with a 34.6 h half-life leaves at least 629.1 U/L, hold below 314.5 U/L: check the specimen's " \
           "identity" in lines
    for rule in ("reference_range: H", "critical: not critical", "grading: grade 2", "alt_delta.significant_change: D",
                 "alt_delta.implausible_fall: hold", "alt_delta.abrupt_rise: not fired", "hys_law: not a candidate"):
        assert any(line.startswith(f"  {rule}") for line in lines), rule


def test_rules_test_json(config: Path) -> None:
    """--json prints one object with flags, hold, applied range, notes and decisions."""
    result = invoke(config, "rules", "test", "--method", "ALT-P5P", "--value", "1.02", "--units", "ukat/L",
                    "--sex", "M", "--age", "45y", "--json")
    shown = json.loads(result.output)
    assert shown["flags"] == ["H"] and shown["hold"] is False and shown["applied_range"] == "0.15-0.99"
    assert shown["gates"] == [] and len(shown["rules_version"]) == 16
    assert [d for d in shown["decisions"] if not d["rule"].startswith("gate.")][0] == {
                                     "rule": "units", "outcome": "converted",
                                     "inputs": {"units": "ukat/L", "method_units": "U/L", "factor": "60",
                                                "value": "61.20"}}


def test_missing_demographics_are_explained(config: Path) -> None:
    """No sex, no age: the widest band applies and the output says why."""
    result = invoke(config, "rules", "test", "--method", "ALT-P5P", "--value", "61")
    assert "applied range: 5-59" in result.output
    assert "incomplete demographics: sex not sent and birth date not sent" in result.output


def test_flag_only_simple_delta_adds_u(tmp_path: Path) -> None:
    """`delta set --action flag` on a lab's own method: a rise adds U; with --action hold it holds."""
    config = tmp_path / "lab.toml"
    assert invoke(config, "init", "--data-dir", str(tmp_path / "data")).exit_code == 0
    for args in (["method", "add", "ALT-T", "--analyte", "ALT", "--units", "U/L"],
                 ["range", "add", "ALT-T", "--sex", "M", "--age-min", "18y", "--low", "9", "--high", "59"],
                 ["delta", "set", "ALT-T", "--abs", "20", "--pct", "50", "--action", "flag"]):
        assert invoke(config, *args).exit_code == 0
    test = ["rules", "test", "--method", "ALT-T", "--value", "85", "--sex", "M", "--age", "45y",
            "--previous", "40@2d", "--at", "2026-11-22T08:00"]
    result = invoke(config, *test)
    assert "flags: H U\n" in result.output and "hold: no\n" in result.output
    assert "  delta: 85 vs 40 at 2026-11-20 08:00 (+45, +112.5%)" in result.output
    assert invoke(config, "delta", "set", "ALT-T", "--abs", "20", "--action", "hold").exit_code == 0
    held = invoke(config, *test)
    assert "flags: H\n" in held.output and "hold: yes\n" in held.output


def test_shipped_library_edits_validate_and_the_cases_notice_them(tmp_path: Path) -> None:
    """`range add` and `delta set` on a shipped method keep the file valid; the shipped cases then fail."""
    config = tmp_path / "lab.toml"
    assert invoke(config, "init", "--data-dir", str(tmp_path / "data")).exit_code == 0
    assert invoke(config, "range", "add", "ALT-P5P", "--sex", "M", "--age-min", "66y", "--low", "9",
                  "--high", "50").exit_code == 0
    assert invoke(config, "delta", "set", "ALT-P5P", "--abs", "30").exit_code == 0
    shown = json.loads(invoke(config, "method", "show", "ALT-P5P").output)
    assert shown["delta"]["abs"] == "30" and shown["alt_delta"]["window_days"] == "7"
    assert ("M", "66y", "9", "50") in {(r["sex"], r["age_min"], r["low"], r["high"]) for r in shown["ranges"]}
    # The added simple delta flags 10 -> 59 (change 49 >= 30), which the ALT tiers deliberately do not.
    checked = invoke(config, "rules", "check", str(CASES))
    assert checked.exit_code == 1
    assert "FAIL  ALT-P5P tier 1: 10 -> 59, both within the ULN, never fires: flags: expected none, got U" in (
        checked.output)


def test_method_list_json_has_the_issue_4_fields(config: Path) -> None:
    """One object per method with name, analyte, loinc, units, measuring range, critical limits, ranges."""
    methods = json.loads(invoke(config, "method", "list", "--json").output)
    assert [m["name"] for m in methods] == ["ALT-P5P", "ALT-NOP5P", "ALT-SIEMENS-ADVIA", "ALT-BECKMAN-AU",
                                            "ALT-VITROS"]
    for m in methods:
        assert {"name", "analyte", "loinc", "units", "measuring_range", "critical_low", "critical_high", "ranges",
                "status", "thresholds", "alt_delta", "grading", "conversions", "hys_law"} <= m.keys()
    by_name = {m["name"]: m for m in methods}
    assert by_name["ALT-NOP5P"]["measuring_range"] == "5-700"
    assert by_name["ALT-VITROS"]["status"] == "pending review"


MISTAKES = [
    (["rules", "test", "--method", "ALT", "--value", "61"], "unknown method 'ALT'"),
    (["rules", "test", "--method", "ALT-P5P", "--value", "61", "--age", "forty"], "age 'forty' is not valid"),
    (["rules", "test", "--method", "ALT-P5P", "--value", "61", "--previous", "48"], "VALUE@TIME"),
    (["rules", "test", "--method", "ALT-P5P", "--value", "61", "--at", "today"], "--at"),
    (["rules", "check", "/nonexistent/cases.toml"], "cannot read the cases file"),
]


@pytest.mark.parametrize(("args", "needle"), MISTAKES, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_mistakes_are_one_clear_line(config: Path, args: list[str], needle: str) -> None:
    """Bad input exits 1 with one line naming the problem, no traceback."""
    result = invoke(config, *args)
    assert result.exit_code == 1
    assert needle in result.output and "Traceback" not in result.output


def test_malformed_cases_file_names_file_and_key(config: Path, tmp_path: Path) -> None:
    """A case without flags is refused naming the file and the key."""
    cases = tmp_path / "c.toml"
    cases.write_text('[[cases]]\nmethod = "ALT-P5P"\nvalue = "61"\nhold = false\n')
    result = invoke(config, "rules", "check", str(cases))
    assert result.exit_code == 1 and f"{cases}: cases[0].flags: required" in result.output

"""The #11 commands through CliRunner: kill switch, flag table, rules version, ranges, critical log, report, review show.

Real configuration files and real SQLite stores; results are stored through the real pipeline.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labmw.cli import app
from labmw.config import load
from inline_runner import make_intake
from inline_runner import receive as inline_receive
from labmw.store import Store

runner = CliRunner()

COMMANDS = [
    ["autoverify"], ["autoverify", "suspend"], ["autoverify", "resume"], ["autoverify", "list"],
    ["analyzer", "flag"], ["analyzer", "flag", "set"], ["analyzer", "flag", "list"], ["rules", "version"],
    ["range", "list"], ["range", "remove"], ["range", "approve"], ["range", "set"], ["critical"], ["critical", "list"],
    ["critical", "notify"], ["report"], ["report", "autoverification"], ["review", "show"], ["method", "approve"],
]


def invoke(config: Path, *args: str):
    return runner.invoke(app, ["--config", str(config), *args])


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    assert invoke(path, "init", "--data-dir", str(tmp_path / "data")).exit_code == 0
    result = invoke(path, "analyzer", "add", "c501", "--protocol", "astm", "--transport", "tcp-server",
                    "--listen", "127.0.0.1:5999", "--map", "ALTL=ALT-NOP5P")
    assert result.exit_code == 0, result.output
    return path


def astm(specimen: str, value: str, *, flag: str = "N", birth: str = "19800101") -> bytes:
    return ("\r".join([
        r"H|\^&|||c501^1|||||host|RSUPL^REAL|P|1",
        f"P|1||PAT-{specimen}||DOE^JANE||{birth}|M",
        f"O|1|{specimen}|0^5001^1^^S1^SC|^^^ALTL|R||20261125080000||||N||||1||||||||||F",
        f"R|1|^^^ALTL|{value}|U/L||{flag}||F||^System||20261125090000|P1",
        "L|1|N"]) + "\r").encode()


def receive(config: Path, *messages: bytes) -> None:
    """Store messages through the real pipeline, as the daemon would (fresh settings each time)."""
    settings = load(config)
    store = Store.open(settings.db_path)
    try:
        intake = make_intake(settings, store, settings.analyzers["c501"])
        for text in messages:
            inline_receive(intake, text, "127.0.0.1:1", text=text)
    finally:
        store.close()


def held(config: Path) -> dict[str, dict[str, object]]:
    result = invoke(config, "review", "list", "--json")
    assert result.exit_code == 0, result.output
    return {h["specimen"]: h for h in json.loads(result.output)}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_new_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_suspend_holds_the_next_result_and_resume_releases_the_following(config: Path) -> None:
    """The kill switch lives in the store: the pipeline reads it when it judges (no reload)."""
    receive(config, astm("A1", "30"))
    assert held(config) == {}
    result = invoke(config, "autoverify", "suspend", "--analyzer", "c501", "--reason", "lot 123 suspect")
    assert result.exit_code == 0, result.output
    listed = json.loads(invoke(config, "autoverify", "list", "--json").output)
    assert listed[0]["analyzer"] == "c501" and listed[0]["reason"] == "lot 123 suspect"
    receive(config, astm("A2", "30"))
    assert held(config)["A2"]["gates"] == ["AUTOVERIFY_SUSPENDED"]
    assert "lot 123 suspect" in str(held(config)["A2"]["reason"])
    # Resume names the scope it suspended; another scope is refused with a clear message.
    wrong = invoke(config, "autoverify", "resume", "--reason", "ok")
    assert wrong.exit_code != 0 and "no active suspension for all analyzers and methods" in wrong.output
    assert invoke(config, "autoverify", "resume", "--analyzer", "c501", "--reason", "lot cleared").exit_code == 0
    receive(config, astm("A3", "30"))
    assert set(held(config)) == {"A2"}
    events = [e["event"] for e in json.loads(invoke(config, "audit", "list", "--json").output)]
    assert "autoverify_suspended" in events and "autoverify_resumed" in events


def test_suspend_refuses_an_unknown_analyzer_and_an_empty_reason(config: Path) -> None:
    assert "no analyzer 'x'" in invoke(config, "autoverify", "suspend", "--analyzer", "x", "--reason", "r").output
    assert invoke(config, "autoverify", "suspend", "--reason", " ").exit_code != 0


def test_flag_table_decides_what_an_instrument_flag_does(config: Path) -> None:
    """Samp.S holds by default; set to ignore it passes; set to flag it goes out with the reviewed NTE."""
    receive(config, astm("F1", "30", flag="Samp.S"))
    assert held(config)["F1"]["gates"] == ["INSTRUMENT_FLAG"]
    before = invoke(config, "rules", "version").output.strip()
    result = invoke(config, "analyzer", "flag", "set", "c501", "Samp.S", "--action", "ignore",
                    "--comment", "sample short is re-checked by the analyzer")
    assert result.exit_code == 0, result.output
    assert invoke(config, "rules", "version").output.strip() != before, "a flag table is part of the rules"
    shown = json.loads(invoke(config, "analyzer", "flag", "list", "c501", "--json").output)
    assert shown == [{"flag": "Samp.S", "action": "ignore", "comment": "sample short is re-checked by the analyzer"}]
    shown_analyzer = json.loads(invoke(config, "analyzer", "list", "--json").output)[0]
    assert shown_analyzer["flags"]["Samp.S"]["action"] == "ignore" and shown_analyzer["unmapped"] == "hold"
    receive(config, astm("F2", "30", flag="Samp.S"))
    assert "F2" not in held(config)
    assert invoke(config, "analyzer", "flag", "set", "c501", "E", "--action", "maybe").exit_code != 0
    test = invoke(config, "rules", "test", "--method", "ALT-NOP5P", "--value", "30", "--sex", "M", "--age", "45y",
                  "--flag", "E", "--analyzer", "c501")
    assert "hold: yes (gates: INSTRUMENT_FLAG)" in test.output
    changed = json.loads(invoke(config, "audit", "list", "--event", "rules_version_changed", "--json").output)
    assert changed[-1]["data"]["after"] == invoke(config, "rules", "version").output.strip()


def test_rules_test_judges_comparators(config: Path) -> None:
    """`rules test --value ">1500"` on critical-high 1000 prints HH; `<8` on 10-49 prints L."""
    hh = invoke(config, "rules", "test", "--method", "ALT-P5P", "--value", ">1500", "--sex", "M", "--age", "45y")
    assert "flags: HH\n" in hh.output
    low = invoke(config, "rules", "test", "--method", "ALT-SIEMENS-ADVIA", "--value", "<8", "--sex", "M",
                 "--age", "45y")
    assert low.output.startswith("method: ALT-SIEMENS-ADVIA\nflags: L <\n")


def test_range_list_remove_approve_and_gaps(config: Path) -> None:
    ranges = json.loads(invoke(config, "range", "list", "ALT-P5P", "--json").output)
    pending = next(r for r in ranges if r["status"] == "pending review")
    result = invoke(config, "range", "approve", "ALT-P5P", "--id", str(pending["id"]))
    assert result.exit_code == 0 and "approved by" in result.output
    after = json.loads(invoke(config, "range", "list", "ALT-P5P", "--json").output)
    assert after[pending["id"]]["status"] == "active"
    assert "approved_by" in (config.read_text())
    again = invoke(config, "range", "approve", "ALT-P5P", "--id", str(pending["id"]))
    assert again.exit_code != 0 and "not pending review" in again.output
    assert "warning" not in invoke(config, "config", "validate").output
    assert invoke(config, "range", "remove", "ALT-P5P", "--id", str(pending["id"])).exit_code == 0
    warned = invoke(config, "config", "validate").output
    assert f"warning: ALT-P5P: no range for sex M aged {pending['partition'].split(' ')[-1]}" in warned or \
           "warning: ALT-P5P: no range for sex" in warned
    assert invoke(config, "range", "remove", "ALT-P5P", "--id", "99").exit_code != 0


def test_range_add_refuses_ambiguity_and_reversed_ages_and_keeps_numbers_as_typed(config: Path) -> None:
    bad = invoke(config, "range", "add", "ALT-P5P", "--sex", "M", "--age-min", "30y", "--age-max", "20y",
                 "--low", "9", "--high", "59")
    assert bad.exit_code != 0 and "age_min 30y must be below age_max 20y" in bad.output
    # M 18y+ exists; M 40y+ is narrower (fine). Any sex 10y-30y overlaps M 18y+ without being narrower in sex:
    # refused, naming both rows.
    assert invoke(config, "range", "add", "ALT-P5P", "--sex", "M", "--age-min", "40y", "--low", "9",
                  "--high", "60").exit_code == 0
    ambiguous = invoke(config, "range", "add", "ALT-P5P", "--age-min", "10y", "--age-max", "30y",
                       "--low", "9", "--high", "59")
    assert ambiguous.exit_code != 0 and "ambiguous" in ambiguous.output and "ranges[0]" in ambiguous.output
    method = invoke(config, "method", "add", "K", "--analyte", "K", "--units", "mmol/L")
    assert method.exit_code == 0, method.output
    assert invoke(config, "range", "add", "K", "--low", "3.50", "--high", "5.10").exit_code == 0
    test = invoke(config, "rules", "test", "--method", "K", "--value", "4.0")
    assert "applied range: 3.50-5.10" in test.output


def test_critical_values_are_logged_and_notified_with_readback(config: Path) -> None:
    receive(config, astm("C1", "1200"))  # above ALT-NOP5P's 700: held, but HH is detected
    rows = json.loads(invoke(config, "critical", "list", "--json").output)
    assert len(rows) == 1 and rows[0]["flag"] == "HH" and rows[0]["notified_at"] is None
    refused = invoke(config, "critical", "notify", str(rows[0]["id"]), "--to", "Dr Who")
    assert refused.exit_code != 0 and "--readback" in refused.output
    done = invoke(config, "critical", "notify", str(rows[0]["id"]), "--to", "Dr Who", "--readback")
    assert done.exit_code == 0, done.output
    rows = json.loads(invoke(config, "critical", "list", "--json").output)
    assert rows[0]["notified_to"] == "Dr Who" and rows[0]["readback"] and rows[0]["notified_by"]
    twice = invoke(config, "critical", "notify", str(rows[0]["id"]), "--to", "X", "--readback")
    assert twice.exit_code != 0 and "already notified" in twice.output


def test_overdue_critical_raises_one_alert_event(config: Path) -> None:
    receive(config, astm("C2", "1200"))
    store = Store.open(load(config).db_path)
    try:
        later = datetime(2099, 1, 1, tzinfo=UTC)
        assert len(store.alert_overdue_criticals(before=later, now=later)) == 1
        assert len(store.alert_overdue_criticals(before=later, now=later)) == 1  # still overdue, no second alert
    finally:
        store.close()
    events = json.loads(invoke(config, "audit", "list", "--event", "critical_overdue", "--json").output)
    assert len(events) == 1


def test_the_daemon_raises_the_overdue_alert_while_results_flow(config: Path) -> None:
    """Results judged after the deadline raise the alert for an earlier unnotified critical, once."""
    settings = load(config)
    store = Store.open(settings.db_path)
    try:
        now = [datetime(2026, 11, 25, 9, 0, tzinfo=UTC)]
        intake = make_intake(settings, store, settings.analyzers["c501"], clock=lambda: now[0])
        inline_receive(intake, astm("D1", "1200"), "p", text=astm("D1", "1200"))
        now[0] = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # an hour later: past 30 min
        inline_receive(intake, astm("D2", "30"), "p", text=astm("D2", "30"))
        inline_receive(intake, astm("D3", "30"), "p", text=astm("D3", "30"))
    finally:
        store.close()
    events = json.loads(invoke(config, "audit", "list", "--event", "critical_overdue", "--json").output)
    assert [e["specimen"] for e in events] == ["D1"]


def test_review_show_and_report(config: Path) -> None:
    receive(config, astm("R1", "30"), astm("R2", "-----"), astm("R3", "25000"), astm("R4", "30", birth=""))
    rows = held(config)
    assert set(rows) == {"R2", "R3", "R4"}
    shown = json.loads(invoke(config, "review", "show", str(rows["R3"]["id"]), "--json").output)
    assert shown["gates"] == ["NEEDS_DILUTION", "ABSURD"] and "R|1|^^^ALTL|25000" in shown["raw"]
    assert any(d["rule"] == "gate.ABSURD" for d in shown["decisions"]) and len(shown["rules_version"]) == 16
    text = invoke(config, "review", "show", str(rows["R3"]["id"])).output
    assert "for the reviewer:" in text and "ABSURD" in text
    assert invoke(config, "review", "release", str(rows["R2"]["id"]), "--reason", "ok").exit_code == 0
    assert invoke(config, "review", "reject", str(rows["R3"]["id"]), "--reason", "rerun diluted").exit_code == 0
    report = json.loads(invoke(config, "report", "autoverification", "--json").output)
    (row,) = report
    assert (row["method"], row["analyzer"], row["results"], row["autoverified"], row["held"]) == \
        ("ALT-NOP5P", "c501", 4, 1, 3)
    assert row["autoverified_pct"] == 25.0 and row["released"] == 1 and row["rejected"] == 1 and row["waiting"] == 1
    assert row["held_by_gate"] == {"ABSURD": 2, "NEEDS_DILUTION": 1, "DEMOG_INCOMPLETE": 1, "RANGE_UNAPPROVED": 1}
    table = invoke(config, "report", "autoverification").output
    assert "ALT-NOP5P" in table and "25.0%" in table
    empty = json.loads(invoke(config, "report", "autoverification", "--since", "2099-01-01T00:00", "--json").output)
    assert empty == []


def test_range_set_replaces_one_row(config: Path) -> None:
    result = invoke(config, "range", "set", "ALT-P5P", "--id", "0", "--sex", "M", "--age-min", "18y",
                    "--low", "10.0", "--high", "50.0", "--source", "local verification 2026")
    assert result.exit_code == 0, result.output
    row = json.loads(invoke(config, "range", "list", "ALT-P5P", "--json").output)[0]
    assert (row["low"], row["high"], row["source"], row["status"]) == ("10.0", "50.0", "local verification 2026",
                                                                         "active")
    clash = invoke(config, "range", "set", "ALT-P5P", "--id", "0", "--sex", "F", "--age-min", "18y",
                   "--low", "1", "--high", "2")
    assert clash.exit_code != 0 and "ambiguous" in clash.output


def test_a_hand_edit_is_an_audited_rules_change_at_the_next_judgement(config: Path) -> None:
    """The daemon records the rule-set version it judges under; a hand edit shows up with both versions."""
    receive(config, astm("V1", "30"))
    first = invoke(config, "rules", "version").output.strip()
    config.write_text(config.read_text().replace("absurd_high = 20000", "absurd_high = 19000", 1))
    second = invoke(config, "rules", "version").output.strip()
    assert second != first
    receive(config, astm("V2", "30"))
    receive(config, astm("V3", "30"))
    events = json.loads(invoke(config, "audit", "list", "--event", "rules_version_changed", "--json").output)
    assert [(e["data"]["before"], e["data"]["after"]) for e in events][-1] == (first, second)
    assert sum(1 for e in events if e["data"]["after"] == second) == 1, "recorded once, not per result"


def test_method_approve_signs_off_a_pending_method(config: Path) -> None:
    test = ["rules", "test", "--method", "ALT-VITROS", "--value", "30", "--sex", "M", "--age", "45y"]
    assert "RANGE_UNAPPROVED" in invoke(config, *test).output
    assert invoke(config, "method", "approve", "ALT-VITROS").exit_code == 0
    ranges = json.loads(invoke(config, "range", "list", "ALT-VITROS", "--json").output)
    (adult_m,) = [r["id"] for r in ranges if r["partition"] == "M 18y+"]
    assert invoke(config, "range", "approve", "ALT-VITROS", "--id", str(adult_m)).exit_code == 0
    assert "hold: no" in invoke(config, *test).output
    assert invoke(config, "method", "approve", "ALT-VITROS").exit_code != 0

"""`labmw qc ...` through Typer's CliRunner: help, material edits (audited, sources kept), clear errors,
and the run commands against a store the real pipeline filled."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import tomlkit
from inline_runner import make_intake, receive
from typer.testing import CliRunner

from labmw.cli import app
from labmw.config import load
from labmw.store import Store

runner = CliRunner()
QC_COMMANDS = [["qc"], ["qc", "material"], ["qc", "material", "add"], ["qc", "material", "list"],
               ["qc", "material", "remove"], ["qc", "list"], ["qc", "accept"], ["qc", "impact"], ["qc", "chart"]]


def invoke(config: Path, *args: str):
    return runner.invoke(app, ["--config", str(config), *args])


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    return _make(tmp_path)


@pytest.fixture(name="shared_config", scope="module")
def _shared_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One configuration for the tests that only read it (refused edits change nothing)."""
    return _make(tmp_path_factory.mktemp("qc-cli"))


def _make(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    for args in (["init", "--data-dir", str(tmp_path / "data")],
                 ["analyzer", "add", "c501", "--protocol", "astm", "--transport", "tcp-server", "--listen",
                  "127.0.0.1:5001", "--map", "ALTL=ALT-P5P"]):
        result = invoke(path, *args)
        assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("command", QC_COMMANDS, ids=" ".join)
def test_every_qc_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def add(config: Path, name: str = "ALT-L1", *extra: str):
    return invoke(config, "qc", "material", "add", name, "--method", "ALT-P5P", "--level", "1", "--lot", "L4711",
                  "--mean", "50", "--sd", "2.5", "--specimen-id", "QC1", "--analyzer", "c501", *extra)


def test_material_add_list_remove_is_audited_and_keeps_the_source(config: Path) -> None:
    result = add(config, "ALT-L1", "--expires", "2027-03-31", "--source", "Bio-Rad insert lot L4711")
    assert result.exit_code == 0, result.output
    text = config.read_text()
    assert "mean = 50 # source: Bio-Rad insert lot L4711" in text and "sd = 2.5 # source: Bio-Rad" in text
    assert "sigma" in text, "the shipped [qc] comments say how rules are chosen"
    listed = json.loads(invoke(config, "qc", "material", "list", "--json").output)
    assert listed == [{"name": "ALT-L1", "method": "ALT-P5P", "level": 1, "lot": "L4711", "mean": "50", "sd": "2.5",
                       "expires": "2027-03-31", "analyzers": ["c501"], "specimen_ids": ["QC1"],
                       "source": "Bio-Rad insert lot L4711"}]
    assert "ALT-L1" in invoke(config, "qc", "material", "list").output
    assert add(config, "ALT-L2").exit_code == 0
    unsourced = tomlkit.parse(config.read_text())["qc"]["materials"]["ALT-L2"]
    assert "source" not in unsourced and "source: not given" in config.read_text()
    assert invoke(config, "qc", "material", "remove", "ALT-L2").exit_code == 0
    assert list(load(config).qc.materials) == ["ALT-L1"]
    events = json.loads(invoke(config, "audit", "list", "--json").output)
    changes = [(e["data"]["command"], e["data"]["key"]) for e in events if e["event"] == "config_changed"]
    assert changes[-3:] == [("qc material add", "qc.materials.ALT-L1"), ("qc material add", "qc.materials.ALT-L2"),
                            ("qc material remove", "qc.materials.ALT-L2")]
    assert events[-1]["data"]["before"]["lot"] == "L4711" and events[-1]["data"]["after"] is None


@pytest.mark.parametrize(("args", "fragment"), [
    (["--method", "GGT"], "unknown method 'GGT'"),
    (["--sd", "0"], "SD above 0"),
    (["--sd", "two"], "expected a number"),
    (["--level", "0"], "control level 1-9"),
    (["--expires", "31.03.2027"], "YYYY-MM-DD"),
    (["--analyzer", "nope"], "unknown analyzer 'nope'"),
])
def test_material_add_refuses_bad_input_clearly(shared_config: Path, args: list[str], fragment: str) -> None:
    config = shared_config
    base = {"--method": "ALT-P5P", "--level": "1", "--lot": "L1", "--mean": "50", "--sd": "2"}
    base.update({args[0]: args[1]} if args[0] in base else {})
    extra = [] if args[0] in base else args
    flat = [x for kv in base.items() for x in kv]
    result = invoke(config, "qc", "material", "add", "M1", *flat, *extra)
    assert result.exit_code == 1 and fragment in result.output, result.output
    assert "Traceback" not in result.output


def test_duplicate_and_missing_materials(config: Path) -> None:
    assert add(config).exit_code == 0
    again = add(config)
    assert again.exit_code == 1 and "already exists" in again.output
    missing = invoke(config, "qc", "material", "remove", "nope")
    assert missing.exit_code == 1 and "no control material named 'nope'" in missing.output


def test_runs_list_accept_impact_chart(config: Path, tmp_path: Path) -> None:
    assert add(config).exit_code == 0
    settings = load(config)
    store = Store.open(settings.db_path)
    try:
        intake = make_intake(settings, store, settings.analyzers["c501"],
                             clock=lambda: datetime(2026, 11, 25, 9, tzinfo=UTC))
        for n, (specimen, value) in enumerate((("QC1", "51"), ("S1", "40"), ("QC1", "58"))):
            text = (rf"H|\^&|||c501|||||||P|1|2026112509000{n}" "\r"
                    f"P|1||{'P1||||19800101|M' if specimen == 'S1' else ''}\rO|1|{specimen}||^^^ALTL|||20261125080000\r"
                    f"R|1|^^^ALTL|{value}|U/L||N||F\rL|1|N\r").encode()
            assert receive(intake, text, "t").stored
    finally:
        store.close()
    runs = json.loads(invoke(config, "qc", "list", "--json", "--analyzer", "c501", "--method", "ALT-P5P").output)
    assert [(r["status"], r["rules_violated"], r["results"][0]["z"]) for r in runs] == [
        ("accepted", [], "0.40"), ("rejected", ["1-3s"], "3.20")]
    assert json.loads(invoke(config, "qc", "list", "--json", "--since", "2099-01-01").output) == []
    table = invoke(config, "qc", "list").output
    assert "rejected" in table and "1-3s" in table and "z=3.20" in table
    impact = invoke(config, "qc", "impact", str(runs[1]["id"]))
    assert impact.exit_code == 0 and "1 patient result(s)" in impact.output and "S1" in impact.output
    no_reason = invoke(config, "qc", "accept", str(runs[1]["id"]), "--reason", " ")
    assert no_reason.exit_code == 1 and "reason is required" in no_reason.output
    accepted = invoke(config, "qc", "accept", str(runs[1]["id"]), "--reason", "new reagent pack, re-run ok")
    assert accepted.exit_code == 0 and "accepted by override" in accepted.output
    assert json.loads(invoke(config, "qc", "list", "--json").output)[1]["override"]["reason"].startswith("new")
    unknown = invoke(config, "qc", "accept", "99", "--reason", "x")
    assert unknown.exit_code == 1 and "no QC run with id 99" in unknown.output
    out = tmp_path / "lj.svg"
    chart = invoke(config, "qc", "chart", "--analyzer", "c501", "--method", "ALT-P5P", "--out", str(out))
    assert chart.exit_code == 0 and out.read_text().count("<svg") == 1
    bad = invoke(config, "qc", "chart", "--analyzer", "c501", "--method", "ALT-P5P", "--out", str(tmp_path / "x.jpg"))
    assert bad.exit_code == 1 and ".png or .svg" in bad.output
    since = invoke(config, "qc", "list", "--since", "yesterday")
    assert since.exit_code == 1 and "--since" in since.output

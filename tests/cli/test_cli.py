"""The CLI contract of PRODUCT.md, through Typer's CliRunner: help, output shapes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labmw.cli import app

runner = CliRunner()

COMMANDS = [
    [], ["init"], ["config"], ["config", "validate"], ["config", "show"], ["analyzer"], ["analyzer", "add"],
    ["analyzer", "list"], ["analyzer", "show"], ["analyzer", "remove"], ["lis"], ["lis", "set"], ["method"],
    ["method", "add"], ["method", "list"], ["method", "show"], ["range"], ["range", "add"], ["delta"],
    ["delta", "set"], ["run"], ["audit"], ["audit", "list"], ["audit", "verify"], ["audit", "export"],
    ["queue"], ["queue", "list"], ["queue", "retry"], ["status"], ["review"], ["review", "list"],
    ["review", "release"], ["review", "reject"], ["rules"], ["rules", "test"], ["rules", "check"], ["demo"], ["simulate"],
]


def invoke(config: Path, *args: str):  # noqa: ANN201
    return runner.invoke(app, ["--config", str(config), *args])


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    result = invoke(path, "init", "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(command: list[str]) -> None:
    """`--help` works for every command and group."""
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_init_refuses_to_overwrite_without_force(config: Path) -> None:
    """A second init names the file and suggests --force; --force rewrites it."""
    result = invoke(config, "init")
    assert result.exit_code == 1 and "--force" in result.output
    assert invoke(config, "init", "--force").exit_code == 0


def test_method_list_json_has_the_contract_fields(config: Path) -> None:
    """`method list --json` prints one array of objects with name, analyte, loinc, units, ranges."""
    result = invoke(config, "method", "list", "--json")
    methods = json.loads(result.output)
    assert {m["name"] for m in methods} >= {"ALT-P5P", "ALT-NOP5P"}
    for m in methods:
        assert {"name", "analyte", "loinc", "units", "ranges", "measuring_range", "critical_high"} <= m.keys()
    p5p = next(m for m in methods if m["name"] == "ALT-P5P")
    assert p5p["loinc"] == "1743-4"
    assert {(r["sex"], r["low"], r["high"]) for r in p5p["ranges"]} >= {("M", "9", "59"), ("F", "8", "41")}


def test_config_edits_keep_comments_and_are_audited(config: Path) -> None:
    """An edit keeps the file's source comments and adds a config_changed event with before/after."""
    assert invoke(config, "lis", "set", "--connect", "127.0.0.1:2575").exit_code == 0
    assert "Ceriotti 2010" in config.read_text()
    events = json.loads(invoke(config, "audit", "list", "--event", "config_changed", "--json").output)
    assert events[-1]["data"]["before"] is None
    assert events[-1]["data"]["after"] == {"connect": "127.0.0.1:2575"}
    assert events[-1]["actor"]


def test_analyzer_round_trip(config: Path) -> None:
    """analyzer add, list, show and remove work together."""
    assert invoke(config, "analyzer", "add", "c501", "--protocol", "astm", "--transport", "tcp-server",
                  "--listen", "127.0.0.1:5001", "--map", "ALTL=ALT-NOP5P").exit_code == 0
    shown = json.loads(invoke(config, "analyzer", "show", "c501").output)
    assert shown["map"] == {"ALTL": "ALT-NOP5P"} and shown["listen"] == "127.0.0.1:5001"
    assert json.loads(invoke(config, "analyzer", "list", "--json").output)[0]["name"] == "c501"
    assert invoke(config, "analyzer", "remove", "c501").exit_code == 0
    assert json.loads(invoke(config, "analyzer", "list", "--json").output) == []


MISTAKES = [
    (["analyzer", "add", "a", "--protocol", "astm", "--transport", "tcp-server", "--listen", "localhost:http"],
     "--listen"),
    (["analyzer", "add", "a", "--protocol", "astm", "--transport", "tcp-server", "--listen", "127.0.0.1:0"],
     "--listen"),
    (["analyzer", "add", "a", "--protocol", "ftp", "--transport", "tcp-server", "--listen", "127.0.0.1:5001"],
     "--protocol"),
    (["analyzer", "add", "a", "--protocol", "astm", "--transport", "tcp-server", "--listen", "127.0.0.1:5001",
      "--map", "ALTL=NOPE"], "unknown method"),
    (["analyzer", "add", "a", "--protocol", "astm", "--transport", "tcp-server"], "listen"),
    (["range", "add", "ALT-P5P", "--low", "60", "--high", "9"], "below"),
    (["range", "add", "ALT-P5P", "--low", "1", "--high", "9", "--age-min", "eighteen"], "--age-min"),
    (["range", "add", "ALT-P5P", "--low", "1", "--high", "9", "--sex", "X"], "--sex"),
    (["range", "add", "NOPE", "--low", "1", "--high", "9"], "unknown method"),
    (["method", "add", "ALT-P5P", "--analyte", "ALT", "--units", "U/L"], "already exists"),
    (["method", "add", "M2", "--analyte", "ALT", "--units", "U/L", "--measuring-range", "700-5"], "low below"),
    (["method", "add", "M2", "--analyte", "ALT", "--units", "U/L", "--critical-high", "lots"], "number"),
    (["lis", "set", "--connect", "nowhere"], "HOST:PORT"),
    (["delta", "set", "ALT-P5P", "--action", "page"], "--action"),
    (["delta", "set", "ALT-P5P"], "threshold"),
    (["analyzer", "show", "ghost"], "no analyzer"),
    (["queue", "retry"], "--all"),
    (["audit", "list", "--since", "yesterday"], "--since"),
]


@pytest.mark.parametrize(("args", "needle"), MISTAKES, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_mistakes_get_one_clear_line_and_leave_the_file_unchanged(config: Path, args: list[str], needle: str) -> None:
    """A mistake exits non-zero with a clear message, no traceback, and the config file untouched."""
    before = config.read_text()
    result = invoke(config, *args)
    assert result.exit_code != 0
    assert needle in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert config.read_text() == before


def test_missing_required_option_is_a_usage_error(config: Path) -> None:
    """Typer's own usage errors also exit non-zero without a traceback."""
    result = invoke(config, "method", "add", "X", "--units", "U/L")
    assert result.exit_code == 2 and "--analyte" in result.output


def test_unparseable_config_names_the_file(tmp_path: Path) -> None:
    """A file that is not TOML gets one line naming it, not a traceback."""
    path = tmp_path / "bad.toml"
    path.write_text("[service\ndata_dir = 1\n")
    result = invoke(path, "config", "validate")
    assert result.exit_code == 1 and str(path) in result.output and "not valid TOML" in result.output


def test_invalid_value_names_file_key_and_expectation(config: Path) -> None:
    """A wrong value edited by hand is reported with its dotted key and what was expected."""
    config.write_text(config.read_text().replace("retention_years = 10", "retention_years = 2"))
    result = invoke(config, "config", "validate")
    assert result.exit_code == 1
    assert str(config) in result.output and "service.retention_years" in result.output and "at least 6" in result.output


def test_audit_verify_and_export(config: Path) -> None:
    """verify passes on a fresh trail; export writes JSON lines and CSV with hashes."""
    assert "intact" in invoke(config, "audit", "verify").output
    lines = invoke(config, "audit", "export").output.strip().splitlines()
    assert json.loads(lines[0])["event"] == "config_created" and json.loads(lines[0])["hash"]
    csv_out = invoke(config, "audit", "export", "--format", "csv").output
    assert csv_out.startswith("seq,ts,event")


def test_run_hands_the_loaded_settings_to_the_daemon(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`labmw run` loads the config and passes it to daemon.app.serve (patched here, as fastapi-cli does)."""
    import labmw.daemon.app as daemon_app

    seen = {}

    async def fake_serve(settings, **options):  # noqa: ANN001, ANN003, ANN202
        seen["settings"], seen["options"] = settings, options
        return 0

    monkeypatch.setattr(daemon_app, "serve", fake_serve)
    monkeypatch.setattr("labmw.log.configure", lambda **_: None)  # keep the test process's logging as it is
    result = invoke(config, "run")
    assert result.exit_code == 0, result.output
    assert seen["settings"].path == config and "ALT-P5P" in seen["settings"].methods
    assert seen["options"] == {"accept_broken_trail": False}, "the broken-trail override is off unless asked for"

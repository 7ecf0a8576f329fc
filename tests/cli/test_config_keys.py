"""Every table of the configuration refuses unknown keys; delta rules are checked when the file is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from labmw.cli import app
from labmw.config import load
from labmw.config_schema import ANY_KEY, KNOWN_KEYS, check_known_keys
from labmw.errors import ConfigError

runner = CliRunner()
SHIPPED = Path(__file__).resolve().parents[2] / "config" / "labmw.toml"

ANALYZER = """
[analyzers.c501]
protocol = "astm"
transport = "tcp-server"
listen = "0.0.0.0:5001"
{extra}
[analyzers.c501.map]
ALTL = "ALT-T"
"""
LIS = """
[lis]
connect = "127.0.0.1:2575"
{extra}
"""
SERVICE = """
[service]
data_dir = "data"
{extra}
"""
METHOD = """
[methods.ALT-T]
analyte = "ALT"
units = "U/L"
"""


def _write(tmp_path: Path, *parts: str) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text("\n".join(parts))
    return path


@pytest.mark.parametrize(("section", "typo", "key"), [
    (ANALYZER, 'alow = ["10.0.0.9"]', "analyzers.c501.alow"),
    (ANALYZER, 'checksum_polcy = "ignore"', "analyzers.c501.checksum_polcy"),
    (LIS, "ack_timout = 5", "lis.ack_timout"),
    (SERVICE, "retension_years = 20", "service.retension_years"),
    (LIS, '[lis.tls]\nca_flie = "ca.pem"', "lis.tls.ca_flie"),
], ids=["alow", "checksum_polcy", "ack_timout", "retension_years", "lis.tls"])
def test_config_validate_refuses_a_misspelt_key(tmp_path: Path, section: str, typo: str, key: str) -> None:
    """`config validate` exits 1 naming the file, the dotted key and the keys the table accepts."""
    if section is ANALYZER:
        path = _write(tmp_path, METHOD, section.format(extra=typo))
    else:
        path = _write(tmp_path, METHOD, ANALYZER.format(extra=""), section.format(extra=typo))
    result = runner.invoke(app, ["--config", str(path), "config", "validate"])
    assert result.exit_code == 1, result.output
    assert f"{path}: {key}: unknown key (expected one of" in result.output
    correct = {"alow": "allow", "checksum_polcy": "checksum_policy", "ack_timout": "ack_timeout",
               "retension_years": "retention_years", "ca_flie": "ca_file"}[key.rsplit(".", 1)[-1]]
    assert correct in result.output.split("expected one of", 1)[1]
    assert "Traceback" not in result.output


def test_the_correctly_spelt_keys_are_accepted(tmp_path: Path) -> None:
    """The same tables with the right spelling load, and the values are used."""
    path = _write(tmp_path, METHOD, ANALYZER.format(extra='allow = ["10.0.0.9"]\nchecksum_policy = "warn"'),
                  LIS.format(extra="ack_timeout = 5"), SERVICE.format(extra="retention_years = 20"))
    cfg = load(path)
    assert cfg.analyzers["c501"].allow == ("10.0.0.9",) and cfg.analyzers["c501"].checksum_policy == "warn"
    assert cfg.lis is not None and cfg.lis.ack_timeout == 5 and cfg.retention_years == 20


def test_shipped_configuration_has_no_unknown_key() -> None:
    """config/labmw.toml passes the key check (and loads)."""
    load(SHIPPED)


def test_map_keys_are_free_names(tmp_path: Path) -> None:
    """An analyzer's map holds the laboratory's own test codes: any name is a key there."""
    assert KNOWN_KEYS["analyzers.*.map"] is ANY_KEY
    check_known_keys({"analyzers": {"c501": {"protocol": "astm", "map": {"ANY-CODE": "ALT-T"}}}}, tmp_path)


def test_keys_inside_arrays_of_tables_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `[]` pattern checks each table of an array, naming its index."""
    monkeypatch.setitem(KNOWN_KEYS, "things[]", frozenset({"a"}))
    with pytest.raises(ConfigError, match=r"things\[1\]\.b: unknown key \(expected one of a\)"):
        check_known_keys({"things": [{"a": 1}, {"b": 2}]}, tmp_path)


@pytest.mark.parametrize(("delta", "key", "problem"), [
    ("abs = 10\nwindow_days = -3", "methods.ALT-T.delta.window_days", "expected a number above 0, got -3"),
    ("abs = 0", "methods.ALT-T.delta.abs", "expected a number above 0, got 0"),
    ("pct = -20", "methods.ALT-T.delta.pct", "expected a number above 0, got -20"),
    ('action = "hold"', "methods.ALT-T.delta", "expected at least one threshold"),
], ids=["negative-window", "zero-abs", "negative-pct", "no-threshold"])
def test_delta_rules_are_validated_at_load(tmp_path: Path, delta: str, key: str, problem: str) -> None:
    """A delta rule that could never fire, or looks into the future, is refused when the file is read."""
    path = _write(tmp_path, METHOD + "[methods.ALT-T.delta]\n" + delta + "\n")
    result = runner.invoke(app, ["--config", str(path), "config", "validate"])
    assert result.exit_code == 1
    assert f"{path}: {key}: {problem}" in result.output


def test_a_sound_delta_rule_loads(tmp_path: Path) -> None:
    """abs and a positive window load as written."""
    cfg = load(_write(tmp_path, METHOD + "[methods.ALT-T.delta]\nabs = 10\nwindow_days = 3\n"))
    delta = cfg.methods["ALT-T"].delta
    assert delta is not None and delta.abs_change == 10 and delta.window_days == 3

"""`labmw init --store-url/--site`, `audit list --site` and the [store]/[service] keys, through CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_kit import Engine
from typer.testing import CliRunner

from labmw.cli import app
from labmw.config import load

runner = CliRunner()


def invoke(config: Path, *args: str):
    return runner.invoke(app, ["--config", str(config), *args])


def test_init_with_a_store_url_writes_the_site_and_url_and_audits_there(tmp_path: Path, pg_engine: Engine) -> None:
    """The config names the service's URL; the schema owner's URL is used once and not written."""
    config = tmp_path / "north.toml"
    result = invoke(config, "init", "--data-dir", str(tmp_path / "d"), "--site", "north",
                    "--store-url", str(pg_engine.target), "--store-admin-url", pg_engine.owner_url())
    assert result.exit_code == 0, result.output
    cfg = load(config)
    assert cfg.site == "north" and cfg.store_url == pg_engine.target
    assert "labmw_owner" not in config.read_text()
    events = json.loads(invoke(config, "audit", "list", "--site", "north", "--json").stdout)
    assert [e["event"] for e in events] == ["config_created"] and events[0]["data"]["site"] == "north"
    assert json.loads(invoke(config, "audit", "list", "--site", "south", "--json").stdout) == []
    assert invoke(config, "audit", "verify").exit_code == 0


def test_audit_list_site_on_sqlite(tmp_path: Path) -> None:
    """On one SQLite site the filter works the same (the site is in each event's data)."""
    config = tmp_path / "lab.toml"
    assert invoke(config, "init", "--data-dir", str(tmp_path / "d"), "--site", "solo").exit_code == 0
    assert load(config).store_url == "" and load(config).site == "solo"
    assert len(json.loads(invoke(config, "audit", "list", "--site", "solo", "--json").stdout)) == 1
    assert "--site" in runner.invoke(app, ["audit", "list", "--help"]).stdout
    assert "--store-url" in runner.invoke(app, ["init", "--help"]).stdout


@pytest.mark.parametrize(("text", "key", "expected"), [
    ('[store]\nurl = "mysql://x"\n', "store.url", "PostgreSQL URL"),
    ('[store]\nurl = "postgresql://x/y"\npool = 3\n', "store.pool", "unknown key"),
    ('[service]\nsite = "north site"\n', "service.site", "short name"),
])
def test_bad_store_and_site_keys_are_refused_by_name(tmp_path: Path, text: str, key: str, expected: str) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(text)
    result = invoke(config, "config", "validate")
    assert result.exit_code != 0
    assert key in result.output and expected in result.output and "Traceback" not in result.output


def test_an_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    """No database server: a one-line error naming it, password hidden, no traceback."""
    from pg_cluster import free_port

    config = tmp_path / "lab.toml"
    url = f"postgresql://labmw_service:secret@127.0.0.1:{free_port()}/labmw"
    result = invoke(config, "init", "--data-dir", str(tmp_path / "d"), "--store-url", url)
    assert result.exit_code != 0 and "cannot connect" in result.output
    assert "secret" not in result.output and "Traceback" not in result.output
    assert not config.exists(), "a config whose database cannot be reached is not left behind"

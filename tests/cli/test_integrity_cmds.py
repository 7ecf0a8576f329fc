"""`labmw audit head`, `audit verify --expect-head`, `queue retry --now`, `run --accept-broken-trail` and
`queue list` on a row labmw did not write, through Typer's CliRunner (issues #17 and #10)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labmw.cli import app

runner = CliRunner()


def invoke(config: Path, *args: str):
    return runner.invoke(app, ["--config", str(config), *args])


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    result = invoke(path, "init", "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("command", [["audit", "head"], ["queue", "retry"], ["audit", "verify"], ["run"]],
                         ids=" ".join)
def test_help(command: list[str]) -> None:
    """Each command documents its options."""
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    wanted = {"audit head": "--json", "queue retry": "--now", "audit verify": "--expect-head",
              "run": "--accept-broken-trail"}[" ".join(command)]
    assert wanted in result.output


def test_audit_head_prints_seq_and_hash_and_verify_checks_it(config: Path) -> None:
    """The head in text and JSON; --expect-head passes for it and fails for another hash."""
    text = invoke(config, "audit", "head")
    as_json = invoke(config, "audit", "head", "--json")
    assert text.exit_code == 0 and as_json.exit_code == 0
    head = json.loads(as_json.output)
    assert text.output.strip() == f"{head['seq']}:{head['hash']}" and head["seq"] >= 1 and len(head["hash"]) == 64
    ok = invoke(config, "audit", "verify", "--expect-head", text.output.strip())
    assert ok.exit_code == 0 and f"anchor {head['seq']} matches" in ok.output
    other = invoke(config, "audit", "verify", "--expect-head", f"{head['seq']}:{'0' * 64}")
    assert other.exit_code == 1 and f"event {head['seq']} differs from the anchor" in other.output
    ahead = invoke(config, "audit", "verify", "--expect-head", f"{head['seq'] + 5}:{head['hash']}")
    assert ahead.exit_code == 1 and "is missing" in ahead.output


@pytest.mark.parametrize("bad", ["12", "x:abc", "3:" + "g" * 64])
def test_expect_head_rejects_what_is_not_seq_colon_hash(config: Path, bad: str) -> None:
    result = invoke(config, "audit", "verify", "--expect-head", bad)
    assert result.exit_code != 0 and "--expect-head" in result.output and "Traceback" not in result.output


def test_queue_retry_now_is_audited_with_who_asked(config: Path, tmp_path: Path) -> None:
    result = invoke(config, "queue", "retry", "--now")
    assert result.exit_code == 0 and "backoff skipped" in result.output
    events = json.loads(invoke(config, "audit", "list", "--event", "queue_retry_now", "--json").output)
    assert len(events) == 1 and events[0]["actor"]
    assert invoke(config, "queue", "retry").exit_code != 0, "nothing to retry and no --now: a usage error"


def test_queue_list_shows_a_row_labmw_did_not_write_instead_of_failing(config: Path, tmp_path: Path) -> None:
    """An outbox row whose result is gone and whose payload is TEXT is listed, not an internal error."""
    db = tmp_path / "data" / "labmw.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("INSERT INTO outbox (result_id, control_id, payload, state, created_at, updated_at)"
                 " VALUES (42, 'X-1', 'MSH|text', 'pending', 't', 't')")
    conn.commit()
    conn.close()
    table = invoke(config, "queue", "list")
    listed = invoke(config, "queue", "list", "--json")
    assert table.exit_code == 0 and "X-1" in table.output and "internal error" not in table.output
    assert json.loads(listed.output)[0]["control_id"] == "X-1"

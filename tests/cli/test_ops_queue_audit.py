"""`queue list` says when each message was queued and goes next; `queue retry` refuses unknown IDs;
`audit list --limit/--tail`. The queue is filled by the real daemon with the LIS down."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from peers import MllpLis, alt_message, astm_send, configure, daemon, free_port, labmw, wait_until
from typer.testing import CliRunner

from labmw.cli import app
from labmw.config import load
from labmw.store import Store
from labmw.store.sqlite import OutboxEntry

runner = CliRunner()


def _outbox(config: Path) -> list[OutboxEntry]:
    """What the queue holds now, read in-process (polling through the console script would be slow)."""
    store = Store.open(load(config).db_path)
    try:
        return store.outbox()
    finally:
        store.close()


def test_queue_list_shows_queued_at_and_next_attempt_and_retry_refuses_unknown_ids(tmp_path: Path) -> None:
    """LIS down: the head waits for its backoff, the next waits behind it; retry 999 is an error; AE dead-letters."""
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    # Short backoff, so the LIS that comes up is tried again within a second (a hand edit, validated on load).
    config.write_text(config.read_text().replace("[lis]\n", "[lis]\nretry_initial = 0.2\nretry_max = 0.5\n", 1))
    with daemon(config, wait_port=analyzer_port, log=tmp_path / "daemon.log"):
        messages = [alt_message(specimen=s, patient="P1", sex="M", birth="19800101", value="44") for s in ("S1", "S2")]
        astm_send(analyzer_port, messages)

        def failed() -> bool:
            rows = _outbox(config)
            return len(rows) == 2 and rows[0].attempts >= 1
        wait_until(failed, what="a failed delivery attempt")
        head, second = json.loads(labmw(config, "queue", "list", "--json").stdout)
        assert datetime.fromisoformat(head["queued_at"]) <= datetime.fromisoformat(head["next_attempt"])
        assert second["next_attempt"] == f"after {head['id']}"
        table = labmw(config, "queue", "list").stdout
        assert "QUEUED AT" in table.splitlines()[0] and "NEXT ATTEMPT" in table.splitlines()[0]

        refused = labmw(config, "queue", "retry", "999", check=False)
        assert refused.returncode == 1
        assert "no dead letter with ID 999 (dead letters: none; see `labmw queue list`)" in refused.stderr

        lis = MllpLis(lis_port, ack_code="AE").start()
        try:
            wait_until(lambda: all(r.state == "dead" for r in _outbox(config)), timeout=30, what="dead letters")
        finally:
            lis.stop()
        rows = json.loads(labmw(config, "queue", "list", "--json").stdout)
        assert {r["next_attempt"] for r in rows} == {"after queue retry"}
        assert labmw(config, "queue", "retry", str(rows[0]["id"])).stdout.startswith("1 message(s) queued again")
    log = (tmp_path / "daemon.log").read_text()
    assert '"delivery_dead_lettered"' in log, "the log names the event as the audit trail does"
    audited = json.loads(labmw(config, "audit", "list", "--event", "delivery_dead_lettered", "--json").stdout)
    assert len(audited) == 2


def test_audit_list_limit_and_tail(tmp_path: Path) -> None:
    """--limit N is the first N matching events, --tail N the last N; bad values are refused."""
    config = tmp_path / "lab.toml"
    assert runner.invoke(app, ["--config", str(config), "init", "--data-dir", str(tmp_path / "data")]).exit_code == 0
    for port in (2575, 2576, 2577):
        assert runner.invoke(app, ["--config", str(config), "lis", "set", "--connect", f"127.0.0.1:{port}"]).exit_code == 0

    def seqs(*args: str) -> list[int]:
        result = runner.invoke(app, ["--config", str(config), "audit", "list", "--json", *args])
        assert result.exit_code == 0, result.output
        return [e["seq"] for e in json.loads(result.stdout)]

    every = seqs()
    assert len(every) == 4
    assert seqs("--limit", "2") == every[:2] and seqs("--tail", "2") == every[-2:]
    assert seqs("--event", "config_changed", "--tail", "1") == every[-1:]
    for args in (["--limit", "0"], ["--tail", "-1"], ["--limit", "1", "--tail", "1"]):
        result = runner.invoke(app, ["--config", str(config), "audit", "list", *args])
        assert result.exit_code == 1 and "labmw: error: --" in result.output

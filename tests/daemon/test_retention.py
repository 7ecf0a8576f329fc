"""Retention: results the real daemon stored and delivered are purged once older than retention_years,
the trail still verifies, the file gives space back and does not grow from one year's purge to the next.

The clock is the only double: `retention run` is told it is 11 (then 22) years later.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from peers import MllpLis, alt_message, astm_send, configure, daemon, free_port, wait_until
from typer.testing import CliRunner

from labmw.cli import app, retention_cmd
from labmw.config import load

runner = CliRunner()
BATCH = 40


def _fill(config: Path, lis_port: int, analyzer_port: int, first: int) -> None:
    """One batch through the real daemon: BATCH delivered results, plus one held (delta) that must stay."""
    delivered = "SELECT count(*) FROM results WHERE state='delivered'"
    before = _count(config, delivered)
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=analyzer_port):
            messages = [alt_message(specimen=f"S{first + i}", patient=f"P{first + i}", sex="M", birth="19800101",
                                    value="44", collected="20261125080000") for i in range(BATCH)]
            # The same patient twice, 400 after 40: the delta rule holds the second one.
            messages += [alt_message(specimen=f"H{first}a", patient=f"H{first}", sex="M", birth="19800101", value="40"),
                         alt_message(specimen=f"H{first}b", patient=f"H{first}", sex="M", birth="19800101",
                                     value="400", collected="20261125100000")]
            astm_send(analyzer_port, messages)
            wait_until(lambda: len(lis.received) == BATCH + 1, timeout=60, what="every delivery")
            wait_until(lambda: _count(config, delivered) == before + BATCH + 1, what="the deliveries recorded")
    finally:
        lis.stop()


def _count(config: Path, sql: str) -> int:
    with sqlite3.connect(load(config).db_path) as conn:
        return int(conn.execute(sql).fetchone()[0])


def _retention(config: Path, monkeypatch: pytest.MonkeyPatch, years_later: int, *args: str) -> dict:
    later = datetime.now(UTC) + timedelta(days=365.25 * years_later)
    monkeypatch.setattr(retention_cmd, "_now", lambda: later)
    result = runner.invoke(app, ["--config", str(config), "retention", "run", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _size(config: Path) -> int:
    """The database file's size with its WAL written back (what stays on disk)."""
    db = load(config).db_path
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.stat().st_size


def test_purge_removes_old_finished_results_keeps_the_rest_and_the_trail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--dry-run changes nothing; the purge removes delivered results and messages, keeps the held one,
    leaves an audited summary, `audit verify` passes, and the next year's purge leaves the file no bigger."""
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    runner.invoke(app, ["--config", str(config), "delta", "set", "ALT-T", "--abs", "50", "--action", "hold"])
    size_empty = _size(config)
    _fill(config, lis_port, analyzer_port, 0)
    results_before = _count(config, "SELECT count(*) FROM results")
    assert results_before == BATCH + 2

    plan = _retention(config, monkeypatch, 11, "--dry-run")
    assert plan["dry_run"] is True and plan["results"] == BATCH + 1 and plan["kept_unfinished"] == 1
    assert _count(config, "SELECT count(*) FROM results") == results_before, "a dry run removes nothing"
    assert _retention(config, monkeypatch, 5, "--dry-run")["results"] == 0, "younger than 10 years stays"

    size_full = _size(config)
    done = _retention(config, monkeypatch, 11)
    assert done["results"] == BATCH + 1 and done["messages"] >= 1 and done["pages_freed"] >= 0
    assert _count(config, "SELECT count(*) FROM results") == 1
    assert _count(config, "SELECT count(*) FROM results WHERE state='held'") == 1, "waiting for a person: kept"
    assert _count(config, "SELECT count(*) FROM outbox") == 0
    assert _count(config, "SELECT count(*) FROM messages") == 1, "the held result's message stays"
    assert _count(config, "PRAGMA auto_vacuum") == 2, "incremental vacuum from now on"
    size_purged = _size(config)
    assert size_purged < size_full, (size_purged, size_full)

    verify = runner.invoke(app, ["--config", str(config), "audit", "verify"])
    assert verify.exit_code == 0 and "intact" in verify.output
    events = json.loads(runner.invoke(app, ["--config", str(config), "audit", "list", "--event",
                                            "retention_purged", "--json"]).stdout)
    assert len(events) == 1 and events[0]["data"]["results"] == BATCH + 1
    assert len(events[0]["data"]["removed_ids_sha256"]) == 64

    # A year later: as much again arrives and is purged; the file does not grow.
    _fill(config, lis_port, analyzer_port, 1000)
    assert _retention(config, monkeypatch, 22)["results"] == BATCH + 1
    # The audit trail is append-only (it must verify) and grows; everything else went: a year with
    # the purge adds less than a year without it.
    size_next = _size(config)
    assert size_next - size_purged < size_full - size_empty, (size_empty, size_full, size_purged, size_next)
    assert runner.invoke(app, ["--config", str(config), "audit", "verify"]).exit_code == 0


def test_retention_help() -> None:
    """`retention run --help` names the dry run."""
    result = runner.invoke(app, ["retention", "run", "--help"])
    assert result.exit_code == 0 and "--dry-run" in result.output


def test_the_daemon_purges_on_its_own(tmp_path: Path) -> None:
    """The daily loop inside the service runs a purge (audited) without anyone asking."""
    import asyncio

    from structlog.testing import capture_logs

    from labmw.daemon.app import Service
    from labmw.daemon.retention_loop import run_daily

    config = configure(tmp_path, free_port(), free_port())

    async def scenario() -> list[str]:
        service = Service(load(config))
        await service.start()
        task = asyncio.ensure_future(run_daily(service, first_delay=0, every=3600))
        try:
            runner = service.runner
            assert runner is not None
            for _ in range(200):
                events = await runner.call(runner.store.audit_events, event="retention_purged")
                if events:
                    return [e.actor for e in events]
                await asyncio.sleep(0.05)
            return []
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await service.close()

    with capture_logs() as logs:
        assert asyncio.run(scenario()) == ["labmw"]
    assert "retention_purged" in [e["event"] for e in logs]

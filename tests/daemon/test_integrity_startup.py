"""The audit trail at the daemon's edges (daemon/integrity.py), with a real store thread on a real file:
the start-up check from the checkpoint, the override, and the head logged as an anchor."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from labmw.daemon import integrity
from labmw.daemon.runner import StoreRunner

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _trail(path: Path, events: int) -> None:
    runner = StoreRunner(path)
    try:
        for _ in range(events):
            runner.store.append_audit("note", now=NOW, actor="t")
    finally:
        runner.close()


def _break(path: Path, seq: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
    conn.execute("UPDATE audit SET data = '{\"forged\":1}' WHERE seq = ?", (seq,))
    conn.close()


def test_a_sound_trail_starts_and_a_broken_one_does_not_unless_accepted(tmp_path: Path) -> None:
    """Intact: no error. An event after the checkpoint altered: BrokenTrailError naming it and the
    override. Accepted: audited. (Events before the checkpoint are `labmw audit verify`'s to check.)"""
    path = tmp_path / "labmw.sqlite3"
    _trail(path, 3)

    async def check(accept: bool) -> None:
        runner = StoreRunner(path)
        try:
            await integrity.check_trail_at_start(runner, accept_broken=accept, now=NOW)
        finally:
            runner.close()

    asyncio.run(check(False))
    _trail(path, 2)
    _break(path, 5)
    with pytest.raises(integrity.BrokenTrailError, match=r"event 5: content does not match.*--accept-broken-trail"):
        asyncio.run(check(False))
    asyncio.run(check(True))
    conn = sqlite3.connect(path)
    events = [row[0] for row in conn.execute("SELECT event FROM audit ORDER BY seq")]
    conn.close()
    assert events[-1] == "audit_trail_broken_accepted"


def test_the_head_is_logged_periodically(tmp_path: Path) -> None:
    """Every interval an `audit_head` line with seq and hash (the anchor kept outside the database)."""
    path = tmp_path / "labmw.sqlite3"
    _trail(path, 2)

    async def run() -> None:
        runner = StoreRunner(path)
        task = asyncio.ensure_future(integrity.log_head_periodically(lambda: runner, interval=0.05))
        try:
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
            await integrity.log_head(runner, reason="stop")
            runner.close()

    with capture_logs() as logs:
        asyncio.run(run())
    heads = [entry for entry in logs if entry["event"] == "audit_head"]
    assert len(heads) >= 3 and heads[-1]["reason"] == "stop" and heads[0]["reason"] == "periodic"
    assert all(h["seq"] == 2 and h["head"] == f"2:{h['hash']}" for h in heads)
    assert integrity.HEAD_INTERVAL == 600.0, "every 10 minutes (issue #10 item 7)"

"""The store thread and group commit, on a real SQLite file."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from labmw.daemon.runner import StoreRunner
from labmw.errors import StoreError

T0 = datetime(2026, 11, 25, tzinfo=UTC)


def _append(runner: StoreRunner, event: str, fail: bool = False) -> int:
    with runner.store.transaction(T0) as tx:
        seq = tx.audit(event)
        if fail:
            raise StoreError("this job's own work failed")
        return seq


def test_concurrent_jobs_share_a_commit_and_a_failing_one_is_rolled_back_alone(tmp_path: Path) -> None:
    """Jobs queued while the store thread is busy are committed together; one failing job loses only its rows."""
    runner = StoreRunner(tmp_path / "db.sqlite3")
    gate = threading.Event()

    async def main() -> list[object]:
        blocker = asyncio.ensure_future(runner.call(gate.wait, 10))  # keeps the thread busy while jobs queue up
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(runner.call_batched(_append, runner, f"e{i}", fail=(i == 2)))
                for i in range(5)]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        results = asyncio.run(main())
        assert isinstance(results[2], StoreError)
        assert all(isinstance(r, int) for i, r in enumerate(results) if i != 2)
        assert runner.batches == 1 and runner.batched_jobs == 5
        events = [e.event for e in runner.store.audit_events()]
        assert events == ["e0", "e1", "e3", "e4"]
        assert runner.store.verify_audit().ok
    finally:
        runner.close()


def test_a_failed_group_commit_fails_every_job(tmp_path: Path) -> None:
    """When the shared COMMIT cannot happen, no job is told it was stored."""
    runner = StoreRunner(tmp_path / "db.sqlite3")
    gate = threading.Event()

    def poison() -> None:
        # Make COMMIT fail: a deferred foreign key violation is only checked at commit time.
        runner.store._conn.execute("PRAGMA defer_foreign_keys=ON")  # noqa: SLF001
        runner.store._conn.execute(  # noqa: SLF001
            "INSERT INTO results (message_id, analyzer, specimen, patient_id, patient_name, sex, test_code,"
            " raw_value, units, instrument_flags, status, flags, applied_range, notes, state)"
            " VALUES (999, 'a', 's', 'p', '', '', 't', '1', '', '[]', 'F', '[]', '', '[]', 'queued')")

    def job_then_poison() -> int:
        seq = _append(runner, "doomed")
        poison()
        return seq

    async def main() -> list[object]:
        blocker = asyncio.ensure_future(runner.call(gate.wait, 10))
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(runner.call_batched(_append, runner, "a")),
                asyncio.ensure_future(runner.call_batched(job_then_poison))]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        results = asyncio.run(main())
        assert all(isinstance(r, StoreError) for r in results), results
        assert runner.store.audit_events() == []
    finally:
        runner.close()


def test_plain_calls_propagate_exceptions(tmp_path: Path) -> None:
    """A failing plain call raises in the awaiting coroutine."""
    runner = StoreRunner(tmp_path / "db.sqlite3")

    def boom() -> None:
        raise StoreError("no")

    try:
        with pytest.raises(StoreError):
            asyncio.run(runner.call(boom))
    finally:
        runner.close()

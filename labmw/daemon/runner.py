"""Runs every store call on one dedicated thread, and commits concurrent messages together.

SQLite connections must not be used from two threads at once, and a durable commit waits for the
disk (an fsync). One thread serialises the calls and keeps the event loop free. *Group commit*:
messages that arrive from several analyzers while a commit is under way are stored in the next
single transaction, each in its own SAVEPOINT, so one fsync covers them all; a message whose own
work fails is rolled back alone, and nobody is told "stored" before the shared COMMIT returned.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from labmw.errors import StoreError
from labmw.store import Store

P = ParamSpec("P")
T = TypeVar("T")

MAX_BATCH = 256  # messages per group commit; bounds the latency one commit adds


@dataclass(slots=True)
class _Job:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[Any] | None
    batch: bool
    done: threading.Event = field(default_factory=threading.Event)
    outcome: tuple[bool, Any] = (False, None)


class StoreRunner:
    """Owns the Store and the thread it lives on."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] | None = None) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._clock = clock
        self._thread = threading.Thread(target=self._work, name="labmw-store", daemon=True)
        self._thread.start()
        self.store: Store = self._blocking(lambda: Store.open(path))
        self.batches = 0
        self.batched_jobs = 0

    def _blocking(self, fn: Callable[[], T]) -> T:
        job = _Job(fn=fn, loop=None, future=None, batch=False)
        self._jobs.put(job)
        job.done.wait()
        ok, value = job.outcome
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the store thread and await its result (exceptions propagate)."""
        return await self._submit(lambda: fn(*args, **kwargs), batch=False)

    async def call_batched(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like :meth:`call`, for work that opens its own ``store.transaction``: it may share a commit.

        Returns only after the shared COMMIT; raises StoreError if that commit failed.
        """
        return await self._submit(lambda: fn(*args, **kwargs), batch=True)

    async def _submit(self, fn: Callable[[], T], *, batch: bool) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn=fn, loop=loop, future=future, batch=batch))
        return await future

    def close(self) -> None:
        if self._thread.is_alive():
            self._blocking(self.store.close)
            self._jobs.put(None)
            self._thread.join(30)

    # --- the store thread --------------------------------------------------------------------------
    def _work(self) -> None:
        pending: list[_Job] = []
        while True:
            job = pending.pop(0) if pending else self._jobs.get()
            if job is None:
                return
            if not job.batch:
                self._finish(job, *_run(job.fn))
                continue
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is not None and nxt.batch:
                    batch.append(nxt)
                else:
                    pending.append(nxt)  # type: ignore[arg-type]
                    break
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Job]) -> None:
        if len(batch) == 1:
            self._finish(batch[0], *_run(batch[0].fn))
            return
        results: list[tuple[bool, Any]] = []
        try:
            with self.store.group():
                for job in batch:
                    results.append(_run(job.fn))
        except StoreError as exc:
            for job in batch:
                job.outcome = (False, exc)
            self._finish_all(batch)
            return
        except Exception as exc:  # noqa: BLE001 - a failed COMMIT of any kind: nobody was stored
            error = StoreError(f"group commit failed: {exc}")
            for job in batch:
                job.outcome = (False, error)
            self._finish_all(batch)
            return
        self.batches += 1
        self.batched_jobs += len(batch)
        for job, outcome in zip(batch, results, strict=True):
            job.outcome = outcome
        self._finish_all(batch)

    def _finish_all(self, batch: list[_Job]) -> None:
        """Resolve a whole batch with one wake-up of the event loop (each wake-up is a syscall)."""
        loop = batch[0].loop
        if loop is None or any(job.loop is not loop for job in batch):
            for job in batch:
                self._finish(job, *job.outcome)
            return

        def deliver_all() -> None:
            for job in batch:
                _resolve(job)

        try:
            loop.call_soon_threadsafe(deliver_all)
        except RuntimeError:  # the loop is closed: the callers are gone
            pass

    @staticmethod
    def _finish(job: _Job, ok: bool, value: Any) -> None:
        job.outcome = (ok, value)
        if job.future is None or job.loop is None:
            job.done.set()
            return
        future = job.future

        def deliver() -> None:
            if future.done():
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        try:
            job.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop is closed: the caller is gone
            pass


def _resolve(job: _Job) -> None:
    future = job.future
    if future is None or future.done():
        return
    ok, value = job.outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _run(fn: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller, who handles it
        return False, exc

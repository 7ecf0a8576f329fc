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
import time
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
        # Called on the store thread with the seconds each group commit took (the metrics histogram).
        self.on_commit: Callable[[float], None] | None = None

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
                job.outcome = _run(job.fn)
                _finish([job])
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
            started = time.perf_counter()
            self._run_batch(batch)
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started)
            _finish(batch)

    def _run_batch(self, batch: list[_Job]) -> None:
        """Run ``batch`` and set each job's outcome; more than one job share a group commit."""
        if len(batch) == 1:
            batch[0].outcome = _run(batch[0].fn)
            return
        try:
            with self.store.group():
                for job in batch:
                    job.outcome = _run(job.fn)
        except Exception as exc:  # noqa: BLE001 - the shared COMMIT failed: nobody was stored
            error = exc if isinstance(exc, StoreError) else StoreError(f"group commit failed: {exc}")
            for job in batch:
                job.outcome = (False, error)
            return
        self.batches += 1
        self.batched_jobs += len(batch)


def _finish(jobs: list[_Job]) -> None:
    """Hand the outcomes back: one wake-up per event loop for the whole batch (each is a syscall)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for job in jobs:
        if job.loop is None:
            job.done.set()  # a blocking caller (start-up, close) waits on the event
        else:
            by_loop.setdefault(job.loop, []).append(job)
    for loop, waiting in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_all, waiting)
        except RuntimeError:  # the loop is closed: the callers are gone
            pass


def _resolve_all(jobs: list[_Job]) -> None:
    for job in jobs:
        future = job.future
        if future is None or future.done():
            continue
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

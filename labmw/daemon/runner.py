"""Runs every store call on one dedicated thread, so asyncio never blocks on an fsync.

SQLite connections must not be used from two threads at once; a single-worker executor both
serialises the calls and keeps the event loop free while a commit waits for the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from labmw.store import Store

P = ParamSpec("P")
T = TypeVar("T")


class StoreRunner:
    """Owns the Store and the thread it lives on."""

    def __init__(self, path: Path) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="labmw-store")
        self.store: Store = self._executor.submit(Store.open, path).result()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the store thread and await its result (exceptions propagate)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._executor.submit(self.store.close).result()
        self._executor.shutdown(wait=True)

"""Drive the intake against a real Store without the store thread, for tests that call it directly.

:class:`InlineRunner` has :class:`labmw.daemon.runner.StoreRunner`'s ``call_batched`` and runs the
call on the caller's thread (the Store is the real SQLite file; only the thread hop is skipped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from labmw.config import AnalyzerSettings, Settings
from labmw.daemon.astm_adapter import AstmAdapter
from labmw.daemon.hl7_adapter import Hl7Adapter
from labmw.daemon.intake import Intake
from labmw.daemon.pipeline import Pipeline
from labmw.model import Outcome
from labmw.store import Store


class InlineRunner:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def call_batched(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def make_intake(settings: Settings, store: Store, analyzer: AnalyzerSettings,
                clock: Callable[[], datetime] | None = None) -> Intake:
    pipeline = Pipeline(settings, store, clock=clock) if clock is not None else Pipeline(settings, store)
    adapter = (AstmAdapter(analyzer, settings) if analyzer.protocol == "astm"
               else Hl7Adapter(analyzer, pipeline.clock))
    return Intake(analyzer, adapter, pipeline, InlineRunner(store))  # type: ignore[arg-type]


def receive(intake: Intake, raw: bytes, peer: str = "127.0.0.1:5000", *, text: bytes | None = None) -> Outcome:
    """Run one :meth:`Intake.receive` to completion from synchronous test code."""
    return asyncio.run(intake.receive(raw, peer, text=text))

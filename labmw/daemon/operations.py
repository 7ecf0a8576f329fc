"""What runs beside the service for the people who operate it: the metrics endpoint, the alert loop
and the daily retention purge. :func:`start` is the one call the daemon makes; :meth:`Operations.close`
stops them all."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labmw.daemon.app import Service
    from labmw.daemon.metrics import Metrics


class Operations:
    """The running operations parts of one daemon (each optional)."""

    def __init__(self, metrics: Metrics | None, tasks: list[asyncio.Task[None]]) -> None:
        self.metrics = metrics
        self.tasks = tasks

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.metrics is not None:
            await self.metrics.close()


async def start(service: Service) -> Operations:
    """Start what ``service.settings`` asks for. Raises OSError when the metrics address cannot be bound."""
    from labmw.daemon.retention_loop import run_daily

    metrics = None
    settings = service.settings
    if settings.metrics_listen is not None:
        from labmw.daemon.metrics import Metrics

        metrics = Metrics(service, settings.metrics_listen)
        await metrics.start()
    tasks = [asyncio.ensure_future(run_daily(service))]
    if settings.alerts is not None:
        from labmw.daemon.alerts import AlertLoop

        tasks.append(asyncio.ensure_future(AlertLoop(service, settings.alerts).run()))
    return Operations(metrics, tasks)

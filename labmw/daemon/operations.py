"""What runs beside the service for the people who operate it: the metrics endpoint, the alert loop
and the daily retention purge. :func:`start` is the one call the daemon makes; :meth:`Operations.close`
stops them all."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labmw.daemon.app import Service
    from labmw.daemon.metrics import Metrics


class Operations:
    """The running operations parts of one daemon (each optional)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics

    async def close(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()


async def start(service: Service) -> Operations:
    """Start what ``service.settings`` asks for. Raises OSError when the metrics address cannot be bound."""
    metrics = None
    if service.settings.metrics_listen is not None:
        from labmw.daemon.metrics import Metrics

        metrics = Metrics(service, service.settings.metrics_listen)
        await metrics.start()
    return Operations(metrics)

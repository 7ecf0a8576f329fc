"""The daily retention purge inside the daemon (see :mod:`labmw.store.retention`)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from labmw.errors import LabmwError

if TYPE_CHECKING:
    from labmw.daemon.app import Service

log = structlog.get_logger(__name__)

DAY = 24 * 3600.0
FIRST_RUN_DELAY = 60.0  # seconds after start: not while analyzers reconnect after a restart


def cutoff(now: datetime, years: int) -> datetime:
    """``years`` whole years before ``now`` (29 February becomes 28 February)."""
    try:
        return now.replace(year=now.year - years)
    except ValueError:
        return now.replace(year=now.year - years, day=28)


async def purge_once(service: Service) -> dict[str, Any] | None:
    """One purge at ``service.settings.retention_years``; None (logged) when the store refused it."""
    runner = service.runner
    if runner is None:
        return None
    now = service.clock()
    try:
        summary: dict[str, Any] = await runner.call(
            runner.store.purge_older_than, cutoff(now, service.settings.retention_years), now=now, actor="labmw")
    except LabmwError as exc:
        log.error("retention_purge_failed", error=str(exc))
        return None
    log.info("retention_purged", results=summary["results"], messages=summary["messages"],
             pages_freed=summary.get("pages_freed"))
    return summary


async def run_daily(service: Service, *, first_delay: float = FIRST_RUN_DELAY, every: float = DAY) -> None:
    """Purge ``first_delay`` s after start, then every ``every`` s, until cancelled."""
    await asyncio.sleep(first_delay)
    while True:
        try:
            await purge_once(service)
        except Exception:  # a bug here must not stop tomorrow's purge
            log.exception("retention_purge_failed")
        await asyncio.sleep(every)

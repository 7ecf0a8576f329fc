"""Active/standby: of the daemons of one site sharing a PostgreSQL store, exactly one is active.

The active one holds the site's lease (:mod:`labmw.store.lease`), the analyzer listeners and the LIS
connection; the others wait as standby, with the store open but nothing listening, and poll for the
lease. A dead active daemon stops renewing, its lease expires after ``ttl`` seconds and a standby
takes over within one poll after that. Analyzers reach whichever is active through a shared address
(a virtual IP moved by keepalived in production; README "Active/standby").

Nothing is lost or sent under a second control ID: every result is committed before it is ACKed,
and its MSH-10 is the database's (install id and result id), the same for whichever daemon sends it.
An old active daemon that was paused cannot store anything once its lease has gone (the fence).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from labmw.errors import StoreError
from labmw.store.lease import DEFAULT_TTL, Lease

log = structlog.get_logger(__name__)

ACTIVE, STANDBY = "active", "standby"


class ActiveStandby:
    """Runs the lease loop; calls ``go_active``/``go_standby`` as the lease is won and lost."""

    def __init__(self, lease: Lease, store: Any, *, go_active: Callable[[], Awaitable[None]],
                 go_standby: Callable[[], Awaitable[None]], on_change: Callable[[str], None] | None = None,
                 poll: float = 1.0) -> None:
        self.lease = lease
        self._store = store
        self._go_active = go_active
        self._go_standby = go_standby
        self.on_change = on_change
        self.poll = poll
        self.role = STANDBY
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.role == ACTIVE

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.active:
            await self._step_down("stopping")
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(self.lease.release)

    async def _run(self) -> None:
        while True:
            try:
                won = await asyncio.to_thread(self.lease.try_acquire)
            except StoreError as exc:
                log.warning("lease_unavailable", site=self.lease.site, error=str(exc))
                won = False
            if not won:
                await asyncio.sleep(self.poll)
                continue
            self._store.fence = self.lease.fence
            self.role = ACTIVE
            log.info("site_active", site=self.lease.site, epoch=self.lease.epoch, holder=self.lease.holder)
            self._changed()
            await self._go_active()
            await self._hold()
            await self._step_down("lease lost")

    async def _hold(self) -> None:
        """Renew until the lease is lost, or cannot be renewed before it would have expired."""
        renewed = time.monotonic()
        interval = self.lease.ttl / 4
        while True:
            await asyncio.sleep(interval)
            try:
                if not await asyncio.to_thread(self.lease.renew):
                    return
                renewed = time.monotonic()
            except StoreError as exc:
                log.warning("lease_renewal_failed", site=self.lease.site, error=str(exc))
                # Step down before the lease can have expired on the server (the fence would refuse
                # our writes anyway; stopping the listeners lets the analyzers find the new active one).
                if time.monotonic() - renewed > self.lease.ttl - interval:
                    return

    async def _step_down(self, why: str) -> None:
        log.warning("site_standby", site=self.lease.site, reason=why)
        self.role = STANDBY
        self._changed()
        await self._go_standby()
        self._store.fence = None

    def _changed(self) -> None:
        if self.on_change is not None:
            with contextlib.suppress(Exception):
                self.on_change(self.role)


def for_service(settings: Any, store: Any, **callbacks: Any) -> ActiveStandby | None:
    """The active/standby loop when the store is PostgreSQL and ``[service] site`` is set; else None."""
    if not (settings.store_url and settings.site):
        return None
    pool = getattr(store, "pool", None)
    if pool is None:
        return None
    return ActiveStandby(Lease(pool, settings.site, ttl=DEFAULT_TTL), store, **callbacks)

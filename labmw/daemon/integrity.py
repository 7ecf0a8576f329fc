"""The audit trail at the daemon's edges: checked at start, its head logged as an anchor.

At start the chain is verified from the last verified checkpoint (cheap however long the trail),
and the rows its new events sealed are checked (a mismatch is alerted; the forwarder refuses an
altered queue entry by itself); a broken chain stops the daemon unless the operator says
``labmw run --accept-broken-trail``, which is itself audited. While running, the head (newest
``seq:hash``) goes to the journal every :data:`HEAD_INTERVAL` seconds and at stop: an anchor
outside the database for ``labmw audit verify --expect-head``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import structlog

from labmw.daemon.runner import StoreRunner
from labmw.errors import StoreError

log = structlog.get_logger(__name__)

HEAD_INTERVAL = 600.0  # seconds between audit_head journal lines (#10 item 7: every 10 minutes)


class BrokenTrailError(StoreError):
    """The audit trail failed verification at start; the daemon does not run on it unless told to."""


async def check_trail_at_start(runner: StoreRunner, *, accept_broken: bool, now: datetime) -> None:
    """Verify the trail since the last checkpoint.

    Raises:
        BrokenTrailError: broken, and ``accept_broken`` was not given.
    """
    result = await runner.call(runner.store.verify_audit_since_checkpoint)
    if result.ok:
        log.info("audit_trail_verified", events=result.count, rows=result.rows)
        if result.row_problem:
            log.error("alert_raised", alert="stored_row_mismatch", problem=result.row_problem)
            await runner.call(runner.store.append_audit, "alert_raised", now=now, actor="labmw",
                              data={"alert": "stored_row_mismatch", "problem": result.row_problem})
        return
    where = f"event {result.first_broken}" if result.first_broken is not None else "the trail"
    message = f"audit trail BROKEN at {where}: {result.reason}"
    if not accept_broken:
        log.error("audit_trail_broken", first_broken=result.first_broken, reason=result.reason)
        raise BrokenTrailError(f"{message}; not starting (inspect with `labmw audit verify`; to run on it"
                               " anyway, audited: `labmw run --accept-broken-trail`)")
    log.error("audit_trail_broken_accepted", first_broken=result.first_broken, reason=result.reason)
    await runner.call(runner.store.append_audit, "audit_trail_broken_accepted", now=now, actor="operator",
                      data={"first_broken": result.first_broken, "reason": result.reason})


async def log_head(runner: StoreRunner, *, reason: str) -> None:
    """One ``audit_head`` journal line (the anchor); a store that cannot answer is logged, not raised."""
    try:
        seq, digest = await runner.call(runner.store.audit_head)
    except StoreError as exc:
        log.error("audit_head_unavailable", error=str(exc))
        return
    log.info("audit_head", seq=seq, hash=digest, head=f"{seq}:{digest}", reason=reason)


async def log_head_periodically(runner: Callable[[], StoreRunner], interval: float = HEAD_INTERVAL) -> None:
    """Log the head every ``interval`` seconds until cancelled (``runner`` is looked up each time)."""
    while True:
        await asyncio.sleep(interval)
        await log_head(runner(), reason="periodic")

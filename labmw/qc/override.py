"""The documented QC override: a rejected run accepted by a person, with a reason (CLI and web)."""

from __future__ import annotations

from datetime import datetime

from labmw.errors import UsageError
from labmw.store import Store
from labmw.store.qc import QcRun


def accept_run(store: Store, run_id: int, *, reason: str, actor: str, now: datetime) -> QcRun:
    """Accept rejected run ``run_id``: patient results of its analyzer x method flow again; audited.

    Raises:
        UsageError: no reason given.
        StoreError: no such run, or it is accepted already.
    """
    if not reason.strip():
        raise UsageError("--reason: a reason is required for a QC override")
    return store.qc.accept(run_id, reason=reason.strip(), actor=actor, now=now)

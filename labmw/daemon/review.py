"""Decisions on held results: release (forward to the LIS) or reject, each recorded with who and why."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from labmw.config import Settings
from labmw.daemon.pipeline import control_id, oru_for
from labmw.errors import UsageError
from labmw.store import Store


def decide(settings: Settings, store: Store, result_id: int, *, decision: str, reason: str, actor: str,
           now: datetime) -> str:
    """Release or reject held result ``result_id``; returns the MSH-10 it will be sent under ("" on reject).

    Raises:
        UsageError: no reason given, or an unknown decision.
        StoreError: the result does not exist or is no longer held.
    """
    if not reason.strip():
        raise UsageError("--reason: a reason is required for every review decision")
    if decision not in ("release", "reject"):
        raise UsageError(f"unknown decision {decision!r}")
    if decision == "reject":
        store.decide_held(result_id, decision="reject", reason=reason, actor=actor, now=now)
        return ""
    result, evaluation, _state = store.load_result(result_id)
    method = settings.methods.get(evaluation.method or "")
    # Who released it and why is in the audit trail; the LIS gets only the clinician notes.
    evaluation = dataclasses.replace(evaluation, hold=False)
    cid = control_id(store.install_id, result_id)
    payload = oru_for(settings, result, evaluation, method, cid, now)
    store.decide_held(result_id, decision="release", reason=reason, actor=actor, now=now, control_id=cid,
                      payload=payload)
    return cid

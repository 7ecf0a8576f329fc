"""Decisions on held results: release (forward to the LIS) or reject, each recorded with who and why.

The one place both `labmw review release|reject` and the review workstation decide, so both enforce the
second-person release of ``[review] second_person`` (labmw.rules.second_person): the first release of
such a result by user A is a signed request (``release_requested``, the result stays held); a release by
another user B completes it and the result goes to the LIS; A releasing again is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from labmw.config import Settings
from labmw.daemon.pipeline import control_id, oru_for
from labmw.errors import UsageError
from labmw.rules.second_person import second_person_reasons
from labmw.store import Store

RELEASED, REJECTED, REQUESTED = "released", "rejected", "release_requested"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decided:
    """What a decision did: ``state`` is released, rejected or release_requested (waiting for a second
    person); ``control_id`` the MSH-10 a released result is sent under; ``needs`` why two people are
    needed; ``first_actor`` who signed first (on a two-person release)."""

    state: str
    control_id: str = ""
    needs: tuple[str, ...] = ()
    first_actor: str = ""

    @property
    def message(self) -> str:
        """The one line the CLI prints and the web shows."""
        if self.state == REQUESTED:
            return (f"release requested by {self.first_actor}; it needs a second person "
                    f"({', '.join(self.needs)}): the result stays held until another user releases it")
        if self.state == REJECTED:
            return "rejected"
        second = f" (second signature; first by {self.first_actor})" if self.first_actor else ""
        return f"released{second}; queued for the LIS as {self.control_id}"


def second_person_needed(settings: Settings, store: Store, result_id: int) -> tuple[str, ...]:
    """Why releasing result ``result_id`` needs two people (empty: one may release it)."""
    held = store.held_result(result_id)
    return second_person_reasons(settings.review.second_person, gates=held.gates, flags=held.flags)


def decide(settings: Settings, store: Store, result_id: int, *, decision: str, reason: str, actor: str,
           now: datetime) -> Decided:
    """Release or reject held result ``result_id`` (or sign the first half of a two-person release).

    Raises:
        UsageError: no reason given, an unknown decision, or the same user releasing twice a result
            that needs a second person.
        StoreError: the result does not exist or is no longer held.
    """
    if not reason.strip():
        raise UsageError("--reason: a reason is required for every review decision")
    if decision not in ("release", "reject"):
        raise UsageError(f"unknown decision {decision!r}")
    if decision == "reject":
        store.decide_held(result_id, decision="reject", reason=reason, actor=actor, now=now)
        return Decided(state=REJECTED)
    needs = second_person_needed(settings, store, result_id)
    first = store.release_signature(result_id)
    pending = first if first is not None and first.outcome == "pending" else None
    if needs and pending is None:
        signed = store.sign_release(result_id, needs=needs, reason=reason, actor=actor, now=now)
        return Decided(state=REQUESTED, needs=needs, first_actor=signed.first_actor)
    if needs and pending is not None and pending.first_actor == actor:
        raise UsageError(f"result {result_id} needs a second person to release it ({', '.join(needs)}): "
                         f"you ({actor}) signed the first release request at {pending.first_at[:19]}; "
                         "another user must release it")
    result, evaluation, _state = store.load_result(result_id)
    method = settings.methods.get(evaluation.method or "")
    # Who released it and why is in the audit trail; the LIS gets only the clinician notes.
    evaluation = dataclasses.replace(evaluation, hold=False)
    cid = control_id(store.install_id, result_id)
    payload = oru_for(settings, result, evaluation, method, cid, now)
    store.decide_held(result_id, decision="release", reason=reason, actor=actor, now=now, control_id=cid,
                      payload=payload, second_person=needs)
    return Decided(state=RELEASED, control_id=cid, needs=needs,
                   first_actor=pending.first_actor if pending is not None else "")

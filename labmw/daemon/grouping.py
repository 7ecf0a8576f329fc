"""One ORU^R01 per specimen (``lis.group = "specimen"``, the default): the queueing half of the pipeline.

The results of one message that are not held are grouped by specimen, in message order; each group
becomes one ORU (one OBR, one OBX per result) queued as one outbox entry under the MSH-10 of its
first result (stable across resends, like a single result's), the others recorded as its members so
that the LIS's ACK delivers them all. Held results are not waited for: they go out when released,
each in an ORU of its own (labmw.daemon.review).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from labmw.config import Settings
from labmw.errors import LabmwError
from labmw.mapping.hl7_oru import build_oru_group
from labmw.model import Evaluation, Method, Result
from labmw.store import Tx


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """A stored, evaluated result that is to be sent."""

    result_id: int
    result: Result
    evaluation: Evaluation
    method: Method | None
    #: the result_received audit data, completed here with the outbox entry and MSH-10
    received: dict[str, Any] = field(default_factory=dict)


def oru_of(settings: Settings, items: Sequence[tuple[Result, Evaluation, Method | None]], cid: str,
           now: datetime) -> bytes:
    """The ORU^R01 for ``items`` (one specimen), with the [lis] header fields; the one place the pipeline,
    the grouping and review releases build it. A result sent without a status goes out as F, as the rules
    treated it. Raises MappingError as build_oru_group does."""
    lis = settings.lis
    return build_oru_group(
        [(result if result.status else replace(result, status="F"), evaluation, method)
         for result, evaluation, method in items],
        control_id=cid, now=now,
        sending_application=lis.sending_application if lis else "LABMW",
        sending_facility=lis.sending_facility if lis else "",
        receiving_application=lis.receiving_application if lis else "LIS",
        receiving_facility=lis.receiving_facility if lis else "")


def oru_group_for(settings: Settings, items: Sequence[Ready], cid: str, now: datetime) -> bytes:
    """The ORU for ``items`` (one specimen). Raises MappingError as build_oru does."""
    return oru_of(settings, [(r.result, r.evaluation, r.method) for r in items], cid, now)


def queue_by_specimen(tx: Tx, settings: Settings, ready: Sequence[Ready], control_id: Callable[[int], str]) -> int:
    """Queue ``ready`` as one ORU per specimen; returns how many results had to be held instead.

    A group whose ORU cannot be built (e.g. no status) is held result by result with the reason,
    never dropped.
    """
    groups: dict[tuple[str, str], list[Ready]] = {}
    for item in ready:
        groups.setdefault((item.result.specimen_id, item.result.patient_id), []).append(item)
    held = 0
    for items in groups.values():
        cid = control_id(items[0].result_id)
        try:
            payload = oru_group_for(settings, items, cid, tx.now)
        except LabmwError as exc:
            note = f"cannot build the message for the LIS, held for review: {exc}"
            for item in items:
                tx.hold_result(item.result_id, notes=(*item.evaluation.notes, note))
                tx.audit("result_received", analyzer=item.result.analyzer, specimen=item.result.specimen_id,
                         patient=item.result.patient_id, ref=str(item.result_id),
                         data={**item.received, "state": "held"})
                tx.audit("result_held", analyzer=item.result.analyzer, specimen=item.result.specimen_id,
                         patient=item.result.patient_id, ref=str(item.result_id), data={"notes": [note]})
            held += len(items)
            continue
        outbox_id = tx.enqueue(result_id=items[0].result_id, control_id=cid, payload=payload)
        if len(items) > 1:
            tx.add_outbox_members(outbox_id, [item.result_id for item in items[1:]])
        for item in items:
            tx.audit("result_received", analyzer=item.result.analyzer, specimen=item.result.specimen_id,
                     patient=item.result.patient_id, ref=str(item.result_id),
                     data={**item.received, "state": "queued", "outbox_id": outbox_id, "control_id": cid,
                           "results_in_message": len(items)})
    return held

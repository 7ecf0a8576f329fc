"""The one orchestration function: decode -> map -> evaluate -> store in one transaction.

It runs synchronously in the store's thread (see :class:`labmw.daemon.runner.StoreRunner`) so the
delta check's "previous result" is read in the same transaction that writes the new one. The
transport acknowledges the analyzer only after :meth:`Pipeline.handle_astm` returned, i.e. after
the commit (PRODUCT.md guarantee 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from labmw.config import AnalyzerSettings, Settings
from labmw.errors import CodecError, MappingError
from labmw.mapping.astm_lis2a import AstmProfile, map_message
from labmw.mapping.hl7_oru import build_oru
from labmw.model import Evaluation, Method, PreviousResult, Result
from labmw.rules.engine import evaluate
from labmw.store import Store, Tx
from labmw.wire.astm_records import decode_message


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one inbound message became (for logs and tests: counts only, never patient data)."""

    message_id: int
    results: int
    queued: int
    held: int
    problems: int
    rejected_reason: str = ""


def utcnow() -> datetime:
    return datetime.now(UTC)


def control_id(install_id: str, result_id: int) -> str:
    """The outbound MSH-10: stable for the result across resends and restarts, unique per installation."""
    return f"{install_id}-{result_id}"


class Pipeline:
    """Turns a received message into stored, evaluated, queued results."""

    def __init__(self, settings: Settings, store: Store, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    def handle_astm(self, analyzer: AnalyzerSettings, text: bytes, raw: bytes, peer: str) -> Outcome:
        """Store one complete ASTM message (H..L) and everything it leads to, in one commit.

        An undecodable message is still stored (raw bytes) and audited as rejected: it is durable,
        so the analyzer may be acknowledged, and a person can see it failed and why.

        Raises:
            StoreError: nothing was committed; the analyzer must not be acknowledged.
        """
        now = self.clock()
        digest = hashlib.sha256(raw or text).hexdigest()
        profile = AstmProfile(test_code_component=analyzer.test_code_component,
                              specimen_component=analyzer.specimen_component, encoding=analyzer.encoding)
        try:
            records = decode_message(text, encoding=analyzer.encoding)
            mapped = map_message(records, analyzer=analyzer.name, profile=profile)
        except (CodecError, MappingError) as exc:
            return self.store_rejected(analyzer, protocol="astm", raw=raw or text, digest=digest, peer=peer,
                                       reason=str(exc), now=now)

        return self.store_mapped(analyzer, protocol="astm", raw=raw or text, digest=digest, peer=peer,
                                 sender=mapped.sender, results=mapped.results, problems=mapped.problems, now=now)

    def store_mapped(self, analyzer: AnalyzerSettings, *, protocol: str, raw: bytes, digest: str, peer: str,
                     sender: str, results: Sequence[Result], problems: Sequence[str], now: datetime,
                     before_commit: Callable[[Tx, int], None] | None = None) -> Outcome:
        """Store a decoded message's results with their evaluations, queue entries and audit events.

        Shared by every inbound protocol. ``before_commit(tx, message_id)`` lets a protocol add its
        own rows (e.g. HL7 duplicate keys) to the same transaction.

        Raises:
            StoreError: nothing was committed.
        """
        with self.store.transaction(now) as tx:
            message_id = tx.add_message(analyzer=analyzer.name, protocol=protocol, peer=peer, raw=raw,
                                        sha256=digest, outcome="accepted")
            tx.audit("message_received", analyzer=analyzer.name, ref=str(message_id),
                     data={"sha256": digest, "bytes": len(raw), "peer": peer, "protocol": protocol,
                           "sender": sender, "results": len(results),
                           "specimens": sorted({r.specimen_id for r in results if r.specimen_id}),
                           "patients": sorted({r.patient_id for r in results if r.patient_id})})
            for problem in problems:
                tx.audit("mapping_problem", analyzer=analyzer.name, ref=str(message_id), data={"problem": problem})
            queued = held = 0
            for result in results:
                if self._store_result(tx, analyzer, message_id, digest, result):
                    held += 1
                else:
                    queued += 1
            if before_commit is not None:
                before_commit(tx, message_id)
        return Outcome(message_id=message_id, results=len(results), queued=queued, held=held,
                       problems=len(problems))

    def store_rejected(self, analyzer: AnalyzerSettings, *, protocol: str, raw: bytes, digest: str, peer: str,
                       reason: str, now: datetime) -> Outcome:
        """Keep an undecodable message's raw bytes and audit why it was rejected (one commit)."""
        with self.store.transaction(now) as tx:
            message_id = tx.add_message(analyzer=analyzer.name, protocol=protocol, peer=peer, raw=raw, sha256=digest,
                                        outcome="rejected")
            tx.audit("message_rejected", analyzer=analyzer.name, ref=str(message_id),
                     data={"sha256": digest, "bytes": len(raw), "peer": peer, "protocol": protocol, "reason": reason})
        return Outcome(message_id=message_id, results=0, queued=0, held=0, problems=1, rejected_reason=reason)

    def _store_result(self, tx: Tx, analyzer: AnalyzerSettings, message_id: int, digest: str, result: Result) -> bool:
        """Evaluate, store, audit and queue (or hold) one result; returns True when held."""
        method_name = analyzer.map.get(result.test_code)
        method = self.settings.methods.get(method_name) if method_name else None
        previous = self._previous(tx, result, method)
        evaluation = evaluate(result, method, previous=previous)
        state = "held" if evaluation.hold else "queued"
        result_id = tx.add_result(message_id=message_id, result=result, evaluation=evaluation, state=state)
        who = {"analyzer": analyzer.name, "specimen": result.specimen_id, "patient": result.patient_id}
        tx.audit("result_received", **who, ref=str(result_id),
                 data={"message_id": message_id, "sha256": digest, "test_code": result.test_code,
                       "raw_value": result.raw_value, "units": result.units,
                       "instrument_flags": list(result.instrument_flags), "status": result.status,
                       "collected_at": _iso(result.collected_at), "completed_at": _iso(result.completed_at)})
        tx.audit("result_evaluated", **who, ref=str(result_id), data=_evaluation_record(evaluation, previous))
        if evaluation.hold:
            tx.audit("result_held", **who, ref=str(result_id), data={"notes": list(evaluation.notes)})
            return True
        cid = control_id(self.store.install_id, result_id)
        lis = self.settings.lis
        payload = build_oru(
            result, evaluation, method=method, control_id=cid, now=tx.now,
            sending_application=lis.sending_application if lis else "LABMW",
            sending_facility=lis.sending_facility if lis else "",
            receiving_application=lis.receiving_application if lis else "LIS",
            receiving_facility=lis.receiving_facility if lis else "")
        outbox_id = tx.enqueue(result_id=result_id, control_id=cid, payload=payload)
        tx.audit("result_queued", **who, ref=cid, data={"outbox_id": outbox_id, "result_id": result_id})
        return False

    def _previous(self, tx: Tx, result: Result, method: Method | None) -> PreviousResult | None:
        if method is None or method.delta is None or not result.patient_id or result.value is None:
            return None
        at = result.collected_at or result.completed_at
        if at is None:
            return None
        window = timedelta(days=float(method.delta.window_days))
        return tx.previous_result(patient_id=result.patient_id, method=method.name, before=at, not_before=at - window)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _evaluation_record(evaluation: Evaluation, previous: PreviousResult | None) -> dict[str, object]:
    return {
        "method": evaluation.method,
        "flags": list(evaluation.flags),
        "applied_range": evaluation.applied_range,
        "hold": evaluation.hold,
        "notes": list(evaluation.notes),
        "decisions": [{"rule": d.rule, "outcome": d.outcome, "inputs": dict(d.inputs)} for d in evaluation.decisions],
        "previous": None if previous is None else {"value": str(previous.value),
                                                    "collected_at": previous.collected_at.isoformat(),
                                                    "specimen": previous.specimen_id},
    }

"""The one orchestration function: decode -> map -> evaluate -> store in one transaction.

It runs synchronously in the store's thread (see :class:`labmw.daemon.runner.StoreRunner`) so the
delta check's "previous result" is read in the same transaction that writes the new one. The
transport acknowledges the analyzer only after :meth:`Pipeline.handle_astm` returned, i.e. after
the commit (PRODUCT.md guarantee 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from labmw.config import AnalyzerSettings, Settings
from labmw.errors import CodecError, LabmwError, MappingError, RuleError, StoreError
from labmw.daemon.fidelity import astm_profile, keep_wire, method_for, record_gates
from labmw.daemon.grouping import Ready, queue_by_specimen
from labmw.mapping.astm_lis2a import map_message
from labmw.mapping.identity import apply_gates
from labmw.mapping.astm_query import answer_note, answer_queries, read_query
from labmw.mapping.hl7_oru import build_oru
from labmw.model import Decision, Evaluation, Method, PreviousResult, RelatedResult, Result
from labmw.rules.engine import evaluate
from labmw.store import Store, Tx
from labmw.wire.astm_records import Record, decode_message


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one inbound message became (for logs and tests: counts only, never patient data)."""

    message_id: int
    results: int
    queued: int
    held: int
    problems: int
    rejected_reason: str = ""
    #: Messages to send back to the analyzer on the same link (answers to host queries, ASTM.md §2.8).
    replies: tuple[bytes, ...] = ()
    #: A resend of a message already stored: acknowledged again, nothing new stored or forwarded.
    duplicate: bool = False


# Resends are recognised within this window (HL7.md 1.4 uses 7 days; ASTM resends come within minutes).
DUPLICATE_WINDOW = timedelta(days=7)


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
        raw = raw or text  # the frames as received; the text when the caller has no frames (tests, files)
        digest = hashlib.sha256(raw).hexdigest()
        profile = astm_profile(analyzer)
        try:
            records = decode_message(text, encoding=analyzer.encoding)
            mapped = map_message(records, analyzer=analyzer.name, profile=profile)
        except (CodecError, MappingError) as exc:
            return self.store_rejected(analyzer, protocol="astm", raw=raw, digest=digest, peer=peer,
                                       reason=str(exc), now=now)
        # Host queries are answered at once, never forwarded: the analyzer must not wait on us.
        replies, reply_error = self._answer_queries(analyzer, mapped.queries)

        def audit_queries(tx: Tx, message_id: int) -> None:
            for query in mapped.queries:
                key = read_query(query)
                # The specimen only: Q-3 component 1 is a patient ID and stays out of the audit.
                tx.audit("host_query_received", analyzer=analyzer.name, specimen=key.specimen_id, ref=str(message_id),
                         data={"sequence": query.text(2), "request_status": query.component(13, 1),
                               "tests": query.text(5), "mode": analyzer.query_mode,
                               "answer": answer_note(key, mode=analyzer.query_mode, error=reply_error)})

        content = astm_content_key(text)
        if mapped.results and not mapped.queries:
            duplicate = self._astm_duplicate(analyzer, content, digest, peer, now)
            if duplicate is not None:
                return duplicate

        def before_commit(tx: Tx, message_id: int) -> None:
            tx.add_inbound_key(message_id=message_id, analyzer=analyzer.name, sending_application=mapped.sender,
                               sending_facility="", control_id="", content_sha256=content)
            if mapped.queries:
                audit_queries(tx, message_id)

        try:
            outcome = self.store_mapped(analyzer, protocol="astm", raw=raw, digest=digest, peer=peer,
                                        sender=mapped.sender, results=mapped.results, problems=mapped.problems,
                                        now=now, before_commit=before_commit)
        except StoreError:
            raise
        except LabmwError as exc:  # rolled back; keep the bytes and the reason, visibly rejected
            return self.store_rejected(analyzer, protocol="astm", raw=raw, digest=digest, peer=peer,
                                       reason=f"{type(exc).__name__}: {exc}", now=now)
        return replace(outcome, replies=tuple(replies))

    def _astm_duplicate(self, analyzer: AnalyzerSettings, content: str, digest: str, peer: str,
                        now: datetime) -> Outcome | None:
        """A resend of a message already stored (its final ACK was lost): audited, ACKed, not stored again."""
        with self.store.transaction(now) as tx:
            original = tx.message_with_content(analyzer=analyzer.name, content_sha256=content,
                                               since=now - DUPLICATE_WINDOW)
            if original is None:
                return None
            tx.audit("duplicate_message", analyzer=analyzer.name, ref=str(original),
                     data={"protocol": "astm", "sha256": digest, "peer": peer, "original_message_id": original})
        return Outcome(message_id=original, results=0, queued=0, held=0, problems=0, duplicate=True)

    def _answer_queries(self, analyzer: AnalyzerSettings, queries: Sequence[Record]) -> tuple[list[bytes], str]:
        """The reply messages for ``queries`` per the analyzer's query mode, and why none could be built."""
        if not queries:
            return [], ""
        name = self.settings.lis.sending_application if self.settings.lis else "LABMW"
        try:
            return answer_queries(queries, sender_name=name, mode=analyzer.query_mode, encoding=analyzer.encoding), ""
        except CodecError as exc:
            return [], str(exc)

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
            # lis.group "specimen": results are collected here and queued one ORU per specimen.
            ready: list[Ready] | None = [] if self.settings.lis is None or self.settings.lis.group == "specimen" \
                else None
            for result in results:
                if self._store_result(tx, analyzer, message_id, digest, result, ready=ready):
                    held += 1
                else:
                    queued += 1
            if ready:
                late = queue_by_specimen(tx, self.settings, ready, lambda rid: control_id(self.store.install_id, rid))
                held, queued = held + late, queued - late
            record_gates(tx, analyzer, message_id, results)
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

    def _store_result(self, tx: Tx, analyzer: AnalyzerSettings, message_id: int, digest: str, result: Result,
                      ready: list[Ready] | None = None) -> bool:
        """Evaluate, store, audit and queue (or hold) one result; returns True when held."""
        method_name = method_for(analyzer.map, result)
        method = self.settings.methods.get(method_name) if method_name else None
        corrected = (tx.corrected_result(analyzer=analyzer.name, specimen=result.specimen_id,
                                         test_code=result.test_code)
                     if result.status == "C" and result.specimen_id else None)
        previous = self._previous(tx, result, method)
        try:
            evaluation = evaluate(result, method, previous=previous, related=self._related(tx, result, method))
        except RuleError as exc:
            # A rule that cannot be applied as configured: hold the result for a person, say why.
            evaluation = Evaluation(method=method.name if method else None, hold=True,
                                    notes=(f"rules could not be applied, held for review: {exc}",),
                                    decisions=(Decision(rule="engine", outcome="error", inputs={"error": str(exc)}),))
        if not result.status:
            evaluation = replace(evaluation, notes=(*evaluation.notes, NO_STATUS_NOTE))
        evaluation = apply_gates(result, evaluation)  # NO_SPECIMEN_ID, TEST_CODE_MISSING, IDENTITY_COLLISION
        state = "held" if evaluation.hold else "queued"
        result_id = tx.add_result(message_id=message_id, result=result, evaluation=evaluation, state=state)
        keep_wire(tx, result_id, result)
        if corrected is not None:
            # The correction replaces the earlier value (kept, marked superseded) instead of
            # standing beside it as a second result of the same specimen and test.
            tx.supersede(old_id=corrected[0], new_id=result_id)
            tx.audit("result_corrected", analyzer=analyzer.name, specimen=result.specimen_id,
                     patient=result.patient_id, ref=str(result_id),
                     data={"replaces_result_id": corrected[0], "earlier_value": corrected[1],
                           "value": result.raw_value, "test_code": result.test_code})
        who = {"analyzer": analyzer.name, "specimen": result.specimen_id, "patient": result.patient_id}
        tx.audit("result_received", **who, ref=str(result_id),
                 data={"message_id": message_id, "sha256": digest, "test_code": result.test_code,
                       "test_id": result.identity, "gates": list(result.gates),
                       "raw_value": result.raw_value, "units": result.units,
                       "instrument_flags": list(result.instrument_flags), "status": result.status,
                       "collected_at": _iso(result.collected_at), "completed_at": _iso(result.completed_at)})
        tx.audit("result_evaluated", **who, ref=str(result_id), data=_evaluation_record(evaluation, previous))
        if evaluation.hold:
            tx.audit("result_held", **who, ref=str(result_id), data={"notes": list(evaluation.notes)})
            return True
        if ready is not None:  # queued with the rest of its specimen (labmw.daemon.grouping)
            ready.append(Ready(result_id=result_id, result=result, evaluation=evaluation, method=method))
            return False
        cid = control_id(self.store.install_id, result_id)
        try:
            payload = oru_for(self.settings, result, evaluation, method, cid, tx.now)
        except LabmwError as exc:
            # Not sendable as it stands (e.g. no test code for OBX-3): visibly held, never dropped.
            note = f"cannot build the message for the LIS, held for review: {exc}"
            tx.hold_result(result_id, notes=(*evaluation.notes, note))
            tx.audit("result_held", **who, ref=str(result_id), data={"notes": [note]})
            return True
        outbox_id = tx.enqueue(result_id=result_id, control_id=cid, payload=payload)
        tx.audit("result_queued", **who, ref=cid, data={"outbox_id": outbox_id, "result_id": result_id})
        return False

    def _previous(self, tx: Tx, result: Result, method: Method | None) -> PreviousResult | None:
        window_days = method.delta_window_days if method is not None else None
        if method is None or window_days is None or not result.patient_id or result.value is None:
            return None
        at = result.collected_at or result.completed_at
        if at is None:
            return None
        return tx.previous_result(patient_id=result.patient_id, method=method.name, before=at,
                                  not_before=at - timedelta(days=float(window_days)),
                                  other_than_specimen=result.specimen_id)

    def _related(self, tx: Tx, result: Result, method: Method | None) -> list[RelatedResult]:
        """The patient's other analytes around this collection, for the Hy's-law note (when enabled)."""
        rule = method.hys_law if method is not None else None
        at = result.collected_at or result.completed_at
        if rule is None or not rule.enabled or not result.patient_id or at is None:
            return []
        related = []
        hours = float(rule.window_hours)
        for name, value, applied, collected, specimen in tx.recent_results(
                patient_id=result.patient_id, around=at, hours=hours, other_than_method=method.name):
            other = self.settings.methods.get(name)
            uln = _upper(applied)
            if other is not None and uln is not None:
                related.append(RelatedResult(analyte=other.analyte, value=value, uln=uln, collected_at=collected,
                                             method=name, specimen_id=specimen))
        return related


NO_STATUS_NOTE = "the instrument sent no result status: treated and forwarded as final (F)"


def oru_for(settings: Settings, result: Result, evaluation: Evaluation, method: Method | None, cid: str,
            now: datetime) -> bytes:
    """The ORU^R01 for one result (shared by the pipeline and review releases).

    OBX-11 is required: a result the instrument sent without a status goes out as F, which is how
    the rules treated it, and the NTE says so.

    Raises:
        MappingError: the result cannot be expressed as an ORU (e.g. no test code).
    """
    lis = settings.lis
    return build_oru(
        result if result.status else replace(result, status="F"), evaluation, method=method, control_id=cid,
        now=now,
        sending_application=lis.sending_application if lis else "LABMW",
        sending_facility=lis.sending_facility if lis else "",
        receiving_application=lis.receiving_application if lis else "LIS",
        receiving_facility=lis.receiving_facility if lis else "")


def astm_content_key(text: bytes) -> str:
    """SHA-256 of an ASTM message without its H-14 (message date/time), which a resend may renew."""
    lines = text.split(b"\r")
    for index, line in enumerate(lines):
        if line[:1] == b"H" and len(line) > 1:
            fields = line.split(line[1:2])
            if len(fields) > 13:
                fields[13] = b""
                lines[index] = line[1:2].join(fields)
    return hashlib.sha256(b"\r".join(lines)).hexdigest()


def _upper(applied_range: str) -> Decimal | None:
    """The upper limit of an applied range text such as ``9-59`` (None when there is none)."""
    low, sep, high = applied_range.rpartition("-")
    try:
        return Decimal(high) if sep and low else None
    except ArithmeticError:
        return None


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

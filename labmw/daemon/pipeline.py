"""The one function behind every inbound protocol: dedupe, rules and persistence, in one transaction.

The protocol adapters (:mod:`labmw.daemon.astm_adapter`, :mod:`labmw.daemon.hl7_adapter`) decode
and map a message into a :class:`Decoded` (or a :class:`Rejected`) off the store thread, and
:meth:`Pipeline.prepare` judges there every result and builds its ORU, reading the history the
rules need from a read-only snapshot. :meth:`Pipeline.commit` then runs on the store thread (see
:class:`labmw.daemon.runner.StoreRunner`): the resend lookup, the history read again in the
transaction that writes the new result (judged again there only if it changed, so the delta check
stays consistent) and the writes. The transport answers only after
``commit`` returned, i.e. after the commit (PRODUCT.md guarantee 1).

``commit`` is total: anything but a :class:`StoreError` raised while storing a decoded message
rolls it back and stores the raw bytes as an ``intake_failed`` rejection with the error's type
and text, so the peer is answered and a person can see what failed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from labmw.config import AnalyzerSettings, Settings
from labmw.daemon import autoverify
from labmw.daemon.fidelity import keep_wire, method_for, record_gates
from labmw.daemon.grouping import Ready, oru_of, queue_by_specimen
from labmw.errors import LabmwError, StoreError
from labmw.mapping.identity import apply_gates
from labmw.model import Decision, Evaluation, Method, Outcome, PreviousResult, RelatedResult, Result
from labmw.qc.intake import qc_gate, split_controls, store_controls
from labmw.rules.engine import evaluate
from labmw.store import History, Store, Tx

__all__ = [
    "ASTM_RESEND_WINDOW",
    "CID_PLACEHOLDER",
    "DUPLICATE_WINDOW",
    "AuditNote",
    "Decoded",
    "Judged",
    "Outcome",
    "Pipeline",
    "Rejected",
    "ResendKey",
    "control_id",
    "judge",
    "oru_for",
    "utcnow",
]

# HL7 resends are recognised within this window (HL7.md 1.4 uses 7 days).
DUPLICATE_WINDOW = timedelta(days=7)
# An ASTM resend comes after the sender's 15 s reply timeout and a few re-bids (ASTM.md 5.4): minutes,
# not days. Past this, an identical message is a new run of the same test.
ASTM_RESEND_WINDOW = timedelta(minutes=10)


def utcnow() -> datetime:
    return datetime.now(UTC)


def control_id(install_id: str, result_id: int) -> str:
    """The outbound MSH-10: stable for the result across resends and restarts, unique per installation."""
    return f"{install_id}-{result_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResendKey:
    """How to recognise a resend of a message already stored.

    ``scope`` "link": only a resend of the last message stored from this analyzer whose final ACK
    may have been lost (ASTM: same content key, within :data:`ASTM_RESEND_WINDOW`, and not the
    message the analyzer is known to have received the ACK of). ``scope`` "record": never a resend,
    only remembered as the link's last message. ``scope`` "sender": HL7's
    (MSH-3, MSH-4, MSH-10) plus the content key, within :data:`DUPLICATE_WINDOW`.
    """

    scope: str
    content: str
    sending_application: str = ""
    sending_facility: str = ""
    control_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditNote:
    """An extra audit event a protocol adds to the message's transaction (``ref`` is the message id)."""

    event: str
    specimen: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Judged:
    """A result judged off the store thread, with what the judgement read and the ORU it leads to."""

    evaluation: Evaluation
    #: The history the evaluation used (read from a snapshot): checked again inside the transaction.
    history: tuple[PreviousResult | None, tuple[RelatedResult, ...]] | None = None
    #: The ORU with :data:`CID_PLACEHOLDER` as MSH-10 (None: built in the transaction).
    payload: bytes | None = None


#: Stands for the outbound MSH-10 in an ORU built before the result has its id (alphanumeric, so
#: no escaping touches it; replaced once the id is known).
CID_PLACEHOLDER = "LABMWCIDPENDING0"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decoded:
    """A message its adapter could read: the mapped results and what the protocol adds."""

    protocol: str
    sender: str
    results: tuple[Result, ...]
    problems: tuple[str, ...] = ()
    resend: ResendKey | None = None
    notes: tuple[AuditNote, ...] = ()
    #: Messages to send back on the same link (ASTM host-query answers).
    replies: tuple[bytes, ...] = ()
    #: Per result, its judgement made off the store thread (None: judge in the transaction).
    prejudged: tuple[Judged | None, ...] = ()
    #: The adapter's own context for its answer (the HL7 header); never read here.
    context: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """A message that cannot be taken: stored raw with the reason, answered negatively or ACKed."""

    protocol: str
    reason: str
    #: "message_rejected" for content the adapter refused; "intake_failed" for an unexpected error.
    event: str = "message_rejected"
    #: HL7: "E" (AE) or "R" (AR), and the table 0357 code for ERR-3.
    kind: str = "E"
    error_code: str = "207"
    error_type: str = ""
    context: Any = None


class Pipeline:
    """Turns a decoded message into stored, evaluated, queued results (one commit)."""

    def __init__(self, settings: Settings, store: Store, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    @property
    def _by_specimen(self) -> bool:
        """Whether results go one ORU per specimen (``lis.group = "specimen"``, the default)."""
        return self.settings.lis is None or self.settings.lis.group == "specimen"

    # --- off the store thread --------------------------------------------------------------------
    def prepare(self, analyzer: AnalyzerSettings, decoded: Decoded, now: datetime,
                history: History | None = None) -> Decoded:
        """Judge every result and build its ORU off the store thread, so the store thread does not.

        A result whose rules read the patient's history is judged on a snapshot read from
        ``history`` (a read-only connection); :meth:`commit` reads it again in its transaction and
        judges there only if it changed. Without ``history`` such results are left to the
        transaction. Pure CPU apart from that read; raises nothing.
        """
        prejudged: list[Judged | None] = []
        inputs = autoverify.static_inputs(self.settings, analyzer)
        grouped = self._by_specimen
        for result in decoded.results:
            method = self._method(analyzer, result)
            try:
                snapshot = None
                if _needs_history(result, method):
                    if history is None:
                        prejudged.append(None)
                        continue
                    snapshot = self._history(history, result, method)
                evaluation = self._finish(result, judge(result, method, previous=snapshot[0], related=snapshot[1],
                                                        **inputs)
                                          if snapshot is not None else judge(result, method, **inputs))
                payload = None
                # One ORU per specimen (the default) is built in the transaction, from the whole group.
                if not evaluation.hold and not grouped:
                    payload = oru_for(self.settings, result, evaluation, method, CID_PLACEHOLDER, now)
            except Exception:  # noqa: BLE001 - anything odd is judged in the transaction, as before
                prejudged.append(None)
                continue
            prejudged.append(Judged(evaluation=evaluation, history=snapshot, payload=payload))
        return replace(decoded, prejudged=tuple(prejudged))

    def _history(self, source: History, result: Result,
                 method: Method | None) -> tuple[PreviousResult | None, tuple[RelatedResult, ...]]:
        return self._previous(source, result, method), tuple(self._related(source, result, method))

    @staticmethod
    def _finish(result: Result, evaluation: Evaluation) -> Evaluation:
        if not result.status:
            return replace(evaluation, notes=(*evaluation.notes, NO_STATUS_NOTE))
        return evaluation

    # --- on the store thread ---------------------------------------------------------------------
    def commit(self, analyzer: AnalyzerSettings, item: Decoded | Rejected, raw: bytes, peer: str, now: datetime,
               *, confirmed_id: int | None = None) -> Outcome:
        """Store one message and everything it leads to, in one transaction; never raises but StoreError.

        ``confirmed_id``: the id of the last message on this link whose final ACK the analyzer is
        known to have received (it is then not taken for a resend).

        Raises:
            StoreError: nothing was committed; the peer must get a negative answer.
        """
        digest = hashlib.sha256(raw).hexdigest()
        if isinstance(item, Rejected):
            return self.store_rejected(analyzer, item, raw=raw, digest=digest, peer=peer, now=now)
        try:
            return self._store_decoded(analyzer, item, raw=raw, digest=digest, peer=peer, now=now,
                                       confirmed_id=confirmed_id)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the intake boundary: rolled back, kept as rejected
            failed = Rejected(protocol=item.protocol, event="intake_failed", reason=f"{type(exc).__name__}: {exc}",
                              error_type=type(exc).__name__, kind="E", error_code="207", context=item.context)
            return self.store_rejected(analyzer, failed, raw=raw, digest=digest, peer=peer, now=now)

    def store_rejected(self, analyzer: AnalyzerSettings, item: Rejected, *, raw: bytes, digest: str, peer: str,
                       now: datetime) -> Outcome:
        """Keep a message's raw bytes and audit why it was not taken (one commit)."""
        with self.store.transaction(now) as tx:
            message_id = tx.add_message(analyzer=analyzer.name, protocol=item.protocol, peer=peer, raw=raw,
                                        sha256=digest, outcome="rejected")
            data: dict[str, Any] = {"sha256": digest, "bytes": len(raw), "peer": peer, "protocol": item.protocol,
                                    "reason": item.reason}
            if item.error_type:
                data["error_type"] = item.error_type
            tx.audit(item.event, analyzer=analyzer.name, ref=str(message_id), data=data)
        return Outcome(message_id=message_id, problems=1, rejected_reason=item.reason)

    def _store_decoded(self, analyzer: AnalyzerSettings, item: Decoded, *, raw: bytes, digest: str, peer: str,
                       now: datetime, confirmed_id: int | None) -> Outcome:
        with self.store.transaction(now) as tx:
            earlier = self._resend_of(tx, analyzer, item.resend, now, confirmed_id)
            if earlier.duplicate_of is not None:
                tx.audit("duplicate_message", analyzer=analyzer.name, ref=str(earlier.duplicate_of),
                         data={"protocol": item.protocol, "sha256": digest, "bytes": len(raw), "peer": peer,
                               "control_id": item.resend.control_id if item.resend else "",
                               "original_message_id": earlier.duplicate_of})
                return Outcome(message_id=earlier.duplicate_of, duplicate=True)
            message_id = tx.add_message(analyzer=analyzer.name, protocol=item.protocol, peer=peer, raw=raw,
                                        sha256=digest, outcome="accepted")
            results = item.results
            tx.audit("message_received", analyzer=analyzer.name, ref=str(message_id),
                     data={"sha256": digest, "bytes": len(raw), "peer": peer, "protocol": item.protocol,
                           "sender": item.sender, "results": len(results),
                           "specimens": sorted({r.specimen_id for r in results if r.specimen_id}),
                           "patients": sorted({r.patient_id for r in results if r.patient_id}),
                           **({"problems": list(item.problems)} if item.problems else {})})
            for note in item.notes:
                tx.audit(note.event, analyzer=analyzer.name, specimen=note.specimen, ref=str(message_id),
                         data=note.data)
            if earlier.reused_by is not None and item.resend is not None:
                tx.audit("control_id_reused", analyzer=analyzer.name, ref=str(message_id),
                         data={"control_id": item.resend.control_id, "sender": item.sender,
                               "earlier_message_id": earlier.reused_by, "level": "warning"})
            prejudged = item.prejudged or (None,) * len(results)
            # QC (labmw.qc): control results are stored and judged first, never forwarded to the LIS.
            _, controls = split_controls(self.settings, analyzer, results)
            queued, held = 0, store_controls(tx, self.settings, analyzer, message_id, controls)
            judged = {id(result) for result, _ in controls}
            # lis.group "specimen": results are collected here and queued one ORU per specimen.
            ready: list[Ready] | None = [] if self._by_specimen else None
            # The gate policy with the kill switches in force now: one read for the message's results.
            inputs = autoverify.evaluate_inputs(self.settings, analyzer, tx) if len(judged) < len(results) else None
            for result, evaluation in zip(results, prejudged, strict=True):
                if id(result) in judged:
                    continue
                if self._store_result(tx, analyzer, message_id, digest, result, evaluation, ready=ready,
                                      inputs=inputs):
                    held += 1
                else:
                    queued += 1
            if ready:
                late = queue_by_specimen(tx, self.settings, ready, lambda rid: control_id(self.store.install_id, rid))
                held, queued = held + late, queued - late
            record_gates(tx, analyzer, message_id, results)
            if item.resend is not None:
                key = item.resend
                tx.add_inbound_key(message_id=message_id, analyzer=analyzer.name,
                                   sending_application=key.sending_application or item.sender,
                                   sending_facility=key.sending_facility, control_id=key.control_id,
                                   content_sha256=key.content)
        return Outcome(message_id=message_id, results=len(results), queued=queued, held=held,
                       problems=len(item.problems), replies=item.replies)

    def _resend_of(self, tx: Tx, analyzer: AnalyzerSettings, key: ResendKey | None, now: datetime,
                   confirmed_id: int | None) -> _Earlier:
        if key is None or key.scope == "record":
            return _Earlier()
        if key.scope == "link":
            last = tx.last_inbound_key(analyzer=analyzer.name)
            if last is None:
                return _Earlier()
            message_id, content, received_at = last
            resend = content == key.content and received_at >= now - ASTM_RESEND_WINDOW and message_id != confirmed_id
            return _Earlier(duplicate_of=message_id if resend else None)
        earlier = tx.inbound_keys(analyzer=analyzer.name, sending_application=key.sending_application,
                                  sending_facility=key.sending_facility, control_id=key.control_id,
                                  since=now - DUPLICATE_WINDOW)
        same = next((message_id for message_id, h in earlier if h == key.content), None)
        return _Earlier(duplicate_of=same, reused_by=earlier[0][0] if earlier and same is None else None)

    def _method(self, analyzer: AnalyzerSettings, result: Result) -> Method | None:
        name = method_for(analyzer.map, result)  # the full test identifier first, then the code
        return self.settings.methods.get(name) if name else None

    def _store_result(self, tx: Tx, analyzer: AnalyzerSettings, message_id: int, digest: str, result: Result,
                      judged: Judged | None, ready: list[Ready] | None = None,
                      inputs: dict[str, Any] | None = None) -> bool:
        """Store, audit and queue (or hold) one result, judged here unless done off the thread; True when held.

        ``inputs``: :func:`autoverify.evaluate_inputs` read in this transaction (read here without).
        """
        method = self._method(analyzer, result)
        corrected = (tx.corrected_result(analyzer=analyzer.name, specimen=result.specimen_id,
                                         test_code=result.test_code)
                     if result.status == "C" and result.specimen_id else None)
        previous: PreviousResult | None = None
        evaluation: Evaluation | None = None
        related: tuple[RelatedResult, ...] | list[RelatedResult] = ()
        # The gate policy with the kill switches in force now (read in the judging transaction).
        if inputs is None:
            inputs = autoverify.evaluate_inputs(self.settings, analyzer, tx)
        # The QC state of this analyzer x method, read here too (labmw.qc): None when no control applies.
        gate = qc_gate(tx, self.settings, analyzer.name, method.name if method else None)
        inputs = {**inputs, "qc": gate}
        try:
            if judged is not None and judged.history is not None:
                # The snapshot the judgement used must still be the history now, in this transaction.
                if self._history(tx, result, method) != judged.history:
                    judged = None
            if judged is not None:
                evaluation, previous = judged.evaluation, judged.history[0] if judged.history else None
                if gate is not None or autoverify.suspended(inputs, result, method):
                    # Judged off the thread without the store's state (QC, kill switches): judged again with it.
                    related = judged.history[1] if judged.history else ()
                    evaluation, judged = None, None
            else:
                previous = self._previous(tx, result, method)
                related = self._related(tx, result, method)
        except (ArithmeticError, ValueError) as exc:
            # A time no window can be computed from (year 1, say): the history cannot be read,
            # so the result cannot be judged: held for a person with the reason.
            evaluation = self._finish(result, _held_evaluation(
                method, f"history could not be read: {type(exc).__name__}: {exc}"))
            judged = None
        if evaluation is None:
            evaluation = self._finish(result, judge(result, method, previous=previous, related=related, **inputs))
        evaluation = apply_gates(result, evaluation)  # NO_SPECIMEN_ID, TEST_CODE_MISSING, IDENTITY_COLLISION
        state = "held" if evaluation.hold else "queued"
        result_id = tx.add_result(message_id=message_id, result=result, evaluation=evaluation, state=state)
        autoverify.after_store(tx, result_id, evaluation)
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
        # One event per result: what arrived, how the rules judged it and where it went (CLINICAL.md
        # 6.2 wants the rule inputs and the decision; one row keeps them together and the trail small).
        received: dict[str, Any] = {
            "message_id": message_id, "sha256": digest, "test_code": result.test_code,
            "test_id": result.identity, "gates": list(result.gates),
            "raw_value": result.raw_value, "units": result.units, "instrument_flags": list(result.instrument_flags),
            "status": result.status, "collected_at": _iso(result.collected_at),
            "completed_at": _iso(result.completed_at), "evaluation": _evaluation_record(evaluation, previous)}
        if evaluation.hold:
            tx.audit("result_received", **who, ref=str(result_id), data={**received, "state": "held"})
            tx.audit("result_held", **who, ref=str(result_id),
                     data={"notes": list(evaluation.notes), "gates": list(evaluation.gates),
                           "review_notes": list(evaluation.review_notes)})
            return True
        if ready is not None:  # queued with the rest of its specimen (labmw.daemon.grouping)
            ready.append(Ready(result_id=result_id, result=result, evaluation=evaluation, method=method,
                               received=received))
            return False
        cid = control_id(self.store.install_id, result_id)
        try:
            prebuilt = judged.payload if judged is not None else None
            if prebuilt is not None and prebuilt.count(CID_PLACEHOLDER.encode()) == 1:
                payload = prebuilt.replace(CID_PLACEHOLDER.encode(), cid.encode())
            else:
                payload = oru_for(self.settings, result, evaluation, method, cid, tx.now)
        except LabmwError as exc:
            # Not sendable as it stands (e.g. no test code for OBX-3): visibly held, never dropped.
            note = f"cannot build the message for the LIS, held for review: {exc}"
            tx.hold_result(result_id, notes=evaluation.notes)
            tx.record_gates(result_id, replace(evaluation, hold=True, review_notes=(*evaluation.review_notes, note)))
            tx.audit("result_received", **who, ref=str(result_id), data={**received, "state": "held"})
            tx.audit("result_held", **who, ref=str(result_id), data={"notes": [note]})
            return True
        outbox_id = tx.enqueue(result_id=result_id, control_id=cid, payload=payload)
        tx.audit("result_received", **who, ref=str(result_id),
                 data={**received, "state": "queued", "outbox_id": outbox_id, "control_id": cid})
        return False

    def _previous(self, tx: History, result: Result, method: Method | None) -> PreviousResult | None:
        window_days = method.delta_window_days if method is not None else None
        if method is None or window_days is None or not result.patient_id or result.value is None:
            return None
        at = result.collected_at or result.completed_at
        if at is None:
            return None
        return tx.previous_result(patient_id=result.patient_id, method=method.name, before=at,
                                  not_before=at - timedelta(days=float(window_days)),
                                  other_than_specimen=result.specimen_id, patient_authority=result.patient_authority)

    def _related(self, tx: History, result: Result, method: Method | None) -> list[RelatedResult]:
        """The patient's other analytes around this collection, for the Hy's-law note (when enabled)."""
        rule = method.hys_law if method is not None else None
        at = result.collected_at or result.completed_at
        if method is None or rule is None or not rule.enabled or not result.patient_id or at is None:
            return []
        related = []
        hours = float(rule.window_hours)
        for name, value, applied, collected, specimen in tx.recent_results(
                patient_id=result.patient_id, around=at, hours=hours, other_than_method=method.name,
                patient_authority=result.patient_authority):
            other = self.settings.methods.get(name)
            uln = _upper(applied)
            if other is not None and uln is not None:
                related.append(RelatedResult(analyte=other.analyte, value=value, uln=uln, collected_at=collected,
                                             method=name, specimen_id=specimen))
        return related


@dataclass(frozen=True, slots=True)
class _Earlier:
    duplicate_of: int | None = None  # message id of the identical earlier message (a resend)
    reused_by: int | None = None  # message id of an earlier, different message with the same HL7 key


def judge(result: Result, method: Method | None, **context: Any) -> Evaluation:
    """The one place a mapped result is judged: the rules engine, holding on anything it cannot decide.

    ``context`` goes to :func:`labmw.rules.engine.evaluate` as keyword arguments (``previous``,
    ``related``, and whatever later gates need). Pure; raises nothing: a rule that cannot be applied
    as configured, or a value no rule foresaw (a 40-digit number), holds the result for a person.
    """
    try:
        return evaluate(result, method, **context)
    except Exception as exc:  # noqa: BLE001 - fail closed (PRODUCT.md): never released by default
        return _held_evaluation(method, f"{type(exc).__name__}: {exc}")


def _held_evaluation(method: Method | None, error: str) -> Evaluation:
    return Evaluation(method=method.name if method else None, hold=True,
                      notes=(f"rules could not be applied, held for review: {error}",),
                      decisions=(Decision(rule="engine", outcome="error", inputs={"error": error}),))


def _needs_history(result: Result, method: Method | None) -> bool:
    """Whether judging ``result`` reads the patient's earlier results (delta check, Hy's law)."""
    if method is None or not result.patient_id or (result.collected_at or result.completed_at) is None:
        return False
    delta = method.delta_window_days is not None and result.value is not None
    hys = method.hys_law is not None and method.hys_law.enabled
    return delta or hys


NO_STATUS_NOTE = "the instrument sent no result status: treated and forwarded as final (F)"


def oru_for(settings: Settings, result: Result, evaluation: Evaluation, method: Method | None, cid: str,
            now: datetime) -> bytes:
    """The ORU^R01 for one result (shared by the pipeline and review releases).

    OBX-11 is required: a result the instrument sent without a status goes out as F, which is how
    the rules treated it, and the NTE says so.

    Raises:
        MappingError: the result cannot be expressed as an ORU (e.g. no test code).
    """
    return oru_of(settings, ((result, evaluation, method),), cid, now)


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
        "gates": list(evaluation.gates), "flagged_gates": list(evaluation.flagged_gates),
        "review_notes": list(evaluation.review_notes), "rules_version": evaluation.rules_version,
        "previous": None if previous is None else {"value": str(previous.value),
                                                    "collected_at": previous.collected_at.isoformat(),
                                                    "specimen": previous.specimen_id},
    }

"""One HL7 message from an analyzer -> stored results -> the acknowledgement bytes.

Runs synchronously on the store thread (like :meth:`Pipeline.handle_astm`), so the duplicate
lookup, the results and their duplicate key are seen and written by one thread in order; the
pump writes the returned ACK only after this returned, i.e. after the commit.

Outcomes (HL7.md 1.2-1.4, nuggets 5-8, 10):

* stored -> AA; a true duplicate (same analyzer, MSH-3, MSH-4, MSH-10 and SHA-256 of the payload
  without MSH-7 within :data:`DUPLICATE_WINDOW`) -> AA again, not processed twice, audited
  ``duplicate_message``; same MSH-10 with other content (a counter-resetting sender) -> processed,
  audited ``control_id_reused``.
* content error (undecodable, bad segment ID, required field missing) -> raw bytes stored via
  ``store_rejected`` with the reason, AE (ERR-3 100 or 101).
* unsupported message type/event/version/processing ID -> raw stored, AR (ERR-3 200-203).
* storage failure -> AE with ERR-3 207 and nothing committed; never AA.
* a message of type ACK -> logged and dropped, nothing sent (never ACK an ACK: txHL7#5).

Acknowledgement modes: original mode (MSH-15 and MSH-16 both empty) answers AA/AE/AR. Enhanced mode
answers the accept ACK CA/CE/CR when MSH-15 asks for it (AL, or ER/SU matching the outcome). When
MSH-15 declines (NE, or empty) but MSH-16 asks for an application ACK - IHE LAW analyzers send
``NE|AL`` - the application ACK AA/AE/AR is sent at once on the same connection: processing is
complete at commit, and that is what LAB-29 expects. labmw never sends a separate, later
application ACK on a connection of its own; when an accept ACK was sent, it is the only answer.
Values outside table 0155 (Mindray puts a result type in MSH-16) count as empty. A negative outcome
is answered even when MSH-15/16 say NE: the sender must learn that the message was not taken.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from labmw.config import AnalyzerSettings
from labmw.daemon.hl7_query import answer_hl7_query, is_order_query
from labmw.daemon.pipeline import Pipeline
from labmw.errors import CodecError, LabmwError, MappingError, StoreError
from labmw.mapping.hl7_inbound import (
    Hl7Header,
    UnsupportedMessage,
    content_digest,
    first_segment,
    map_hl7,
    read_header,
)
from labmw.store import Tx
from labmw.transports.hl7_pump import new_control_id, unaddressed_ack
from labmw.wire.hl7_codec import ENCODING_CHARS, build_ack, escape

log = structlog.get_logger(__name__)

from labmw.daemon.pipeline import DUPLICATE_WINDOW  # noqa: E402 - one window for every protocol
ACK_TYPES = frozenset({"AL", "NE", "ER", "SU"})  # table 0155
_TEXT_LIMIT = 80  # MSA-3 is ST(80) in v2.5.1


@dataclass(frozen=True, slots=True, kw_only=True)
class _Seen:
    duplicate_of: int | None  # message id of the identical earlier message
    reused_by: int | None  # message id of an earlier, different message with the same key


def ack_code(header: Hl7Header | None, outcome: str) -> str | None:
    """Which acknowledgement the sender asked for, for ``outcome`` ``"A"``/``"E"``/``"R"``.

    Output: a table 0008 code, or None when the sender asked for no acknowledgement at all.
    Raises: nothing.
    """
    accept = header.accept_ack if header is not None and header.accept_ack in ACK_TYPES else ""
    application = header.application_ack if header is not None and header.application_ack in ACK_TYPES else ""
    if not accept and not application:
        return "A" + outcome  # original mode
    if _wanted(accept, outcome):
        return "C" + outcome
    if _wanted(application, outcome):
        return "A" + outcome
    return None


def _wanted(kind: str, outcome: str) -> bool:
    return kind == "AL" or (kind == "ER" and outcome != "A") or (kind == "SU" and outcome == "A")


class Hl7Intake:
    """Stores HL7 messages from analyzers through a :class:`Pipeline` and builds their ACKs."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.last_results = 0  # results stored by the last handle() (for `labmw status`)

    def handle(self, analyzer: AnalyzerSettings, payload: bytes, peer: str) -> bytes:
        """Store one message (no MLLP framing) and return the ACK to send (``b""``: send nothing).

        Runs on the store thread. Raises: nothing for anything the peer sent; any failure to
        store becomes an AE with ERR-3 207 and nothing committed.
        """
        now = self.pipeline.clock()
        self.last_results = 0
        digest = hashlib.sha256(payload).hexdigest()
        context = {"analyzer": analyzer.name, "peer": peer}
        try:
            header = read_header(payload, encoding=analyzer.encoding, lf_segments=analyzer.lf_segments)
        except CodecError as exc:
            return self._reject(analyzer, payload, digest, peer, now, None, "E", "100", str(exc))
        if header.message_type == "ACK":
            log.warning("hl7_ack_dropped", control_id=header.control_id, **context)
            return b""
        if is_order_query(header.message_type, header.trigger):  # IHE LAW LAB-27: "no order" at once
            try:
                answer = answer_hl7_query(self.pipeline, analyzer, payload, peer, now)
            except StoreError as exc:
                return self._store_failed(analyzer, payload, header, now, exc)
            if answer is not None:
                return answer
        try:
            mapped = map_hl7(payload, analyzer=analyzer.name, encoding=analyzer.encoding,
                             specimen_field=analyzer.specimen_field, lf_segments=analyzer.lf_segments)
        except UnsupportedMessage as exc:
            return self._reject(analyzer, payload, digest, peer, now, header, "R", exc.code, str(exc))
        except CodecError as exc:
            return self._reject(analyzer, payload, digest, peer, now, header, "E", "100", str(exc))
        except MappingError as exc:
            return self._reject(analyzer, payload, digest, peer, now, header, "E", "101", str(exc))
        key_hash = content_digest(payload)
        try:
            seen = self._seen(analyzer, header, key_hash, now, payload, peer)
        except StoreError as exc:
            return self._store_failed(analyzer, payload, header, now, exc)
        if seen.duplicate_of is not None:
            log.info("hl7_duplicate_acknowledged", control_id=header.control_id, message_id=seen.duplicate_of,
                     **context)
            return self._ack(analyzer, payload, header, now, "A")

        def keep_key(tx: Tx, message_id: int) -> None:
            tx.add_inbound_key(message_id=message_id, analyzer=analyzer.name,
                               sending_application=header.sending_application,
                               sending_facility=header.sending_facility, control_id=header.control_id,
                               content_sha256=key_hash)
            if seen.reused_by is not None:
                tx.audit("control_id_reused", analyzer=analyzer.name, ref=str(message_id),
                         data={"control_id": header.control_id, "sender": header.sender,
                               "earlier_message_id": seen.reused_by, "level": "warning"})

        try:
            outcome = self.pipeline.store_mapped(
                analyzer, protocol="hl7", raw=payload, digest=digest, peer=peer, sender=header.sender,
                results=mapped.results, problems=mapped.problems, now=now, before_commit=keep_key)
        except StoreError as exc:
            return self._store_failed(analyzer, payload, header, now, exc)
        except LabmwError as exc:  # rules or ORU encoding refused it: rolled back, keep it as rejected
            return self._reject(analyzer, payload, digest, peer, now, header, "E", "207", str(exc))
        self.last_results = outcome.results
        if seen.reused_by is not None:
            log.warning("hl7_control_id_reused", control_id=header.control_id, message_id=outcome.message_id,
                        **context)
        log.info("hl7_message_stored", control_id=header.control_id, message_id=outcome.message_id,
                 results=outcome.results, queued=outcome.queued, held=outcome.held, problems=outcome.problems,
                 **context)
        return self._ack(analyzer, payload, header, now, "A")

    def not_stored(self, analyzer: AnalyzerSettings, payload: bytes, exc: StoreError) -> bytes:
        """The answer when the group commit that held this message failed after :meth:`handle` returned.

        Same as a failure inside :meth:`handle` (AE, or CE in enhanced mode, ERR-3 207); nothing to
        an ACK. Runs on the event loop: it only reads the MSH and builds bytes.
        """
        try:
            header: Hl7Header | None = read_header(payload, encoding=analyzer.encoding,
                                                   lf_segments=analyzer.lf_segments)
        except CodecError:
            header = None
        if header is not None and header.message_type == "ACK":
            return b""  # never ACK an ACK (HL7.md nugget 10)
        return self._store_failed(analyzer, payload, header, self.pipeline.clock(), exc)

    def _seen(self, analyzer: AnalyzerSettings, header: Hl7Header, key_hash: str, now: datetime, payload: bytes,
              peer: str) -> _Seen:
        """Look the key up; audit a true duplicate in the same transaction (raises StoreError)."""
        with self.pipeline.store.transaction(now) as tx:
            earlier = tx.inbound_keys(analyzer=analyzer.name, sending_application=header.sending_application,
                                      sending_facility=header.sending_facility, control_id=header.control_id,
                                      since=now - DUPLICATE_WINDOW)
            same = next((message_id for message_id, h in earlier if h == key_hash), None)
            if same is not None:
                tx.audit("duplicate_message", analyzer=analyzer.name, ref=str(same),
                         data={"control_id": header.control_id, "sender": header.sender,
                               "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload), "peer": peer,
                               "original_message_id": same})
            return _Seen(duplicate_of=same, reused_by=earlier[0][0] if earlier and same is None else None)

    def _reject(self, analyzer: AnalyzerSettings, payload: bytes, digest: str, peer: str, now: datetime,
                header: Hl7Header | None, outcome: str, error_code: str, reason: str) -> bytes:
        """Keep the raw bytes with the reason, then answer AE/AR (AE 207 if even that fails)."""
        code = ack_code(header, outcome) or "A" + outcome
        try:
            stored = self.pipeline.store_rejected(analyzer, protocol="hl7", raw=payload, digest=digest, peer=peer,
                                                  reason=f"{code} {error_code}: {reason}", now=now)
        except StoreError as exc:
            return self._store_failed(analyzer, payload, header, now, exc)
        log.warning("hl7_message_rejected", ack=code, error_code=error_code, message_id=stored.message_id,
                    control_id=header.control_id if header else "", analyzer=analyzer.name, peer=peer)
        return self._build(analyzer, payload, header, now, code, error_code, reason)

    def _store_failed(self, analyzer: AnalyzerSettings, payload: bytes, header: Hl7Header | None, now: datetime,
                      exc: StoreError) -> bytes:
        # Never silent, whatever MSH-15/16 say: the sender must keep the message (HL7.md 1.3 #5).
        log.error("hl7_message_not_stored", error=str(exc), analyzer=analyzer.name,
                  control_id=header.control_id if header else "")
        code = ack_code(header, "E") or "AE"
        return self._build(analyzer, payload, header, now, code, "207", "message not stored, send it again")

    def _ack(self, analyzer: AnalyzerSettings, payload: bytes, header: Hl7Header, now: datetime,
             outcome: str) -> bytes:
        code = ack_code(header, outcome)
        if code is None:
            log.info("hl7_ack_not_requested", control_id=header.control_id, analyzer=analyzer.name)
            return b""
        return self._build(analyzer, payload, header, now, code, None, "")

    def _build(self, analyzer: AnalyzerSettings, payload: bytes, header: Hl7Header | None, now: datetime,
               code: str, error_code: str | None, text: str) -> bytes:
        """build_ack on the inbound MSH alone (the rest may be what failed), else on what we read of it."""
        text = text[:_TEXT_LIMIT]
        if header is None:
            return unaddressed_ack(code, text=text, error_code=error_code or "207", now=now)
        # The inbound MSH as sent echoes MSH-3/4 byte for byte; if python-hl7 cannot read it after
        # our own parser could, rebuild it from the header so a stored message still gets its AA.
        attempts = ((first_segment(payload) + b"\r", analyzer.encoding), (first_segment(payload) + b"\r", "latin-1"),
                    (_msh_from(header), "utf-8"))
        for msh, encoding in attempts:
            try:
                return build_ack(msh, code, text=text, error_code=error_code, control_id=new_control_id(), now=now,
                                 encoding=encoding)
            except CodecError:
                continue
        return unaddressed_ack("AE", text=text, error_code=error_code or "207", now=now)


def _msh_from(header: Hl7Header) -> bytes:
    fields = ("MSH", ENCODING_CHARS, escape(header.sending_application), escape(header.sending_facility), "", "", "",
              "", f"{escape(header.message_type)}^{escape(header.trigger)}", escape(header.control_id),
              escape(header.processing_id), escape(header.version))
    return "|".join(fields).encode("utf-8") + b"\r"

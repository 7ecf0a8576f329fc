"""The HL7 side of the intake: one MLLP payload -> :class:`Decoded` / :class:`Rejected`, and its ACK.

Pure (no store, no I/O): runs off the store thread, before and after the commit.

Outcomes (HL7.md 1.2-1.4, nuggets 5-8, 10):

* stored -> AA; a true duplicate (same analyzer, MSH-3, MSH-4, MSH-10 and SHA-256 of the payload
  without MSH-7 within :data:`~labmw.daemon.pipeline.DUPLICATE_WINDOW`) -> AA again, not processed
  twice, audited ``duplicate_message``; same MSH-10 with other content (a counter-resetting sender)
  -> processed, audited ``control_id_reused``.
* content error (undecodable, bad segment ID, required field missing) -> raw bytes stored with the
  reason, AE (ERR-3 100 or 101).
* unsupported message type/event/version/processing ID -> raw stored, AR (ERR-3 200-203).
* anything unexpected while storing -> raw stored as ``intake_failed``, AE (ERR-3 207).
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

from collections.abc import Callable
from datetime import datetime

from labmw.config import AnalyzerSettings
from labmw.daemon.pipeline import AuditNote, Decoded, Rejected, ResendKey
from labmw.errors import CodecError, MappingError
from labmw.mapping.hl7_inbound import (
    Hl7Header,
    UnsupportedMessage,
    content_digest,
    first_segment,
    map_hl7,
    read_header,
)
from labmw.mapping.hl7_query import OrderQuery, answer_order_query, is_order_query, read_order_query
from labmw.model import Outcome
from labmw.wire.hl7_codec import ENCODING_CHARS, build_ack, escape, new_control_id, unaddressed_ack

ACK_TYPES = frozenset({"AL", "NE", "ER", "SU"})  # table 0155
_TEXT_LIMIT = 80  # MSA-3 is ST(80) in v2.5.1
NOT_STORED = "message not stored, send it again"


class Ignored:
    """A payload that is not a message to store or answer (an HL7 ACK sent to us)."""

    def __init__(self, reason: str, control_id: str = "") -> None:
        self.reason = reason
        self.control_id = control_id


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


class Hl7Adapter:
    """Decodes one analyzer's HL7 messages and builds the ACK for each outcome."""

    protocol = "hl7"

    def __init__(self, analyzer: AnalyzerSettings, clock: Callable[[], datetime]) -> None:
        self.analyzer = analyzer
        self.clock = clock

    def decode(self, payload: bytes) -> Decoded | Rejected | Ignored:
        """One payload (no MLLP framing) -> what to store. Content errors become :class:`Rejected`."""
        analyzer = self.analyzer
        try:
            header = read_header(payload, encoding=analyzer.encoding, lf_segments=analyzer.lf_segments)
        except CodecError as exc:
            return Rejected(protocol=self.protocol, reason=f"AE 100: {exc}", kind="E", error_code="100")
        if header.message_type == "ACK":
            return Ignored("an ACK is never acknowledged", header.control_id)
        if is_order_query(header.message_type, header.trigger):  # IHE LAW LAB-27: "no order" at once
            try:
                query = read_order_query(payload, analyzer.encoding)
            except CodecError:
                pass  # not a readable QBP: refused below as an unsupported message type
            else:
                note = AuditNote(event="host_query_received", specimen=query.specimen_id,
                                 data={"protocol": "hl7", "control_id": query.control_id, "query_tag": query.tag,
                                       "query_name": query.name, "answer": "RSP^K11 NF (no order)"})
                return Decoded(protocol=self.protocol, sender=header.sender, results=(), notes=(note,),
                               context=query)
        try:
            mapped = map_hl7(payload, analyzer=analyzer.name, encoding=analyzer.encoding,
                             specimen_field=analyzer.specimen_field, lf_segments=analyzer.lf_segments)
        except UnsupportedMessage as exc:
            return self._rejected(header, "R", exc.code, str(exc))
        except CodecError as exc:
            return self._rejected(header, "E", "100", str(exc))
        except MappingError as exc:
            return self._rejected(header, "E", "101", str(exc))
        return Decoded(protocol=self.protocol, sender=header.sender, results=tuple(mapped.results),
                       problems=tuple(mapped.problems), context=header,
                       resend=ResendKey(scope="sender", content=content_digest(payload),
                                        sending_application=header.sending_application,
                                        sending_facility=header.sending_facility, control_id=header.control_id))

    def _rejected(self, header: Hl7Header, kind: str, error_code: str, reason: str) -> Rejected:
        code = ack_code(header, kind) or "A" + kind
        return Rejected(protocol=self.protocol, reason=f"{code} {error_code}: {reason}", kind=kind,
                        error_code=error_code, context=header)

    def answer(self, item: Decoded | Rejected | Ignored | None, outcome: Outcome, payload: bytes = b"") -> bytes:
        """The ACK for ``outcome`` (no MLLP framing); b"" when none is to be sent. Raises nothing."""
        if isinstance(item, Ignored):
            return b""
        now = self.clock()
        if isinstance(item, Decoded) and isinstance(item.context, OrderQuery):
            if outcome.stored and not outcome.rejected_reason:
                return answer_order_query(item.context, control_id=new_control_id(), now=now)
            return unaddressed_ack("AE", text=NOT_STORED, error_code="207", now=now)
        header: Hl7Header | None = item.context if item is not None else None
        if not outcome.stored:
            # Never silent, whatever MSH-15/16 say: the sender must keep the message (HL7.md 1.3 #5).
            return self._build(payload, header, now, ack_code(header, "E") or "AE", "207", NOT_STORED)
        if outcome.rejected_reason:
            if isinstance(item, Rejected):
                kind, error_code, text = item.kind, item.error_code, item.reason.split(": ", 1)[-1]
            else:  # stored as intake_failed by the pipeline's own boundary
                kind, error_code, text = "E", "207", outcome.rejected_reason
            return self._build(payload, header, now, ack_code(header, kind) or "A" + kind, error_code, text)
        code = ack_code(header, "A")
        if code is None:
            return b""
        return self._build(payload, header, now, code, None, "")

    def header_of(self, payload: bytes) -> Hl7Header | None:
        try:
            return read_header(payload, encoding=self.analyzer.encoding, lf_segments=self.analyzer.lf_segments)
        except CodecError:
            return None

    def _build(self, payload: bytes, header: Hl7Header | None, now: datetime, code: str, error_code: str | None,
               text: str) -> bytes:
        """build_ack on the inbound MSH alone (the rest may be what failed), else on what we read of it."""
        text = text[:_TEXT_LIMIT]
        if header is None:
            return unaddressed_ack(code, text=text, error_code=error_code or "207", now=now)
        # The inbound MSH as sent echoes MSH-3/4 byte for byte; if python-hl7 cannot read it after
        # our own parser could, rebuild it from the header so a stored message still gets its AA.
        attempts = ((first_segment(payload) + b"\r", self.analyzer.encoding),
                    (first_segment(payload) + b"\r", "latin-1"), (_msh_from(header), "utf-8"))
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

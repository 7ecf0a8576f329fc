"""IHE LAW order queries (LAB-27, QBP^Q11) answered "no order" at once with RSP^K11.

labmw's scope is results: like an ASTM host query (labmw.mapping.astm_query), a LAW analyzer's
query for the work order of a specimen is answered at once, so the analyzer never waits on a LIS
that labmw does not ask. The answer (IHE PaLM TF-2a LAB-27, HL7 v2.5.1 ch. 5):

    MSH ... RSP^K11^RSP_K11 ... | MSA|AA|<query MSH-10> | QAK|<QPD-2 tag>|NF|<QPD-1> | QPD (echoed)

QAK-2 ``NF`` is "no data found" (table 0208): the analyzer learns there is no order for the specimen.
The QPD is echoed as sent (LAB-27 requires it), the MSH addressed back to the sender.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from labmw.errors import CodecError
from labmw.wire.hl7_codec import ENCODING_CHARS, SEGMENT_SEP, escape, format_ts, join_segment

__all__ = ["OrderQuery", "answer_order_query", "is_order_query", "read_order_query"]


def is_order_query(message_type: str, trigger: str) -> bool:
    """QBP^Q11: an IHE LAW analyzer asking for the work order of a specimen (LAB-27)."""
    return (message_type, trigger) == ("QBP", "Q11")


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderQuery:
    """What a QBP^Q11 asks: the query tag (QPD-2), its name (QPD-1) and the specimen (QPD-3), as sent."""

    control_id: str  # MSH-10
    msh: list[str]  # MSH fields, MSH-1 at index 1
    qpd: str  # the QPD segment as sent
    tag: str
    name: str
    specimen_id: str


def read_order_query(payload: bytes, encoding: str) -> OrderQuery:
    """Read MSH and QPD of a QBP message. Raises CodecError when there is no MSH or QPD."""
    text = payload.decode(encoding, errors="replace").replace("\r\n", "\r").replace("\n", "\r")
    segments = [s for s in text.split("\r") if s.strip()]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise CodecError("QBP message does not start with an MSH segment")
    sep, comp = segments[0][3], segments[0][4]
    parts = segments[0].split(sep)
    msh = [parts[0], sep, *parts[1:]]
    qpd = next((s for s in segments if s.startswith("QPD" + sep)), None)
    if qpd is None:
        raise CodecError("QBP^Q11 without a QPD segment")
    fields = qpd.split(sep)

    def at(n: int) -> str:
        return fields[n] if n < len(fields) else ""

    # QPD-3 is the specimen in LAB-27 (SPM-2 style EIP: "ID&namespace^..."): its first sub-component.
    specimen = at(3).split(comp, 1)[0].split(msh[2][3:4] or "&", 1)[0] if len(msh) > 2 else at(3)
    return OrderQuery(control_id=msh[10] if len(msh) > 10 else "", msh=msh, qpd=qpd, tag=at(2), name=at(1),
                      specimen_id=specimen.strip())


def answer_order_query(query: OrderQuery, *, control_id: str, now: datetime,
                       sending_application: str = "LABMW") -> bytes:
    """The RSP^K11 "no order" (QAK-2 NF) for ``query``, UTF-8, segments ending in CR, no MLLP framing."""
    msh = query.msh + [""] * max(0, 13 - len(query.msh))
    segments = [
        join_segment("MSH", ENCODING_CHARS, escape(sending_application), "", msh[3], msh[4], format_ts(now), "",
                     "RSP^K11^RSP_K11", escape(control_id), msh[11] or "P", msh[12] or "2.5.1"),
        join_segment("MSA", "AA", query.control_id),
        join_segment("QAK", query.tag, "NF", query.name),
        query.qpd,
    ]
    return "".join(segment + SEGMENT_SEP for segment in segments).encode("utf-8")

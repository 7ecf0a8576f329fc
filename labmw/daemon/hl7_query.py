"""A LAW analyzer's order query (QBP^Q11) on the intake: stored, audited, answered RSP^K11 "no order" at once."""

from __future__ import annotations

import hashlib
from datetime import datetime

import structlog

from labmw.config import AnalyzerSettings
from labmw.daemon.pipeline import Pipeline
from labmw.errors import CodecError
from labmw.mapping.hl7_query import answer_order_query, read_order_query
from labmw.store import Tx
from labmw.transports.hl7_pump import new_control_id

log = structlog.get_logger(__name__)


def is_order_query(message_type: str, trigger: str) -> bool:
    return (message_type, trigger) == ("QBP", "Q11")


def answer_hl7_query(pipeline: Pipeline, analyzer: AnalyzerSettings, payload: bytes, peer: str,
                     now: datetime) -> bytes | None:
    """Store the query and return the RSP^K11 to send; None when it is not a readable QBP (answer as usual).

    Raises:
        StoreError: nothing was committed; the caller answers AE 207.
    """
    try:
        query = read_order_query(payload, analyzer.encoding)
    except CodecError:
        return None
    digest = hashlib.sha256(payload).hexdigest()

    def audit(tx: Tx, message_id: int) -> None:
        tx.audit("host_query_received", analyzer=analyzer.name, specimen=query.specimen_id, ref=str(message_id),
                 data={"protocol": "hl7", "control_id": query.control_id, "query_tag": query.tag,
                       "query_name": query.name, "answer": "RSP^K11 NF (no order)"})

    name = pipeline.settings.lis.sending_application if pipeline.settings.lis else "LABMW"
    pipeline.store_mapped(analyzer, protocol="hl7", raw=payload, digest=digest, peer=peer, sender="",
                          results=(), problems=(), now=now, before_commit=audit)
    log.info("hl7_order_query_answered", analyzer=analyzer.name, control_id=query.control_id, answer="NF")
    return answer_order_query(query, control_id=new_control_id(), now=now, sending_application=name)

"""`labmw message reprocess`: a stored message through today's mapping and rules again (e.g. after a fix).

Each result the message yields now is paired with the standing result it yielded before, by the
instrument's own text (value and units, in message order), since a mapping fix may change the test
code or specimen. Then, in one transaction (each result in a savepoint of its own):

* before delivered or queued: stored again; if its content (identity, specimen, method, flags,
  range, hold) is unchanged the new row is rolled back and nothing is sent; if it changed it goes
  out as a correction (status C) that supersedes the earlier result;
* before held or dead-lettered (never accepted by the LIS): the new result replaces it (the old row
  becomes ``reprocessed``, superseded by the new one, and leaves the review list);
* before rejected by a person: left alone; no earlier result: stored as new.

``message_reprocessed`` records who, why and what happened.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from labmw.config import Settings
from labmw.daemon.fidelity import astm_profile
from labmw.daemon.pipeline import Pipeline, utcnow
from labmw.errors import CodecError, LabmwError, UsageError
from labmw.mapping.astm_lis2a import map_message
from labmw.mapping.hl7_inbound import map_hl7
from labmw.model import Result
from labmw.store import Store
from labmw.wire.astm_events import MessageReceived
from labmw.wire.astm_frames import STX
from labmw.wire.astm_link import AWAITING_COMMIT, AstmLink
from labmw.wire.astm_records import decode_message

__all__ = ["reprocess"]

_CONTENT = ("test_code", "specimen", "method", "flags", "applied_range", "units", "raw_value", "wire")


class _Unchanged(Exception):
    """Roll the savepoint of an unchanged result back."""


def reprocess(settings: Settings, store: Store, message_id: int, *, reason: str, actor: str,
              now: datetime | None = None) -> dict[str, int]:
    """Reprocess message ``message_id``; returns counts (unchanged, corrected, replaced, new, held).

    Raises:
        UsageError: the message's analyzer is no longer configured, or the message cannot be read now.
        StoreError: no such message, or nothing could be committed.
    """
    now = now or utcnow()
    detail = store.message_detail(message_id)
    analyzer = settings.analyzers.get(detail["analyzer"])
    if analyzer is None:
        raise UsageError(f"message {message_id} came from analyzer {detail['analyzer']!r}, which is not configured")
    try:
        results = _map(detail, analyzer)
    except LabmwError as exc:
        raise UsageError(f"message {message_id} cannot be mapped with today's configuration: {exc}") from exc
    pipeline = Pipeline(settings, store, clock=lambda: now)
    summary = {"unchanged": 0, "corrected": 0, "replaced": 0, "new": 0, "held": 0}
    with store.group():
        with store.transaction(now) as tx:
            standing = tx.standing_results(message_id)
        for result in results:
            old = _pair(standing, result)
            if old is not None and old["state"] == "rejected":
                summary["unchanged"] += 1
                continue
            delivered = old is not None and old["state"] in ("delivered", "queued")
            try:
                with store.transaction(now) as tx:
                    sent = replace(result, status="C") if delivered else result
                    held = pipeline._store_result(tx, analyzer, message_id, detail["sha256"], sent, None)
                    new_id = tx.latest_result_id(message_id)
                    new = next(r for r in tx.standing_results(message_id) if r["id"] == new_id)
                    if delivered and old is not None and all(old[k] == new[k] for k in _CONTENT) and not held:
                        raise _Unchanged
                    if old is not None:
                        tx.supersede(old_id=old["id"], new_id=new_id)
                        if not delivered:
                            tx.set_result_state(old["id"], "reprocessed")
                    kind = "new" if old is None else "corrected" if delivered else "replaced"
                    summary[kind] += 1
                    summary["held"] += int(held)
                    tx.audit("result_reprocessed", actor=actor, analyzer=analyzer.name, specimen=result.specimen_id,
                             patient=result.patient_id, ref=str(new_id),
                             data={"message_id": message_id, "replaces_result_id": old["id"] if old else None,
                                   "kind": kind, "reason": reason})
            except _Unchanged:
                summary["unchanged"] += 1
        with store.transaction(now) as tx:
            tx.audit("message_reprocessed", actor=actor, analyzer=analyzer.name, ref=str(message_id),
                     data={"reason": reason, **summary})
    return summary


def _pair(standing: list[dict[str, Any]], result: Result) -> dict[str, Any] | None:
    """Take the first standing row with the instrument's same value text and units."""
    for index, row in enumerate(standing):
        if row["raw_value"] == result.raw_value and row["units"] == result.units:
            return standing.pop(index)
    return None


def _map(detail: dict[str, Any], analyzer: Any) -> list[Result]:
    raw: bytes = detail["raw"]
    if detail["protocol"] == "hl7":
        return list(map_hl7(raw, analyzer=analyzer.name, encoding=analyzer.encoding,
                            specimen_field=analyzer.specimen_field, lf_segments=analyzer.lf_segments).results)
    results: list[Result] = []
    for text in _astm_texts(raw):
        records = decode_message(text, encoding=analyzer.encoding)
        results.extend(map_message(records, analyzer=analyzer.name, profile=astm_profile(analyzer)).results)
    return results


def _astm_texts(raw: bytes) -> list[bytes]:
    """The message text of stored ASTM bytes: the frames as received, or the text itself."""
    if STX not in raw:
        return [raw]
    link = AstmLink(checksum_policy="ignore")
    link.receive_data(b"\x05" + raw + b"\x04", 0.0)
    texts: list[bytes] = []
    while (event := link.next_event()) is not None or link.state == AWAITING_COMMIT:
        if event is None:
            link.message_committed()
        elif isinstance(event, MessageReceived):
            texts.append(event.text)
    if not texts:
        raise CodecError("the stored frames do not form a complete message")
    return texts


"""The message browser's reads (``labmw message list|show``): stored messages, what each became, what went out.

Search by specimen goes through ``results_specimen`` then ``results_message``, and by time or
analyzer through the ``messages`` indexes of migration 5, so a search stays fast on a store with
millions of results (bench/message_search.py measures it). Read-only; nothing here writes.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from labmw.errors import StoreError

_LIST = (
    "SELECT m.id, m.received_at, m.analyzer, m.protocol, m.peer, m.outcome, length(m.raw) AS bytes,"
    " (SELECT count(*) FROM results r WHERE r.message_id = m.id) AS results,"
    " (SELECT count(*) FROM results r WHERE r.message_id = m.id AND r.state = 'held') AS held,"
    " (SELECT count(*) FROM results r WHERE r.message_id = m.id AND r.state = 'delivered') AS delivered,"
    " (SELECT group_concat(DISTINCT r.specimen) FROM results r WHERE r.message_id = m.id) AS specimens"
    " FROM messages m")


def list_messages(conn: sqlite3.Connection, *, analyzer: str | None = None, specimen: str | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    """Messages matching every given filter, newest first, at most ``limit``."""
    where: list[str] = []
    args: list[Any] = []
    if specimen is not None:
        where.append("m.id IN (SELECT message_id FROM results WHERE specimen = ?)")
        args.append(specimen)
    if analyzer is not None:
        where.append("m.analyzer = ?")
        args.append(analyzer)
    if since is not None:
        where.append("m.received_at >= ?")
        args.append(since.isoformat())
    if until is not None:
        where.append("m.received_at <= ?")
        args.append(until.isoformat())
    sql = _LIST + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY m.id DESC LIMIT ?"
    rows = conn.execute(sql, (*args, int(limit)))
    return [{**dict(row), "specimens": sorted(set((row["specimens"] or "").split(",")) - {""})} for row in rows]


def message_detail(conn: sqlite3.Connection, message_id: int) -> dict[str, Any]:
    """One message: its raw bytes, each result with its evaluation and rule outcomes, every ORU sent for it
    and the LIS's answer. Raises StoreError when there is no such message."""
    row = conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise StoreError(f"no message with id {message_id}")
    results = [dict(r) for r in conn.execute("SELECT * FROM results WHERE message_id = ? ORDER BY id", (message_id,))]
    ids = [r["id"] for r in results]
    specimens = sorted({r["specimen"] for r in results})
    events: list[dict[str, Any]] = []
    if specimens:
        marks = ",".join("?" * len(specimens))
        for e in conn.execute(f"SELECT seq, ts, event, actor, ref, data FROM audit WHERE specimen IN ({marks})"
                              " ORDER BY seq", specimens):
            events.append({**dict(e), "data": _json(e["data"])})
    outbox = _outbox(conn, ids)
    by_control = {o["control_id"]: o for o in outbox}
    for e in events:
        if e["event"] in ("result_delivered", "delivery_failed", "delivery_dead_lettered") and e["ref"] in by_control:
            by_control[e["ref"]]["answers"].append({"ts": e["ts"], "event": e["event"],
                                                    "ack_code": e["data"].get("ack_code", ""),
                                                    "ack_text": e["data"].get("ack_text", ""),
                                                    "error": e["data"].get("error") or e["data"].get("reason", "")})
    out_results = []
    for r in results:
        rid = str(r["id"])
        evaluated: dict[str, Any] = next(
            (e["data"].get("evaluation", e["data"]) for e in events
             if e["event"] in ("result_received", "result_evaluated") and e["ref"] == rid
             and ("evaluation" in e["data"] or e["event"] == "result_evaluated")), {})
        out_results.append({
            "id": r["id"], "specimen": r["specimen"], "test_code": r["test_code"],
            "test_id": _json(r["wire"]).get("test_id", "") if r.get("wire") else "",
            "raw_value": r["raw_value"], "units": r["units"], "status": r["status"], "state": r["state"],
            "method": r["method"], "flags": _json(r["flags"]), "applied_range": r["applied_range"],
            "notes": _json(r["notes"]), "decisions": evaluated.get("decisions", []),
            "superseded_by": r.get("superseded_by"),
            "sent_in": [o["control_id"] for o in outbox if r["id"] in o["result_ids"]]})
    return {"id": row["id"], "received_at": row["received_at"], "analyzer": row["analyzer"],
            "protocol": row["protocol"], "peer": row["peer"], "outcome": row["outcome"], "sha256": row["sha256"],
            "raw": bytes(row["raw"]), "results": out_results, "sent": outbox,
            "events": [e for e in events if e["ref"] in {str(i) for i in ids} | set(by_control)]}


def _outbox(conn: sqlite3.Connection, result_ids: list[int]) -> list[dict[str, Any]]:
    if not result_ids:
        return []
    marks = ",".join("?" * len(result_ids))
    rows = conn.execute(
        f"SELECT * FROM outbox WHERE result_id IN ({marks}) OR id IN"
        f" (SELECT outbox_id FROM outbox_members WHERE result_id IN ({marks})) ORDER BY id",
        (*result_ids, *result_ids))
    out = []
    for o in rows:
        members = [int(m[0]) for m in conn.execute("SELECT result_id FROM outbox_members WHERE outbox_id = ?",
                                                   (o["id"],))]
        out.append({"outbox_id": o["id"], "control_id": o["control_id"], "state": o["state"],
                    "attempts": o["attempts"], "created_at": o["created_at"], "payload": bytes(o["payload"]),
                    "last_error": o["last_error"], "result_ids": [o["result_id"], *members], "answers": []})
    return out


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}

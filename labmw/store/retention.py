"""Retention: raw messages and results older than ``service.retention_years`` leave the database.

What goes: results that are finished (delivered to the LIS, or rejected by a person) whose message
arrived before the cut-off, their delivered outbox rows and logged critical-value notifications, the
messages none of whose results stay (with their QC runs and control results), and the HL7 duplicate
keys of that age. What stays: everything still on its way or waiting for a person (queued, held,
dead-lettered, a critical value nobody logged as notified: nothing is lost to a purge), and the whole
audit trail, which is append-only and hash-chained. The purge itself is an audit event (``retention_purged``) holding the
cut-off, the counts and a SHA-256 over the removed ids, chained like every other event, so
`labmw audit verify` passes afterwards and shows when and what was purged.

Space goes back to the file system with incremental vacuum: a database created before it was turned
on is converted by one full VACUUM at its first purge.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import datetime
from typing import Any

FINISHED = ("delivered", "rejected")
# A critical value nobody has logged as notified still waits for a person: its result stays.
_OPEN_CRITICAL = "SELECT 1 FROM critical_notifications c WHERE c.result_id = r.id AND c.notified_at IS NULL"
_OLD_RESULTS = (
    "SELECT r.id, r.message_id FROM results r JOIN messages m ON m.id = r.message_id "
    f"WHERE m.received_at < ? AND r.state IN ({', '.join(repr(s) for s in FINISHED)}) "
    f"AND NOT EXISTS ({_OPEN_CRITICAL}) ORDER BY r.id")


def plan(conn: sqlite3.Connection, cutoff: datetime) -> dict[str, Any]:
    """What a purge at ``cutoff`` would remove (nothing is changed)."""
    found = _select(conn, cutoff)
    return {"cutoff": cutoff.isoformat(), "results": len(found["results"]), "messages": len(found["messages"]),
            "qc_runs": found["qc_runs"], "inbound_keys": found["inbound_keys"],
            "kept_unfinished": found["kept_unfinished"], "kept_open_criticals": found["kept_open_criticals"]}


def purge(conn: sqlite3.Connection, cutoff: datetime, audit: Any) -> dict[str, Any]:
    """Remove what :func:`plan` names, inside the caller's transaction; ``audit(data)`` records it."""
    found = _select(conn, cutoff)
    results, messages = found["results"], found["messages"]
    for chunk in _chunks(results):
        marks = ",".join("?" * len(chunk))
        # A specimen's ORU (lis.group "specimen") lists its other results in outbox_members (issue 13).
        conn.execute(f"DELETE FROM outbox_members WHERE result_id IN ({marks}) OR outbox_id IN"
                     f" (SELECT id FROM outbox WHERE result_id IN ({marks}))", chunk + chunk)
        conn.execute(f"DELETE FROM outbox WHERE result_id IN ({marks})", chunk)
        conn.execute(f"DELETE FROM release_signatures WHERE result_id IN ({marks})", chunk)  # issue 15
        # The notification of a critical value goes with its result (who was told, and when, stays in
        # the audit trail's critical_notified event).
        conn.execute(f"DELETE FROM critical_notifications WHERE result_id IN ({marks})", chunk)
        conn.execute(f"UPDATE results SET superseded_by = NULL WHERE superseded_by IN ({marks})", chunk)
        conn.execute(f"DELETE FROM results WHERE id IN ({marks})", chunk)
    keys = conn.execute("DELETE FROM inbound_keys WHERE received_at < ?", (cutoff.isoformat(),)).rowcount
    qc_runs = 0
    for chunk in _chunks(messages):
        marks = ",".join("?" * len(chunk))
        # QC runs (issue 12) of a message that goes: their control results with them (the runs' judgements
        # stay in the audit trail).
        conn.execute(f"DELETE FROM qc_results WHERE run_id IN (SELECT id FROM qc_runs WHERE message_id IN ({marks}))",
                     chunk)
        qc_runs += conn.execute(f"DELETE FROM qc_runs WHERE message_id IN ({marks})", chunk).rowcount
        keys += conn.execute(f"DELETE FROM inbound_keys WHERE message_id IN ({marks})", chunk).rowcount
        conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
    digest = hashlib.sha256((",".join(map(str, results)) + "|" + ",".join(map(str, messages))).encode()).hexdigest()
    summary = {"cutoff": cutoff.isoformat(), "results": len(results), "messages": len(messages), "qc_runs": qc_runs,
               "inbound_keys": keys, "kept_unfinished": found["kept_unfinished"],
               "kept_open_criticals": found["kept_open_criticals"],
               "first_result_id": results[0] if results else None, "last_result_id": results[-1] if results else None,
               "removed_ids_sha256": digest}
    audit(summary)
    return summary


def give_space_back(conn: sqlite3.Connection) -> int:
    """Return free pages to the file system (outside any transaction); returns the pages freed."""
    before = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2 = INCREMENTAL
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")  # needed once for the setting to take; it also frees every page
    else:
        conn.execute("PRAGMA incremental_vacuum")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return int(before) - int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def _select(conn: sqlite3.Connection, cutoff: datetime) -> dict[str, Any]:
    at = cutoff.isoformat()
    rows = conn.execute(_OLD_RESULTS, (at,)).fetchall()
    results = [int(r[0]) for r in rows]
    candidates = sorted({int(r[1]) for r in rows} | {int(r[0]) for r in conn.execute(
        "SELECT id FROM messages m WHERE received_at < ? AND NOT EXISTS "
        "(SELECT 1 FROM results r WHERE r.message_id = m.id)", (at,))})
    gone = set(results)
    messages = [m for m in candidates if all(int(r[0]) in gone for r in conn.execute(
        "SELECT id FROM results WHERE message_id = ?", (m,)))]
    kept = conn.execute(
        "SELECT count(*) FROM results r JOIN messages m ON m.id = r.message_id WHERE m.received_at < ? AND "
        f"r.state NOT IN ({', '.join(repr(s) for s in FINISHED)})", (at,)).fetchone()[0]
    keys = conn.execute("SELECT count(*) FROM inbound_keys WHERE received_at < ?", (at,)).fetchone()[0]
    open_criticals = conn.execute(
        "SELECT count(*) FROM results r JOIN messages m ON m.id = r.message_id WHERE m.received_at < ? AND "
        f"r.state IN ({', '.join(repr(s) for s in FINISHED)}) AND EXISTS ({_OPEN_CRITICAL})", (at,)).fetchone()[0]
    qc_runs = sum(int(conn.execute(f"SELECT count(*) FROM qc_runs WHERE message_id IN ({','.join('?' * len(chunk))})",
                                   chunk).fetchone()[0]) for chunk in _chunks(messages))
    return {"results": results, "messages": messages, "qc_runs": qc_runs, "inbound_keys": int(keys),
            "kept_unfinished": int(kept), "kept_open_criticals": int(open_criticals)}


def _chunks(ids: list[int], size: int = 500) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]

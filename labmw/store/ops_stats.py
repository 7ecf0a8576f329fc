"""Read-only figures for the metrics endpoint: queue age, held results by gate, holds since a point.

Each query is bounded by an index or a rowid range, so a scrape every few seconds costs little even on a
store holding years of results.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from labmw.errors import StoreError

OTHER_GATE = "other"  # held for a reason no rule decision names (no status, message not buildable, ...)


def marks(conn: sqlite3.Connection) -> tuple[int, int]:
    """(last result id, last audit seq) now: where "since the daemon started" begins."""
    result = conn.execute("SELECT coalesce(max(id), 0) FROM results").fetchone()[0]
    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()[0]
    return int(result), int(seq)


def snapshot(conn: sqlite3.Connection, *, since: tuple[int, int], now: datetime) -> dict[str, Any]:
    """Oldest pending age (s, None when empty), held results by gate, results and holds after ``since``."""
    oldest = conn.execute("SELECT min(created_at) FROM outbox WHERE state = 'pending'").fetchone()[0]
    age = None if oldest is None else max(0.0, (now - datetime.fromisoformat(oldest)).total_seconds())
    gates: dict[str, int] = {}
    # The event holding each held result's evaluation (result_received, or result_evaluated in trails
    # written before the two were one event), found through the audit's specimen index.
    rows = conn.execute(
        "SELECT r.id, a.data FROM results r LEFT JOIN audit a ON a.specimen = r.specimen AND a.event IN "
        "('result_received', 'result_evaluated') AND a.ref = CAST(r.id AS TEXT) WHERE r.state = 'held' "
        "ORDER BY r.id, a.event")
    by_result: dict[int, list[str]] = {}
    for result_id, data in rows:
        found = _gates(data)
        if found != [OTHER_GATE] or result_id not in by_result:
            by_result[result_id] = found
    for found in by_result.values():
        for gate in found:
            gates[gate] = gates.get(gate, 0) + 1
    results = conn.execute("SELECT count(*) FROM results WHERE id > ?", (since[0],)).fetchone()[0]
    held = conn.execute("SELECT count(DISTINCT ref) FROM audit WHERE seq > ? AND event = 'result_held'",
                        (since[1],)).fetchone()[0]
    return {"oldest_pending_age_s": age, "held_by_gate": gates, "results_since_start": int(results),
            "held_since_start": int(held)}


def _gates(data: str | None) -> list[str]:
    """The rules whose decision held the result (outcome "hold", "hold U", ...); [OTHER_GATE] when none says so."""
    try:
        record = json.loads(data) if data else {}
        decisions = record.get("evaluation", record).get("decisions", []) if record else []
    except (ValueError, KeyError, TypeError, AttributeError):
        decisions = []
    return hold_gates(decisions)


def hold_gates(decisions: Any) -> list[str]:
    """:func:`_gates` for already decoded rule decisions (the review workstation's held list uses it too)."""
    if not isinstance(decisions, list):
        decisions = []
    names = sorted({str(d.get("rule")) for d in decisions
                    if isinstance(d, dict) and str(d.get("outcome", "")).startswith("hold")})
    return names or [OTHER_GATE]


def probe_writable(conn: sqlite3.Connection) -> None:
    """Take the write lock and let it go: raises StoreError when the database cannot be written."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise StoreError(f"the database is not writable: {exc}") from None


def unnotified_criticals(conn: sqlite3.Connection, *, received_before: datetime, site: str = "") -> int:
    """Critical results (HH/LL) received before ``received_before`` that have not reached the LIS.

    Results waiting in the queue, held for review or dead-lettered all count: the clinician has not been told.
    Only the undelivered states are scanned (the outbox_pending and results state filters keep it small).
    """
    row = conn.execute(
        "SELECT count(*) FROM results r JOIN messages m ON m.id = r.message_id "
        "WHERE r.state IN ('queued', 'held', 'dead') AND r.superseded_by IS NULL AND m.received_at < ? "
        "AND (r.flags LIKE '%\"HH\"%' OR r.flags LIKE '%\"LL\"%')" + (" AND r.site IN (?, '')" if site else ""),
        (received_before.isoformat(), *((site,) if site else ()))).fetchone()
    return int(row[0])

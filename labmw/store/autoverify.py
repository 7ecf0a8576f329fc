"""Store queries of autoverification: gates kept with results, the kill switch, critical calls, the report.

Functions over one sqlite3 connection; :class:`~labmw.store.sqlite.Tx` and
:class:`~labmw.store.sqlite.Store` expose them as thin methods so callers keep to the store's
interface. Times are ISO text as everywhere in the store.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from labmw.errors import StoreError
from labmw.model import Evaluation, Suspension


def record_gates(conn: sqlite3.Connection, result_id: int, evaluation: Evaluation, now: datetime) -> None:
    """Keep the evaluation's gates, reviewer notes and rule-set version with the stored result."""
    conn.execute(
        "UPDATE results SET gates = ?, review_notes = ?, rules_version = ?, held_at = ? WHERE id = ?",
        (json.dumps(list(evaluation.gates)), json.dumps(list(evaluation.review_notes)), evaluation.rules_version,
         now.isoformat() if evaluation.hold else None, result_id))


def active_suspensions(conn: sqlite3.Connection, site: str = "") -> tuple[Suspension, ...]:
    """Suspensions in force; ``site``: that site's and those made without a site (sites sharing a database)."""
    rows = conn.execute("SELECT * FROM autoverify_suspensions WHERE resumed_at IS NULL"
                        + (" AND site IN (?, '')" if site else "") + " ORDER BY id", (site,) if site else ())
    return tuple(Suspension(id=r["id"], analyzer=r["analyzer"], method=r["method"], reason=r["reason"],
                            actor=r["actor"], since=r["suspended_at"]) for r in rows)


def suspend(conn: sqlite3.Connection, *, analyzer: str, method: str, reason: str, actor: str,
            now: datetime, site: str = "") -> int:
    cur = conn.execute(
        "INSERT INTO autoverify_suspensions (analyzer, method, reason, actor, suspended_at, site)"
        " VALUES (?,?,?,?,?,?)", (analyzer, method, reason, actor, now.isoformat(), site))
    return int(cur.lastrowid or 0)


def resume(conn: sqlite3.Connection, *, analyzer: str, method: str, reason: str, actor: str,
           now: datetime, site: str = "") -> list[int]:
    """End the active suspensions of exactly this scope (and site); returns their ids (none: StoreError)."""
    rows = conn.execute("SELECT id FROM autoverify_suspensions WHERE resumed_at IS NULL AND analyzer = ? AND "
                        "method = ? AND site IN (?, '')", (analyzer, method, site)).fetchall()
    ids = [int(r["id"]) for r in rows]
    if not ids:
        raise StoreError("no active suspension for "
                         + (" ".join(p for p in (f"analyzer {analyzer}" if analyzer else "",
                                                 f"method {method}" if method else "") if p)
                            or "all analyzers and methods"))
    conn.executemany("UPDATE autoverify_suspensions SET resumed_at = ?, resumed_by = ?, resume_reason = ? "
                     "WHERE id = ?", [(now.isoformat(), actor, reason, i) for i in ids])
    return ids


def add_critical(conn: sqlite3.Connection, result_id: int, flag: str, now: datetime) -> None:
    conn.execute("INSERT OR IGNORE INTO critical_notifications (result_id, flag, detected_at) VALUES (?,?,?)",
                 (result_id, flag, now.isoformat()))


def criticals(conn: sqlite3.Connection, *, only_open: bool = False, site: str = "") -> list[dict[str, Any]]:
    """Critical-value notifications, oldest first; ``site``: only that site's results (sites sharing a database)."""
    sql = ("SELECT c.*, r.analyzer, r.specimen, r.patient_id, r.method, r.raw_value, r.units, r.state "
           "FROM critical_notifications c JOIN results r ON r.id = c.result_id WHERE 1=1")
    args: tuple[str, ...] = ()
    if only_open:
        sql += " AND c.notified_at IS NULL"
    if site:
        sql, args = sql + " AND r.site IN (?, '')", (site,)  # '': stored before sites were named
    rows = conn.execute(sql + " ORDER BY c.id", args).fetchall()
    return [{"id": r["id"], "result_id": r["result_id"], "flag": r["flag"], "analyzer": r["analyzer"],
             "specimen": r["specimen"], "patient": r["patient_id"], "method": r["method"] or "",
             "value": r["raw_value"], "units": r["units"], "detected_at": r["detected_at"],
             "notified_at": r["notified_at"], "notified_by": r["notified_by"], "notified_to": r["notified_to"],
             "readback": bool(r["readback"]), "alerted_at": r["alerted_at"]} for r in rows]


def notify_critical(conn: sqlite3.Connection, critical_id: int, *, to: str, readback: bool, actor: str,
                    now: datetime) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM critical_notifications WHERE id = ?", (critical_id,)).fetchone()
    if row is None:
        raise StoreError(f"no critical value with id {critical_id}")
    if row["notified_at"] is not None:
        raise StoreError(f"critical value {critical_id} was already notified at {row['notified_at']} "
                         f"to {row['notified_to']}")
    conn.execute("UPDATE critical_notifications SET notified_at = ?, notified_by = ?, notified_to = ?, "
                 "readback = ? WHERE id = ?", (now.isoformat(), actor, to, int(readback), critical_id))
    return {"id": critical_id, "result_id": row["result_id"]}


def overdue_criticals(conn: sqlite3.Connection, *, before: datetime, site: str = "") -> list[dict[str, Any]]:
    """Unnotified critical values detected before ``before``."""
    return [c for c in criticals(conn, only_open=True, site=site) if c["detected_at"] < before.isoformat()]


def mark_alerted(conn: sqlite3.Connection, ids: Sequence[int], now: datetime) -> None:
    conn.executemany("UPDATE critical_notifications SET alerted_at = ? WHERE id = ?",
                     [(now.isoformat(), i) for i in ids])


def held_extras(conn: sqlite3.Connection, result_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT gates, review_notes, rules_version, held_at, superseded_by FROM results "
                       "WHERE id = ?", (result_id,)).fetchone()
    if row is None:
        raise StoreError(f"no result with id {result_id}")
    return {"gates": json.loads(row["gates"]), "review_notes": json.loads(row["review_notes"]),
            "rules_version": row["rules_version"], "held_at": row["held_at"]}


def delivered_earlier(conn: sqlite3.Connection, result_id: int) -> bool:
    """Whether the result corrects one that was already delivered to the LIS."""
    row = conn.execute(
        "SELECT 1 FROM results old JOIN outbox o ON o.result_id = old.id "
        "WHERE old.superseded_by = ? AND o.state = 'delivered' LIMIT 1", (result_id,)).fetchone()
    return row is not None


def report(conn: sqlite3.Connection, *, since: str | None, until: str | None) -> list[dict[str, Any]]:
    """CLSI EP33-style effectiveness per method and analyzer (see ``labmw report autoverification``)."""
    where, args = ["1=1"], []
    if since:
        where.append("m.received_at >= ?")
        args.append(since)
    if until:
        where.append("m.received_at < ?")
        args.append(until)
    rows = conn.execute(
        "SELECT r.id, r.analyzer, COALESCE(r.method, '') AS method, r.gates, r.held_at, r.state "
        "FROM results r JOIN messages m ON m.id = r.message_id WHERE " + " AND ".join(where), args).fetchall()
    decisions: dict[int, tuple[str, str]] = {}
    for event in conn.execute("SELECT event, ref, ts FROM audit WHERE event IN ('result_released', "
                              "'result_rejected')"):
        try:
            decisions[int(event["ref"])] = (event["event"], event["ts"])
        except (TypeError, ValueError):
            continue
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        g = groups.setdefault((r["method"], r["analyzer"]), {
            "method": r["method"], "analyzer": r["analyzer"], "results": 0, "autoverified": 0, "held": 0,
            "held_by_gate": {}, "released": 0, "rejected": 0, "waiting": 0, "_times": []})
        g["results"] += 1
        gates = json.loads(r["gates"])
        if r["held_at"] is None:
            g["autoverified"] += 1
            continue
        g["held"] += 1
        for gate in gates or ["OTHER"]:
            g["held_by_gate"][gate] = g["held_by_gate"].get(gate, 0) + 1
        decided = decisions.get(int(r["id"]))
        if decided is None:
            g["waiting"] += 1
            continue
        g["released" if decided[0] == "result_released" else "rejected"] += 1
        held = datetime.fromisoformat(r["held_at"])
        g["_times"].append((datetime.fromisoformat(decided[1]) - held).total_seconds())
    out = []
    for g in sorted(groups.values(), key=lambda x: (x["method"], x["analyzer"])):
        times = g.pop("_times")
        g["autoverified_pct"] = round(100.0 * g["autoverified"] / g["results"], 1) if g["results"] else 0.0
        g["median_hold_seconds"] = statistics.median(times) if times else None
        out.append(g)
    return out


def review_detail(conn: sqlite3.Connection, result_id: int) -> dict[str, Any]:
    """One result for ``labmw review show``: raw message, every rule outcome, previous results."""
    row = conn.execute("SELECT r.*, m.raw AS raw_message FROM results r JOIN messages m ON m.id = r.message_id "
                       "WHERE r.id = ?", (result_id,)).fetchone()
    if row is None:
        raise StoreError(f"no result with id {result_id}")
    decisions: list[dict[str, Any]] = []
    # The evaluation is kept in the result's audit event (result_received; result_evaluated before).
    event = conn.execute("SELECT data FROM audit WHERE event IN ('result_received', 'result_evaluated') AND ref = ? "
                         "ORDER BY seq DESC LIMIT 1", (str(result_id),)).fetchone()
    if event is not None:
        data = json.loads(event["data"])
        decisions = data.get("decisions") or (data.get("evaluation") or {}).get("decisions", [])
    previous = [
        {"id": p["id"], "collected_at": p["collected_at"] or "", "value": p["raw_value"], "units": p["units"],
         "flags": json.loads(p["flags"]), "state": p["state"]}
        for p in conn.execute(
            "SELECT id, collected_at, raw_value, units, flags, state FROM results WHERE patient_id = ? AND "
            "method = ? AND id != ? AND patient_id != '' ORDER BY collected_at DESC LIMIT 10",
            (row["patient_id"], row["method"], result_id))]
    return {"id": result_id, "analyzer": row["analyzer"], "specimen": row["specimen"], "patient": row["patient_id"],
            "method": row["method"] or "", "test_code": row["test_code"], "value": row["raw_value"],
            "units": row["units"], "instrument_flags": json.loads(row["instrument_flags"]), "status": row["status"],
            "state": row["state"], "flags": json.loads(row["flags"]), "notes": json.loads(row["notes"]),
            "gates": json.loads(row["gates"]), "review_notes": json.loads(row["review_notes"]),
            "rules_version": row["rules_version"], "held_at": row["held_at"],
            "correction_of_delivered": delivered_earlier(conn, result_id),
            "raw": bytes(row["raw_message"]).decode("latin-1"), "decisions": decisions, "previous": previous}


def recorded_rules_version(conn: sqlite3.Connection, key: str = "rules_version") -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row is not None else ""


def record_rules_version(conn: sqlite3.Connection, version: str, key: str = "rules_version") -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, version))

"""Read-only queries behind the review workstation's pages (reached as ``store.browse``).

Nothing here writes: decisions go through :meth:`Store.decide_held` (via ``daemon.review``), the
trail through :mod:`labmw.store.audit`. Queries that touch the audit table filter by specimen first,
so they use its index however long the trail grows.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from labmw.errors import StoreError


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageSummary:
    id: int
    analyzer: str
    protocol: str
    peer: str
    received_at: str
    outcome: str
    size: int
    results: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One outbound ORU for a result, and what the LIS answered (from the ``result_delivered`` event)."""

    outbox_id: int
    control_id: str
    payload: bytes
    state: str
    attempts: int
    last_error: str
    ack_code: str
    ack_text: str
    delivered_at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPoint:
    result_id: int
    collected_at: str
    value: str
    specimen: str
    flags: tuple[str, ...]


class Browse:
    """Read queries on one connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def result(self, result_id: int) -> dict[str, Any]:
        """Every stored column of one result (JSON columns decoded); raises StoreError if absent."""
        row = self._conn.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
        if row is None:
            raise StoreError(f"no result with id {result_id}")
        out = dict(row)
        for key in ("instrument_flags", "flags", "notes"):
            out[key] = json.loads(out[key])
        return out

    def evaluation(self, result_id: int, specimen: str) -> dict[str, Any] | None:
        """The ``result_evaluated`` record of a result: every rule decision with its inputs."""
        # The evaluation is its own result_evaluated event in older trails, part of result_received since
        # the one intake (data.evaluation).
        row = self._conn.execute(
            "SELECT event, data FROM audit WHERE specimen = ? AND ref = ? AND event IN"
            " ('result_evaluated', 'result_received') ORDER BY event = 'result_evaluated' DESC, seq DESC LIMIT 1",
            (specimen, str(result_id))).fetchone()
        if row is None:
            return None
        data = json.loads(row["data"])
        found = data if row["event"] == "result_evaluated" else data.get("evaluation")
        return found if isinstance(found, dict) else None

    def history(self, *, patient_id: str, method: str, limit: int = 20) -> list[HistoryPoint]:
        """The patient's numeric results of ``method`` that still stand, oldest first (latest ``limit``)."""
        if not patient_id or not method:
            return []
        rows = self._conn.execute(
            "SELECT id, collected_at, value, specimen, flags FROM results WHERE patient_id = ? AND method = ?"
            " AND value IS NOT NULL AND collected_at IS NOT NULL AND superseded_by IS NULL AND state != 'rejected'"
            " ORDER BY collected_at DESC, id DESC LIMIT ?", (patient_id, method, limit)).fetchall()
        return [HistoryPoint(result_id=r["id"], collected_at=r["collected_at"], value=r["value"],
                             specimen=r["specimen"], flags=tuple(json.loads(r["flags"]))) for r in reversed(rows)]

    def messages(self, *, analyzer: str | None = None, limit: int = 100) -> list[MessageSummary]:
        """The latest inbound messages, newest first."""
        where, args = ("WHERE m.analyzer = ?", [analyzer]) if analyzer else ("", [])
        rows = self._conn.execute(
            "SELECT m.id, m.analyzer, m.protocol, m.peer, m.received_at, m.outcome, length(m.raw) AS size,"
            " (SELECT count(*) FROM results r WHERE r.message_id = m.id) AS results"
            f" FROM messages m {where} ORDER BY m.id DESC LIMIT ?", (*args, limit)).fetchall()
        return [MessageSummary(**dict(r)) for r in rows]

    def message(self, message_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(the message with its raw bytes, its results); raises StoreError if absent."""
        row = self._conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise StoreError(f"no message with id {message_id}")
        message = dict(row)
        message["raw"] = bytes(message["raw"])
        results = [dict(r) for r in self._conn.execute(
            "SELECT id, specimen, patient_id, test_code, method, raw_value, units, state FROM results"
            " WHERE message_id = ? ORDER BY id", (message_id,))]
        return message, results

    def deliveries(self, result_id: int, specimen: str) -> list[Delivery]:
        """Every ORU queued for a result, with the LIS's ACK code and text once it answered."""
        out = []
        for row in self._conn.execute("SELECT * FROM outbox WHERE result_id = ? ORDER BY id", (result_id,)):
            ack = self._conn.execute(
                "SELECT ts, data FROM audit WHERE specimen = ? AND event = 'result_delivered' AND ref = ?"
                " ORDER BY seq DESC LIMIT 1", (specimen, row["control_id"])).fetchone()
            data = json.loads(ack["data"]) if ack is not None else {}
            out.append(Delivery(outbox_id=row["id"], control_id=row["control_id"], payload=bytes(row["payload"]),
                                state=row["state"], attempts=row["attempts"], last_error=row["last_error"],
                                ack_code=str(data.get("ack_code", "")), ack_text=str(data.get("ack_text", "")),
                                delivered_at=ack["ts"] if ack is not None else ""))
        return out

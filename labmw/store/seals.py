"""Stored rows bound to the audit trail ("seals").

When a message, a result or an outbox entry is inserted, the SHA-256 of exactly what was stored
(read back from the table, with each value's storage type) is written into the audit event that
records it, as ``data.stored = [{"table", "id", "sha256"}]``. The trail is hash-chained, so a writer
of the file who edits ``outbox.payload``, ``results.raw_value`` or ``messages.raw`` afterwards
either leaves a row that no longer matches its recorded hash, or must rewrite the chain from that
event on (caught by the anchor, ``audit verify --expect-head``).

Only columns that never change after the insert are sealed: a result's ``state``, ``notes`` and
``superseded_by`` and an entry's delivery bookkeeping move on by design (and each move is audited).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# table -> the columns whose stored values are sealed, in hashing order.
SEALED: Mapping[str, tuple[str, ...]] = {
    "messages": ("id", "analyzer", "protocol", "peer", "received_at", "sha256", "raw"),
    "results": ("id", "message_id", "analyzer", "specimen", "patient_id", "patient_name", "birth_date", "sex",
                "test_code", "method", "raw_value", "value", "comparator", "units", "instrument_flags", "status",
                "collected_at", "completed_at", "flags", "applied_range"),
    "outbox": ("id", "result_id", "control_id", "payload", "created_at"),
}
# meta key per table: rows up to this id were stored before rows were sealed (an upgraded file).
EPOCH_KEY = {table: f"sealed_{table}_after" for table in SEALED}


def row_hash(table: str, values: Sequence[Any]) -> str:
    """SHA-256 of one row's sealed column values (in :data:`SEALED` order).

    Each value is tagged with its storage type and length-prefixed, so no two different rows encode
    alike, and the type is part of what was stored: a payload rewritten as TEXT is not the BLOB sealed.
    (Joined once and hashed once: this runs for every row the intake stores.)
    """
    parts = [table.encode(), b"\0"]
    add = parts.append
    for value in values:
        kind = type(value)
        if kind is str:
            text = value.encode("utf-8", "surrogatepass")
            add(b"t%d:" % len(text))
            add(text)
        elif value is None:
            add(b"n;")
        elif kind is int:
            add(b"i%d;" % value)
        elif isinstance(value, bytes):
            add(b"b%d:" % len(value))
            add(value)
        elif isinstance(value, int):  # bool
            add(b"i%d;" % value)
        elif isinstance(value, float):
            add(b"r" + repr(value).encode() + b";")
        else:
            text = str(value).encode("utf-8", "surrogatepass")
            add(b"t%d:" % len(text))
            add(text)
    return hashlib.sha256(b"".join(parts)).hexdigest()


def stored_hash(conn: sqlite3.Connection, table: str, row_id: int) -> str | None:
    """The hash of the row as it is stored now, or None when there is no such row."""
    columns = ", ".join(SEALED[table])
    row = conn.execute(f"SELECT {columns} FROM {table} WHERE id = ?", (row_id,)).fetchone()
    return row_hash(table, tuple(row)) if row is not None else None


def seals_of(data: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """(table, id, sha256) of every row an event's data says it recorded (malformed items skipped)."""
    out: list[tuple[str, int, str]] = []
    stored = data.get("stored")
    if not isinstance(stored, list):
        return out
    for item in stored:
        if isinstance(item, dict) and item.get("table") in SEALED and isinstance(item.get("id"), int) \
                and isinstance(item.get("sha256"), str):
            out.append((item["table"], item["id"], item["sha256"]))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class RowProblem:
    table: str
    row_id: int
    seq: int | None  # the audit event holding the seal (None: no seal at all)
    reason: str

    def describe(self) -> str:
        where = f" (recorded in event {self.seq})" if self.seq is not None else ""
        return f"{self.table} row {self.row_id}: {self.reason}{where}"


class RowChecker:
    """Checks stored rows against the seals of the events fed to it, in order; keeps the first problem.

    Feed every event (:meth:`feed`), then :meth:`finish` looks for rows stored after the first
    sealed one of their table that no event recorded (a row added behind the trail's back). A sealed
    row that is gone is a problem unless a retention purge (``retention_purged``, store/retention.py)
    was recorded after its seal: the purge's own event holds the digest of what it removed.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._seen: dict[str, set[int]] = {table: set() for table in SEALED}
        self._missing: list[RowProblem] = []
        self._last_purge = 0
        self.checked = 0
        self.problem: RowProblem | None = None

    def feed(self, seq: int, event: str, data_json: str) -> None:
        if event == "retention_purged":
            self._last_purge = seq
            return
        if self.problem is not None or '"stored"' not in data_json:
            return
        try:
            data = json.loads(data_json)
        except ValueError:
            return  # the chain check reports an unreadable event
        if not isinstance(data, dict):
            return
        for table, row_id, digest in seals_of(data):
            self._seen[table].add(row_id)
            now = stored_hash(self._conn, table, row_id)
            self.checked += 1
            if now is None:
                self._missing.append(RowProblem(table=table, row_id=row_id, seq=seq, reason="row missing"))
            elif now != digest:
                self.problem = RowProblem(table=table, row_id=row_id, seq=seq,
                                          reason="stored row does not match the hash the audit trail recorded")
                return

    def first_problem(self) -> RowProblem | None:
        """The first altered row, or else the first row gone without a later purge."""
        if self.problem is not None:
            return self.problem
        for missing in self._missing:
            if missing.seq is None or missing.seq > self._last_purge:
                return missing
        return None

    def finish(self) -> RowProblem | None:
        problem = self.first_problem()
        if problem is not None:
            self.problem = problem
            return problem
        for table, seen in self._seen.items():
            if not seen:
                continue
            first = min(seen)
            for (row_id,) in self._conn.execute(f"SELECT id FROM {table} WHERE id > ? ORDER BY id", (first,)):
                if row_id not in seen:
                    self.problem = RowProblem(table=table, row_id=int(row_id), seq=None,
                                              reason="stored row is not recorded in the audit trail")
                    return self.problem
        return None

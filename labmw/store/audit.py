"""The audit trail: append-only rows chained by SHA-256.

``hash = sha256(prev_hash || canonical_json(row))``; the first row chains to 64 zeros. Rows are
only ever inserted (triggers refuse UPDATE and DELETE), always inside the caller's transaction so
an event is written together with the change it describes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    seq: int
    ts: str
    event: str
    actor: str
    analyzer: str
    specimen: str
    patient: str
    ref: str
    data: Mapping[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "event": self.event, "actor": self.actor,
                "analyzer": self.analyzer, "specimen": self.specimen, "patient": self.patient,
                "ref": self.ref, "data": dict(self.data), "hash": self.hash}


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    ok: bool
    count: int
    first_broken: int | None = None
    reason: str = ""
    rows: int = 0  # stored rows checked against the hashes their events recorded
    row_problem: str = ""  # (start-up check) the first stored row that does not match its seal


def _canonical(seq: int, ts: str, event: str, actor: str, analyzer: str, specimen: str, patient: str,
               ref: str, data_json: str) -> bytes:
    body = {"seq": seq, "ts": ts, "event": event, "actor": actor, "analyzer": analyzer,
            "specimen": specimen, "patient": patient, "ref": ref, "data": data_json}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_canonical(seq: int, row: Mapping[str, Any] | sqlite3.Row, *, prefix: str = "") -> bytes:
    """The canonical bytes of a stored event (columns named ``prefix`` + name, e.g. from a join)."""
    return _canonical(seq, *(str(row[prefix + name]) for name in
                             ("ts", "event", "actor", "analyzer", "specimen", "patient", "ref", "data")))


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


def event_time(ts: datetime) -> str:
    """An event's ``ts`` column: ISO 8601 to the millisecond."""
    return ts.isoformat(timespec="milliseconds")


INSERT = "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?)"
Row = tuple[int, str, str, str, str, str, str, str, str, str, str]


def tail(conn: sqlite3.Connection) -> tuple[int, str]:
    """(sequence, hash) of the last event, or (0, GENESIS) for an empty trail."""
    last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(last[0]), str(last[1])) if last else (0, GENESIS)


def make_row(after: tuple[int, str], event: str, *, ts: datetime | str, actor: str, analyzer: str = "",
             specimen: str = "", patient: str = "", ref: str = "", data: Mapping[str, Any] | None = None) -> Row:
    """The row that follows the event ``after`` = (sequence, hash) in the chain (nothing is written).

    ``ts``: the event's time, or already as :func:`event_time` text (a transaction's events share one).
    """
    seq, prev = after[0] + 1, after[1]
    ts_text = ts if isinstance(ts, str) else event_time(ts)
    data_json = json.dumps(dict(data or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    digest = chain_hash(prev, _canonical(seq, ts_text, event, actor, analyzer, specimen, patient, ref, data_json))
    return (seq, ts_text, event, actor, analyzer, specimen, patient, ref, data_json, prev, digest)


@dataclass(frozen=True, slots=True)
class JsonSql:
    """How an engine's SQL reads an audit row's JSON text ``data`` (``{key}`` is filled in, ``?`` bound)."""

    list_holds: str  # the list data.{key} holds the value
    field_is: str  # data.{key}, as text, is the value


SQLITE_JSON = JsonSql(list_holds="EXISTS (SELECT 1 FROM json_each(audit.data, '$.{key}') WHERE json_each.value = ?)",
                      field_is="json_extract(audit.data, '$.{key}') = ?")


def query(conn: sqlite3.Connection, *, specimen: str | None = None, patient: str | None = None,
          analyzer: str | None = None, event: str | None = None, since: datetime | None = None,
          until: datetime | None = None, limit: int | None = None, site: str | None = None,
          json_sql: JsonSql = SQLITE_JSON) -> list[AuditEvent]:
    """Events matching every given filter, oldest first.

    A message-level event lists its specimens in ``data.specimens``; filtering by specimen finds it too.
    ``site``: events whose ``data.site`` is that site. ``json_sql``: the engine's JSON reading.
    """
    where: list[str] = []
    args: list[Any] = []
    for column, key, value in (("specimen", "specimens", specimen), ("patient", "patients", patient)):
        if value is not None:
            where.append(f"({column} = ? OR {json_sql.list_holds.format(key=key)})")
            args += [value, value]
    for column, value in (("analyzer", analyzer), ("event", event)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if site is not None:
        where.append(json_sql.field_is.format(key="site"))
        args.append(site)
    # Stored times are UTC; a bound given with another offset is the same instant in UTC (text
    # comparison across offsets would be wrong by the offset).
    if since is not None:
        where.append("ts >= ?")
        args.append(_utc(since).isoformat(timespec="milliseconds"))
    if until is not None:
        where.append("ts <= ?")
        args.append(_utc(until).isoformat(timespec="milliseconds"))
    sql = "SELECT * FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [_event(row) for row in conn.execute(sql, args)]


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo is not None else value


def _event(row: sqlite3.Row) -> AuditEvent:
    try:
        data = json.loads(row["data"])
    except (TypeError, ValueError):
        data = {"unparseable": str(row["data"])}
    return AuditEvent(seq=row["seq"], ts=row["ts"], event=row["event"], actor=row["actor"],
                      analyzer=row["analyzer"], specimen=row["specimen"], patient=row["patient"],
                      ref=row["ref"], data=data, prev_hash=row["prev_hash"], hash=row["hash"])


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as `labmw audit head` prints it) -> (seq, hash); raises ValueError."""
    seq_text, sep, digest = text.strip().partition(":")
    digest = digest.strip().lower()
    if not sep or not seq_text.strip().isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"expected SEQ:HASH (a number, a colon, 64 hex digits), got {text!r}")
    return int(seq_text), digest


def check_anchor(conn: sqlite3.Connection, head: tuple[int, str]) -> str:
    """Why the trail does not contain the anchored event ``head`` as it was, or "" when it does."""
    seq, digest = head
    row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        last = tail(conn)[0]
        return (f"anchored event {seq} is missing (the trail ends at event {last}: truncated, "
                "or an older copy of the file)")
    if str(row[0]) != digest:
        return f"event {seq} differs from the anchor (the chain was rebuilt, or the file replaced)"
    return ""


def verify(rows: Sequence[sqlite3.Row] | sqlite3.Cursor, *, start: tuple[int, str] = (0, GENESIS),
           on_event: Callable[[int, str, str], None] | None = None) -> Verification:
    """Recompute the chain; name the first event whose stored hash or link does not match.

    ``start`` = (sequence, hash) of the event the rows follow (a verified checkpoint), GENESIS by
    default. ``on_event(seq, event, data json)`` sees every event whose hash checked out.
    """
    prev = start[1]
    expected_seq = start[0] + 1
    count = 0
    for row in rows:
        count += 1
        try:
            seq = int(row["seq"])
            if seq != expected_seq:
                return Verification(ok=False, count=count, first_broken=seq,
                                    reason=f"sequence gap: expected event {expected_seq}, found {seq}")
            if row["prev_hash"] != prev:
                return Verification(ok=False, count=count, first_broken=seq,
                                    reason="link to the previous event does not match")
            canonical = _canonical(seq, str(row["ts"]), str(row["event"]), str(row["actor"]), str(row["analyzer"]),
                                   str(row["specimen"]), str(row["patient"]), str(row["ref"]), str(row["data"]))
            if chain_hash(prev, canonical) != row["hash"]:
                return Verification(ok=False, count=count, first_broken=seq,
                                    reason="content does not match its hash (event altered)")
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            return Verification(ok=False, count=count, first_broken=expected_seq, reason=f"unreadable event: {exc}")
        if on_event is not None:
            on_event(seq, str(row["event"]), str(row["data"]))
        prev = row["hash"]
        expected_seq += 1
    return Verification(ok=True, count=count)

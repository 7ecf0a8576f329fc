"""The store behind a narrow interface: SQLite now; a PostgreSQL twin would implement the same methods.

Writes that belong together go through :meth:`Store.transaction`, which hands out a :class:`Tx`
(messages, results, outbox entries and audit events in one commit). Everything else is a small
self-contained call with its own transaction and its own audit event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from labmw.errors import StoreError
from labmw.model import Evaluation, PreviousResult, Result, Suspension
from labmw.store import audit as audit_log
from labmw.store import autoverify as av
from labmw.store import browser, ops_stats, retention, seals, signatures, trail_check
from labmw.store.audit import AuditEvent, Verification
from labmw.store.browse import Browse
from labmw.store.db import connect, transaction
from labmw.store.qc import QcStore, QcTx
from labmw.store.result_wire import with_wire
from labmw.store.signatures import ReleaseSignature
from labmw.store.users import Users


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    id: int
    control_id: str
    payload: bytes
    state: str
    attempts: int
    result_id: int
    analyzer: str
    specimen: str
    patient: str
    test_code: str
    created_at: str
    updated_at: str
    last_error: str
    problem: str = ""  # why this entry must not be sent as stored ("" when it can be)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "control_id": self.control_id, "state": self.state, "attempts": self.attempts,
                "result_id": self.result_id, "analyzer": self.analyzer, "specimen": self.specimen,
                "patient": self.patient, "test_code": self.test_code, "created_at": self.created_at,
                "updated_at": self.updated_at, "last_error": self.last_error}


def _iso(value: datetime | date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _sealed_insert(table: str, *more: str) -> str:
    """The INSERT of a sealed table: its sealed columns in :data:`seals.SEALED` order (the id is
    assigned), then ``more``; the seal is hashed from the first values bound (``Tx._stored``)."""
    columns = (*seals.SEALED[table][1:], *more)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))})"


_INSERT_MESSAGE = _sealed_insert("messages", "outcome")
_INSERT_RESULT = _sealed_insert("results", "notes", "state", "collected_utc", "completed_utc", "site",
                                "patient_authority", "gates", "review_notes", "rules_version", "held_at")
_INSERT_OUTBOX = _sealed_insert("outbox", "state", "updated_at")


def _json_list(items: Sequence[str]) -> str:
    """A list column's JSON (most are empty: flags, gates, notes)."""
    return json.dumps(list(items)) if items else "[]"


def _as_zone_of(reference: datetime, utc: str) -> datetime:
    """The stored UTC instant ``utc`` as aware UTC, or as naive local time when ``reference`` is
    naive, so that the rules can subtract the two (a naive ASTM time against an HL7 one with offset)."""
    value = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    if reference.tzinfo is not None:
        return value
    try:
        return value.astimezone().replace(tzinfo=None)
    except (OverflowError, ValueError, OSError):
        return value.replace(tzinfo=None)


@functools.lru_cache(maxsize=4096)  # an analyzer's results share their few collection times
def utc_text(value: datetime | None) -> str | None:
    """``value`` as the UTC instant in fixed-width text (seconds), for comparisons in SQL.

    A naive time (ASTM carries no zone: the instrument's clock) is taken as this host's local
    time. A time too close to year 1 or 9999 to convert keeps its own digits.
    """
    if value is None:
        return None
    try:
        value = value.astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        pass
    return value.replace(tzinfo=None).isoformat(timespec="seconds")


class History:
    """The history reads the rules need, on a connection: a write transaction's (:class:`Tx`) or a
    :class:`HistoryReader`'s."""

    _conn: sqlite3.Connection

    def previous_result(self, *, patient_id: str, method: str, before: datetime, not_before: datetime,
                        other_than_specimen: str = "", patient_authority: str = "") -> PreviousResult | None:
        """The patient's latest final numeric result of ``method`` collected in [not_before, before).

        Only values that still stand: not replaced by a correction, not held or rejected in review,
        and from another specimen (a correction is not compared with the value it corrects).
        """
        row = self._conn.execute(
            "SELECT value, collected_utc, specimen, units FROM results WHERE patient_id = ? AND patient_authority = ?"
            " AND method = ?"
            " AND value IS NOT NULL AND comparator IS NULL AND collected_utc >= ? AND collected_utc < ?"
            " AND status IN ('F', 'C', '') AND superseded_by IS NULL AND state NOT IN ('rejected', 'held')"
            " AND specimen != ? ORDER BY collected_utc DESC, id DESC LIMIT 1",
            (patient_id, patient_authority, method, utc_text(not_before), utc_text(before),
             other_than_specimen)).fetchone()
        if row is None:
            return None
        return PreviousResult(value=Decimal(row["value"]), collected_at=_as_zone_of(before, row["collected_utc"]),
                              specimen_id=row["specimen"], units=row["units"])

    def recent_results(self, *, patient_id: str, around: datetime, hours: float, other_than_method: str,
                       patient_authority: str = "") -> list[tuple[str, Decimal, str, datetime, str]]:
        """(method, value, applied range, collected at, specimen) of the patient's standing numeric
        results of other methods collected within ``hours`` either side of ``around``."""
        from datetime import timedelta

        span = timedelta(hours=hours)
        rows = self._conn.execute(
            "SELECT method, value, applied_range, collected_utc, specimen FROM results WHERE patient_id = ?"
            " AND patient_authority = ? AND method IS NOT NULL AND method != ? AND value IS NOT NULL"
            " AND comparator IS NULL"
            " AND collected_utc BETWEEN ? AND ? AND superseded_by IS NULL AND state != 'rejected'",
            (patient_id, patient_authority, other_than_method, utc_text(around - span), utc_text(around + span)))
        return [(r["method"], Decimal(r["value"]), r["applied_range"], _as_zone_of(around, r["collected_utc"]),
                 r["specimen"]) for r in rows]



class HistoryReader(History):
    """A read-only connection for judging off the store thread (WAL: it sees the last commit and
    never blocks the writer). What it reads is a snapshot: the intake reads it again inside the
    writing transaction and judges there if it changed. Raises StoreError when it cannot read."""

    def __init__(self, path: Path) -> None:
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database for reading: {exc}") from exc
        self._conn.row_factory = sqlite3.Row

    def previous_result(self, **kwargs: Any) -> PreviousResult | None:
        try:
            return super().previous_result(**kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the history: {exc}") from exc

    def recent_results(self, **kwargs: Any) -> list[tuple[str, Decimal, str, datetime, str]]:
        try:
            return super().recent_results(**kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the history: {exc}") from exc

    def close(self) -> None:
        self._conn.close()


class Tx(History):
    """One write transaction's operations (see :meth:`Store.transaction`)."""

    def __init__(self, conn: sqlite3.Connection, now: datetime) -> None:
        self._conn = conn
        # Every stored time is UTC, whatever zone the caller's clock is in (issue #10 item 6).
        self.now = now.astimezone(UTC) if now.tzinfo is not None else now
        # Audit rows are chained here and inserted in one statement when the block ends (see
        # flush): a message makes some fifteen events, and one executemany beats fifteen round trips.
        self._audit_tail: tuple[int, str] | None = None
        self._audit_rows: list[audit_log.Row] = []
        # Rows inserted here whose hash the next audit event with the same ref will carry (seals.py):
        # (refs it may be named by, table, the sealed values as inserted, id first).
        self._unsealed: list[tuple[tuple[str, ...], str, tuple[Any, ...]]] = []
        # (audit seq, outbox id): each entry's pointer to its seal, written with the audit rows (flush).
        self._seal_seqs: list[tuple[int, int]] = []
        self._suspensions: tuple[Suspension, ...] | None = None
        self.now_text = self.now.isoformat()
        self._event_time: str | None = None
        # The site this daemon serves ([service] site): stored with each result and in each audit
        # event's data, so sites sharing one database keep their own views (see labmw.store.postgres).
        self.site = ""
        self.seal_memory: trail_check.SealMemory | None = None  # told the seal of every queue entry written

    def _stored(self, table: str, values: tuple[Any, ...], *refs: str) -> None:
        """Seal a row just inserted: ``values`` are its :data:`seals.SEALED` columns as bound, id first.

        The seal is computed from the values bound to the INSERT, not read back: the sealed columns
        are TEXT, INTEGER and BLOB, which store exactly what was bound (both engines), and
        ``audit verify`` re-reads every row against it.
        """
        self._unsealed.append((refs, table, values))

    def _take_seals(self, ref: str, seq: int) -> list[dict[str, Any]]:
        """The seals of rows waiting for an event about ``ref`` (which gets sequence ``seq``)."""
        if not self._unsealed:
            return []
        taken = [item for item in self._unsealed if ref in item[0]]
        if not taken:
            return []
        self._unsealed = [item for item in self._unsealed if ref not in item[0]]
        out = []
        for _, table, values in taken:
            out.append({"table": table, "id": values[0], "sha256": seals.row_hash(table, values)})
            if table == "outbox":
                # The forwarder finds the seal of an entry by this pointer (the seal itself is in the chain).
                self._seal_seqs.append((seq, values[0]))
        return out

    @property
    def qc(self) -> QcTx:
        """QC runs and control results in this transaction (labmw.store.qc)."""
        return QcTx(self._conn, self.now)

    def flush(self) -> None:
        """Write the buffered audit rows (called by Store.transaction before RELEASE/COMMIT)."""
        while self._unsealed:
            # A row no event named: it still gets its own event, so nothing stored escapes the trail.
            self.audit("row_stored", ref=self._unsealed[0][0][0])
        if self._audit_rows:
            self._conn.executemany(audit_log.INSERT, self._audit_rows)
            self._audit_rows = []
        if self._seal_seqs:
            self._conn.executemany("UPDATE outbox SET seal_seq = ? WHERE id = ?", self._seal_seqs)
            self._seal_seqs = []

    def add_message(self, *, analyzer: str, protocol: str, peer: str, raw: bytes, sha256: str, outcome: str) -> int:
        raw = bytes(raw)  # a bytearray or memoryview is stored as the BLOB bytes the seal must hash
        values = (analyzer, protocol, peer, self.now_text, sha256, raw)
        cur = self._conn.execute(_INSERT_MESSAGE, (*values, outcome))
        message_id = int(cur.lastrowid or 0)
        self._stored("messages", (message_id, *values), str(message_id))
        return message_id

    def add_result(self, *, message_id: int, result: Result, evaluation: Evaluation, state: str) -> int:
        """Insert a result with its evaluation's flags, notes, gates and rule-set version; returns its id."""
        sealed = (message_id, result.analyzer, result.specimen_id, result.patient_id, result.patient_name,
                  _iso(result.birth_date), result.sex, result.test_code, evaluation.method, result.raw_value,
                  str(result.value) if result.value is not None else None, result.comparator, result.units,
                  _json_list(result.instrument_flags), result.status, _iso(result.collected_at),
                  _iso(result.completed_at), _json_list(evaluation.flags), evaluation.applied_range)
        cur = self._conn.execute(
            _INSERT_RESULT,
            (*sealed, _json_list(evaluation.notes), state, utc_text(result.collected_at),
             utc_text(result.completed_at), self.site, result.patient_authority, _json_list(evaluation.gates),
             _json_list(evaluation.review_notes), evaluation.rules_version,
             self.now_text if evaluation.hold else None))
        result_id = int(cur.lastrowid or 0)
        self._stored("results", (result_id, *sealed), str(result_id))
        return result_id

    def set_result_wire(self, result_id: int, wire: str) -> None:
        """Keep what the instrument sent beyond the mapped columns (JSON, labmw.mapping.identity.wire_json)."""
        self._conn.execute("UPDATE results SET wire = ? WHERE id = ?", (wire, result_id))

    def standing_results(self, message_id: int) -> list[dict[str, Any]]:
        """The results of a message that still stand (not superseded, not replaced by a reprocess), by id."""
        rows = self._conn.execute("SELECT * FROM results WHERE message_id = ? AND superseded_by IS NULL"
                                  " AND state != 'reprocessed' ORDER BY id", (message_id,))
        return [dict(r) for r in rows]

    def latest_result_id(self, message_id: int) -> int:
        row = self._conn.execute("SELECT max(id) FROM results WHERE message_id = ?", (message_id,)).fetchone()
        return int(row[0] or 0)

    def set_result_state(self, result_id: int, state: str) -> None:
        self._conn.execute("UPDATE results SET state = ? WHERE id = ?", (state, result_id))

    def add_outbox_members(self, outbox_id: int, result_ids: Sequence[int]) -> None:
        """Further results carried by outbox entry ``outbox_id`` (one ORU per specimen); delivered with it."""
        self._conn.executemany("INSERT INTO outbox_members (outbox_id, result_id) VALUES (?, ?)",
                               [(outbox_id, rid) for rid in result_ids])

    def enqueue(self, *, result_id: int, control_id: str, payload: bytes) -> int:
        values = (result_id, control_id, bytes(payload), self.now_text)
        cur = self._conn.execute(_INSERT_OUTBOX, (*values, "pending", self.now_text))
        outbox_id = int(cur.lastrowid or 0)
        # Named by its MSH-10 (result_queued) or by its result (result_received, the one intake).
        self._stored("outbox", (outbox_id, *values), control_id, str(result_id))
        return outbox_id

    def corrected_result(self, *, analyzer: str, specimen: str, test_code: str) -> tuple[int, str] | None:
        """(id, raw value) of the standing result a correction of this specimen and test replaces."""
        row = self._conn.execute(
            "SELECT id, raw_value FROM results WHERE analyzer = ? AND specimen = ? AND test_code = ?"
            " AND superseded_by IS NULL ORDER BY id DESC LIMIT 1", (analyzer, specimen, test_code)).fetchone()
        return (int(row["id"]), str(row["raw_value"])) if row else None

    def hold_result(self, result_id: int, *, notes: tuple[str, ...]) -> None:
        """Put a just-stored result on hold for review with the given notes."""
        self._conn.execute("UPDATE results SET state = 'held', notes = ? WHERE id = ?",
                           (json.dumps(list(notes)), result_id))

    def supersede(self, *, old_id: int, new_id: int) -> None:
        self._conn.execute("UPDATE results SET superseded_by = ? WHERE id = ?", (new_id, old_id))

    def audit(self, event: str, *, actor: str = "labmw", analyzer: str = "", specimen: str = "", patient: str = "",
              ref: str = "", data: Mapping[str, Any] | None = None) -> int:
        if self._audit_tail is None:
            self._audit_tail = audit_log.tail(self._conn)
        if self.site and "site" not in (data or {}):
            data = {**(data or {}), "site": self.site}
        sealed = self._take_seals(ref, self._audit_tail[0] + 1)
        if sealed:
            data = {**(data or {}), "stored": sealed}
        if self._event_time is None:
            self._event_time = audit_log.event_time(self.now)
        row = audit_log.make_row(self._audit_tail, event, ts=self._event_time, actor=actor, analyzer=analyzer,
                                 specimen=specimen, patient=patient, ref=ref, data=data)
        if sealed and self.seal_memory is not None:
            for seal in sealed:
                if seal["table"] == "outbox":
                    self.seal_memory.remember(seal["id"], row[0], row[-1], seal["sha256"])
        self._audit_rows.append(row)
        self._audit_tail = (row[0], row[-1])
        return row[0]

    # --- HL7 inbound duplicate keys (HL7.md 1.4) ---------------------------------------------------
    def add_inbound_key(self, *, message_id: int, analyzer: str, sending_application: str, sending_facility: str,
                        control_id: str, content_sha256: str) -> None:
        """Remember (analyzer, MSH-3, MSH-4, MSH-10, hash without MSH-7) of a stored message, received now."""
        self._conn.execute(
            "INSERT INTO inbound_keys (message_id, analyzer, sending_application, sending_facility, control_id,"
            " content_sha256, received_at) VALUES (?,?,?,?,?,?,?)",
            (message_id, analyzer, sending_application, sending_facility, control_id, content_sha256,
             self.now.isoformat()))

    def message_with_content(self, *, analyzer: str, content_sha256: str, since: datetime) -> int | None:
        """The id of a message from ``analyzer`` with this content key received at or after ``since``."""
        row = self._conn.execute(
            "SELECT message_id FROM inbound_keys WHERE analyzer = ? AND content_sha256 = ? AND received_at >= ?"
            " ORDER BY id DESC LIMIT 1", (analyzer, content_sha256, since.isoformat())).fetchone()
        return int(row[0]) if row else None

    def last_inbound_key(self, *, analyzer: str) -> tuple[int, str, datetime] | None:
        """(message_id, content hash, received at) of the last message stored from ``analyzer``."""
        row = self._conn.execute(
            "SELECT message_id, content_sha256, received_at FROM inbound_keys WHERE analyzer = ?"
            " ORDER BY id DESC LIMIT 1", (analyzer,)).fetchone()
        if row is None:
            return None
        return int(row[0]), str(row[1]), datetime.fromisoformat(row[2])

    def inbound_keys(self, *, analyzer: str, sending_application: str, sending_facility: str, control_id: str,
                     since: datetime) -> list[tuple[int, str]]:
        """(message_id, content hash) of messages with this sender and MSH-10 received at or after ``since``.

        Newest first. ``since`` must be in the same time zone as the stored ``now`` values (UTC).
        """
        rows = self._conn.execute(
            "SELECT message_id, content_sha256 FROM inbound_keys WHERE analyzer = ? AND sending_application = ?"
            " AND sending_facility = ? AND control_id = ? AND received_at >= ? ORDER BY id DESC",
            (analyzer, sending_application, sending_facility, control_id, since.isoformat())).fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]


    # --- autoverification (labmw.store.autoverify) ------------------------------------------------
    def record_gates(self, result_id: int, evaluation: Evaluation) -> None:
        """Keep the gates, reviewer notes, rule-set version and hold time with a stored result."""
        av.record_gates(self._conn, result_id, evaluation, self.now)

    def active_suspensions(self) -> tuple[Suspension, ...]:
        """The kill switches in force now (read at judgement time: effective at once)."""
        # Read once per transaction: it holds the write lock, so no suspension can change meanwhile.
        if self._suspensions is None:
            self._suspensions = av.active_suspensions(self._conn, self.site)
        return self._suspensions

    def note_rules_version(self, version: str, *, actor: str, how: str, before: str = "") -> bool:
        """Record the rule-set version in force; a change is a ``rules_version_changed`` event with both.

        ``before`` is used when no version was recorded yet (a database older than the version
        stamp). Returns True when the version changed.
        """
        # Sites sharing one database each have their own rule set (their own analyzers): one key per site.
        key = f"rules_version:{self.site}" if self.site else "rules_version"
        stored = av.recorded_rules_version(self._conn, key)
        if stored == version:
            return False
        recorded = stored or before
        if recorded == version:
            av.record_rules_version(self._conn, version, key)
            return False
        self.audit("rules_version_changed", actor=actor, data={"before": recorded, "after": version, "how": how})
        av.record_rules_version(self._conn, version, key)
        return True

    def add_critical(self, result_id: int, flag: str) -> None:
        """Open a critical-value notification for a result flagged HH or LL."""
        av.add_critical(self._conn, result_id, flag, self.now)

    def alert_overdue_criticals(self, *, before: datetime) -> int:
        """Audit ``critical_overdue`` once for each unnotified critical detected before ``before``."""
        # Sites sharing a database each alert their own (their staff call their clinicians).
        fresh = [c for c in av.overdue_criticals(self._conn, before=before, site=self.site) if c["alerted_at"] is None]
        av.mark_alerted(self._conn, [c["id"] for c in fresh], self.now)
        for c in fresh:
            self.audit("critical_overdue", analyzer=c["analyzer"], specimen=c["specimen"], patient=c["patient"],
                       ref=str(c["result_id"]),
                       data={"critical_id": c["id"], "detected_at": c["detected_at"], "flag": c["flag"]})
        return len(fresh)


class Store:
    """The SQLite store. Not thread-safe: the daemon drives it from one dedicated thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._group_depth = 0  # > 0 inside group(): transactions become savepoints
        self.site = ""  # [service] site, handed to every Tx
        self._reader: HistoryReader | None = None
        self.seal_memory = trail_check.SealMemory()  # the queue entries sealed by this process
        row = conn.execute("SELECT value FROM meta WHERE key = 'install_id'").fetchone()
        self.install_id: str = row[0]

    @property
    def qc(self) -> QcStore:
        """QC runs for the CLI and status, and the documented override (labmw.store.qc)."""
        return QcStore(self)

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open or create the database file; raises StoreError."""
        return cls(connect(path), path)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._conn.close()

    def history_reader(self) -> HistoryReader:
        """The store's read-only history connection (one, opened on first use; any thread may use it)."""
        if self._reader is None:
            self._reader = HistoryReader(self.path)
        return self._reader

    @property
    def users(self) -> Users:
        """Review-workstation accounts, sessions and failed logins (see :mod:`labmw.store.users`)."""
        return Users(self._conn, self.transaction)

    @property
    def browse(self) -> Browse:
        """Read-only queries for the review workstation's pages (see :mod:`labmw.store.browse`)."""
        return Browse(self._conn)

    @contextlib.contextmanager
    def transaction(self, now: datetime) -> Iterator[Tx]:
        """A write transaction; commit on normal exit. Any database failure becomes StoreError.

        Inside :meth:`group` it is a SAVEPOINT: its work is undone alone if it fails, and becomes
        durable only with the group's COMMIT.
        """
        try:
            if self._group_depth:
                self._group_depth += 1
                name = f"sp{self._group_depth}"
                self._conn.execute(f"SAVEPOINT {name}")
                try:
                    tx = self._tx(now)
                    yield tx
                    tx.flush()
                except BaseException:
                    self._conn.execute(f"ROLLBACK TO {name}")
                    self._conn.execute(f"RELEASE {name}")
                    raise
                else:
                    self._conn.execute(f"RELEASE {name}")
                finally:
                    self._group_depth -= 1
            else:
                with self._begin():
                    tx = self._tx(now)
                    yield tx
                    tx.flush()
        except Exception as exc:
            failed = self._write_failed(exc)
            if failed is None:
                raise
            raise failed from exc

    @contextlib.contextmanager
    def _begin(self) -> Iterator[None]:
        """BEGIN .. COMMIT of one write transaction, ROLLBACK on any error (each engine its own)."""
        with transaction(self._conn):
            yield

    def _write_failed(self, exc: Exception) -> StoreError | None:
        """The StoreError that ``exc``, raised inside a write transaction, becomes (None: it goes on as it is)."""
        return StoreError(f"database write failed: {exc}") if isinstance(exc, sqlite3.Error) else None

    def _tx(self, now: datetime) -> Tx:
        tx = Tx(self._conn, now)
        tx.site = self.site
        tx.seal_memory = self.seal_memory
        return tx

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """One transaction around several :meth:`transaction` blocks (group commit: one fsync for all).

        Raises:
            StoreError: BEGIN or COMMIT failed; then nothing of the group is stored.
        """
        try:
            with self._begin():
                self._group_depth = 1
                try:
                    yield
                finally:
                    self._group_depth = 0
        except Exception as exc:
            failed = self._write_failed(exc)
            if failed is None:
                raise
            raise failed from exc

    # --- audit -----------------------------------------------------------------------------------
    def append_audit(self, event: str, *, now: datetime, actor: str, analyzer: str = "", specimen: str = "",
                     patient: str = "", ref: str = "", data: Mapping[str, Any] | None = None) -> int:
        with self.transaction(now) as tx:
            return tx.audit(event, actor=actor, analyzer=analyzer, specimen=specimen, patient=patient, ref=ref,
                            data=data)

    def audit_events(self, **filters: Any) -> list[AuditEvent]:
        site = filters.pop("site", None)
        if site is not None:
            # The site is in each event's data (Tx.audit); filter before any limit applies.
            limit = filters.pop("limit", None)
            events = [e for e in self.audit_events(**filters) if e.data.get("site") == site]
            return events[:limit] if limit is not None else events
        try:
            return audit_log.query(self._conn, **filters)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the audit trail: {exc}") from exc

    def verify_audit(self, *, expect_head: tuple[int, str] | None = None) -> Verification:
        """The chain, the anchor and every stored row it covers (see :func:`trail_check.verify_all`)."""
        try:
            return trail_check.verify_all(self._conn, expect_head=expect_head)
        except sqlite3.Error as exc:
            return Verification(ok=False, count=0, first_broken=None, reason=f"cannot read the audit trail: {exc}")

    def audit_head(self) -> tuple[int, str]:
        """(sequence, hash) of the newest event: the anchor to keep outside the database."""
        try:
            return audit_log.tail(self._conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the audit trail: {exc}") from exc

    def verify_audit_since_checkpoint(self) -> Verification:
        """The chain since the last verified checkpoint (see :func:`trail_check.verify_since_checkpoint`)."""
        try:
            return trail_check.verify_since_checkpoint(self._conn)
        except sqlite3.Error as exc:
            return Verification(ok=False, count=0, first_broken=None, reason=f"cannot read the audit trail: {exc}")

    # --- outbox ----------------------------------------------------------------------------------
    # LEFT JOIN: an entry whose result row is gone is still listed (with its problem), never invisible.
    _OUTBOX_SELECT = f"SELECT {trail_check.OUTBOX_COLUMNS} {trail_check.OUTBOX_FROM}"

    def pending_after(self, after_id: int, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` entries waiting for the LIS with ids above ``after_id``, oldest first.

        Each is checked against the hash its audit event recorded; an entry that does not match, or
        that cannot be read as stored (e.g. a payload stored as TEXT), comes back with ``problem``
        set and an empty payload, so that it is refused instead of sent or stopping the queue.
        """
        return self._checked_entries(self._conn.execute(trail_check.PENDING_WITH_SEAL_HASH, (after_id, limit)))

    def _checked_entries(self, rows: Iterable[sqlite3.Row]) -> list[OutboxEntry]:
        """Entries of pending rows, each checked against its seal (a mismatch: ``problem``, no payload)."""
        out = []
        for row in rows:
            entry = _entry(row)
            if not entry.problem:
                problem = trail_check.entry_seal_problem(self._conn, row, self.seal_memory)
                if problem:
                    entry = replace(entry, payload=b"", problem=problem)
            out.append(entry)
        return out

    def refuse(self, entry: OutboxEntry, *, now: datetime, reason: str) -> None:
        """Dead-letter an entry that must not be sent as stored (altered, or unreadable), with one
        ``delivery_refused`` event and an alert: it needs a person, not a retry."""
        with self.transaction(now) as tx:
            self._conn.execute("UPDATE outbox SET state='dead', updated_at=?, last_error=? WHERE id=?",
                               (now.isoformat(), f"refused: {reason}", entry.id))
            if entry.result_id:
                self._conn.execute("UPDATE results SET state='dead' WHERE id=?", (entry.result_id,))
            tx.audit("delivery_refused", analyzer=entry.analyzer, specimen=entry.specimen, patient=entry.patient,
                     ref=entry.control_id, data={"outbox_id": entry.id, "reason": reason})
            tx.audit("alert_raised", analyzer=entry.analyzer, ref=entry.control_id,
                     data={"alert": "outbox_entry_refused", "reason": reason, "outbox_id": entry.id})

    def request_retry_now(self, *, now: datetime, actor: str) -> None:
        """Ask the running forwarder to skip its backoff (`labmw queue retry --now`), audited."""
        with self.transaction(now) as tx:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('retry_now_at', ?)", (now.isoformat(),))
            tx.audit("queue_retry_now", actor=actor)

    def retry_now_requested(self) -> str:
        """When `queue retry --now` was last asked for ("" never); the forwarder compares it with what it saw."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'retry_now_at'").fetchone()
        return str(row[0]) if row is not None else ""

    def outbox(self, *, states: tuple[str, ...] = ("pending", "dead")) -> list[OutboxEntry]:
        marks = ",".join("?" * len(states))
        rows = self._conn.execute(f"{self._OUTBOX_SELECT} WHERE o.state IN ({marks}) ORDER BY o.id", states)
        return [_entry(r) for r in rows]

    def count_outbox(self, state: str) -> int:
        return int(self._conn.execute("SELECT count(*) FROM outbox WHERE state = ?", (state,)).fetchone()[0])

    def mark_delivered(self, entry: OutboxEntry, *, now: datetime, ack_code: str, ack_text: str) -> None:
        """Record the LIS's acceptance of one entry (see :meth:`mark_delivered_many`)."""
        self.mark_delivered_many([(entry, ack_code, ack_text)], now=now)

    def mark_delivered_many(self, items: Sequence[tuple[OutboxEntry, str, str]], *, now: datetime) -> None:
        """Record the LIS's acceptance of ``(entry, ack code, ack text)`` items, in one transaction.

        Outside a group it commits without waiting for the disk (WAL, synchronous=NORMAL): safe
        against a crash of labmw, and if a power cut loses it the results are sent again under the
        same MSH-10, which the LIS recognises as a repeat (PRODUCT.md guarantee 2). Inside a group
        commit it becomes durable with the group at no extra cost.
        """
        if self._group_depth or self._conn.in_transaction:
            self._mark_delivered(items, now=now)
            return
        self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self._mark_delivered(items, now=now)
        finally:
            self._conn.execute("PRAGMA synchronous=FULL")

    def _mark_delivered(self, items: Sequence[tuple[OutboxEntry, str, str]], *, now: datetime) -> None:
        with self.transaction(now) as tx:
            when = now.isoformat()
            self._conn.executemany(
                "UPDATE outbox SET state='delivered', attempts=attempts+1, updated_at=?, last_error='' WHERE id=?",
                [(when, entry.id) for entry, _, _ in items])
            self._conn.executemany("UPDATE results SET state='delivered' WHERE id=?",
                                   [(entry.result_id,) for entry, _, _ in items])
            # The other results of a specimen's ORU (lis.group = "specimen") were delivered with it.
            self._conn.executemany("UPDATE results SET state='delivered' WHERE id IN"
                                   " (SELECT result_id FROM outbox_members WHERE outbox_id=?)",
                                   [(entry.id,) for entry, _, _ in items])
            self.seal_memory.forget(entry.id for entry, _, _ in items)
            for entry, ack_code, ack_text in items:
                tx.audit("result_delivered", analyzer=entry.analyzer, specimen=entry.specimen, patient=entry.patient,
                         ref=entry.control_id, data={"outbox_id": entry.id, "ack_code": ack_code,
                                                     "ack_text": ack_text, "attempt": entry.attempts + 1,
                                                     "test_code": entry.test_code})

    def mark_attempt_failed(self, entry: OutboxEntry, *, now: datetime, error: str, retry_in: float) -> None:
        with self.transaction(now) as tx:
            self._conn.execute("UPDATE outbox SET attempts=attempts+1, updated_at=?, last_error=? WHERE id=?",
                               (now.isoformat(), error, entry.id))
            tx.audit("delivery_failed", analyzer=entry.analyzer, specimen=entry.specimen, patient=entry.patient,
                     ref=entry.control_id, data={"outbox_id": entry.id, "error": error, "attempt": entry.attempts + 1,
                                                 "retry_in_s": round(retry_in, 3)})

    def mark_dead(self, entry: OutboxEntry, *, now: datetime, reason: str, alert: bool) -> None:
        with self.transaction(now) as tx:
            self._conn.execute("UPDATE outbox SET state='dead', attempts=attempts+1, updated_at=?, last_error=?"
                               " WHERE id=?", (now.isoformat(), reason, entry.id))
            self._conn.execute("UPDATE results SET state='dead' WHERE id=?", (entry.result_id,))
            self._conn.execute("UPDATE results SET state='dead' WHERE id IN"
                               " (SELECT result_id FROM outbox_members WHERE outbox_id=?)", (entry.id,))
            tx.audit("delivery_dead_lettered", analyzer=entry.analyzer, specimen=entry.specimen,
                     patient=entry.patient, ref=entry.control_id,
                     data={"outbox_id": entry.id, "reason": reason, "attempt": entry.attempts + 1})
            if alert:
                tx.audit("alert_raised", analyzer=entry.analyzer, ref=entry.control_id,
                         data={"alert": "lis_rejecting", "reason": reason})

    def retry(self, entry_ids: list[int] | None, *, now: datetime, actor: str) -> int:
        """Put dead letters back in the queue (all when ``entry_ids`` is None); returns how many."""
        with self.transaction(now) as tx:
            if entry_ids is None:
                ids = [r[0] for r in self._conn.execute("SELECT id FROM outbox WHERE state='dead'")]
            else:
                ids = [i for i in entry_ids
                       if self._conn.execute("SELECT 1 FROM outbox WHERE id=? AND state='dead'", (i,)).fetchone()]
            for entry_id in ids:
                self._conn.execute("UPDATE outbox SET state='pending', updated_at=? WHERE id=?",
                                   (now.isoformat(), entry_id))
                tx.audit("delivery_requeued", actor=actor, ref=str(entry_id), data={"outbox_id": entry_id})
            return len(ids)


    # --- review holds ----------------------------------------------------------------------------
    def held_results(self) -> list[HeldResult]:
        """Results a rule held back, oldest first."""
        rows = self._conn.execute("SELECT * FROM results WHERE state = 'held' ORDER BY id").fetchall()
        held = [_held(row) for row in rows]
        # A correction (status C) of a result the LIS already has needs more care than a first report.
        return [dataclasses.replace(h, correction=h.correction and av.delivered_earlier(self._conn, h.id))
                for h in held]

    def load_result(self, result_id: int) -> tuple[Result, Evaluation, str]:
        """A stored result as the pipeline saw it, with its evaluation and state; raises StoreError if absent."""
        row = self._conn.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
        if row is None:
            raise StoreError(f"no result with id {result_id}")
        result = Result(
            analyzer=row["analyzer"], test_code=row["test_code"], raw_value=row["raw_value"],
            value=Decimal(row["value"]) if row["value"] is not None else None, comparator=row["comparator"],
            units=row["units"], instrument_flags=tuple(json.loads(row["instrument_flags"])), status=row["status"],
            completed_at=_dt(row["completed_at"]), specimen_id=row["specimen"], collected_at=_dt(row["collected_at"]),
            patient_id=row["patient_id"], patient_authority=row["patient_authority"], patient_name=row["patient_name"],
            birth_date=date.fromisoformat(row["birth_date"]) if row["birth_date"] else None, sex=row["sex"])
        result = with_wire(result, row["wire"] if "wire" in row.keys() else "")  # noqa: SIM118 - sqlite3.Row: "in" looks at values
        evaluation = Evaluation(method=row["method"], flags=tuple(json.loads(row["flags"])),
                                applied_range=row["applied_range"], notes=tuple(json.loads(row["notes"])),
                                hold=row["state"] == "held")
        return result, evaluation, row["state"]

    def decide_held(self, result_id: int, *, decision: str, reason: str, actor: str, now: datetime,
                    control_id: str = "", payload: bytes = b"", second_person: tuple[str, ...] = ()) -> None:
        """Release (enqueue ``payload`` under ``control_id``) or reject a held result, with an audit event.

        ``second_person`` (why a release needs two people, labmw.rules.second_person): the release
        completes the first signature of another user (checked in this transaction).

        Raises:
            StoreError: the result does not exist or is not held (someone decided already), or a release
                needing a second person has no first signature by another user.
        """
        with self.transaction(now) as tx:
            row = self._held_row(result_id, decision)
            first = signatures.get(self._conn, result_id)
            first = first if first is not None and first.outcome == "pending" else None
            if decision == "release" and second_person and (first is None or first.first_actor == actor):
                raise StoreError(f"result {result_id} needs a second person to release it "
                                 f"({', '.join(second_person)}): "
                                 + ("no first signature yet" if first is None else "you signed the first request"))
            new_state = "queued" if decision == "release" else "rejected"
            self._conn.execute("UPDATE results SET state = ? WHERE id = ?", (new_state, result_id))
            who = {"analyzer": row["analyzer"], "specimen": row["specimen"], "patient": row["patient_id"]}
            extra: dict[str, Any] = {}
            if first is not None:
                signatures.complete(self._conn, result_id, outcome="released" if decision == "release" else "rejected",
                                    actor=actor, reason=reason, now=now)
                extra = {"first_signature": {"actor": first.first_actor, "reason": first.first_reason,
                                             "at": first.first_at, "needs": list(first.needs)}}
            tx.audit(f"result_{'released' if decision == 'release' else 'rejected'}", actor=actor, ref=str(result_id),
                     **who, data={"reason": reason, "result_id": result_id, **extra})
            if decision == "release":
                outbox_id = tx.enqueue(result_id=result_id, control_id=control_id, payload=payload)
                tx.audit("result_queued", actor=actor, ref=control_id, **who,
                         data={"outbox_id": outbox_id, "result_id": result_id})

    def _held_row(self, result_id: int, decision: str) -> sqlite3.Row:
        """The result's row for a decision; StoreError when it is not held, or a release of a QC result."""
        row = self._conn.execute("SELECT specimen, patient_id, analyzer, state, role FROM results WHERE id = ?",
                                 (result_id,)).fetchone()
        if row is None or row["state"] != "held":
            raise StoreError(f"result {result_id} is not held for review"
                             + (f" (it is {row['state']})" if row is not None else ""))
        if decision == "release" and row["role"] == "qc":
            # A control result is never a patient result (issue 12): it can only be rejected.
            raise StoreError(f"result {result_id} is a QC result: it is never sent to the LIS; add its "
                             "material with `labmw qc material add`, or reject it")
        return row  # type: ignore[no-any-return]

    # --- second-person release (issue 15) ---------------------------------------------------------
    def held_result(self, result_id: int) -> HeldResult:
        """One result as `review list` shows it (any state); StoreError when there is none."""
        row = self._conn.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
        if row is None:
            raise StoreError(f"no result with id {result_id}")
        return _held(row)

    def release_signature(self, result_id: int) -> ReleaseSignature | None:
        """The first signature of a two-person release of the result (any outcome), if there is one."""
        return signatures.get(self._conn, result_id)

    def sign_release(self, result_id: int, *, needs: tuple[str, ...], reason: str, actor: str,
                     now: datetime) -> ReleaseSignature:
        """The first of two signatures: audited as ``release_requested``; the result stays held.

        Raises:
            StoreError: the result is not held, is a QC result, or already has a pending first signature.
        """
        with self.transaction(now) as tx:
            row = self._held_row(result_id, "release")
            old = signatures.get(self._conn, result_id)
            if old is not None and old.outcome != "pending":
                self._conn.execute("DELETE FROM release_signatures WHERE result_id = ?", (result_id,))
            signature = signatures.add_first(self._conn, result_id, needs=needs, actor=actor, reason=reason, now=now)
            tx.audit("release_requested", actor=actor, ref=str(result_id), analyzer=row["analyzer"],
                     specimen=row["specimen"], patient=row["patient_id"],
                     data={"reason": reason, "result_id": result_id, "needs": list(needs),
                           "awaiting": "a release by a second person"})
        return signature

    # --- autoverification: kill switch, critical calls, report ----------------------------------
    def active_suspensions(self) -> tuple[Suspension, ...]:
        return av.active_suspensions(self._conn, self.site)

    def suspend_autoverify(self, *, analyzer: str, method: str, reason: str, actor: str, now: datetime) -> int:
        """Suspend autoverification (empty analyzer/method: all); audited. Returns the suspension's id."""
        with self.transaction(now) as tx:
            sid = av.suspend(self._conn, analyzer=analyzer, method=method, reason=reason, actor=actor, now=now,
                             site=self.site)
            tx.audit("autoverify_suspended", actor=actor, analyzer=analyzer, ref=str(sid),
                     data={"analyzer": analyzer, "method": method, "reason": reason})
        return sid

    def resume_autoverify(self, *, analyzer: str, method: str, reason: str, actor: str, now: datetime) -> list[int]:
        """End the suspensions of exactly this scope; audited. Raises StoreError when there is none."""
        with self.transaction(now) as tx:
            ids = av.resume(self._conn, analyzer=analyzer, method=method, reason=reason, actor=actor, now=now,
                            site=self.site)
            tx.audit("autoverify_resumed", actor=actor, analyzer=analyzer, ref=",".join(map(str, ids)),
                     data={"analyzer": analyzer, "method": method, "reason": reason, "suspensions": ids})
        return ids

    def criticals(self, *, only_open: bool = False) -> list[dict[str, Any]]:
        return av.criticals(self._conn, only_open=only_open, site=self.site)

    def notify_critical(self, critical_id: int, *, to: str, readback: bool, actor: str, now: datetime) -> None:
        """Record who notified whom of a critical value, when, and whether it was read back; audited."""
        with self.transaction(now) as tx:
            row = av.notify_critical(self._conn, critical_id, to=to, readback=readback, actor=actor, now=now)
            tx.audit("critical_notified", actor=actor, ref=str(row["result_id"]),
                     data={"critical_id": critical_id, "to": to, "readback": readback})

    def alert_overdue_criticals(self, *, before: datetime, now: datetime) -> list[dict[str, Any]]:
        """Unnotified criticals detected before ``before``; each not yet alerted raises one audit event."""
        overdue = av.overdue_criticals(self._conn, before=before, site=self.site)
        if any(c["alerted_at"] is None for c in overdue):
            with self.transaction(now) as tx:
                tx.alert_overdue_criticals(before=before)
        return overdue

    def held_extras(self, result_id: int) -> dict[str, Any]:
        """Gates, reviewer notes, rule-set version and hold time of a stored result."""
        extras = av.held_extras(self._conn, result_id)
        extras["correction_of_delivered"] = av.delivered_earlier(self._conn, result_id)
        return extras

    def review_detail(self, result_id: int) -> dict[str, Any]:
        """A result with its raw message, rule outcomes and the patient's previous results (review show)."""
        return av.review_detail(self._conn, result_id)

    def autoverification_report(self, *, since: str | None, until: str | None) -> list[dict[str, Any]]:
        return av.report(self._conn, since=since, until=until)

    # --- message browser (labmw message list|show; labmw.store.browser) -------------------------------
    def browse_messages(self, **filters: Any) -> list[dict[str, Any]]:
        try:
            return browser.list_messages(self._conn, **filters)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read messages: {exc}") from exc

    def message_detail(self, message_id: int) -> dict[str, Any]:
        try:
            return browser.message_detail(self._conn, message_id)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read message {message_id}: {exc}") from exc
    def ops_marks(self) -> tuple[int, int]:
        """(last result id, last audit seq): the start of "since the daemon started" for the metrics."""
        return ops_stats.marks(self._conn)

    def ops_snapshot(self, *, since: tuple[int, int], now: datetime) -> dict[str, Any]:
        """Queue age, held results by gate, results and holds since ``since`` (see :mod:`ops_stats`)."""
        return ops_stats.snapshot(self._conn, since=since, now=now)

    def unnotified_criticals(self, *, received_before: datetime) -> int:
        """Critical results received before the time that have not reached the LIS (the alert loop)."""
        return ops_stats.unnotified_criticals(self._conn, received_before=received_before, site=self.site)

    def retention_plan(self, cutoff: datetime) -> dict[str, Any]:
        """What :meth:`purge_older_than` would remove (see :mod:`labmw.store.retention`)."""
        try:
            return retention.plan(self._conn, cutoff)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot plan the retention purge: {exc}") from exc

    def purge_older_than(self, cutoff: datetime, *, now: datetime, actor: str) -> dict[str, Any]:
        """Remove finished results and raw messages older than ``cutoff``, audited; then give space back."""
        with self.transaction(now) as tx:
            summary = retention.purge(self._conn, cutoff,
                                      lambda data: tx.audit("retention_purged", actor=actor, data=data))
        try:
            summary["pages_freed"] = retention.give_space_back(self._conn)
        except sqlite3.Error as exc:
            raise StoreError(f"purged, but the space could not be given back: {exc}") from exc
        return summary

    def probe_writable(self) -> None:
        """Raises StoreError unless the write lock can be taken (the metrics /healthz check)."""
        ops_stats.probe_writable(self._conn)

    def counts(self) -> dict[str, int]:
        """Queue depth and held results, for `labmw status`."""
        return {"pending": self.count_outbox("pending"), "dead": self.count_outbox("dead"),
                "held": int(self._conn.execute("SELECT count(*) FROM results WHERE state='held'").fetchone()[0]),
                # Results that came without a test code (a misconfigured R-3 component): loud in status.
                "held_test_code_missing": int(self._conn.execute(
                    "SELECT count(*) FROM results WHERE state='held' AND test_code=''").fetchone()[0])}


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldResult:
    id: int
    analyzer: str
    specimen: str
    patient: str
    method: str
    test_code: str
    value: str
    units: str
    flags: tuple[str, ...]
    reason: str
    collected_at: str
    gates: tuple[str, ...] = ()
    held_at: str = ""
    correction: bool = False  # a correction (status C) of a result already delivered to the LIS

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "analyzer": self.analyzer, "specimen": self.specimen, "patient": self.patient,
                "method": self.method, "test_code": self.test_code, "value": self.value, "units": self.units,
                "flags": list(self.flags), "reason": self.reason, "collected_at": self.collected_at,
                "gates": list(self.gates), "held_since": self.held_at, "correction": self.correction}


def _held(row: sqlite3.Row) -> HeldResult:
    return HeldResult(id=row["id"], analyzer=row["analyzer"], specimen=row["specimen"], patient=row["patient_id"],
                      method=row["method"] or "", test_code=row["test_code"], value=row["raw_value"],
                      units=row["units"], flags=tuple(json.loads(row["flags"])),
                      reason="; ".join([*json.loads(row["review_notes"]), *json.loads(row["notes"])]),
                      collected_at=row["collected_at"] or "", gates=tuple(json.loads(row["gates"])),
                      held_at=row["held_at"] or "", correction=(row["status"] or "").upper() == "C")


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _entry(row: sqlite3.Row) -> OutboxEntry:
    """One outbox row; a row that is not as labmw writes it is described in ``problem``, never raised."""
    problems: list[str] = []
    payload = row["payload"]
    if not isinstance(payload, bytes):
        problems.append(f"payload stored as {type(payload).__name__ if payload is not None else 'NULL'}, "
                        "not as the bytes queued")
        payload = b""
    if row["analyzer"] is None:
        problems.append(f"its result (id {row['result_id']}) is missing")
    attempts = row["attempts"] if isinstance(row["attempts"], int) else 0
    result_id = row["result_id"] if isinstance(row["result_id"], int) else 0
    return OutboxEntry(id=int(row["id"]), control_id=_text(row["control_id"]), payload=payload,
                       state=_text(row["state"]), attempts=attempts, result_id=result_id,
                       analyzer=_text(row["analyzer"]), specimen=_text(row["specimen"]),
                       patient=_text(row["patient_id"]), test_code=_text(row["test_code"]),
                       created_at=_text(row["created_at"]), updated_at=_text(row["updated_at"]),
                       last_error=_text(row["last_error"]), problem="; ".join(problems))

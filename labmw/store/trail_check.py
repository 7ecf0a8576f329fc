"""Checking the audit trail against itself, its anchor and the rows it sealed (issue #17).

- :func:`verify_all` (``labmw audit verify``): the whole chain, then the anchored event
  (``--expect-head``), then every stored row against the hash its event recorded; the first
  problem is reported.
- :func:`verify_since_checkpoint` (the daemon at start): the chain from the last verified checkpoint
  on, so that it costs the same however long the trail is; the checkpoint then moves to the head.
- :func:`entry_seal_problem` (the forwarder, via ``Store.pending_after``): is this queue entry the one
  the trail recorded? (:class:`SealMemory` answers for the entries this process wrote.)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from labmw.store import audit as audit_log
from labmw.store import seals
from labmw.store.audit import Verification
from labmw.store.db import transaction

CHECKPOINT_KEY = "audit_checkpoint"

# Queue entries with what the store shows of their result (Store.outbox, the forwarder's reads).
OUTBOX_COLUMNS = "o.*, r.analyzer, r.specimen, r.patient_id, r.test_code"
OUTBOX_FROM = "FROM outbox o LEFT JOIN results r ON r.id = o.result_id"
_WITH_SEAL_EVENT = f"{OUTBOX_FROM} LEFT JOIN audit a ON a.seq = o.seal_seq"
# Pending entries with the hash of the audit event their seal is in (for SealMemory.confirms).
PENDING_WHERE = "WHERE o.state = 'pending' AND o.id > ?"
PENDING_WITH_SEAL_HASH = (f"SELECT {OUTBOX_COLUMNS}, a.hash AS a_hash {_WITH_SEAL_EVENT}"
                          f" {PENDING_WHERE} ORDER BY o.id LIMIT ?")
# One entry with the whole audit event its seal is in (columns prefixed a_), for outbox_seal_problem.
ENTRY_WITH_SEAL = (
    f"SELECT {OUTBOX_COLUMNS}, "
    + ", ".join(f"a.{c} AS a_{c}" for c in ("ts", "event", "actor", "analyzer", "specimen", "patient", "ref",
                                              "data", "prev_hash", "hash"))
    + f" {_WITH_SEAL_EVENT} WHERE o.id = ?")


class SealMemory:
    """The seals of the queue entries this process wrote, so the forwarder need not re-read them.

    An entry is sent only if it is the one the trail recorded. For an entry written here that is
    known without reading its audit event again: it must still point at the event this process
    wrote (same sequence, same hash) and hash to the seal this process computed. Anything else --
    an entry from before a restart, another daemon's, a rolled-back write whose id was reused, an
    edit -- takes the full check (:func:`outbox_seal_problem`). An edit of the event itself is
    caught by ``audit verify`` and the start-up check, and cannot make an edited entry pass here.
    """

    LIMIT = 50_000  # entries remembered; older ones (a long LIS outage) take the full check

    def __init__(self) -> None:
        self._seals: dict[int, tuple[int, str, str]] = {}  # outbox id -> (event seq, event hash, row hash)

    def remember(self, outbox_id: int, seq: int, event_hash: str, row_digest: str) -> None:
        self._seals[outbox_id] = (seq, event_hash, row_digest)
        if len(self._seals) > self.LIMIT:
            del self._seals[next(iter(self._seals))]

    def forget(self, outbox_ids: Iterable[int]) -> None:
        for outbox_id in outbox_ids:
            self._seals.pop(outbox_id, None)

    def confirms(self, row: sqlite3.Row) -> bool:
        """Whether ``row`` (from :data:`PENDING_WITH_SEAL_HASH`) is, as stored, the entry sealed here."""
        known = self._seals.get(int(row["id"]))
        return (known is not None and row["seal_seq"] == known[0] and row["a_hash"] == known[1]
                and seals.row_hash("outbox", tuple(row[c] for c in seals.SEALED["outbox"])) == known[2])


def entry_seal_problem(conn: sqlite3.Connection, row: sqlite3.Row, memory: SealMemory) -> str:
    """Why the pending entry in ``row`` must not be sent ("" when it may): the memory, else the full check."""
    if memory.confirms(row):
        return ""
    full = conn.execute(ENTRY_WITH_SEAL, (int(row["id"]),)).fetchone()
    return outbox_seal_problem(conn, full) if full is not None else "the entry is no longer stored"


def verify_all(conn: sqlite3.Connection, *, expect_head: tuple[int, str] | None = None) -> Verification:
    """The chain, then the anchor, then the stored rows; raises sqlite3.Error when unreadable."""
    checker = seals.RowChecker(conn)
    result = audit_log.verify(conn.execute("SELECT * FROM audit ORDER BY seq"), on_event=checker.feed)
    if not result.ok:
        return result
    if expect_head is not None:
        reason = audit_log.check_anchor(conn, expect_head)
        if reason:
            return Verification(ok=False, count=result.count, first_broken=expect_head[0], reason=reason)
    problem = checker.finish()
    if problem is not None:
        return Verification(ok=False, count=result.count, first_broken=problem.seq, reason=problem.describe())
    return Verification(ok=True, count=result.count, rows=checker.checked)


def verify_since_checkpoint(conn: sqlite3.Connection) -> Verification:
    """The chain after the last verified checkpoint; on success the head becomes the checkpoint.

    The rows those events sealed are checked too, and the first mismatch is returned in
    ``row_problem`` rather than as a failure: the chain is sound, the forwarder refuses an altered
    queue entry by itself, and one edited row should not stop a lab (it is alerted once, as the
    checkpoint moves past it). Raises sqlite3.Error when unreadable.
    """
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (CHECKPOINT_KEY,)).fetchone()
    start = (0, audit_log.GENESIS)
    if row is not None:
        try:
            start = audit_log.parse_head(str(row[0]))
        except ValueError:
            start = (0, audit_log.GENESIS)  # unreadable checkpoint: verify everything
        if start[0]:
            reason = audit_log.check_anchor(conn, start)
            if reason:
                return Verification(ok=False, count=0, first_broken=start[0], reason=f"last verified checkpoint: {reason}")
    checker = seals.RowChecker(conn)
    result = audit_log.verify(conn.execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq", (start[0],)),
                              start=start, on_event=checker.feed)
    if not result.ok:
        return result
    head = audit_log.tail(conn)
    with transaction(conn):
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (CHECKPOINT_KEY, f"{head[0]}:{head[1]}"))
    problem = checker.first_problem()
    return Verification(ok=True, count=result.count, rows=checker.checked,
                        row_problem=problem.describe() if problem else "")


def _sealed_after(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (seals.EPOCH_KEY[table],)).fetchone()
    try:
        return int(row[0]) if row is not None else 0
    except (TypeError, ValueError):
        return 0


def outbox_seal_problem(conn: sqlite3.Connection, row: sqlite3.Row) -> str:
    """Why the entry in ``row`` (from :data:`ENTRY_WITH_SEAL`) is not the one the trail recorded ("" when it is).

    The seal's own event is re-hashed too, so an edit of the payload and of its seal together
    shows here without walking the chain.
    """
    entry_id, seq = int(row["id"]), row["seal_seq"]
    if seq is None:
        if entry_id <= _sealed_after(conn, "outbox"):
            return ""  # queued before this file's rows were sealed (an upgrade)
        return "no hash of this entry is recorded in the audit trail"
    if row["a_hash"] is None:
        return f"the audit event recording this entry (event {seq}) is missing"
    canonical = audit_log.event_canonical(int(seq), row, prefix="a_")
    if audit_log.chain_hash(str(row["a_prev_hash"]), canonical) != row["a_hash"]:
        return f"the audit event recording this entry (event {seq}) was altered"
    try:
        data = json.loads(row["a_data"])
        recorded = {(t, i): d for t, i, d in seals.seals_of(data)} if isinstance(data, dict) else {}
    except (TypeError, ValueError):
        recorded = {}
    digest = recorded.get(("outbox", entry_id))
    if digest is None:
        return f"audit event {seq} does not record this entry"
    if seals.row_hash("outbox", tuple(row[c] for c in seals.SEALED["outbox"])) != digest:
        return f"the stored message does not match the hash recorded in audit event {seq}"
    return ""

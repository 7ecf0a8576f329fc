"""Integrity of the store on both engines, a real SQLite file and a real PostgreSQL database (issues #17,
#10 item 7 and #16): the chain's golden vector, append-only triggers for every way to write the audit
table, rows sealed in the trail, the anchor, the start-up checkpoint, and outbox rows that are not as
labmw wrote them. The second writer is someone with the file, or the PostgreSQL schema's owner."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from engine_kit import Engine

from labmw.errors import StoreError
from labmw.model import Evaluation, Result
from labmw.store import Store
from labmw.store.audit import GENESIS, make_row, parse_head
from labmw.store.seals import row_hash

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@pytest.fixture(name="store")
def _store(engine: Engine) -> Iterator[Store]:
    store = engine.open()
    yield store
    store.close()


def _sql(engine: Engine, sqlite: str, postgres: str) -> str:
    """The same edit in each engine's words (bytes: SQLite casts, PostgreSQL has bytea functions)."""
    return postgres if engine.cluster is not None else sqlite


def _queue_one(store: Store, specimen: str = "S1", value: str = "110") -> tuple[int, int, int]:
    """A message, its result and its outbox entry, recorded the way the pipeline does it."""
    result = Result(analyzer="c501", test_code="ALTL", raw_value=value, value=Decimal(value), units="U/L",
                    specimen_id=specimen, patient_id="P1", collected_at=T0)
    with store.transaction(T0) as tx:
        mid = tx.add_message(analyzer="c501", protocol="astm", peer="x", raw=b"H|\\^&\rR|1|^^^ALTL|" + value.encode(),
                             sha256="0" * 64, outcome="accepted")
        tx.audit("message_received", analyzer="c501", ref=str(mid))
        rid = tx.add_result(message_id=mid, result=result, evaluation=Evaluation(method="ALT-T"), state="queued")
        tx.audit("result_received", analyzer="c501", specimen=specimen, ref=str(rid))
        oid = tx.enqueue(result_id=rid, control_id=f"c-{rid}", payload=b"MSH|^~\\&|LABMW\rOBX|1|NM|ALT||" +
                         value.encode() + b"|U/L\r")
        tx.audit("result_queued", analyzer="c501", specimen=specimen, ref=f"c-{rid}", data={"outbox_id": oid})
    return mid, rid, oid


def test_golden_vector_pins_the_chain_hash() -> None:
    """A known event hashes to a known value: sha256("0"*64 || canonical JSON), written out here by hand,
    so a change of the canonical form (which would orphan every stored trail) cannot pass unnoticed."""
    row = make_row((0, GENESIS), "service_started", ts=T0.replace(month=1, day=1), actor="labmw",
                   data={"pid": 1, "config": "/etc/labmw/labmw.toml"})
    canonical = (b'{"actor":"labmw","analyzer":"","data":"{\\"config\\":\\"/etc/labmw/labmw.toml\\",\\"pid\\":1}",'
                 b'"event":"service_started","patient":"","ref":"","seq":1,"specimen":"",'
                 b'"ts":"2026-01-01T08:00:00.000+00:00"}')
    assert row[-1] == hashlib.sha256(b"0" * 64 + canonical).hexdigest()
    assert row[-1] == "91280aaaf302d340f2f1694673e48ad1010d41f1eb07f3f4bdff69326e0ef894"


_REWRITES: list[tuple[str, str, tuple[str, ...]]] = [
    ("insert-or-replace", "INSERT OR REPLACE INTO audit SELECT * FROM audit WHERE seq = 1", ("sqlite",)),
    ("replace", "REPLACE INTO audit SELECT * FROM audit WHERE seq = 1", ("sqlite",)),
    ("upsert", "INSERT INTO audit SELECT * FROM audit WHERE seq = 1 ON CONFLICT(seq) DO UPDATE SET data = '{}'",
     ("sqlite", "postgres")),
    ("gap", "INSERT INTO audit (seq, ts, event, actor, analyzer, specimen, patient, ref, data, prev_hash, hash)"
            " VALUES (99, 't', 'forged', 'x', '', '', '', '', '{}', 'p', 'h')", ("sqlite", "postgres")),
    ("autoincrement", "INSERT INTO audit (ts, event, actor, analyzer, specimen, patient, ref, data, prev_hash, hash)"
                      " VALUES ('t', 'forged', 'x', '', '', '', '', '{}', 'p', 'h')", ("sqlite", "postgres")),
    ("next-seq-forged-link", "INSERT INTO audit SELECT 4, ts, event, actor, analyzer, specimen, patient, ref, data,"
                             " prev_hash, hash FROM audit WHERE seq = 3", ("sqlite", "postgres")),
    ("update", "UPDATE audit SET data = '{}'", ("sqlite", "postgres")),
    ("delete", "DELETE FROM audit WHERE seq = 2", ("sqlite", "postgres")),
    ("truncate", "TRUNCATE audit", ("postgres",)),
]


# Each statement on the engines whose SQL has it (REPLACE is SQLite's, TRUNCATE PostgreSQL's).
@pytest.mark.parametrize("engine, statement", [pytest.param(e, statement, id=f"{name}-{e}")
                                               for name, statement, engines in _REWRITES for e in engines],
                         indirect=["engine"])
def test_every_way_to_rewrite_the_trail_is_refused(engine: Engine, store: Store, statement: str) -> None:
    for _ in range(3):
        store.append_audit("note", now=T0, actor="t")
    conn = engine.raw()
    before = [tuple(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]
    with pytest.raises(engine.db_error, match="append-only"):
        conn.execute(statement)
    assert [tuple(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")] == before
    conn.close()


def test_stored_rows_are_sealed_in_the_events_that_record_them(engine: Engine, store: Store) -> None:
    """message_received, result_received and result_queued carry the hash of exactly what was stored."""
    mid, rid, oid = _queue_one(store)
    events = {e.event: e for e in store.audit_events()}
    conn = engine.raw()
    for event, table, row_id in (("message_received", "messages", mid), ("result_received", "results", rid),
                                 ("result_queued", "outbox", oid)):
        (seal,) = events[event].data["stored"]
        assert (seal["table"], seal["id"]) == (table, row_id)
        columns = {"messages": "id, analyzer, protocol, peer, received_at, sha256, raw",
                   "outbox": "id, result_id, control_id, payload, created_at"}.get(table)
        if columns:
            assert seal["sha256"] == row_hash(table, tuple(conn.execute(
                f"SELECT {columns} FROM {table} WHERE id = ?", (row_id,)).fetchone()))
    assert conn.execute("SELECT seal_seq FROM outbox WHERE id = ?", (oid,)).fetchone()[0] == events["result_queued"].seq
    conn.close()
    verdict = store.verify_audit()
    assert verdict.ok and verdict.rows == 3


def test_a_row_no_event_names_gets_its_own_event(store: Store) -> None:
    with store.transaction(T0) as tx:
        tx.add_message(analyzer="c501", protocol="astm", peer="x", raw=b"x", sha256="0" * 64, outcome="accepted")
    (event,) = store.audit_events()
    assert event.event == "row_stored" and event.data["stored"][0]["table"] == "messages"


_EDITS: list[tuple[str, str, str, str]] = [
    ("result", "UPDATE results SET raw_value = '11' WHERE id = 1", "UPDATE results SET raw_value = '11' WHERE id = 1",
     "results row 1"),
    ("message", "UPDATE messages SET raw = CAST('H|forged' AS BLOB) WHERE id = 1",
     "UPDATE messages SET raw = convert_to('H|forged', 'UTF8') WHERE id = 1", "messages row 1"),
    ("payload", "UPDATE outbox SET payload = CAST(replace(CAST(payload AS TEXT), '110', '11') AS BLOB) WHERE id = 1",
     "UPDATE outbox SET payload = convert_to(replace(convert_from(payload, 'UTF8'), '110', '11'), 'UTF8')"
     " WHERE id = 1", "outbox row 1"),
    ("deleted-entry", "DELETE FROM outbox WHERE id = 1", "DELETE FROM outbox WHERE id = 1", "outbox row 1: row missing"),
]


@pytest.mark.parametrize("sqlite_edit, pg_edit, names", [e[1:] for e in _EDITS], ids=[e[0] for e in _EDITS])
def test_verify_names_the_first_stored_row_that_does_not_match(engine: Engine, store: Store, sqlite_edit: str,
                                                               pg_edit: str, names: str) -> None:
    _queue_one(store)
    conn = engine.raw()
    conn.execute(_sql(engine, sqlite_edit, pg_edit))
    conn.close()
    verdict = store.verify_audit()
    assert not verdict.ok and names in verdict.reason, verdict


def test_a_row_added_behind_the_trails_back_is_reported(engine: Engine, store: Store) -> None:
    _queue_one(store)
    conn = engine.raw()
    conn.execute("INSERT INTO messages (analyzer, protocol, peer, received_at, sha256, raw, outcome)"
                 " VALUES ('c501', 'astm', 'x', 't', 's', " + _sql(engine, "x'00'", "'\\x00'::bytea") + ", 'accepted')")
    conn.close()
    verdict = store.verify_audit()
    assert not verdict.ok and "messages row 2: stored row is not recorded" in verdict.reason


def test_pending_entries_that_are_not_as_recorded_come_back_with_their_problem(engine: Engine, store: Store) -> None:
    """The forwarder's view: an altered payload, a payload rewritten as TEXT (PostgreSQL's typed column
    cannot hold one: there, a seal pointer moved to another event) and an entry with no seal each carry
    a problem and no payload; the untouched entry behind them is fine. Nothing raises."""
    ids = [_queue_one(store, specimen=f"S{i}")[2] for i in range(4)]
    conn = engine.raw()
    conn.execute(_sql(engine, "UPDATE outbox SET payload = CAST(replace(CAST(payload AS TEXT), '110', '11') AS BLOB)"
                              " WHERE id = ?",
                      "UPDATE outbox SET payload = convert_to(replace(convert_from(payload, 'UTF8'), '110', '11'),"
                      " 'UTF8') WHERE id = ?"), (ids[0],))
    conn.execute(_sql(engine, "UPDATE outbox SET payload = CAST(payload AS TEXT) WHERE id = ?",
                      "UPDATE outbox SET seal_seq = seal_seq - 1 WHERE id = ?"), (ids[1],))
    conn.execute("UPDATE outbox SET seal_seq = NULL WHERE id = ?", (ids[2],))
    conn.close()
    entries = store.pending_after(0, 10)
    listed = store.outbox()
    problems = [e.problem for e in entries]
    assert "does not match the hash recorded in audit event" in problems[0]
    assert _sql(engine, "payload stored as str", "does not record this entry") in problems[1]
    assert "no hash of this entry is recorded" in problems[2]
    assert problems[3] == "" and entries[3].payload.endswith(b"110|U/L\r")
    assert all(e.payload == b"" for e in entries[:3])
    assert len(listed) == 4, "queue list reads every row, whatever is wrong with one"


def test_anchor_catches_truncation_and_a_rebuilt_chain(engine: Engine, store: Store) -> None:
    for _ in range(5):
        store.append_audit("note", now=T0, actor="t")
    head = store.audit_head()
    assert store.verify_audit(expect_head=head).ok
    engine.tamper("DELETE FROM audit WHERE seq > 3")
    assert store.verify_audit().ok, "a truncated chain is still a valid chain..."
    verdict = store.verify_audit(expect_head=head)
    assert not verdict.ok and verdict.first_broken == 5 and "missing" in verdict.reason, "...but not the anchored one"
    assert parse_head(f"{head[0]}:{head[1].upper()}") == head
    with pytest.raises(ValueError):
        parse_head("5:nothex")


def test_start_up_check_resumes_from_the_checkpoint_and_catches_a_changed_past(engine: Engine, store: Store) -> None:
    _queue_one(store)
    first = store.verify_audit_since_checkpoint()
    assert first.ok and first.count == 3 and first.rows == 3 and first.row_problem == ""
    store.append_audit("note", now=T0, actor="t")
    again = store.verify_audit_since_checkpoint()
    assert again.ok and again.count == 1, "only the events since the checkpoint are verified"
    engine.tamper("DELETE FROM audit WHERE seq = 4")  # the checkpointed head
    verdict = store.verify_audit_since_checkpoint()
    assert not verdict.ok and "checkpoint" in verdict.reason and verdict.first_broken == 4


def test_start_up_check_reports_an_altered_row_without_refusing(engine: Engine, store: Store) -> None:
    _queue_one(store)
    conn = engine.raw()
    conn.execute("UPDATE results SET raw_value = '11'")
    conn.close()
    verdict = store.verify_audit_since_checkpoint()
    again = store.verify_audit_since_checkpoint()
    assert verdict.ok and "results row 1" in verdict.row_problem
    assert again.ok and again.row_problem == "", "reported once, as the checkpoint moves past it"


def test_the_service_may_not_move_the_marks_the_migrations_own(pg_engine: Engine) -> None:
    """PostgreSQL: the service role writes meta (retry request, checkpoint) but not the schema version,
    install id or sealed-after marks (which would exempt rows from their seals)."""
    store = pg_engine.open()
    try:
        store.request_retry_now(now=T0, actor="t")
        assert store.retry_now_requested()
        for key in ("schema_version", "install_id", "sealed_results_after"):
            with pytest.raises(StoreError, match="migrations only"):
                store._conn.execute("UPDATE meta SET value = '99' WHERE key = ?", (key,))
    finally:
        store.close()


def test_seal_covers_the_storage_type() -> None:
    """The same bytes stored as TEXT are not what was sealed (a poisoned row is not 'intact')."""
    assert row_hash("outbox", (1, b"x")) != row_hash("outbox", (1, "x"))
    assert json.dumps(row_hash("outbox", (1, None)))  # NULL is hashable too

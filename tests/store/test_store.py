"""The store on both engines (a real SQLite file, a real PostgreSQL database): audit chain,
append-only trail, outbox and history."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from engine_kit import Engine

from labmw.errors import StoreError
from labmw.model import Evaluation, Result
from labmw.store import OutboxEntry, Store

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@pytest.fixture(name="store")
def _store(engine: Engine) -> Iterator[Store]:
    store = engine.open()
    yield store
    store.close()


def _head(store: Store) -> OutboxEntry | None:
    """The oldest entry waiting for the LIS (what the forwarder sends next)."""
    entries = store.pending_after(0, 1)
    return entries[0] if entries else None


def _result(value: str, collected: datetime, patient: str = "P1", specimen: str = "S1") -> Result:
    return Result(analyzer="c501", test_code="ALTL", raw_value=value, value=Decimal(value), units="U/L",
                  specimen_id=specimen, patient_id=patient, collected_at=collected)


def _store_result(store: Store, result: Result, *, method: str = "ALT-T") -> int:
    with store.transaction(T0) as tx:
        mid = tx.add_message(analyzer="c501", protocol="astm", peer="x", raw=b"raw", sha256="0" * 64,
                             outcome="accepted")
        rid = tx.add_result(message_id=mid, result=result, evaluation=Evaluation(method=method), state="queued")
        tx.enqueue(result_id=rid, control_id=f"c-{rid}", payload=b"MSH|x")
        tx.audit("result_received", specimen=result.specimen_id, patient=result.patient_id, ref=str(rid))
    return rid


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The data directory is 0700 and the database 0600 even under a permissive umask."""
    import os

    old = os.umask(0o000)
    try:
        Store.open(tmp_path / "d" / "labmw.sqlite3").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "d" / "labmw.sqlite3").stat().st_mode) == 0o600


def test_audit_chain_verifies_and_names_the_first_altered_event(store: Store, engine: Engine) -> None:
    """verify() passes on an intact chain and names the first event whose content was changed."""
    for i in range(5):
        store.append_audit("config_changed", now=T0 + timedelta(seconds=i), actor="alice", data={"i": i})
    assert store.verify_audit().ok and store.verify_audit().count == 5
    engine.tamper("UPDATE audit SET data = '{\"i\":99}' WHERE seq = 3")  # file or superuser access
    result = store.verify_audit()
    assert not result.ok and result.first_broken == 3 and "altered" in result.reason


def test_audit_rows_cannot_be_updated_or_deleted(store: Store) -> None:
    """The triggers make the audit table append-only."""
    store.append_audit("x", now=T0, actor="a")
    with pytest.raises(StoreError), store.transaction(T0) as tx:
        tx._conn.execute("DELETE FROM audit")
    with pytest.raises((sqlite3.DatabaseError, StoreError)):
        store._conn.execute("UPDATE audit SET actor='mallory'")
    assert store.verify_audit().ok


def test_a_deleted_event_breaks_the_chain(store: Store, engine: Engine) -> None:
    """Removing an event in the middle is reported at the event after the gap."""
    for i in range(4):
        store.append_audit("e", now=T0, actor="a", data={"i": i})
    engine.tamper("DELETE FROM audit WHERE seq = 2")
    result = store.verify_audit()
    assert not result.ok and result.first_broken == 3


def test_transaction_rolls_back_everything_on_error(store: Store) -> None:
    """A failure inside a transaction leaves no result, outbox entry or audit event behind."""
    with pytest.raises(RuntimeError), store.transaction(T0) as tx:
        tx.add_message(analyzer="a", protocol="astm", peer="p", raw=b"r", sha256="s", outcome="accepted")
        tx.audit("message_received")
        raise RuntimeError("boom")
    assert store.audit_events() == []
    assert _head(store) is None


def test_outbox_is_fifo_and_delivery_is_audited(store: Store) -> None:
    """Entries leave in arrival order; delivery, failure and dead letters are audit events."""
    first = _store_result(store, _result("40", T0, specimen="A"))
    _store_result(store, _result("50", T0, specimen="B"))
    head = _head(store)
    assert head is not None and head.result_id == first and head.specimen == "A"
    store.mark_attempt_failed(head, now=T0, error="refused", retry_in=1.0)
    store.mark_delivered(head, now=T0, ack_code="AA", ack_text="")
    nxt = _head(store)
    assert nxt is not None and nxt.specimen == "B"
    store.mark_dead(nxt, now=T0, reason="LIS answered AE", alert=True)
    assert _head(store) is None
    assert [e.state for e in store.outbox()] == ["dead"]
    assert store.retry(None, now=T0, actor="bob") == 1
    assert _head(store) is not None
    kinds = [e.event for e in store.audit_events()]
    assert kinds.count("delivery_failed") == 1 and "result_delivered" in kinds
    assert "delivery_dead_lettered" in kinds and "alert_raised" in kinds and "delivery_requeued" in kinds
    assert [e.event for e in store.audit_events(specimen="A") if e.event.startswith("result_")] == [
        "result_received", "result_delivered"]


def test_previous_result_is_the_latest_earlier_one_in_the_window(store: Store) -> None:
    """History lookup: same patient and method, collected before, inside the window, latest first."""
    _store_result(store, _result("30", T0 - timedelta(days=10)))
    _store_result(store, _result("35", T0 - timedelta(days=2)))
    _store_result(store, _result("38", T0 - timedelta(days=1)))
    _store_result(store, _result("90", T0 - timedelta(days=1), patient="OTHER"))
    _store_result(store, _result("99", T0 + timedelta(hours=1)))
    with store.transaction(T0) as tx:
        prev = tx.previous_result(patient_id="P1", method="ALT-T", before=T0, not_before=T0 - timedelta(days=7))
        none = tx.previous_result(patient_id="P1", method="OTHER", before=T0, not_before=T0 - timedelta(days=7))
    assert prev is not None and prev.value == Decimal("38")
    assert none is None


def test_read_only_database_raises_store_error(tmp_path: Path) -> None:
    """A store that cannot write raises StoreError (so nothing is acknowledged), not sqlite3 errors."""
    path = tmp_path / "data" / "labmw.sqlite3"
    Store.open(path).close()
    ro = Store(sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None), path)
    ro._conn.row_factory = sqlite3.Row
    with pytest.raises(StoreError):
        ro.append_audit("x", now=T0, actor="a")
    ro.close()

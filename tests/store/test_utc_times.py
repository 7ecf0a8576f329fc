"""Stored times are instants (issue #10 item 6): history and audit queries compare them in UTC, so a
DST change or another analyzer's offset never hides the previous result or the right audit events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from engine_kit import Engine

from labmw.model import Evaluation, Result
from labmw.store import Store

CET, CEST = timezone(timedelta(hours=1)), timezone(timedelta(hours=2))
NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@pytest.fixture(name="store")
def _store(engine: Engine) -> Iterator[Store]:
    store = engine.open()
    yield store
    store.close()


def _add(store: Store, collected: datetime, specimen: str, value: str = "40") -> None:
    result = Result(analyzer="a", test_code="ALT", raw_value=value, value=Decimal(value), units="U/L",
                    specimen_id=specimen, patient_id="P1", collected_at=collected)
    with store.transaction(NOW) as tx:
        mid = tx.add_message(analyzer="a", protocol="hl7", peer="x", raw=b"r", sha256="0" * 64, outcome="accepted")
        tx.add_result(message_id=mid, result=result, evaluation=Evaluation(method="ALT-T"), state="queued")


def test_the_previous_result_is_found_across_a_dst_change(store: Store) -> None:
    """01:30+02:00 is before 01:10+01:00 (the clocks went back): found, though its text sorts after."""
    _add(store, datetime(2026, 10, 25, 1, 30, tzinfo=CEST), "S1")
    at = datetime(2026, 10, 25, 1, 10, tzinfo=CET)
    with store.transaction(NOW) as tx:
        previous = tx.previous_result(patient_id="P1", method="ALT-T", before=at, not_before=at - timedelta(days=7))
    assert previous is not None and previous.specimen_id == "S1"
    assert previous.collected_at == datetime(2026, 10, 24, 23, 30, tzinfo=UTC)
    # and a later instant written with a smaller offset is not taken for an earlier one
    with store.transaction(NOW) as tx:
        assert tx.previous_result(patient_id="P1", method="ALT-T", before=datetime(2026, 10, 25, 1, 20, tzinfo=CEST),
                                  not_before=at - timedelta(days=7)) is None


def test_the_stored_text_keeps_the_offset_and_the_utc_twin_the_instant(store: Store, engine: Engine) -> None:
    _add(store, datetime(2026, 10, 25, 1, 30, tzinfo=CEST), "S1")
    db = engine.raw()
    row = db.execute("SELECT collected_at, collected_utc FROM results").fetchone()
    db.close()
    assert tuple(row) == ("2026-10-25T01:30:00+02:00", "2026-10-24T23:30:00")


def test_audit_since_with_an_offset_means_that_instant(store: Store) -> None:
    """--since 10:00+02:00 is 08:00 UTC: the event at 08:30 UTC is in, the one at 07:30 UTC out."""
    store.append_audit("early", now=datetime(2026, 11, 25, 7, 30, tzinfo=UTC), actor="t")
    store.append_audit("late", now=datetime(2026, 11, 25, 10, 30, tzinfo=CEST), actor="t")  # 08:30 UTC
    events = store.audit_events(since=datetime(2026, 11, 25, 10, 0, tzinfo=CEST))
    assert [e.event for e in events] == ["late"] and events[0].ts.startswith("2026-11-25T08:30")
    assert [e.event for e in store.audit_events(until=datetime(2026, 11, 25, 10, 0, tzinfo=CEST))] == ["early"]

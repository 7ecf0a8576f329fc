"""The site lease on a real PostgreSQL: one holder, takeover only after expiry, and the fence that keeps
a paused old holder from writing after it lost the lease."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from engine_kit import Engine

from labmw.errors import StoreError
from labmw.store.lease import Lease
from labmw.store.postgres import PgStore

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
TTL = 0.6


def _stores(engine: Engine) -> tuple[PgStore, PgStore]:
    a, b = engine.open(site="north"), engine.open(site="north")
    assert isinstance(a, PgStore) and isinstance(b, PgStore)
    return a, b


def test_one_holder_and_takeover_only_after_expiry(pg_engine: Engine) -> None:
    """The second daemon cannot take a live lease; once it expires it can, with a new epoch."""
    a_store, b_store = _stores(pg_engine)
    try:
        a, b = Lease(a_store.pool, "north", ttl=TTL), Lease(b_store.pool, "north", ttl=TTL)
        assert a.try_acquire() and a.epoch == 1
        assert not b.try_acquire()
        assert a.renew()
        assert a.holder_of() == (a.holder, 1)
        time.sleep(TTL + 0.2)  # a stops renewing (dead or paused)
        assert b.try_acquire() and b.epoch == 2
        assert not a.renew() and a.epoch is None, "the old holder learns it lost the lease"
        other = Lease(a_store.pool, "south", ttl=TTL)
        assert other.try_acquire(), "each site has its own lease"
    finally:
        a_store.close()
        b_store.close()


def test_a_paused_old_holder_cannot_write_after_losing_the_lease(pg_engine: Engine) -> None:
    """Fencing: the old holder's next transaction is refused whole once the lease moved on."""
    a_store, b_store = _stores(pg_engine)
    try:
        a, b = Lease(a_store.pool, "north", ttl=TTL), Lease(b_store.pool, "north", ttl=TTL)
        a_store.fence, b_store.fence = a.fence, b.fence
        assert a.try_acquire()
        a_store.append_audit("while_active", now=T0, actor="a")
        with pytest.raises(StoreError, match="not the active daemon"):
            b_store.append_audit("standby_write", now=T0, actor="b")
        time.sleep(TTL + 0.2)  # a is paused past its lease; b takes over
        assert b.try_acquire()
        with pytest.raises(StoreError, match="lease lost"):
            a_store.append_audit("after_pause", now=T0, actor="a")
        b_store.append_audit("new_active", now=T0, actor="b")
        assert [e.event for e in b_store.audit_events()] == ["while_active", "new_active"]
        assert b_store.verify_audit().ok
    finally:
        a_store.close()
        b_store.close()


def test_release_hands_over_at_once(pg_engine: Engine) -> None:
    """A clean stop gives the lease up: the standby takes it without waiting for the expiry."""
    a_store, b_store = _stores(pg_engine)
    try:
        a, b = Lease(a_store.pool, "north", ttl=30), Lease(b_store.pool, "north", ttl=30)
        assert a.try_acquire() and not b.try_acquire()
        a.release()
        assert b.try_acquire()
    finally:
        a_store.close()
        b_store.close()

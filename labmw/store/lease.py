"""Active/standby for one site: a lease row in PostgreSQL, renewed by the active daemon, with fencing.

Two daemons of the same site (same configuration, two hosts) race for the site's row in ``leases``.
The winner holds it for ``ttl`` seconds and renews it well before that; a standby takes it over only
once it has expired, bumping ``epoch``. All times are the database server's (``clock_timestamp()``),
so the hosts' clocks do not matter.

Fencing: every write transaction of the active daemon first checks, inside the transaction, that it
still holds an unexpired lease of its epoch, and takes a share lock on the row (:meth:`Lease.fence`,
installed as ``PgStore.fence``). A daemon that was paused past its lease therefore cannot commit a
single row once it resumes, and a takeover cannot slip in between that check and the COMMIT (the
takeover's UPDATE waits for the share lock). A paused daemon inside a transaction is cut off by
``idle_in_transaction_session_timeout`` (see :func:`labmw.store.postgres.make_pool`).
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from labmw.errors import StoreError

DEFAULT_TTL = 8.0  # seconds: a dead active daemon is replaced within ttl + one standby poll


class Lease:
    """This daemon's claim on its site's lease (thread-safe enough: one caller at a time)."""

    def __init__(self, pool: ConnectionPool, site: str, *, ttl: float = DEFAULT_TTL, holder: str = "") -> None:
        self._pool = pool
        self.site = site
        self.ttl = ttl
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.epoch: int | None = None

    def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            with self._pool.connection(timeout=self.ttl / 2) as conn:
                row = conn.execute(sql, params).fetchone()
                return tuple(row) if row is not None else None
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"lease of site {self.site}: {exc}") from exc

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds an unexpired one; True when this daemon is now active."""
        row = self._one(
            "INSERT INTO leases (site, holder, epoch, expires_at)"
            " VALUES (%s, %s, 1, clock_timestamp() + make_interval(secs => %s))"
            " ON CONFLICT (site) DO UPDATE SET holder = excluded.holder, epoch = leases.epoch + 1,"
            " expires_at = excluded.expires_at WHERE leases.expires_at < clock_timestamp()"
            " RETURNING epoch", (self.site, self.holder, self.ttl))
        self.epoch = int(row[0]) if row else None
        return self.epoch is not None

    def renew(self) -> bool:
        """Extend the lease; False when it was lost (expired and taken, or never held)."""
        if self.epoch is None:
            return False
        row = self._one(
            "UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => %s)"
            " WHERE site = %s AND holder = %s AND epoch = %s AND expires_at > clock_timestamp() RETURNING epoch",
            (self.ttl, self.site, self.holder, self.epoch))
        if row is None:
            self.epoch = None
        return row is not None

    def release(self) -> None:
        """Give the lease up at once (a clean stop): the standby need not wait for it to expire."""
        if self.epoch is None:
            return
        epoch, self.epoch = self.epoch, None
        self._one("UPDATE leases SET expires_at = clock_timestamp() WHERE site = %s AND holder = %s AND epoch = %s"
                  " RETURNING epoch", (self.site, self.holder, epoch))

    def holder_of(self) -> tuple[str, int] | None:
        """(holder, epoch) of the site's unexpired lease, if any."""
        row = self._one("SELECT holder, epoch FROM leases WHERE site = %s AND expires_at > clock_timestamp()",
                        (self.site,))
        return (str(row[0]), int(row[1])) if row else None

    def fence(self, conn: Any) -> None:
        """Inside a write transaction on ``conn`` (a PgConnection): refuse it unless the lease still holds.

        Raises:
            StoreError: this daemon is not (or no longer) the site's active one.
        """
        epoch = self.epoch
        row = None if epoch is None else conn.execute(
            "SELECT 1 FROM leases WHERE site = ? AND holder = ? AND epoch = ? AND expires_at > clock_timestamp()"
            " FOR SHARE", (self.site, self.holder, epoch)).fetchone()
        if row is None:
            raise StoreError(f"not the active daemon of site {self.site} any more (lease lost): nothing stored")

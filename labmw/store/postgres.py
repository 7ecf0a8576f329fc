"""The PostgreSQL store: the SQLite store's methods and SQL over a psycopg 3 connection from a pool.

:class:`PgStore` subclasses the SQLite :class:`~labmw.store.sqlite.Store` and hands it a connection
shim (:class:`PgConnection`) that speaks the sqlite3 calls the store makes (``execute`` with ``?``
placeholders, ``executemany``, ``in_transaction``, rows readable by name and position). So every
query is written once, and a change to one engine's query is a change to both. What differs is
overridden here: transactions (the audit-chain lock, the standby fence, synchronous commit), the
audit query (JSON operators) and the per-site views of the outbox and review holds.

Guarantees kept from SQLite: ``synchronous_commit = on`` for every session, so COMMIT returns only
once the WAL is flushed and an ACK after it is safe; group commit through savepoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool, PoolTimeout

from labmw.errors import StoreError
from labmw.model import PreviousResult
from labmw.store import audit as audit_log
from labmw.store import autoverify as av
from labmw.store import pg_schema, retention, trail_check
from labmw.store.audit import AuditEvent, Verification
from labmw.store.db import transaction
from labmw.store.sqlite import HeldResult, HistoryReader, OutboxEntry, Store, _entry, _held

# Tables whose INSERT hands back the new row's id (sqlite3's cursor.lastrowid): those with an
# identity column ``id`` (pg_schema); the others (meta, users, sessions, outbox_members, leases) have none.
_RETURNING_ID = re.compile(r"^\s*INSERT (?:OR IGNORE )?INTO (messages|results|outbox|inbound_keys|autoverify_suspensions"
                           r"|critical_notifications|qc_runs|qc_results|login_failures)\b", re.IGNORECASE)
POOL_TIMEOUT = 5.0  # seconds to wait for a connection: short of the analyzer's 15 s reply timer


class PgRow:
    """A result row readable as ``row["name"]`` and ``row[0]`` (like sqlite3.Row)."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: Mapping[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._names[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    names = {col.name: i for i, col in enumerate(cursor.description or ())}
    return lambda values: PgRow(names, values)


class _Cursor:
    """What the store reads from sqlite3's cursor: fetchone, fetchall, iteration, lastrowid."""

    def __init__(self, cursor: psycopg.Cursor[Any], lastrowid: int | None = None,
                 first: PgRow | None = None) -> None:
        self._cursor = cursor
        self.lastrowid = lastrowid
        self._first = first

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


# The few SQLite idioms the store's SQL uses, in PostgreSQL's words (see translate).
_SQLITE_IDIOMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^\s*BEGIN IMMEDIATE\s*$", re.IGNORECASE), "BEGIN"),
    # meta is the only table written with OR REPLACE (its key is the primary key).
    (re.compile(r"^\s*INSERT OR REPLACE INTO meta (.*)$", re.IGNORECASE | re.DOTALL),
     r"INSERT INTO meta \1 ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
    (re.compile(r"^\s*INSERT OR IGNORE INTO (.*)$", re.IGNORECASE | re.DOTALL), r"INSERT INTO \1 ON CONFLICT DO NOTHING"),
    (re.compile(r"group_concat\(DISTINCT ([\w.]+)\)", re.IGNORECASE), r"string_agg(DISTINCT \1, ',')"),
)


@functools.lru_cache(maxsize=1024)
def translate(sql: str, *, placeholders: bool = True) -> str:
    """The store's SQLite SQL for PostgreSQL: the idioms above, and sqlite3's ``?`` placeholders as
    psycopg's ``%s`` (a literal ``%`` doubled). Cached: the store's statements are a fixed set."""
    for pattern, replacement in _SQLITE_IDIOMS:
        sql = pattern.sub(replacement, sql)
    return sql.replace("%", "%%").replace("?", "%s") if placeholders else sql


class PgConnection:
    """A psycopg connection (autocommit; transactions are explicit) with the sqlite3 calls the store uses."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._raw: psycopg.Connection[Any] | None = None

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The live connection; a broken one goes back to the pool (which discards it) for a fresh one."""
        if self._raw is not None and (self._raw.closed or self._raw.broken) and not self.in_transaction:
            self.release()
        if self._raw is None:
            try:
                self._raw = self._pool.getconn(timeout=POOL_TIMEOUT)
            except PoolTimeout as exc:
                raise psycopg.OperationalError(f"no database connection: {exc}") from None
            self._raw.row_factory = _row_factory  # type: ignore[assignment]
        return self._raw

    def release(self) -> None:
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._pool.putconn(self._raw)
            self._raw = None

    @property
    def in_transaction(self) -> bool:
        raw = self._raw
        return raw is not None and not raw.closed and raw.info.transaction_status != pq.TransactionStatus.IDLE

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        """Run one statement; any database failure is a StoreError (the store's callers know no psycopg)."""
        try:
            cur = self.raw.cursor()
            if _RETURNING_ID.match(sql):
                cur.execute(translate(sql) + " RETURNING id", params)
                row = cur.fetchone()
                return _Cursor(cur, lastrowid=int(row[0]) if row else None)
            cur.execute(translate(sql, placeholders=bool(params)), params or None)
            return _Cursor(cur)
        except psycopg.Error as exc:
            raise StoreError(f"database error: {_text(exc)}") from exc

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        try:
            with self.raw.cursor() as cur:
                cur.executemany(translate(sql), seq)
        except psycopg.Error as exc:
            raise StoreError(f"database error: {_text(exc)}") from exc

    def close(self) -> None:
        self.release()


class PgHistoryReader(HistoryReader):
    """The history reads on a connection of their own (any thread; one caller at a time)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pg = PgConnection(pool)
        self._conn = self._pg  # type: ignore[assignment]  # the sqlite3 shim
        self._lock = threading.Lock()

    def previous_result(self, **kwargs: Any) -> PreviousResult | None:
        with self._lock:
            return super().previous_result(**kwargs)

    def recent_results(self, **kwargs: Any) -> list[tuple[str, Decimal, str, datetime, str]]:
        with self._lock:
            return super().recent_results(**kwargs)

    def close(self) -> None:
        with self._lock:
            self._pg.close()


def make_pool(url: str, *, size: int = 4) -> ConnectionPool:
    """A pool of autocommit connections configured for the store's guarantees."""

    def configure(conn: psycopg.Connection[Any]) -> None:
        # on: COMMIT returns once the WAL is flushed (never trust a server default that may say off).
        # idle_in_transaction_session_timeout: a paused daemon cannot hold the chain lock for ever.
        conn.execute("SET synchronous_commit = on")
        conn.execute("SET idle_in_transaction_session_timeout = '10s'")
        conn.execute("SET application_name = 'labmw'")

    kwargs = {"autocommit": True, "connect_timeout": 5, "keepalives_idle": 5, "keepalives_interval": 2,
              "keepalives_count": 3}
    # One plain connection first: a refused or misnamed server is a clear error at once, where the
    # pool would retry quietly until its timeout.
    try:
        psycopg.connect(url, **kwargs).close()  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the database {redact(url)}: {_text(exc)}") from None
    pool = ConnectionPool(url, min_size=1, max_size=size, open=False, configure=configure, timeout=POOL_TIMEOUT,
                          check=ConnectionPool.check_connection,
                          kwargs=kwargs)
    try:
        pool.open(wait=True, timeout=POOL_TIMEOUT)
    except PoolTimeout:
        pool.close()
        raise StoreError(f"cannot connect to the database {redact(url)} within {POOL_TIMEOUT:g} s") from None
    return pool


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def migrate(conn: psycopg.Connection[Any]) -> None:
    """Bring the schema up to date (serialised by an advisory lock: two daemons may start together)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (pg_schema.AUDIT_CHAIN_LOCK,))
        exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
        version = 0
        if exists and exists[0]:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
        for number, script in enumerate(pg_schema.MIGRATIONS[version:], start=version + 1):
            conn.execute(script)  # no parameters: one multi-statement script
            if number == 1:
                conn.execute("INSERT INTO meta VALUES ('install_id', %s)", (secrets.token_hex(4),))
            conn.execute("INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE"
                         " SET value = excluded.value", (str(number),))


class PgStore(Store):
    """The store on PostgreSQL. Like the SQLite store, driven from one thread; several daemons may share it."""

    def __init__(self, conn: PgConnection, url: str, pool: ConnectionPool) -> None:
        self._pool = pool
        self.url = url
        # Called at the start of every write transaction with the connection (see labmw.store.lease):
        # it raises StoreError when this daemon is no longer the site's active one.
        self.fence: Callable[[PgConnection], None] | None = None
        super().__init__(conn, Path(redact(url)))  # type: ignore[arg-type]
        self._pg: PgConnection = conn

    @classmethod
    def open_url(cls, url: str, *, migrate_schema: bool = True) -> PgStore:
        """Connect, migrate when needed and possible; raises StoreError."""
        pool = make_pool(url)
        conn = PgConnection(pool)
        try:
            if migrate_schema:
                _migrate_if_needed(conn.raw)
            return cls(conn, url, pool)
        except psycopg.Error as exc:
            conn.close()
            pool.close()
            raise StoreError(f"cannot open database {redact(url)}: {_text(exc)}") from None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._pg.close()
        self._pool.close()

    def history_reader(self) -> HistoryReader:
        """A second connection for judging off the store thread (READ COMMITTED: the last commit)."""
        if self._reader is None:
            self._reader = PgHistoryReader(self._pool)
        return self._reader

    @property
    def pool(self) -> ConnectionPool:
        return self._pool

    # --- transactions ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _begin(self) -> Iterator[None]:
        # BEGIN (the shim reads SQLite's BEGIN IMMEDIATE so), then the chain lock and the site's fence.
        with transaction(self._pg, quiet=(StoreError, psycopg.Error)):  # type: ignore[arg-type]
            self._pg.execute("SELECT pg_advisory_xact_lock(?)", (pg_schema.AUDIT_CHAIN_LOCK,))
            if self.fence is not None:
                self.fence(self._pg)
            yield

    def _write_failed(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, psycopg.Error):
            return StoreError(f"database write failed: {_text(exc)}")
        if isinstance(exc, StoreError):  # the connection shim's own (PgConnection.execute)
            return StoreError(f"database write failed: {exc}")
        return None

    def mark_delivered_many(self, items: Sequence[tuple[OutboxEntry, str, str]], *, now: datetime) -> None:
        """As for SQLite: outside a group, the delivery mark need not wait for the WAL flush (a lost
        mark means a resend under the same MSH-10, which the LIS recognises)."""
        if self._group_depth or self._pg.in_transaction:
            self._mark_delivered(items, now=now)
            return
        try:
            self._pg.execute("SET synchronous_commit = off")
            self._mark_delivered(items, now=now)
        finally:
            with contextlib.suppress(StoreError, psycopg.Error):
                self._pg.execute("SET synchronous_commit = on")

    # --- reads ---------------------------------------------------------------------------------------
    def audit_events(self, **filters: Any) -> list[AuditEvent]:
        try:
            return audit_log.query(self._pg, json_sql=_PG_JSON, **filters)  # type: ignore[arg-type]
        except StoreError as exc:
            raise StoreError(f"cannot read the audit trail: {exc}") from exc

    def verify_audit(self, *, expect_head: tuple[int, str] | None = None) -> Verification:
        try:
            return super().verify_audit(expect_head=expect_head)
        except StoreError as exc:
            return Verification(ok=False, count=0, first_broken=None, reason=f"cannot read the audit trail: {exc}")

    def verify_audit_since_checkpoint(self) -> Verification:
        try:
            return super().verify_audit_since_checkpoint()
        except StoreError as exc:
            return Verification(ok=False, count=0, first_broken=None, reason=f"cannot read the audit trail: {exc}")

    # Outbox and review holds are per site: each site's active daemon sends its own results to its own
    # LIS and its own staff review its holds, while history (previous_result) is shared by all sites.
    def _site_clause(self, alias: str) -> tuple[str, tuple[Any, ...]]:
        return (f" AND {alias}.site = ?", (self.site,)) if self.site else ("", ())

    def pending_after(self, after_id: int, limit: int) -> list[OutboxEntry]:
        """As for SQLite (each entry checked against its seal), this site's entries only."""
        if not self.site:
            return super().pending_after(after_id, limit)
        where = trail_check.PENDING_WHERE
        sql = trail_check.PENDING_WITH_SEAL_HASH.replace(where, where + " AND (r.site = ? OR r.id IS NULL)")
        return self._checked_entries(self._pg.execute(sql, (after_id, self.site, limit)))

    def outbox(self, *, states: tuple[str, ...] = ("pending", "dead")) -> list[OutboxEntry]:
        clause, args = self._site_clause("r")
        marks = ",".join("?" * len(states))
        rows = self._pg.execute(f"{self._OUTBOX_SELECT} WHERE o.state IN ({marks}){clause} ORDER BY o.id",
                                (*states, *args))
        return [_entry(r) for r in rows]

    def count_outbox(self, state: str) -> int:
        clause, args = self._site_clause("r")
        row = self._pg.execute("SELECT count(*) FROM outbox o JOIN results r ON r.id = o.result_id"
                               f" WHERE o.state = ?{clause}", (state, *args)).fetchone()
        return int(row[0])

    def held_results(self) -> list[HeldResult]:
        if not self.site:
            return super().held_results()
        rows = self._pg.execute("SELECT * FROM results WHERE state = 'held' AND site = ? ORDER BY id", (self.site,))
        held = [_held(row) for row in rows]
        return [dataclasses.replace(h, correction=h.correction and av.delivered_earlier(self._conn, h.id))
                for h in held]

    def counts(self) -> dict[str, int]:
        clause, args = self._site_clause("results")
        held = self._pg.execute(f"SELECT count(*) FROM results WHERE state='held'{clause}", args).fetchone()
        missing = self._pg.execute(f"SELECT count(*) FROM results WHERE state='held' AND test_code=''{clause}",
                                   args).fetchone()
        return {"pending": self.count_outbox("pending"), "dead": self.count_outbox("dead"), "held": int(held[0]),
                "held_test_code_missing": int(missing[0])}

    # --- operations (labmw.store.ops_stats, retention): SQLite's pragmas have PostgreSQL twins ----------
    def probe_writable(self) -> None:
        """Raises StoreError unless the database takes writes (not a read-only replica or session)."""
        if self._pg.execute("SHOW transaction_read_only").fetchone()[0] == "on":
            raise StoreError("the database is not writable: read-only transaction")
        if self._pg.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            raise StoreError("the database is not writable: it is a standby server in recovery")

    def purge_older_than(self, cutoff: datetime, *, now: datetime, actor: str) -> dict[str, Any]:
        """As for SQLite; PostgreSQL's autovacuum gives the space back, so no pages are counted here."""
        with self.transaction(now) as tx:
            summary = retention.purge(self._conn, cutoff,  # the sqlite3 shim
                                      lambda data: tx.audit("retention_purged", actor=actor, data=data))
        summary["pages_freed"] = 0
        return summary

    def retry(self, entry_ids: list[int] | None, *, now: datetime, actor: str) -> int:
        if entry_ids is None:
            entry_ids = [e.id for e in self.outbox(states=("dead",))]
        return super().retry(entry_ids, now=now, actor=actor)


def _migrate_if_needed(conn: psycopg.Connection[Any]) -> None:
    exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() \
        if exists and exists[0] else None
    if row is not None and int(row[0]) >= len(pg_schema.MIGRATIONS):
        return  # up to date: the service's role, which may not create tables, needs nothing more
    migrate(conn)


def _text(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# The audit data column is JSON text: read with PostgreSQL's operators.
_PG_JSON = audit_log.JsonSql(list_holds="(audit.data::jsonb -> '{key}') @> to_jsonb(?::text)",
                             field_is="audit.data::jsonb ->> '{key}' = ?")

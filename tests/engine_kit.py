"""The store engines a test runs on (a SQLite file, a PostgreSQL database) and how to reach each
behind the store's back. Its own module, not conftest: test modules import it by name, and another
directory's conftest.py may be the module called ``conftest``."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg_cluster
import psycopg

from labmw.store import Store
from labmw.store.engines import open_store


@dataclass
class Engine:
    """One store engine for a test: where the store lives and how to reach it behind its back."""

    name: str
    target: str | Path  # what [store] url / the data directory's file would say
    cluster: pg_cluster.Cluster | None = None
    dbname: str = ""

    def open(self, *, site: str = "") -> Store:
        return open_store(self.target, site=site)

    def owner_url(self) -> str:
        assert self.cluster is not None
        return self.cluster.url(self.dbname, "labmw_owner")

    @property
    def db_error(self) -> type[Exception]:
        """What the engine's own client raises when the database refuses a statement."""
        return psycopg.Error if self.cluster is not None else sqlite3.DatabaseError

    def raw(self) -> Any:
        """A second writer that is not labmw: the SQLite file opened directly, or the PostgreSQL
        schema's owner (triggers apply to both). ``execute(sql, params)`` with ``?`` placeholders."""
        if self.cluster is None:
            conn = sqlite3.connect(self.target, isolation_level=None)
            conn.row_factory = sqlite3.Row
            return conn
        return _PgRaw(psycopg.connect(self.owner_url(), autocommit=True))

    def tamper(self, sql: str) -> None:
        """Run ``sql`` as someone with full access to the files or the server, triggers switched off."""
        if self.cluster is None:
            raw = sqlite3.connect(self.target)
            for trigger in ("audit_no_update", "audit_no_delete", "audit_append_only"):
                raw.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            raw.execute(sql)
            raw.commit()
            raw.close()
            return
        with self.cluster.admin(self.dbname) as conn:
            conn.execute("ALTER TABLE audit DISABLE TRIGGER USER")
            conn.execute(sql)  # type: ignore[arg-type]
            conn.execute("ALTER TABLE audit ENABLE TRIGGER USER")


class _PgRaw:
    """A psycopg connection taking sqlite3-style ``?`` placeholders (the tests' SQL is written once)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s") if params else sql, params or None)  # type: ignore[arg-type]

    def close(self) -> None:
        self._conn.close()

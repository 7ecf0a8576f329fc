"""Fixtures shared by all test directories: the store engines (SQLite file, PostgreSQL database)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg_cluster
import psycopg
import pytest

from labmw.store import Store
from labmw.store.engines import open_store

_SHARE_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    # The controller (or a run without workers) names the directory where the run's one PostgreSQL
    # cluster is described; xdist's workers inherit the environment variable.
    if not hasattr(config, "workerinput") and pg_cluster.SHARE_ENV not in os.environ:
        os.environ[pg_cluster.SHARE_ENV] = tempfile.mkdtemp(prefix="labmw-pg-share-")
        config.stash[_SHARE_KEY] = Path(os.environ[pg_cluster.SHARE_ENV])
        (config.stash[_SHARE_KEY] / "controller.pid").write_text(str(os.getpid()))


def pytest_unconfigure(config: pytest.Config) -> None:
    share = config.stash.get(_SHARE_KEY, None)
    if share is not None:
        pg_cluster.stop_shared(share)
        os.environ.pop(pg_cluster.SHARE_ENV, None)



@pytest.fixture(scope="session")
def pg() -> pg_cluster.Cluster:
    """The run's throwaway PostgreSQL cluster (started on first use, one for all workers)."""
    return pg_cluster.shared()


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


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """Each store test runs once per engine; PostgreSQL as the service role on the module's database."""
    if request.param == "sqlite":
        yield Engine("sqlite", tmp_path / "data" / "labmw.sqlite3")
        return
    yield from _postgres(request.getfixturevalue("pg"), request.getfixturevalue("pg_module_db"))


@pytest.fixture
def pg_engine(pg: pg_cluster.Cluster, pg_module_db: str) -> Iterator[Engine]:
    """PostgreSQL alone, for what only PostgreSQL does (several sites, standby)."""
    yield from _postgres(pg, pg_module_db)


@pytest.fixture(scope="module")
def pg_module_db(pg: pg_cluster.Cluster) -> Iterator[str]:
    """One database per test module (a test sees it as new: it is reset after each test)."""
    name = pg.new_database()
    yield name
    pg.drop_database(name)


def _postgres(cluster: pg_cluster.Cluster, dbname: str) -> Iterator[Engine]:
    yield Engine("postgres", cluster.url(dbname, "labmw_service"), cluster, dbname)
    cluster.reset_database(dbname)

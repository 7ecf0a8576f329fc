"""Fixtures shared by all test directories: the store engines (SQLite file, PostgreSQL database)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pg_cluster
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

    def tamper(self, sql: str) -> None:
        """Run ``sql`` as someone with full access to the files or the server, triggers switched off."""
        if self.cluster is None:
            import sqlite3

            raw = sqlite3.connect(self.target)
            raw.execute("DROP TRIGGER IF EXISTS audit_no_update")
            raw.execute("DROP TRIGGER IF EXISTS audit_no_delete")
            raw.execute(sql)
            raw.commit()
            raw.close()
            return
        with self.cluster.admin(self.dbname) as conn:
            conn.execute("ALTER TABLE audit DISABLE TRIGGER USER")
            conn.execute(sql)  # type: ignore[arg-type]
            conn.execute("ALTER TABLE audit ENABLE TRIGGER USER")


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """Each store test runs once per engine; PostgreSQL as the service role on a fresh database."""
    if request.param == "sqlite":
        yield Engine("sqlite", tmp_path / "data" / "labmw.sqlite3")
        return
    yield from _postgres(request.getfixturevalue("pg"))


@pytest.fixture
def pg_engine(pg: pg_cluster.Cluster) -> Iterator[Engine]:
    """A fresh PostgreSQL database alone, for what only PostgreSQL does (several sites, standby)."""
    yield from _postgres(pg)


def _postgres(cluster: pg_cluster.Cluster) -> Iterator[Engine]:
    dbname = cluster.new_database()
    yield Engine("postgres", cluster.url(dbname, "labmw_service"), cluster, dbname)
    cluster.drop_database(dbname)

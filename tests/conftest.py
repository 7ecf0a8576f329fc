"""Fixtures shared by all test directories: the store engines (SQLite file, PostgreSQL database)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pg_cluster
import pytest
from engine_kit import Engine

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


@pytest.fixture(autouse=True)
def _machine_share(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests share the machine; an ``exclusive`` one (a latency measurement) has it to itself.

    A readers-writer lock across the run's xdist workers, on two files in the run's shared directory:
    every test holds ``rw`` shared; an exclusive test takes ``gate`` first, so that no new test starts,
    then ``rw`` exclusively once the running ones end. The other workers wait meanwhile: a latency
    figure taken while three other workers load two cores would judge the machine, not labmw.
    """
    share = Path(os.environ.get(pg_cluster.SHARE_ENV) or tempfile.gettempdir())
    exclusive = request.node.get_closest_marker("exclusive") is not None
    with open(share / "machine.gate", "a+") as gate, open(share / "machine.rw", "a+") as rw:
        if exclusive:
            fcntl.flock(gate, fcntl.LOCK_EX)
            fcntl.flock(rw, fcntl.LOCK_EX)
        else:
            fcntl.flock(gate, fcntl.LOCK_SH)
            fcntl.flock(rw, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(rw, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)

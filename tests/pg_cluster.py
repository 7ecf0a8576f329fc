"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temporary directory on a free port.

One cluster per test run, shared by the pytest-xdist workers (:func:`shared`: the first worker to
need it starts it under a file lock, the controller stops it at the end); one database per test
module, copied from a migrated template (CREATE DATABASE ... TEMPLATE, far faster than running the
migrations again) and reset after each test (:meth:`Cluster.reset_database`), so each test sees a new
database. The tests' cluster runs with fsync off: it is thrown away, and what the store guarantees
(synchronous_commit on in its sessions) is checked by the settings the sessions see, not by pulling
the plug. The bench (bench/engines.py) starts its own with fsync on.
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user that
Debian's package creates (``.ci/run`` installs it). Nothing machine-wide is started or changed.

Roles mirror the production set-up in README.md: ``labmw_owner`` owns the schema and runs the
migrations (``labmw init --store-url``), ``labmw_service`` is what the daemon connects as.
"""

from __future__ import annotations

import fcntl
import glob
import itertools
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

TEMPLATE = "labmw_tpl"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                           "(apt-get install postgresql; .ci/run does it)")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    port: int
    bin_dir: Path
    run_as: str | None
    _counter: itertools.count[int]

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        password = "" if user == "postgres" else f":{user}-pw"
        return f"postgresql://{user}{password}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        """A superuser connection (autocommit): for set-up, and for playing the attacker in tests."""
        return psycopg.connect(self.url(dbname), autocommit=True)

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._counter)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} OWNER labmw_owner STRATEGY FILE_COPY")
        return name

    def reset_database(self, name: str) -> None:
        """Back to the migrated template's state, some 0.1 s (a new database costs several times that):
        sessions ended, every table but meta emptied with triggers off, meta's later keys removed,
        per-database settings and switched-off triggers undone."""
        with self.admin(name) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            conn.execute("SET lock_timeout = '10s'")
            conn.execute("SET session_replication_role = replica")  # user triggers off for this session
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                                                 " AND tablename <> 'meta'")]
            conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")  # type: ignore[arg-type]
            conn.execute("DELETE FROM meta WHERE key NOT IN ('schema_version', 'install_id')"
                         " AND key NOT LIKE 'sealed%'")
            conn.execute(f"ALTER DATABASE {name} RESET ALL")  # type: ignore[arg-type]
            for table in tables:
                conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")  # type: ignore[arg-type]

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _ctl(self, *args: str) -> None:
        subprocess.run(self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), *args),
                       check=True, capture_output=True, timeout=60)

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)


def start(*, durable: bool = True) -> Cluster:
    """initdb, start on a free port, create the roles and the migrated template database.

    ``durable=False`` (the tests) runs without fsync; the bench keeps it on, as in production.
    """
    bin_dir = _bin_dir()
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="labmw-pg-"))
    if run_as:
        os.chown(root, pwd.getpwnam(run_as).pw_uid, pwd.getpwnam(run_as).pw_gid)
    cluster = Cluster(root=root, port=free_port(), bin_dir=bin_dir, run_as=run_as, _counter=itertools.count(1))
    subprocess.run(cluster._cmd(str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust",
                                "-E", "UTF8", "--no-sync", "--no-instructions"),
                   check=True, capture_output=True, timeout=120)
    # A socket directory of its own: the default /var/run/postgresql may not exist or belong to us.
    cluster._ctl("start", "-w", "-t", "60", "-l", str(root / "server.log"),
                 "-o", f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
                 + ("" if durable else " -c fsync=off -c full_page_writes=off"))
    with cluster.admin() as conn:
        for role in ("labmw_owner", "labmw_service"):
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role}-pw'")
        conn.execute(f"CREATE DATABASE {TEMPLATE} OWNER labmw_owner")
    with psycopg.connect(cluster.url(TEMPLATE), autocommit=True) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute("ALTER SCHEMA public OWNER TO labmw_owner")
    from labmw.store.postgres import PgStore

    PgStore.open_url(cluster.url(TEMPLATE, "labmw_owner")).close()
    return cluster


SHARE_ENV = "LABMW_TEST_PG_SHARE"  # a directory the controller makes and its workers inherit


def shared() -> Cluster:
    """The run's one cluster: started by the first process that asks, found by the others."""
    share = Path(os.environ[SHARE_ENV])
    with open(share / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = share / "cluster.json"
        if info.exists():
            d = json.loads(info.read_text())
            return Cluster(root=Path(d["root"]), port=int(d["port"]), bin_dir=Path(d["bin_dir"]),
                           run_as=d["run_as"], _counter=itertools.count(1))
        cluster = start(durable=False)
        info.write_text(json.dumps({"root": str(cluster.root), "port": cluster.port,
                                    "bin_dir": str(cluster.bin_dir), "run_as": cluster.run_as}))
        _reap_after(int((share / "controller.pid").read_text()), cluster, share)
        return cluster


def _reap_after(controller: int, cluster: Cluster, share: Path) -> None:
    """A detached watcher that stops the cluster once the run's controller is gone, however it ended
    (a run killed by a timeout never reaches pytest_unconfigure)."""
    stop = " ".join(cluster._cmd(str(cluster.bin_dir / "pg_ctl"), "-D", str(cluster.root / "data"), "stop",
                                 "-m", "immediate"))
    script = (f"while kill -0 {controller} 2>/dev/null; do sleep 2; done; "
              f"{stop} >/dev/null 2>&1; rm -rf {cluster.root} {share}")
    subprocess.Popen(["sh", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_shared(share: Path) -> None:
    """Stop the run's cluster if one was started (the controller, once every worker is done)."""
    info = share / "cluster.json"
    if info.exists():
        d = json.loads(info.read_text())
        Cluster(root=Path(d["root"]), port=int(d["port"]), bin_dir=Path(d["bin_dir"]), run_as=d["run_as"],
                _counter=itertools.count(1)).stop()
    shutil.rmtree(share, ignore_errors=True)

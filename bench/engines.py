"""SQLite beside PostgreSQL (issue 16): ``python bench/engines.py [--quick] [--json PATH]``.

In one run on this machine, against real `labmw run` daemons and a throwaway PostgreSQL cluster
(initdb/pg_ctl as the tests start it, fsync on):
- end-to-end throughput with 4 ASTM analyzers into one daemon, and commit latency (final frame sent
  to its ACK, which labmw sends only after COMMIT), on SQLite and on PostgreSQL;
- 4 sites writing at once into one PostgreSQL (4 daemons, one analyzer each);
- failover: kill -9 of the active daemon of an active/standby pair, time until the standby listens,
  over 20 kills (the killed node comes back as the new standby each time).
Prints one table; exit status 1 if a measurement failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' throwaway PostgreSQL cluster

import pg_cluster
from daemon_ctl import PANEL_MAPS, Daemon, configure_lab, free_ports, labmw
from loadgen import Lis, run_senders, workload
from table import Row, rate, render

FULL = {"messages": 800, "per_message": 4, "site_messages": 200, "kills": 20, "timeout": 180.0}
QUICK = {"messages": 40, "per_message": 4, "site_messages": 10, "kills": 2, "timeout": 60.0}


def log(text: str) -> None:
    print(f"[engines] {text}", file=sys.stderr, flush=True)


def configure(workdir: Path, lis_port: int, ports: list[tuple[str, int]], *, url: str = "", site: str = "") -> Path:
    """The README's commands: init (with the store URL and site for PostgreSQL), LIS, analyzers."""
    workdir.mkdir(parents=True)
    config = workdir / "lab.toml"
    store = ["--store-url", url, "--site", site] if url else []
    configure_lab(config, workdir / "data", lis_port, *store)
    for n, (host, port) in enumerate(ports, start=1):
        labmw(config, "analyzer", "add", f"a{n:03d}", "--protocol", "astm", "--transport", "tcp-server",
              "--listen", f"{host}:{port}", *PANEL_MAPS)
    return config


def _latency(analyzers: list[Any]) -> tuple[float, float]:
    lat = sorted(a.acked_final[s] - a.sent_final[s] for a in analyzers for s in a.acked_final)
    return 1000 * statistics.median(lat), 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]


async def one_engine(work: Path, lis: Lis, plan: dict[str, Any], tag: str, url: str) -> dict[str, float]:
    ports = free_ports(4)
    config = configure(work / tag, lis.port, [("127.0.0.1", p) for p in ports], url=url, site="north" if url else "")
    daemon = Daemon(config, work / f"{tag}.log")
    daemon.start(ports)
    try:
        messages = workload(tag.upper()[:2], plan["messages"], plan["per_message"])
        split = [messages[k::4] for k in range(4)]
        start, last, analyzers = await run_senders(ports, split, lis, plan["messages"] * plan["per_message"],
                                                   plan["timeout"])
        p50, p99 = _latency(analyzers)
        return {"results_per_s": plan["messages"] * plan["per_message"] / (last - start), "commit_p50_ms": p50,
                "commit_p99_ms": p99}
    finally:
        daemon.stop()


async def four_sites(work: Path, lis: Lis, plan: dict[str, Any], url: str) -> dict[str, float]:
    ports = free_ports(4)
    daemons = []
    try:
        for n, port in enumerate(ports, start=1):
            config = configure(work / f"site{n}", lis.port, [("127.0.0.1", port)], url=url, site=f"site{n}")
            daemons.append(Daemon(config, work / f"site{n}.log"))
            daemons[-1].start([port])
        count = plan["site_messages"]
        split = [workload(f"S{n}", count, plan["per_message"]) for n in range(1, 5)]
        start, last, analyzers = await run_senders(ports, split, lis, 4 * count * plan["per_message"],
                                                   plan["timeout"])
        p50, p99 = _latency(analyzers)
        return {"results_per_s": 4 * count * plan["per_message"] / (last - start), "commit_p50_ms": p50,
                "commit_p99_ms": p99}
    finally:
        for d in daemons:
            d.stop()


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def failover(work: Path, lis_port: int, plan: dict[str, Any], url: str) -> dict[str, float]:
    """kill -9 the active node ``kills`` times; seconds until the other node listens."""
    port = free_ports(1)[0]
    hosts = ("127.0.0.2", "127.0.0.3")
    nodes = [Daemon(configure(work / f"node{i}", lis_port, [(h, port)], url=url, site="ha"), work / f"node{i}.log")
             for i, h in enumerate(hosts)]
    nodes[0].start([])
    _wait(lambda: _listening(hosts[0], port), 30, "node0 active")
    nodes[1].start([])
    active, times = 0, []
    try:
        for kill in range(plan["kills"]):
            time.sleep(1.5)  # let the standby reach its polling loop
            os.kill(nodes[active].pid, signal.SIGKILL)
            nodes[active].proc.wait()  # type: ignore[union-attr]
            killed = time.monotonic()
            other = 1 - active
            _wait(lambda o=other: _listening(hosts[o], port), 30, f"takeover {kill + 1}")
            times.append(time.monotonic() - killed)
            log(f"kill {kill + 1}: standby active after {times[-1]:.2f} s")
            nodes[active].start([])  # back as the standby
            active = other
    finally:
        for n in nodes:
            n.stop()
    return {"kills": len(times), "mean_s": statistics.fmean(times), "max_s": max(times),
            "p50_s": statistics.median(times)}


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def main_async(plan: dict[str, Any], quick: bool) -> tuple[list[Row], bool]:
    rows: list[Row] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="labmw-engines-") as tmp:
        work = Path(tmp)
        log("starting a throwaway PostgreSQL cluster")
        cluster = pg_cluster.start()
        lis = await Lis().start()
        try:
            dbs = {name: cluster.new_database() for name in ("e2e", "sites", "ha")}
            url = {name: cluster.url(db, "labmw_service") for name, db in dbs.items()}
            for engine, target in (("SQLite", ""), ("PostgreSQL", url["e2e"])):
                row_t = Row(f"e2e_{engine.lower()}", f"{engine}: e2e, 4 analyzers")
                row_l = Row(f"commit_{engine.lower()}", f"{engine}: commit latency p50 / p99")
                try:
                    log(f"{engine}: 4 analyzers, {plan['messages']} messages")
                    got = await one_engine(work, lis, plan, engine.lower(), target)
                    row_t.value, row_t.data = rate(got["results_per_s"], "results/s"), got
                    row_l.value = f"{got['commit_p50_ms']:.1f} / {got['commit_p99_ms']:.1f} ms"
                except Exception as exc:  # noqa: BLE001 - reported in the table
                    failed = True
                    row_t.fail(exc), row_l.fail(exc)
                rows += [row_t, row_l]
            row = Row("sites_4", "PostgreSQL: 4 sites writing at once (total)")
            try:
                log("4 sites at once")
                got = await four_sites(work, lis, plan, url["sites"])
                row.value = (f"{rate(got['results_per_s'], 'results/s')}, commit p50 {got['commit_p50_ms']:.1f} ms"
                             f" / p99 {got['commit_p99_ms']:.1f} ms")
                row.data = got
            except Exception as exc:  # noqa: BLE001
                failed = True
                row.fail(exc)
            rows.append(row)
            row = Row("failover", f"failover: kill -9 of the active, {plan['kills']} kills")
            row.target = "< 15 s each"
            try:
                log("failover")
                got = failover(work, lis.port, plan, url["ha"])
                row.value = f"mean {got['mean_s']:.1f} s, max {got['max_s']:.1f} s"
                row.verdict = ("not judged (--quick)" if quick else "PASS" if got["max_s"] < 15 else "FAIL")
                row.data = got
            except Exception as exc:  # noqa: BLE001
                failed = True
                row.fail(exc)
            rows.append(row)
        finally:
            await lis.stop()
            cluster.stop()
    return rows, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="Small counts: checks that every row is measured.")
    parser.add_argument("--json", metavar="PATH", help="Also write the rows as JSON to PATH.")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    rows, failed = asyncio.run(main_async(plan, args.quick))
    header = [f"labmw store engines ({'quick' if args.quick else 'full'} run), {os.cpu_count()} cores"]
    notes = [("commit latency: from sending a message's final frame to its ACK, which labmw sends only after COMMIT "
              "(SQLite: WAL fsync; PostgreSQL: synchronous_commit on, fsync on)."),
             "failover: the lease lasts 8 s from its last renewal (every 2 s) and a standby polls every second, so a takeover"
             " takes 6-9 s."]
    print(render(rows, header, notes))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [r.__dict__ for r in rows]}, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

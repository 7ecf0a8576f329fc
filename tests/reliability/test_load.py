"""Load: 50 ASTM analyzers, each on its own configured port and connected at once, each sending 200
results (one E1381 session per message, waiting for every reply); all must reach the LIS, none
twice, in each analyzer's order.

The time is bounded (DEADLINE), not judged: a test sharing two cores with the rest of the suite is no
measurement. Throughput is measured by `bench/run.py` (the 16-analyzer end-to-end row, against the raw
relay in the same run); this test took 35-60 s alone on the 2-core machine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import tomlkit
from fault_tools import AstmPeer, Daemon, MakeLab, fast_lis, outbox, poll
from lis_peers import ScriptedLis
from peers import ACK, alt_message, free_port, free_ports, labmw

ANALYZERS = 50
RESULTS = 200
DEADLINE = 150.0  # seconds for the whole test: a hang guard, generous for a loaded CI machine


def _add_analyzers(config: Path, ports: list[int]) -> None:
    doc = tomlkit.parse(config.read_text())
    for n, port in enumerate(ports):
        table = tomlkit.table()
        table.update({"protocol": "astm", "transport": "tcp-server", "listen": f"127.0.0.1:{port}"})
        mapping = tomlkit.table()
        mapping["ALTL"] = "ALT-T"
        table["map"] = mapping
        doc["analyzers"][f"an{n:02d}"] = table  # type: ignore[index]
    config.write_text(tomlkit.dumps(doc))


def test_fifty_analyzers_sending_two_hundred_results_each_all_arrive_once(tmp_path: Path, lab: MakeLab) -> None:
    """50 analyzers x 200 results at once: every result at the LIS exactly once, in order."""
    began = time.monotonic()
    lis_port = free_port()
    config = lab(lis_port, free_port())
    fast_lis(config, ack_timeout=10.0)
    ports = free_ports(ANALYZERS)
    _add_analyzers(config, ports)
    db = tmp_path / "data" / "labmw.sqlite3"
    acked: dict[int, int] = {}
    errors: list[str] = []
    connected = threading.Barrier(ANALYZERS + 1)

    def analyzer(n: int, port: int) -> None:
        try:
            peer = AstmPeer(port, timeout=30)
        except OSError as exc:
            errors.append(f"an{n:02d}: {exc}")
            connected.abort()
            return
        try:
            connected.wait(30)  # all 50 are connected before the first byte is sent
            for i in range(RESULTS):
                peer.fn = 1
                records = alt_message(specimen=f"L{n:02d}-{i:03d}", patient=f"P{n}", sex="MF"[i % 2],
                                      birth="19800101", value=str(10 + i % 90))
                if peer.enq() != ACK or set(peer.message(records)) != {ACK}:
                    errors.append(f"an{n:02d}: message {i} not acknowledged")
                    return
                peer.eot()
                acked[n] = i + 1
        except (OSError, threading.BrokenBarrierError) as exc:
            errors.append(f"an{n:02d}: {exc!r}")
        finally:
            peer.close()

    with ScriptedLis(lis_port) as lis:
        daemon = Daemon(config, ports[-1], tmp_path / "daemon.log").start()
        try:
            threads = [threading.Thread(target=analyzer, args=(n, p), daemon=True) for n, p in enumerate(ports)]
            for thread in threads:
                thread.start()
            connected.wait(30)
            sending = time.monotonic()
            for thread in threads:
                thread.join(max(1.0, DEADLINE - 10 - (time.monotonic() - began)))
            received_all = time.monotonic() - sending
            assert not errors, errors[:5]
            assert sum(acked.values()) == ANALYZERS * RESULTS, "every result acknowledged to its analyzer"
            poll(lambda: len(lis.deliveries()) >= ANALYZERS * RESULTS, max(1.0, DEADLINE - 5 - (time.monotonic() - began)),
                 "every result at the LIS")
            delivered_all = time.monotonic() - sending
        finally:
            daemon.stop()
    got = lis.deliveries()
    specimens = [d.specimen for d in got]
    assert len(specimens) == len(set(specimens)) == ANALYZERS * RESULTS, "each result exactly once"
    assert len({d.control_id for d in got}) == ANALYZERS * RESULTS
    for n in range(ANALYZERS):
        mine = [s for s in specimens if s.startswith(f"L{n:02d}-")]
        assert mine == sorted(mine), f"an{n:02d}'s results arrive in the order it sent them"
    assert {e["state"] for e in outbox(db)} == {"delivered"}
    total = time.monotonic() - began
    assert total < DEADLINE, f"took {total:.1f} s (received in {received_all:.1f} s, delivered in {delivered_all:.1f} s)"
    assert labmw(config, "audit", "verify").returncode == 0

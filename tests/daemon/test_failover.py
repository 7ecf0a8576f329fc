"""Active/standby with real daemons: kill -9 of the active one under traffic hands over within 15 s,
and every result the analyzer saw ACKed reaches the LIS under one MSH-10."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from engine_kit import Engine
from peers import MllpLis, alt_message, astm_send, daemon, free_port, labmw, listening, wait_until
from pg_failover import FirstAlive, node_config

HANDOVER_LIMIT = 15.0


def _role(config: Path) -> object:
    """The role `labmw status` reports, or None while the daemon's control socket is not up yet."""
    proc = labmw(config, "status", "--json", check=False)
    return json.loads(proc.stdout).get("role") if proc.returncode == 0 else None


def test_kill9_of_the_active_hands_over_and_loses_nothing(tmp_path: Path, pg_engine: Engine) -> None:
    lis = MllpLis(free_port()).start()
    port = free_port()
    a_host, b_host = "127.0.0.2", "127.0.0.3"
    node_a = node_config(tmp_path, pg_engine, "a", a_host, port, lis.port)
    node_b = node_config(tmp_path, pg_engine, "b", b_host, port, lis.port)
    proxy = FirstAlive(free_port(), [(a_host, port), (b_host, port)]).start()
    acked: list[str] = []
    stop = threading.Event()

    def analyzer() -> None:
        """Sends one result per session; resends a session that failed, as an analyzer does."""
        n = 0
        while not stop.is_set():
            n += 1
            message = alt_message(specimen=f"F{n}", patient=f"PF{n}", sex="M", birth="19700101", value="30")
            while not stop.is_set():
                try:
                    astm_send(proxy.port, [message], timeout=3.0)
                    acked.append(f"F{n}")
                    break
                except (OSError, AssertionError):
                    time.sleep(0.1)

    try:
        with daemon(node_a, wait_port=None) as a:
            wait_until(lambda: listening(port, a_host), what="node a to become active")
            with daemon(node_b, wait_port=None):
                wait_until(lambda: _role(node_b) == "standby", interval=0.5,  # each poll is a CLI process
                           what="node b to report standby")
                assert not listening(port, b_host), "the standby holds no listener"
                assert _role(node_a) == "active"
                sender = threading.Thread(target=analyzer, daemon=True)
                sender.start()
                wait_until(lambda: len(acked) >= 5, what="traffic through the active node")
                os.kill(a.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                wait_until(lambda: listening(port, b_host), timeout=HANDOVER_LIMIT + 5, interval=0.1,
                           what="node b to take over")
                handover = time.monotonic() - killed_at
                count_at_handover = len(acked)
                wait_until(lambda: len(acked) >= count_at_handover + 5, what="traffic through the new active node")
                stop.set()
                sender.join(10)
                assert _role(node_b) == "active"
                wait_until(lambda: set(acked) <= set(lis.by_specimen()), timeout=20,
                           what="every ACKed result at the LIS")
    finally:
        stop.set()
        proxy.stop()
        lis.stop()
    assert handover < HANDOVER_LIMIT, f"standby took {handover:.1f} s"
    control_ids: dict[str, set[str]] = {}
    for message in lis.received:
        specimen = str(message.segment("OBR")[3])
        control_ids.setdefault(specimen.split("^")[0], set()).add(str(message.segment("MSH")[10]))
    for specimen in acked:
        assert len(control_ids[specimen]) == 1, f"{specimen} arrived under {control_ids[specimen]}"
    assert labmw(node_b, "audit", "verify").returncode == 0

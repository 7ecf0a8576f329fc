"""Alerts from the real daemon to a real local HTTP receiver and a real command hook: once on start,
once on clear, each an audit event."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from alert_receiver import Receiver
from peers import MllpLis, alt_message, astm_send, configure, daemon, free_port, labmw, wait_until


def test_lis_outage_fires_one_alert_and_one_all_clear(tmp_path: Path) -> None:
    """LIS down past lis_down_minutes: one 'raised' to webhook and command; LIS back: one 'cleared'; audited."""
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    hook_log = tmp_path / "hook.jsonl"
    with socket.socket() as squatter, Receiver() as receiver:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        labmw(config, "analyzer", "add", "c502", "--protocol", "astm", "--transport", "tcp-server",
              "--listen", f"127.0.0.1:{squatter.getsockname()[1]}")  # its port is taken: cannot start
        labmw(config, "analyzer", "set", "c501", "--silent-after-minutes", "0.02")
        config.write_text(config.read_text().replace("[lis]\n", "[lis]\nretry_initial = 0.2\nretry_max = 0.5\n", 1)
                          + f'\n[alerts]\nwebhook_url = "http://127.0.0.1:{receiver.port}/hook"\n'
                          f'command = "cat >> {hook_log}"\ncheck_interval_seconds = 0.2\nlis_down_minutes = 0.01\n'
                          "disk_free_min_mb = 1\n")
        assert "ok" in labmw(config, "config", "validate").stdout
        with daemon(config, wait_port=analyzer_port, log=tmp_path / "daemon.log"):
            wait_until(lambda: receiver.firings("analyzer_not_started:c502") == ["raised"], what="not started")
            wait_until(lambda: receiver.firings("analyzer_silent:c501") == ["raised"], what="silent analyzer")
            astm_send(analyzer_port, [alt_message(specimen="S1", patient="P1", sex="M", birth="19800101",
                                                  value="44")])
            wait_until(lambda: receiver.firings("analyzer_silent:c501") == ["raised", "cleared"],
                       what="a message ends the silence")
            wait_until(lambda: receiver.firings("lis_down") == ["raised"], what="the LIS outage alert")
            lis = MllpLis(lis_port).start()
            try:
                wait_until(lambda: receiver.firings("lis_down") == ["raised", "cleared"], timeout=30,
                           what="the all-clear")
                wait_until(lambda: len(lis.received) == 1, what="the delivery")
            finally:
                lis.stop()
            # Five more checks (0.2 s apart): nothing fires again while nothing changes (the analyzer,
            # silent again, may: its 1.2 s allowance runs out).
            def steady() -> list[dict[str, Any]]:
                return [a for a in list(receiver.received) if not a["alert"].startswith("analyzer_silent")]
            fired = steady()
            time.sleep(1.0)
            assert steady() == fired
            assert receiver.firings("analyzer_not_started:c502") == ["raised"]
    assert receiver.firings("lis_down") == ["raised", "cleared"]
    down = next(a for a in receiver.received if a["alert"] == "lis_down")
    assert "has not answered since" in down["detail"] and down["at"]
    hooked = [json.loads(line) for line in hook_log.read_text().splitlines()]
    assert [a["state"] for a in hooked if a["alert"] == "lis_down"] == ["raised", "cleared"]
    audited = json.loads(labmw(config, "audit", "list", "--json").stdout)
    lis_events = [(e["event"], e["data"]["delivery_errors"]) for e in audited
                  if e["event"].startswith("alert_") and e["data"].get("alert") == "lis_down"]
    assert lis_events == [("alert_raised", []), ("alert_cleared", [])]
    assert "intact" in labmw(config, "audit", "verify").stdout

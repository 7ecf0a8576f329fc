"""End to end: the README's commands, a real ASTM analyzer over TCP, the real daemon process, a real
MLLP LIS (python-hl7), and the audit trail — as a laboratory would install and use labmw.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
from pathlib import Path

import pytest
from peers import MllpLis, alt_message, astm_send, configure, daemon, field, free_port, labmw, obx8, wait_until


CASES = [  # specimen, patient, sex, birth date, value, expected labmw flags, expected OBX-7
    ("S1", "P1", "M", "19800101", "85", ["H"], "9-59"),
    ("S2", "P2", "F", "19750615", "45", ["H"], "8-41"),
    ("S3", "P3", "M", "19900101", "44", [], "9-59"),
    ("S4", "P4", "M", "19600101", "1250", ["HH"], "9-59"),
]


def test_results_arrive_flagged_at_the_lis_and_are_audited(tmp_path: Path) -> None:
    """Issue 2's acceptance: ALT 85 M -> H 9-59, 45 F -> H 8-41, 44 M -> none, 1250 -> HH; audit shows it all."""
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=analyzer_port, log=tmp_path / "daemon.log") as proc:
            messages = [alt_message(specimen=s, patient=p, sex=sex, birth=b, value=v) for s, p, sex, b, v, _, _ in CASES]
            replies = astm_send(analyzer_port, messages)
            assert all(r == b"\x06" for r in replies)
            wait_until(lambda: len(lis.received) >= len(CASES), what="the LIS to receive every result")
            got = lis.by_specimen()
            for specimen, patient, _, _, value, flags, applied in CASES:
                msg = got[specimen]
                assert field(msg, "MSH", 9) == "ORU^R01^ORU_R01"
                assert field(msg, "PID", 3) == patient
                assert field(msg, "OBX", 5) == value, "the instrument's value travels unchanged"
                assert obx8(msg) == flags, specimen
                assert field(msg, "OBX", 7) == applied
                assert field(msg, "OBX", 17).startswith("ALT-T")
                assert field(msg, "OBX", 18).startswith("c501")
            assert any(str(seg[2]) == "O" for seg in got["S4"].segments("NTE")), "an NTE-2 O explains the HH"

            wait_until(lambda: len(_events(config, "S1", "result_delivered")) == 1, what="delivery audited")
            status = json.loads(labmw(config, "status", "--json").stdout)
            assert status["analyzers"][0]["name"] == "c501" and status["analyzers"][0]["results"] == len(CASES)
            assert status["lis"]["state"] == "up" and status["queue"] == {"pending": 0, "dead": 0}
            assert status["held"] == 0 and status["pid"] == proc.pid
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    finally:
        lis.stop()
    stopped = labmw(config, "status", check=False)
    assert stopped.returncode == 1 and "no labmw daemon is running" in stopped.stderr

    events = json.loads(labmw(config, "audit", "list", "--specimen", "S1", "--json").stdout)
    kinds = [e["event"] for e in events]
    for expected in ("message_received", "result_received", "result_delivered"):
        assert expected in kinds, f"{expected} missing from {kinds}"
    received = next(e for e in events if e["event"] == "result_received")
    evaluated = received["data"]["evaluation"]
    assert evaluated["flags"] == ["H"] and evaluated["applied_range"] == "9-59"
    assert evaluated["decisions"], "every rule decision is kept with its inputs"
    assert received["data"]["state"] == "queued" and received["data"]["control_id"], "one row says where it went"
    delivered = next(e for e in events if e["event"] == "result_delivered")
    assert delivered["data"]["ack_code"] == "AA"
    assert labmw(config, "audit", "verify").returncode == 0
    config_changes = json.loads(labmw(config, "audit", "list", "--event", "config_changed", "--json").stdout)
    assert len(config_changes) == 5 and all(e["actor"] for e in config_changes)

    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "labmw.sqlite3").stat().st_mode) == 0o600
    log_text = (tmp_path / "daemon.log").read_text()
    assert "DOE" not in log_text and "19800101" not in log_text, "no patient data in operational logs"


def _events(config: Path, specimen: str, event: str) -> list[dict[str, object]]:
    return [e for e in json.loads(labmw(config, "audit", "list", "--specimen", specimen, "--json").stdout)
            if e["event"] == event]


def test_lis_down_then_up_and_daemon_killed_loses_nothing(tmp_path: Path) -> None:
    """Results ACKed while the LIS is down survive kill -9 and reach the LIS once it is up, same MSH-10."""
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    with daemon(config, wait_port=analyzer_port) as proc:
        astm_send(analyzer_port, [alt_message(specimen="K1", patient="P9", sex="M", birth="19800101", value="70")])
        wait_until(lambda: _events(config, "K1", "delivery_failed"), what="a failed attempt while the LIS is down")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    db = sqlite3.connect(tmp_path / "data" / "labmw.sqlite3")
    pending = db.execute("SELECT control_id FROM outbox WHERE state='pending'").fetchall()
    db.close()
    assert len(pending) == 1, "the ACKed result was committed before the ACK"
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=analyzer_port):
            wait_until(lambda: len(lis.received) >= 1, timeout=20, what="delivery after restart")
    finally:
        lis.stop()
    assert [field(m, "MSH", 10) for m in lis.received] == [pending[0][0]]
    assert obx8(lis.received[0]) == ["H"]
    assert len(_events(config, "K1", "result_delivered")) == 1


@pytest.mark.parametrize("bad", ["not-a-port", "127.0.0.1:99999"])
def test_bad_listen_address_is_refused_without_changing_the_file(tmp_path: Path, bad: str) -> None:
    """A bad --listen gets one clear line, a non-zero exit and an unchanged config file."""
    config = tmp_path / "lab.toml"
    labmw(config, "init", "--data-dir", str(tmp_path / "data"))
    before = config.read_text()
    proc = labmw(config, "analyzer", "add", "x", "--protocol", "astm", "--transport", "tcp-server",
                 "--listen", bad, "--map", "ALTL=ALT-P5P", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "--listen" in proc.stderr
    assert config.read_text() == before
    assert os.path.exists(config)

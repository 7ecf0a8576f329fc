"""ASTM over every transport, against the real daemon process: a serial line (a real pty pair), a
TCP connection labmw makes itself, a TCP listener with an allow-list; and SIGHUP reloads.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import threading
import time
import tty
from pathlib import Path

from peers import (
    ACK,
    ENQ,
    EOT,
    MllpLis,
    alt_message,
    astm_frame,
    astm_send,
    configure,
    daemon,
    free_port,
    labmw,
    listening,
    obx8,
    wait_until,
)


def _read_byte(fd: int, timeout: float = 10.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise AssertionError("no reply on the serial line")
    return os.read(fd, 1)


def _send_over(write, read, records_per_message) -> list[bytes]:  # noqa: ANN001
    """One ENQ..EOT session through arbitrary write/read callables; returns the replies."""
    replies = []
    write(ENQ)
    replies.append(read())
    fn = 1
    for records in records_per_message:
        for record in records:
            write(astm_frame(fn, record + b"\r"))
            replies.append(read())
            fn += 1
    write(EOT)
    return replies


def test_serial_analyzer_on_a_pty_reaches_the_lis(tmp_path: Path) -> None:
    """A serial analyzer (pty pair, pyserial on the daemon side) is ACKed and its result arrives flagged."""
    lis_port = free_port()
    config = configure(tmp_path, lis_port, free_port())
    labmw(config, "analyzer", "remove", "c501")
    master, slave = os.openpty()
    # A serial line does not echo; a fresh pty does (ENQ would come back as "^E") until the daemon's
    # pyserial puts it in raw mode, so make it raw now, whenever the daemon gets to open it.
    tty.setraw(slave)
    device = os.ttyname(slave)
    labmw(config, "analyzer", "add", "ser1", "--protocol", "astm", "--transport", "serial", "--device", device,
          "--baud", "9600", "--map", "ALTL=ALT-T")
    lis = MllpLis(lis_port).start()
    log = tmp_path / "daemon.log"
    try:
        with daemon(config, log=log):
            wait_until(lambda: log.exists() and '"analyzer_started"' in log.read_text() and "ser1" in log.read_text(),
                       what="the daemon to open the serial device")
            # A bad checksum first: NAKed; the retransmission is accepted.
            os.write(master, ENQ)
            assert _read_byte(master) == ACK
            good = astm_frame(1, rb"H|\^&|||ser^1" + b"\r")
            bad = good[:-4] + (b"00" if good[-4:-2] != b"00" else b"01") + b"\r\n"
            os.write(master, bad)
            assert _read_byte(master) == b"\x15"
            os.write(master, good)
            assert _read_byte(master) == ACK
            rest = alt_message(specimen="SER1", patient="PS", sex="F", birth="19700101", value="45")[1:]
            for fn, record in enumerate(rest, start=2):
                os.write(master, astm_frame(fn, record + b"\r"))
                assert _read_byte(master) == ACK
            os.write(master, EOT)
            wait_until(lambda: len(lis.received) >= 1, what="the serial result at the LIS")
            assert obx8(lis.received[0]) == ["H"]
    finally:
        lis.stop()
        os.close(master)
        os.close(slave)


def test_tcp_client_analyzer_is_connected_to_and_reconnected(tmp_path: Path) -> None:
    """labmw connects out to an analyzer that listens, and comes back after the analyzer drops the link."""
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, free_port())
    labmw(config, "analyzer", "remove", "c501")
    labmw(config, "analyzer", "add", "cli1", "--protocol", "astm", "--transport", "tcp-client", "--connect",
          f"127.0.0.1:{analyzer_port}", "--map", "ALTL=ALT-T")
    listener = socket.create_server(("127.0.0.1", analyzer_port))
    listener.settimeout(20)
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config):
            for specimen in ("TC1", "TC2"):
                conn, _ = listener.accept()
                conn.settimeout(10)
                replies = _send_over(conn.sendall, lambda c=conn: c.recv(1), [
                    alt_message(specimen=specimen, patient="PT", sex="M", birth="19800101", value="85")])
                assert set(replies) == {ACK}
                conn.close()  # the analyzer drops the link; labmw must reconnect for the second round
            wait_until(lambda: len(lis.received) >= 2, what="both results at the LIS")
            assert set(lis.by_specimen()) == {"TC1", "TC2"}
    finally:
        listener.close()
        lis.stop()


def test_allow_list_refuses_and_audits_other_peers(tmp_path: Path) -> None:
    """A peer outside the analyzer's allow-list is disconnected and the refusal audited."""
    analyzer_port = free_port()
    config = configure(tmp_path, free_port(), free_port())
    labmw(config, "analyzer", "add", "locked", "--protocol", "astm", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{analyzer_port}", "--allow", "192.0.2.10", "--map", "ALTL=ALT-T")
    with daemon(config, wait_port=analyzer_port):
        with socket.create_connection(("127.0.0.1", analyzer_port), timeout=5) as sock:
            try:
                sock.sendall(ENQ)
                answer = sock.recv(1)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", "the connection is closed without an answer"
        wait_until(lambda: json.loads(labmw(config, "audit", "list", "--event", "connection_refused", "--json").stdout),
                   what="the refusal in the audit trail")


def test_a_full_listener_evicts_the_idlest_connection_and_refuses_only_when_all_are_busy(tmp_path: Path) -> None:
    """At max_connections a newcomer takes the slot of the oldest silent connection (audited
    connection_closed, "evicted"); only when every connection is busy is it refused (audited)."""
    analyzer_port = free_port()
    config = configure(tmp_path, free_port(), free_port())
    labmw(config, "analyzer", "add", "capped", "--protocol", "astm", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{analyzer_port}", "--max-connections", "2", "--map", "ALTL=ALT-T")

    def connections() -> int:
        status = json.loads(labmw(config, "status", "--json").stdout)
        return next(a["connections"] for a in status["analyzers"] if a["name"] == "capped")

    def audit(event: str) -> list[dict[str, object]]:
        return json.loads(labmw(config, "audit", "list", "--event", event, "--json").stdout)  # type: ignore[no-any-return]

    with daemon(config, wait_port=analyzer_port):
        wait_until(lambda: connections() == 0, what="the start-up probe connection to be gone")
        held = [socket.create_connection(("127.0.0.1", analyzer_port), timeout=5) for _ in range(2)]
        wait_until(lambda: connections() == 2, what="two connections held")
        newcomer = socket.create_connection(("127.0.0.1", analyzer_port), timeout=5)
        newcomer.sendall(ENQ)
        assert newcomer.recv(1) == ACK, "the newcomer is served"
        try:
            evicted = held[0].recv(1)
        except ConnectionResetError:
            evicted = b""
        assert evicted == b"", "the oldest silent connection made room"
        held[1].sendall(ENQ)
        assert held[1].recv(1) == ACK, "the other connection within the limit is served"
        # Both live connections are busy now: a fourth is refused.
        with socket.create_connection(("127.0.0.1", analyzer_port), timeout=5) as extra:
            try:
                answer = extra.recv(1)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", "the fourth connection is closed"
        for sock in (*held, newcomer):
            sock.close()
        def evictions() -> list[dict[str, object]]:
            return [e for e in audit("connection_closed") if str(e["data"]["reason"]).startswith("evicted")]  # type: ignore[index]

        wait_until(lambda: evictions() and audit("connection_refused"), what="the eviction and the refusal audited")
        assert len(evictions()) == 1
        assert "max_connections" in audit("connection_refused")[0]["data"]["reason"]  # type: ignore[index]


def test_sighup_adds_an_analyzer_and_keeps_existing_connections(tmp_path: Path) -> None:
    """SIGHUP starts a newly configured analyzer while an open connection to an unchanged one keeps working."""
    lis_port, port_a, port_b = free_port(), free_port(), free_port()
    config = configure(tmp_path, lis_port, port_a)
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=port_a) as proc:
            sock = socket.create_connection(("127.0.0.1", port_a), timeout=10)
            labmw(config, "analyzer", "add", "b", "--protocol", "astm", "--transport", "tcp-server", "--listen",
                  f"127.0.0.1:{port_b}", "--map", "ALTL=ALT-T")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: listening(port_b), what="the new analyzer to listen")
            replies = _send_over(sock.sendall, lambda: sock.recv(1), [
                alt_message(specimen="HUP1", patient="PH", sex="M", birth="19800101", value="44")])
            assert set(replies) == {ACK}, "the connection opened before the reload still works"
            sock.close()
            astm_send(port_b, [alt_message(specimen="HUP2", patient="PH", sex="M", birth="19800101", value="60")])
            wait_until(lambda: len(lis.received) >= 2, what="results from both analyzers")
            labmw(config, "analyzer", "remove", "b")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: not listening(port_b), what="the removed analyzer to stop")
    finally:
        lis.stop()
    reloads = json.loads(labmw(config, "audit", "list", "--event", "config_reloaded", "--json").stdout)
    assert reloads[0]["data"]["added"] == ["b"] and reloads[1]["data"]["removed"] == ["b"]




def test_storage_failure_naks_instead_of_acking(tmp_path: Path) -> None:
    """With the database made read-only under the daemon, the final frame is NAKed, never ACKed."""
    analyzer_port = free_port()
    config = configure(tmp_path, free_port(), analyzer_port)
    db = tmp_path / "data" / "labmw.sqlite3"
    with daemon(config, wait_port=analyzer_port):
        locker = threading.Event()

        def hold_write_lock() -> None:
            import sqlite3

            conn = sqlite3.connect(db, timeout=1, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            locker.wait(60)
            conn.execute("ROLLBACK")
            conn.close()

        thread = threading.Thread(target=hold_write_lock)
        thread.start()
        try:
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", analyzer_port), timeout=60) as sock:
                records = alt_message(specimen="RO1", patient="PR", sex="M", birth="19800101", value="50")
                sock.sendall(ENQ)
                assert sock.recv(1) == ACK
                for fn, record in enumerate(records[:-1], start=1):
                    sock.sendall(astm_frame(fn, record + b"\r"))
                    assert sock.recv(1) == ACK
                sock.sendall(astm_frame(len(records), records[-1] + b"\r"))
                assert sock.recv(1) == b"\x15", "the L frame must be NAKed while nothing can be stored"
                locker.set()
                thread.join()
                sock.sendall(astm_frame(len(records), records[-1] + b"\r"))
                assert sock.recv(1) == ACK, "the retransmission is accepted once the store works again"
                sock.sendall(EOT)
        finally:
            locker.set()
            thread.join()
    specimens = json.loads(labmw(config, "audit", "list", "--specimen", "RO1", "--json").stdout)
    assert [e["event"] for e in specimens].count("result_received") == 1

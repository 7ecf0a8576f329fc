"""Hostile analyzer peers against the real daemon: random bytes, broken frames, a 20 MB frame that
never ends, a message past the size cap, a half-open link, a peer sending one byte a second, 30
idle connections. Each must be answered (ACK/NAK) or cut off within bounded time and memory, and
a well-behaved analyzer on another connection must keep flowing meanwhile (PRODUCT.md guarantee 5).

Memory is the daemon's peak resident set (VmHWM in /proc), read before and after the attack.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import tomlkit
from fault_tools import (
    CR,
    FS,
    VT,
    AstmPeer,
    Daemon,
    MakeLab,
    SteadyAnalyzer,
    add_hl7_analyzer,
    at_least,
    audit_events,
    cli_json,
    crashed_connections,
    db_rows,
    fast_lis,
    hl7_exchange,
    hl7_oru,
    poll,
    send_session,
)
from lis_peers import ScriptedLis
from peers import ACK, ENQ, EOT, STX, alt_message, astm_frame, free_port

NAK = b"\x15"
MB = 1024 * 1024


def _start(tmp_path: Path, lab: MakeLab, *, hl7: bool = False) -> tuple[Path, int, ScriptedLis, Daemon]:
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config)
    if hl7:
        add_hl7_analyzer(config, free_port())
    lis = ScriptedLis(lis_port).start()
    daemon = Daemon(config, port, tmp_path / "daemon.log").start()
    send_session(port, [alt_message(specimen="WARM", patient="PW", sex="M", birth="19800101", value="30")])
    return config, port, lis, daemon


def _hl7_port(config: Path) -> int:
    return int(tomlkit.parse(config.read_text())["analyzers"]["mx"]["listen"].split(":")[1])  # type: ignore[index]


def _check_steady(steady: SteadyAnalyzer, lis: ScriptedLis, daemon: Daemon, slowest: float = 2.0) -> None:
    steady.join()
    assert steady.slowest < slowest, f"a good analyzer waited {steady.slowest:.2f} s for a reply"
    poll(lambda: set(steady.sent) <= {d.specimen for d in lis.deliveries()}, 20, "the good analyzer's results")
    assert daemon.alive(), "the daemon is still running"
    assert crashed_connections(daemon) == [], "no untyped exception escaped a connection"


class _Replies:
    """Collects every byte the daemon sends back on one socket, on its own thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.data = bytearray()
        self._sock = sock
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := self._sock.recv(65536):
                self.data += chunk
        except OSError:
            pass

    def join(self) -> bytes:
        self._thread.join(20)
        return bytes(self.data)


def test_random_bytes_and_broken_frames_get_only_ack_or_nak_while_others_flow(tmp_path: Path, lab: MakeLab) -> None:
    """Random bytes and truncated or corrupted frames are answered with ACK/NAK only; a good analyzer is not slowed."""
    _config, port, lis, daemon = _start(tmp_path, lab)
    try:
        steady = SteadyAnalyzer(port, "RB", count=15, interval=0.1).start()
        rng = random.Random(1)
        valid = [astm_frame(fn % 8, r + b"\r") for fn, r in enumerate(
            alt_message(specimen="X", patient="PX", sex="M", birth="19800101", value="1"), start=1)]
        attacks: list[bytes] = [rng.randbytes(256 * 1024) for _ in range(3)]
        broken = bytearray(ENQ)
        for _ in range(300):
            frame = rng.choice(valid)
            kind = rng.randrange(4)
            if kind == 0:
                broken += frame[: rng.randrange(1, len(frame))] + rng.choice([ENQ, EOT, STX])  # cut short
            elif kind == 1:
                broken += frame[:-4] + b"ZZ\r\n"  # bad checksum
            elif kind == 2:
                broken += frame[:1] + b"9" + frame[2:]  # FN out of range
            else:
                broken += frame
        attacks.append(bytes(broken))
        socks, readers = [], []
        for data in attacks:
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            socks.append(sock)
            readers.append(_Replies(sock))
            for at in range(0, len(data), 4096):
                sock.sendall(data[at : at + 4096])
        for sock in socks:
            sock.shutdown(socket.SHUT_WR)  # done sending; the daemon answers what is left, then closes
        replies = [r.join() for r in readers]
        for sock in socks:
            sock.close()
        _check_steady(steady, lis, daemon)
    finally:
        daemon.stop()
        lis.stop()
    for reply in replies:
        assert set(reply) <= {ACK[0], NAK[0]}, f"only ACK/NAK may come back, got {set(reply) - {6, 21}}"
    assert NAK[0] in replies[-1] and ACK[0] in replies[-1], "broken frames are NAKed, good ones ACKed"


def test_a_20_mb_frame_that_never_ends_is_naked_within_bounded_memory(tmp_path: Path, lab: MakeLab) -> None:
    """STX then 20 MB with no terminator: NAKed once past the frame cap, memory stays bounded, others keep flowing."""
    _config, port, lis, daemon = _start(tmp_path, lab)
    try:
        before = daemon.memory_kb()
        steady = SteadyAnalyzer(port, "BIG", count=15, interval=0.1).start()
        peer = AstmPeer(port, timeout=20)
        assert peer.enq() == ACK
        replies = _Replies(peer.sock)
        peer.sock.sendall(STX + b"1")
        chunk = b"A" * (64 * 1024)
        for _ in range(20 * 16):
            peer.sock.sendall(chunk)
        poll(lambda: replies.data, 10, "an answer to the endless frame")
        peer.sock.sendall(ENQ)  # the frame never ended; a new ENQ restarts the link
        poll(lambda: len(replies.data) >= 2, 30, "an answer to the new ENQ (so all 20 MB were read)")
        growth_mb = (daemon.memory_kb() - before) / 1024
        _check_steady(steady, lis, daemon)
        peer.close()
    finally:
        daemon.stop()
        lis.stop()
    assert bytes(replies.data[:2]) == NAK + ACK, "NAK for the over-long frame, then ACK for the fresh ENQ"
    assert growth_mb < 12, f"peak memory grew by {growth_mb:.1f} MB for a 20 MB frame"


def test_a_message_growing_past_the_size_cap_is_refused_within_bounded_memory(tmp_path: Path, lab: MakeLab) -> None:
    """A peer that keeps sending valid 60 kB intermediate frames (20 MB) is NAKed past 4 MB, audited, memory bounded."""
    _config, port, lis, daemon = _start(tmp_path, lab)
    db = tmp_path / "data" / "labmw.sqlite3"
    try:
        before = daemon.memory_kb()
        peer = AstmPeer(port, timeout=20)
        assert peer.enq() == ACK
        assert peer.frame(rb"H|\^&|||c501^1|||||host|RSUPL^REAL|P|1") == ACK
        replies = []
        body = b"R|1|^^^ALTL|" + b"9" * 60_000
        for _ in range(340):  # a hostile peer: it does not stop after the first NAK
            peer.sock.sendall(astm_frame(peer.fn, body, final=False))
            peer.fn += 1
            replies.append(peer.reply())
        peer.eot()
        peer.close()
        growth_mb = (daemon.memory_kb() - before) / 1024
        incomplete = poll(lambda: audit_events(db, "transfer_incomplete"), 10, "the refused transfer audited")
        assert daemon.alive() and crashed_connections(daemon) == []
    finally:
        daemon.stop()
        lis.stop()
    first_nak = replies.index(NAK)
    assert 60 <= first_nak <= 70, f"the cap (4 MiB) is reached after about 70 frames of 60 kB, NAK at {first_nak}"
    assert set(replies[first_nak:]) == {NAK}, "the rest of the transfer is refused"
    assert "exceeds" in incomplete[0]["data"]["reason"]
    assert growth_mb < 24, f"peak memory grew by {growth_mb:.1f} MB for a 20 MB message"


class _Trickle:
    """Sends ``data`` one byte a second on its own thread until told to stop or the peer is cut off."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.sock, self.data, self.sent = sock, data, 0
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for i in range(len(self.data)):
            if self.stop.wait(1.0):
                return
            try:
                self.sock.sendall(self.data[i : i + 1])
            except OSError:
                return
            self.sent = i + 1

    def finish(self) -> int:
        self.stop.set()
        self._thread.join(5)
        return self.sent


class _EndWatch:
    """Records when the daemon closes a connection (recv gives b"" or an error), on its own thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.closed_at: float | None = None
        self.data = bytearray()
        sock.settimeout(None)
        threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        try:
            while chunk := sock.recv(65536):
                self.data += chunk
        except OSError:
            pass
        self.closed_at = time.monotonic()


def test_half_open_and_one_byte_a_second_peers_are_cut_off_in_bounded_time(tmp_path: Path, lab: MakeLab) -> None:
    """Stalled or trickling transfers are cut off by a deadline: ASTM at the 30 s frame timer (audited), HL7 at
    the 30 s block deadline (the analyzer's frame_timeout; connection closed) - even while bytes keep trickling in - and others keep flowing."""
    config, port, lis, daemon = _start(tmp_path, lab, hl7=True)
    hl7_port = _hl7_port(config)
    db = tmp_path / "data" / "labmw.sqlite3"
    header = rb"H|\^&|||c501^1|||||host|RSUPL^REAL|P|1"
    try:
        steady = SteadyAnalyzer(port, "SLOW", count=40, interval=1.5).start()
        silent = AstmPeer(port, timeout=40)
        assert silent.enq() == ACK and silent.frame(header) == ACK
        silent_since = time.monotonic()
        enq_only = AstmPeer(port, timeout=40)
        assert enq_only.enq() == ACK
        enq_since = time.monotonic()
        trickler = AstmPeer(port, timeout=40)
        assert trickler.enq() == ACK and trickler.frame(header) == ACK
        trickle_since = time.monotonic()
        slow_frame = astm_frame(2, b"P|1||PT||DOE^JANE||19800101|M" + b"|" * 40 + b"\r")
        astm_trickle = _Trickle(trickler.sock, slow_frame)

        hl7_half = socket.create_connection(("127.0.0.1", hl7_port), timeout=10)
        hl7_half.sendall(VT + hl7_oru("H-1", "HALF1")[:60])
        hl7_half_since = time.monotonic()
        hl7_half_end = _EndWatch(hl7_half)
        hl7_slow = socket.create_connection(("127.0.0.1", hl7_port), timeout=10)
        hl7_slow_since = time.monotonic()
        hl7_trickle = _Trickle(hl7_slow, VT + hl7_oru("H-2", "SLOW2") + FS + CR)
        hl7_slow_end = _EndWatch(hl7_slow)

        events = poll(lambda: at_least(2, audit_events(db, "transfer_incomplete")), 45,
                      "both stalled ASTM transfers cut off")
        astm_trickled = astm_trickle.finish()
        cut_at = {e["data"]["peer"]: datetime.fromisoformat(e["ts"]).timestamp() for e in events}
        # The ENQ-only link timed out too: a frame now belongs to no transfer and is ignored; a new ENQ works.
        time.sleep(max(0.0, enq_since + 31 - time.monotonic()))
        enq_only.sock.sendall(astm_frame(1, header + b"\r"))
        enq_only.sock.settimeout(1.5)
        try:
            late_frame_answer: bytes | None = enq_only.sock.recv(1)
        except TimeoutError:
            late_frame_answer = None
        enq_only.sock.settimeout(10)
        fresh_enq_answer = enq_only.enq()

        time.sleep(max(0.0, hl7_slow_since + 38 - time.monotonic()))  # the 30 s block deadline, and some slack
        hl7_trickled = hl7_trickle.finish()
        hl7_half_closed, hl7_slow_closed = hl7_half_end.closed_at, hl7_slow_end.closed_at  # before we stop anything
        _check_steady(steady, lis, daemon)
    finally:
        daemon.stop()
        lis.stop()
    peers = {f"127.0.0.1:{p.sock.getsockname()[1]}": name for p, name in ((silent, "silent"), (trickler, "trickler"))}
    assert {peers.get(p) for p in cut_at} == {"silent", "trickler"}, cut_at
    assert all(e["data"]["reason"] == "timeout" for e in events)
    assert astm_trickled < len(slow_frame), "the ASTM trickler was cut off while still sending"
    wall = time.time() - time.monotonic()
    for peer, started in ((silent, silent_since), (trickler, trickle_since)):
        elapsed = cut_at[f"127.0.0.1:{peer.sock.getsockname()[1]}"] - (started + wall)
        assert 29 <= elapsed <= 40, f"cut off {elapsed:.1f} s after the last reply (receiver timer is 30 s)"
    assert late_frame_answer is None, "after the frame timer the ENQ-only transfer is over: a frame is ignored"
    assert fresh_enq_answer == ACK, "and the link takes a new ENQ"
    assert hl7_half_closed is not None and hl7_half_closed - hl7_half_since <= 35, \
        "a half-sent HL7 block is dropped with its connection by the block deadline"
    assert hl7_slow_closed is not None, (
        f"an HL7 peer sending one byte a second was still connected after 38 s ({hl7_trickled} bytes in): "
        f"the block timeout restarts with every byte, so it never ends the block")
    assert hl7_slow_closed - hl7_slow_since <= 35


def test_thirty_idle_connections_do_not_hold_up_a_working_analyzer(tmp_path: Path, lab: MakeLab) -> None:
    """30 connections that never send a byte are accepted and held; a working analyzer's results flow meanwhile."""
    config, port, lis, daemon = _start(tmp_path, lab)
    idle = []
    try:
        before = daemon.memory_kb("VmRSS")
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]
        poll(lambda: cli_json(config, "status")["analyzers"][0]["connections"] >= 30, 10,
             "the daemon to hold all 30 idle connections")
        steady = SteadyAnalyzer(port, "IDLE", count=20, interval=0.05).start()
        _check_steady(steady, lis, daemon, slowest=1.0)
        growth_mb = (daemon.memory_kb("VmRSS") - before) / 1024
    finally:
        for sock in idle:
            sock.close()
        daemon.stop()
        lis.stop()
    assert growth_mb < 10, f"30 idle connections cost {growth_mb:.1f} MB"


def test_hl7_junk_and_a_20_mb_block_that_never_ends_are_answered_or_cut_off(tmp_path: Path, lab: MakeLab) -> None:
    """On an HL7 port: junk outside blocks is dropped; a block growing past the cap gets AE and is cut off with
    bounded memory; the port keeps serving (AA) and an ASTM analyzer keeps flowing meanwhile."""
    config, port, lis, daemon = _start(tmp_path, lab, hl7=True)
    hl7_port = _hl7_port(config)
    try:
        before = daemon.memory_kb()
        steady = SteadyAnalyzer(port, "HJ", count=15, interval=0.1).start()
        junk = socket.create_connection(("127.0.0.1", hl7_port), timeout=20)
        junk_replies = _Replies(junk)
        junk.sendall(random.Random(3).randbytes(256 * 1024).replace(VT, b""))
        junk.shutdown(socket.SHUT_WR)

        endless = socket.create_connection(("127.0.0.1", hl7_port), timeout=20)
        end_watch = _EndWatch(endless)
        endless.sendall(VT + hl7_oru("BIG-1", "BIG1")[:-1])
        sent, cut_off = 0, False
        chunk = b"A" * (64 * 1024)
        while sent < 20 * MB:
            try:
                endless.sendall(chunk)
            except OSError:
                cut_off = True
                break
            sent += len(chunk)
        poll(lambda: end_watch.closed_at, 10, "the endless block's connection closed by the daemon")
        growth_mb = (daemon.memory_kb() - before) / 1024

        with socket.create_connection(("127.0.0.1", hl7_port), timeout=10) as good:
            after = hl7_exchange(good, hl7_oru("GOOD-1", "HGOOD1"))
        _check_steady(steady, lis, daemon)
        poll(lambda: "HGOOD1" in {d.specimen for d in lis.deliveries()}, 10, "the HL7 result after the attack")
        junk_answer = junk_replies.join()
    finally:
        daemon.stop()
        lis.stop()
    assert junk_answer == b"", "junk outside MLLP blocks gets no answer"
    answer = bytes(end_watch.data)
    assert answer.startswith(VT) and b"MSA|AE|" in answer, f"the oversized block gets an AE: {answer[:200]!r}"
    assert cut_off and sent < 20 * MB, "the daemon cut the connection off before taking 20 MB"
    assert growth_mb < 16, f"peak memory grew by {growth_mb:.1f} MB for an endless HL7 block"
    assert after == "AA", "the port keeps serving"


def test_a_result_without_a_status_is_answered_and_left_visible(tmp_path: Path, lab: MakeLab) -> None:
    """An R record with an empty R-9 (many analyzers leave it blank): the final frame gets ACK or NAK, the
    connection is not dropped, and the message is stored and audited (PRODUCT.md guarantees 2 and 5)."""
    _config, port, lis, daemon = _start(tmp_path, lab)
    db = tmp_path / "data" / "labmw.sqlite3"
    try:
        messages_before = len(db_rows(db, "SELECT id FROM messages"))
        peer = AstmPeer(port, timeout=10)
        records = alt_message(specimen="BLANK1", patient="PB", sex="M", birth="19800101", value="85", status="")
        assert peer.enq() == ACK and set(peer.message(records[:-1])) == {ACK}
        final_answer = peer.frame(records[-1])
        peer.close()
        time.sleep(0.5)
        crashed = crashed_connections(daemon)
        stored = db_rows(db, "SELECT id FROM messages")[messages_before:]
        assert daemon.alive()
    finally:
        daemon.stop()
        lis.stop()
    assert final_answer in (ACK, NAK), f"the final frame must be answered; got {final_answer!r} (connection dropped)"
    assert crashed == [], crashed[:2]
    assert len(stored) == 1, "the message is kept (raw bytes and audit), not lost"

"""Host queries against the real daemon: a scripted analyzer (written from E1381, not from labmw's
engine) sends H/Q/L; labmw must open a new session at once and answer "no order", yielding to the
analyzer whenever both bid (ASTM.md §1.3, §2.8).
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

from peers import ACK, ENQ, EOT, alt_message, astm_frame, configure, daemon, free_port, labmw, wait_until

NAK = b"\x15"
QUERY = [rb"H|\^&|||cobas-e411^1|||||host|TSREQ^REAL|P|1", b"Q|1|PAT77^^000004^40^0^5^^S1^SC||ALL||||||||O",
         b"L|1|N"]  # fmt: skip
FRAME = re.compile(rb"\x02([0-7])([^\x02]*?)([\x03\x17])([0-9A-F]{2})\r\n", re.S)


class Analyzer:
    """A scripted analyzer on a TCP connection: one reply byte or frame at a time, with deadlines."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise AssertionError("labmw closed the connection")
        self.buf += data
        return True

    def read_byte(self, timeout: float = 5.0) -> bytes:
        """The next byte from labmw; fails if none comes within ``timeout`` seconds."""
        if not self.buf and not self._fill(timeout):
            raise AssertionError(f"nothing from labmw within {timeout} s")
        byte, self.buf = self.buf[:1], self.buf[1:]
        return byte

    def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes, bool]:
        """The next whole frame: (FN, text, final); its checksum is checked here, from the standard."""
        deadline = time.monotonic() + timeout
        while (match := FRAME.match(self.buf)) is None:
            if self.buf and self.buf[:1] != b"\x02":
                raise AssertionError(f"expected a frame, got {self.buf[:20]!r}")
            if not self._fill(max(0.01, deadline - time.monotonic())) and time.monotonic() >= deadline:
                raise AssertionError(f"no whole frame within {timeout} s: {self.buf[:40]!r}")
        body = match.group(1) + match.group(2) + match.group(3)
        assert match.group(4) == b"%02X" % (sum(body) % 256), "checksum"
        self.buf = self.buf[match.end() :]
        return int(match.group(1)), match.group(2), match.group(3) == b"\x03"

    def quiet(self, seconds: float) -> bytes:
        """Whatever labmw writes within ``seconds`` (expected: nothing)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._fill(max(0.01, deadline - time.monotonic()))
        data, self.buf = self.buf, b""
        return data

    def send_session(self, records: list[bytes], *, enq: bool = True) -> None:
        """ENQ (unless already sent), one record per frame, each ACKed, then EOT."""
        if enq:
            self.sock.sendall(ENQ)
        assert self.read_byte() == ACK
        for fn, record in enumerate(records, start=1):
            self.sock.sendall(astm_frame(fn, record + b"\r"))
            assert self.read_byte() == ACK
        self.sock.sendall(EOT)

    def receive_session(self, *, nak_first_frame: bool = False) -> tuple[bytes, list[bytes]]:
        """After labmw's ENQ: ACK it, ACK every frame (NAK the first once if asked) until EOT.

        Returns the reassembled text and the raw frame texts in order of arrival.
        """
        self.sock.sendall(ACK)
        text, texts, expected = b"", [], 1
        while True:
            if not self.buf and not self._fill(5.0):
                raise AssertionError("labmw stopped in the middle of its session")
            if self.buf[:1] == EOT:
                self.buf = self.buf[1:]
                return text, texts
            fn, piece, _ = self.read_frame()
            texts.append(piece)
            if nak_first_frame and len(texts) == 1:
                self.sock.sendall(NAK)
                continue
            assert fn == expected % 8, f"frame number {fn}, expected {expected % 8}"
            text, expected = text + piece, expected + 1
            self.sock.sendall(ACK)


def _setup(tmp_path: Path, *extra: str) -> tuple[Path, int]:
    port = free_port()
    config = configure(tmp_path, free_port(), free_port())
    labmw(config, "analyzer", "add", "e411", "--protocol", "astm", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{port}", "--map", "ALTL=ALT-T", *extra)
    return config, port


def _audit(config: Path, event: str) -> list[dict]:
    return json.loads(labmw(config, "audit", "list", "--event", event, "--json").stdout)


def test_query_is_answered_no_order_in_a_new_session(tmp_path: Path) -> None:
    """H/Q/L then EOT: within seconds labmw bids, sends H(TSDWN^REPLY) P O(000004, Y) L and ends with EOT.

    With max_frame_text = 16 the reply needs 8 frames, so ETB frames and the FN wrap 7 -> 0 are
    exercised on the wire too.
    """
    config, port = _setup(tmp_path, "--max-frame-text", "16")
    with daemon(config, wait_port=port):
        analyzer = Analyzer(port)
        try:
            analyzer.send_session(QUERY)
            started = time.monotonic()
            assert analyzer.read_byte(timeout=5.0) == ENQ
            assert time.monotonic() - started < 3.0, "the reply must come at once (the e411 cancels at 15 s)"
            text, frames = analyzer.receive_session(nak_first_frame=True)
            assert frames[0] == frames[1], "a NAKed frame is sent again unchanged"
            assert len(frames) - 1 >= 8 and max(len(piece) for piece in frames) == 16  # one was sent twice
            assert analyzer.quiet(0.5) == b""
        finally:
            analyzer.close()
    records = text.split(b"\r")
    assert records[0].startswith(rb"H|\^&|||") and b"|TSDWN^REPLY|P|" in records[0]
    assert records[1] == b"P|1" and records[3] == b"L|1|N" and records[4] == b""
    order = records[2].split(b"|")
    assert order[:4] == [b"O", b"1", b"000004", b"40^0^5^^S1^SC"] and order[25] == b"Y" and len(order) == 26
    (event,) = _audit(config, "host_query_received")
    assert event["specimen"] == "000004" and event["data"]["answer"] == "no order (Y)"
    assert "PAT77" not in json.dumps(event), "the query's patient ID stays out of the audit trail"


def test_contention_the_analyzer_wins(tmp_path: Path) -> None:
    """The analyzer answers labmw's ENQ with its own ENQ: labmw ACKs it, takes the result, then bids again."""
    config, port = _setup(tmp_path)
    with daemon(config, wait_port=port):
        analyzer = Analyzer(port)
        try:
            analyzer.send_session(QUERY)
            assert analyzer.read_byte() == ENQ
            # Both sides bid: the instrument has priority (ASTM.md §1.3).
            analyzer.sock.sendall(ENQ)
            analyzer.send_session(alt_message(specimen="CONT1", patient="PC", sex="F", birth="19700101", value="30"),
                                  enq=False)
            assert analyzer.read_byte(timeout=5.0) == ENQ, "labmw bids again once the analyzer's session ends"
            text, _ = analyzer.receive_session()
        finally:
            analyzer.close()
    assert b"O|1|000004|40^0^5^^S1^SC|" in text
    assert [e["specimen"] for e in _audit(config, "result_received")] == ["CONT1"]


def test_query_mode_ignore_sends_nothing(tmp_path: Path) -> None:
    """With query_mode = ignore the query is stored and audited, and labmw never bids."""
    config, port = _setup(tmp_path, "--query-mode", "ignore")
    with daemon(config, wait_port=port):
        analyzer = Analyzer(port)
        try:
            analyzer.send_session(QUERY)
            assert analyzer.quiet(1.5) == b""
        finally:
            analyzer.close()
    (event,) = _audit(config, "host_query_received")
    assert event["data"]["answer"] == "none: query_mode is ignore"


def test_short_frame_timeout_discards_a_half_open_transfer(tmp_path: Path) -> None:
    """frame_timeout = 1: a transfer that stops after one frame is discarded and audited within seconds."""
    config, port = _setup(tmp_path, "--frame-timeout", "1")
    with daemon(config, wait_port=port):
        analyzer = Analyzer(port)
        try:
            analyzer.sock.sendall(ENQ)
            assert analyzer.read_byte() == ACK
            analyzer.sock.sendall(astm_frame(1, QUERY[0] + b"\r", final=False))
            assert analyzer.read_byte() == ACK
            wait_until(lambda: _audit(config, "transfer_incomplete"), timeout=5.0, what="the discarded transfer")
        finally:
            analyzer.close()
    (event,) = _audit(config, "transfer_incomplete")
    assert event["data"]["reason"] == "timeout"

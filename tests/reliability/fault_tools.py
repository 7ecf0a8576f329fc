"""Tools for fault-injection tests: the daemon as a real process we can SIGKILL, an ASTM analyzer with
frame-by-frame control, a steady analyzer to show other connections keep flowing, a TCP relay that
can hold the daemon's replies, an HL7 analyzer's messages, byte mutation, and readers for the audit
trail, the outbox and the daemon's JSON log.

The ASTM side is written from E1381 (ASTM.md §1): ENQ, one reply byte per ENQ/frame, EOT. The HL7
side frames blocks as MLLP does (VT payload FS CR).
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import tomlkit
from peers import ACK, ENQ, EOT, LABMW, astm_frame, run_cli, wait_until


# --- configuration ----------------------------------------------------------------------------------
#: The ``lab`` fixture (conftest.py): ``lab(lis_port, analyzer_port)`` -> a fresh installation's config file.
MakeLab = Callable[[int, int], Path]


def tune(config: Path, section: str = "lis", **values: Any) -> None:
    """Set keys of one table of the TOML file (e.g. ``retry_initial=0.2``), keeping everything else."""
    doc = tomlkit.parse(config.read_text())
    table: Any = doc
    for part in section.split("."):
        table = table[part]
    for key, value in values.items():
        table[key] = value
    config.write_text(tomlkit.dumps(doc))


def fast_lis(config: Path, **overrides: float) -> None:
    """Short LIS timers so a test sees many retries in seconds (same shape as 1 s doubling to 5 min)."""
    values = {"retry_initial": 0.2, "retry_max": 0.8, "ack_timeout": 2.0, "connect_timeout": 1.0}
    values.update(overrides)
    tune(config, "lis", **values)


# --- the daemon as a process ------------------------------------------------------------------------
class Daemon:
    """`labmw run` as a real process with its JSON log in a file; restartable, killable with SIGKILL.

    ``prefix`` runs it through another command (e.g. ``nsenter`` into a mount namespace).
    """

    def __init__(self, config: Path, port: int | None, log: Path, prefix: Sequence[str] = ()) -> None:
        self.config, self.port, self.log, self.prefix = config, port, log, list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None  # noqa: S101 - test helper misuse, not input validation
        return self.proc.pid

    def start(self) -> Daemon:
        out = self.log.open("ab")
        self.proc = subprocess.Popen([*self.prefix, *LABMW, "--config", str(self.config), "run"], stdout=out,
                                     stderr=subprocess.STDOUT)
        out.close()
        if self.port is not None:
            wait_until(self._listening, what="the daemon to listen")
        return self

    def _listening(self) -> bool:
        if self.alive() is False:
            raise AssertionError(f"daemon exited early with {self.proc.returncode if self.proc else None}:\n"
                                 + self.log.read_text(errors="replace")[-3000:])
        try:
            socket.create_connection(("127.0.0.1", self.port or 0), timeout=0.2).close()
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no final commit, no goodbye."""
        if self.alive():
            assert self.proc is not None  # noqa: S101
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def memory_kb(self, field: str = "VmHWM") -> int:
        """VmHWM (peak resident set) or VmRSS of the process, in kB, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field} not in /proc/{self.pid}/status")

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (anything else, e.g. a traceback, as {"event": "?", "line": ...})."""
        events = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"event": "?", "line": line})
        return events

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running(config: Path, port: int | None, log: Path) -> Iterator[Daemon]:
    """A started Daemon, stopped (SIGTERM) on exit."""
    daemon = Daemon(config, port, log).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def crashed_connections(daemon: Daemon) -> list[dict[str, Any]]:
    """Log events that mean an untyped exception escaped a connection handler or a task."""
    bad = ("analyzer_connection_crashed", "Task exception was never retrieved", "Traceback")
    return [e for e in daemon.log_events() if any(b in json.dumps(e) for b in bad)]


# --- reading the store (read-only queries next to the running daemon: WAL allows it) ----------------
class RowSource(Protocol):
    """A database reachable some other way than by its path (see ``mount_faults.NamespacedDb``)."""

    def rows(self, sql: str, args: Sequence[object]) -> list[dict[str, Any]]: ...


def db_rows(db: Path | RowSource, sql: str, *args: object) -> list[Any]:
    """Rows (sqlite3.Row, or dicts from a RowSource) of a read-only query."""
    if not isinstance(db, Path):
        return db.rows(sql, args)
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def audit_events(db: Path | RowSource, event: str | None = None,
                 specimen: str | None = None) -> list[dict[str, Any]]:
    """Audit rows (data decoded), oldest first; for polling, where running the CLI each time is slow."""
    sql, args = "SELECT * FROM audit WHERE 1=1", []
    if event is not None:
        sql += " AND event = ?"
        args.append(event)
    if specimen is not None:
        sql += " AND specimen = ?"
        args.append(specimen)
    return [{**dict(r), "data": json.loads(r["data"])} for r in db_rows(db, sql + " ORDER BY seq", *args)]


def outbox(db: Path | RowSource) -> list[dict[str, Any]]:
    """Every outbox entry with its result's specimen, in queue order."""
    return [dict(r) for r in db_rows(db, "SELECT o.id, o.control_id, o.state, o.attempts, o.last_error, r.specimen"
                                         " FROM outbox o JOIN results r ON r.id = o.result_id ORDER BY o.id")]


def cli_json(config: Path, *args: str, prefix: Sequence[str] = ()) -> Any:
    """Run ``labmw ARGS --json`` and return the parsed output."""
    argv = ["--config", str(config), *args, "--json"]
    proc = (subprocess.run([*prefix, *LABMW, *argv], capture_output=True, text=True, timeout=60) if prefix
            else run_cli(argv))
    if proc.returncode != 0:
        raise AssertionError(f"labmw {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return json.loads(proc.stdout)


# --- an ASTM analyzer with frame-by-frame control ---------------------------------------------------
class AstmPeer:
    """One TCP connection to a labmw ASTM listener, driven one step at a time."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.fn = 1

    def reply(self, timeout: float | None = None) -> bytes:
        """The next reply byte (b"" when the connection closed)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            return b""

    def enq(self) -> bytes:
        self.sock.sendall(ENQ)
        return self.reply()

    def frame(self, record: bytes, *, final: bool = True, wait: bool = True) -> bytes:
        """Send ``record`` (CR added) as the next frame; return the reply unless ``wait`` is False."""
        self.sock.sendall(astm_frame(self.fn, record + b"\r", final=final))
        self.fn += 1
        return self.reply() if wait else b""

    def message(self, records: Sequence[bytes]) -> list[bytes]:
        """Every record as one end frame; the replies."""
        return [self.frame(r) for r in records]

    def eot(self) -> None:
        self.sock.sendall(EOT)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def send_session(port: int, messages: Sequence[Sequence[bytes]], timeout: float = 10.0) -> None:
    """ENQ, every message one record per frame, EOT; AssertionError unless every reply is ACK."""
    peer = AstmPeer(port, timeout)
    try:
        assert peer.enq() == ACK  # noqa: S101 - a test helper's check
        for records in messages:
            replies = peer.message(records)
            if set(replies) != {ACK}:
                raise AssertionError(f"expected only ACKs, got {replies}")
        peer.eot()
    finally:
        peer.close()


class SteadyAnalyzer:
    """A well-behaved analyzer on its own thread: one message every ``interval`` seconds while others
    misbehave; records the slowest reply, so a test can show every other connection kept flowing."""

    def __init__(self, port: int, tag: str, count: int, interval: float = 0.2) -> None:
        self.port, self.tag, self.count, self.interval = port, tag, count, interval
        self.sent: list[str] = []
        self.slowest = 0.0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SteadyAnalyzer:
        self._thread.start()
        return self

    def join(self, timeout: float = 120) -> SteadyAnalyzer:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the steady analyzer did not finish")
        if self.error is not None:
            raise AssertionError(f"the steady analyzer failed: {self.error!r}")
        return self

    def _run(self) -> None:
        from peers import alt_message

        try:
            for i in range(self.count):
                specimen = f"{self.tag}{i}"
                peer = AstmPeer(self.port, timeout=10)
                try:
                    for step in [None, *alt_message(specimen=specimen, patient="PS", sex="M", birth="19800101",
                                                     value="50")]:
                        begun = time.monotonic()
                        reply = peer.enq() if step is None else peer.frame(step)
                        self.slowest = max(self.slowest, time.monotonic() - begun)
                        if reply != ACK:
                            raise AssertionError(f"{specimen}: got {reply!r}")
                    peer.eot()
                finally:
                    peer.close()
                self.sent.append(specimen)
                time.sleep(self.interval)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc


# --- a TCP relay between analyzer and daemon --------------------------------------------------------
class Relay:
    """Forwards one analyzer connection to the daemon; while ``hold`` is set, the daemon's replies are
    kept here instead of reaching the analyzer (an ACK lost on the way)."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.hold = threading.Event()
        self.held = bytearray()
        self._client: socket.socket | None = None
        self._upstream: socket.socket | None = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        self._client, self._upstream = client, upstream
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if replies and self.hold.is_set():
                    self.held += data
                else:
                    dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        """Break both sides (what the analyzer sees when the daemon's host vanishes)."""
        for sock in (self._client, self._upstream, self.listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


# --- hostile bytes ---------------------------------------------------------------------------------
SPECIAL = b"\x02\x03\x04\x05\x06\x15\x17\r\n|^\\&L"


def mutate(rng: random.Random, data: bytes, edits: int) -> bytes:
    """``data`` with ``edits`` random insertions, deletions, replacements and duplicated spans."""
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out) + 1)
        op = rng.choice(("insert", "delete", "replace", "duplicate"))
        byte = rng.choice(SPECIAL) if rng.random() < 0.5 else rng.randrange(256)
        if op == "insert":
            out[at:at] = bytes([byte])
        elif op == "delete":
            del out[at : at + rng.randint(1, 8)]
        elif op == "replace" and at < len(out):
            out[at] = byte
        elif op == "duplicate":
            out[at:at] = out[at : at + rng.randint(1, 200)]
    return bytes(out)


def at_least(count: int, items: list[Any]) -> list[Any] | None:
    """``items`` if there are at least ``count`` of them, else None (for :func:`poll`)."""
    return items if len(items) >= count else None


def poll(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``fn`` until it returns something truthy; return that."""
    box: list[Any] = []

    def ready() -> bool:
        value = fn()
        if value:
            box.append(value)
            return True
        return False

    wait_until(ready, timeout=timeout, what=what)
    return box[0]


# --- an HL7 analyzer ----------------------------------------------------------------------------------
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def add_hl7_analyzer(config: Path, port: int, name: str = "mx") -> None:
    """Configure an HL7 analyzer listening on ``port`` whose OBX-3 code ALT maps to ALT-T."""
    tune(config, "analyzers", **{name: {"protocol": "hl7", "transport": "tcp-server", "listen": f"127.0.0.1:{port}",
                                        "map": {"ALT": "ALT-T"}}})


def hl7_oru(control_id: str, specimen: str, value: str = "85") -> bytes:
    """An ORU^R01 v2.5.1 as an analyzer sends it (specimen in SPM-2), no MLLP framing."""
    return ("MSH|^~\\&|MX|LAB|||20261125090000||ORU^R01^ORU_R01|" + control_id + "|P|2.5.1\r"
            "PID|||PT-1||DOE^JOHN||19800101|M\r"
            f"OBR|1||{specimen}|ALT^ALT^L|||20261125080000\r"
            f"OBX|1|NM|ALT^ALT^L||{value}|U/L|||||F\r"
            f"SPM|1|{specimen}&BARCODE\r").encode()


def hl7_exchange(sock: socket.socket, payload: bytes) -> str:
    """Send one MLLP block and return MSA-1 of the answer ("" when the connection closed instead)."""
    sock.sendall(VT + payload + FS + CR)
    buf = b""
    while FS + CR not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return ""
        buf += chunk
    block = buf[buf.index(VT) + 1 : buf.index(FS + CR)].decode("latin-1")
    msa = next(seg for seg in block.split("\r") if seg.startswith("MSA|"))
    return msa.split("|")[1]

"""Real, independent peers for end-to-end tests: an MLLP LIS (python-hl7's asyncio server), an ASTM
sender written here from the standard (not from labmw's code), and the daemon as a real process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
import typer.main
from click.testing import CliRunner

ENQ, ACK, NAK, EOT, STX, ETX, ETB = b"\x05", b"\x06", b"\x15", b"\x04", b"\x02", b"\x03", b"\x17"
LABMW = [str(Path(sys.executable).with_name("labmw"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open while choosing: one at a time may repeat)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class MllpLis:
    """A LIS: python-hl7's asyncio MLLP server on its own thread, ACKing AA and keeping what arrived."""

    def __init__(self, port: int, *, ack_code: str = "AA", ssl: object = None) -> None:
        self.port = port
        self.ack_code = ack_code
        self.ssl = ssl
        self.received: list[hl7.Message] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                message = await reader.readmessage()
                self.received.append(message)
                writer.writemessage(message.create_ack(self.ack_code))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> MllpLis:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            hl7.mllp.start_hl7_server(self._handle, "127.0.0.1", self.port, encoding="utf-8", limit=4 * 2**20,
                                      ssl=self.ssl),
            self._loop)
        self._server = future.result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            # Open connections too (a daemon keeps its LIS link open), so no task dies with the loop.
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def by_specimen(self) -> dict[str, hl7.Message]:
        return {str(m["OBR.F3"]): m for m in list(self.received)}


def astm_frame(fn: int, text: bytes, final: bool = True) -> bytes:
    """E1381 frame built from the standard: checksum = sum(FN..ETX/ETB) mod 256 as two hex digits."""
    body = str(fn % 8).encode() + text + (ETX if final else ETB)
    return STX + body + f"{sum(body) % 256:02X}".encode() + b"\r\n"


def astm_send(port: int, messages: Sequence[Sequence[bytes]], *, timeout: float = 10.0) -> list[bytes]:
    """Play one ENQ..EOT session carrying ``messages`` (each a list of records) one record per frame.

    Returns the reply byte to every ENQ/frame. Raises AssertionError on anything but ACK.
    """
    replies: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        def exchange(data: bytes) -> bytes:
            sock.sendall(data)
            reply = sock.recv(1)
            replies.append(reply)
            if reply != ACK:
                raise AssertionError(f"expected ACK, got {reply!r} for {data[:40]!r}")
            return reply

        exchange(ENQ)
        fn = 1
        for records in messages:
            for record in records:
                exchange(astm_frame(fn, record + b"\r"))
                fn += 1
        sock.sendall(EOT)
    return replies


def alt_message(*, specimen: str, patient: str, sex: str, birth: str, value: str, code: str = "ALTL",
                status: str = "F", collected: str = "20261125080000") -> list[bytes]:
    """A cobas-style H/P/O/R/L message carrying one ALT result."""
    return [
        rb"H|\^&|||c501^1|||||host|RSUPL^REAL|P|1",
        f"P|1||{patient}||DOE^JANE||{birth}|{sex}".encode(),
        f"O|1|{specimen}|0^5001^1^^S1^SC|^^^{code}|R||{collected}||||N||||1||||||||||F".encode(),
        f"R|1|^^^{code}|{value}|U/L||N||{status}||^System||20261125090000|P1".encode(),
        b"L|1|N",
    ]


# Commands that serve until stopped, or whose point is a process of their own: always the console script.
OWN_PROCESS = frozenset({"run", "web"})
_cli: Any = None


def cli_command() -> Any:
    """The `labmw` CLI as one Click command, built once (Typer builds it anew on every call of the app)."""
    global _cli
    if _cli is None:
        from labmw.cli import app

        _cli = typer.main.get_command(app)
    return _cli


def run_cli(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The `labmw` CLI's own Click command, run in this process; the answer shaped like the process's.

    The same code path as the console script (``labmw.cli:main`` only calls the app), without a
    Python start-up and an import of every command per call: the suite runs about 400 of them.
    An exception the CLI let escape is a traceback on stderr and exit status 1, as in a process.
    """
    result = CliRunner().invoke(cli_command(), list(argv), input=input, prog_name="labmw", catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess([*LABMW, *argv], result.exit_code, result.stdout, stderr)


def labmw(config: Path, *args: str, check: bool = True, process: bool = False,
          input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a `labmw` command (``input`` on its stdin): in this process (:func:`run_cli`), or the real
    console script when ``process`` is set or the command is one of :data:`OWN_PROCESS`."""
    argv = ["--config", str(config), *args]
    if process or (args and args[0] in OWN_PROCESS):
        proc = subprocess.run([*LABMW, *argv], capture_output=True, text=True, timeout=60, input=input)
    else:
        proc = run_cli(argv, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"labmw {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextmanager
def daemon(config: Path, wait_port: int | None = None, log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`labmw run` as a real process; yields it; SIGTERM on exit (if still running)."""
    out = open(log or os.devnull, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([*LABMW, "--config", str(config), "run"], stdout=out, stderr=subprocess.STDOUT)
    try:
        if wait_port is not None:
            def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"daemon exited early with {proc.returncode}")
                return listening(wait_port)
            wait_until(up, what="daemon to listen")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()


def configure(tmp_path: Path, lis_port: int, analyzer_port: int, *, protocol: str = "astm", analyzer: str = "c501",
              code: str = "ALTL", unmapped: str | None = None, labmw=labmw) -> Path:  # noqa: ANN001
    """The exact command sequence of issue 2 / the README (an HL7 analyzer with ``protocol="hl7"``).

    ``labmw`` runs one command (default: the console script; a test may pass an in-process runner).
    """
    config = tmp_path / "lab.toml"
    labmw(config, "init", "--data-dir", str(tmp_path / "data"))
    labmw(config, "method", "add", "ALT-T", "--analyte", "ALT", "--units", "U/L", "--loinc", "1743-4",
          "--measuring-range", "5-7000", "--critical-high", "1000")
    labmw(config, "range", "add", "ALT-T", "--sex", "M", "--age-min", "18y", "--low", "9", "--high", "59")
    labmw(config, "range", "add", "ALT-T", "--sex", "F", "--age-min", "18y", "--low", "8", "--high", "41")
    labmw(config, "lis", "set", "--connect", f"127.0.0.1:{lis_port}")
    labmw(config, "analyzer", "add", analyzer, "--protocol", protocol, "--transport", "tcp-server",
          "--listen", f"127.0.0.1:{analyzer_port}", "--map", f"{code}=ALT-T",
          *(("--unmapped", unmapped) if unmapped else ()))
    return config


def field(message: object, segment: str, number: int) -> str:
    """The whole field as sent (python-hl7's accessor strings would give only its first component)."""
    return str(message.segment(segment)[number])  # type: ignore[attr-defined]


def obx8(message: object) -> list[str]:
    """The OBX-8 repetitions that arrived, after the instrument's own flag (N) which must stay first."""
    field_text = field(message, "OBX", 8)
    reps = field_text.split("~") if field_text else []
    assert reps[0] == "N", f"instrument flag must come first and unchanged, got {field_text!r}"
    return reps[1:]

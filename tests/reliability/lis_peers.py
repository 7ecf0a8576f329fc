"""Misbehaving LIS peers on real TCP sockets: an MLLP server whose answer to every ORU is scripted.

Written from the MLLP transport spec (a block is VT payload FS CR, HL7 v2 "Transport Specification:
MLLP" section 2), not from labmw's framer; python-hl7 parses what arrives and builds the ACKs
(original-mode acknowledgement, MSA-2 = the MSH-10 being acknowledged, HL7 v2.5.1 section 2.9.2).

A script is a callable ``(Delivery) -> Answer`` that may change at any time (``lis.script = ...``):

- ``Ack(code)``                        ACK with MSA-1 = code (AA, AE, AR, ...), MSA-2 = its MSH-10
- ``Ack(code, msa2="X")``               ACK whose MSA-2 names some other message
- ``Ack(close=True)``                  ACK, then close the connection (some LIS do after every message)
- ``Ack(byte_delay=0.1)``              ACK trickled out one byte at a time
- ``Silent()``                         read the message and never answer; the connection stays open
- ``Hangup()``                         close the connection without answering
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import hl7

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer with an ACK (see the module docstring)."""

    code: str = "AA"
    msa2: str | None = None
    close: bool = False
    byte_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Silent:
    """Read the message, never answer, keep the connection open."""


@dataclass(frozen=True, slots=True)
class Hangup:
    """Close the connection without answering."""


Answer = Ack | Silent | Hangup


@dataclass(frozen=True, slots=True)
class Delivery:
    """One ORU as it arrived: MSH-10, OBR-3 (specimen), the exact payload bytes and when/where."""

    control_id: str
    specimen: str
    payload: bytes
    at: float  # time.monotonic() on arrival
    connection: int  # 1-based number of the TCP connection it came on
    attempt: int  # how many times this MSH-10 has arrived, this one included


def always(answer: Answer) -> Callable[[Delivery], Answer]:
    """A script giving the same answer to everything."""
    return lambda _delivery: answer


class ScriptedLis:
    """An MLLP LIS on ``127.0.0.1:port``; one thread per connection; keeps every delivery."""

    def __init__(self, port: int, script: Callable[[Delivery], Answer] = always(Ack())) -> None:
        self.port = port
        self.script = script
        self.received: list[Delivery] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> ScriptedLis:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.settimeout(0.1)
        self._listener = listener
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection (the LIS goes down)."""
        self._stop.set()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> ScriptedLis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what arrived --------------------------------------------------------------------------
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self.received)

    def control_ids_by_specimen(self) -> dict[str, set[str]]:
        """Every MSH-10 each specimen arrived under (a set: repeats of one MSH-10 count once)."""
        out: dict[str, set[str]] = {}
        for d in self.deliveries():
            out.setdefault(d.specimen, set()).add(d.control_id)
        return out

    # --- the server ----------------------------------------------------------------------------
    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None  # noqa: S101 - set by start()
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._socks.append(conn)
            self._spawn(self._serve, conn, number)

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        try:
            while not self._stop.is_set():
                start = buf.find(VT)
                end = buf.find(FS + CR, start + 1) if start >= 0 else -1
                if end < 0:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                    continue
                payload, buf = buf[start + 1 : end], buf[end + 2 :]
                if not self._answer(conn, number, payload):
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _answer(self, conn: socket.socket, number: int, payload: bytes) -> bool:
        """Record one message and act on the script; False when the connection is to end."""
        message = hl7.parse(payload.decode("utf-8"))
        control_id = str(message["MSH.F10"])
        with self._lock:
            attempt = 1 + sum(1 for d in self.received if d.control_id == control_id)
            delivery = Delivery(control_id=control_id, specimen=str(message["OBR.F3"]), payload=payload,
                                at=time.monotonic(), connection=number, attempt=attempt)
            self.received.append(delivery)
        answer = self.script(delivery)
        if isinstance(answer, Hangup):
            return False
        if isinstance(answer, Silent):
            return True
        ack = message.create_ack(answer.code, message_id=f"LIS{len(self.received)}")
        if answer.msa2 is not None:
            ack["MSA.F2"] = answer.msa2
        block = VT + str(ack).encode("utf-8") + FS + CR
        if answer.byte_delay:
            for i in range(len(block)):
                if self._stop.wait(answer.byte_delay):
                    return False
                conn.sendall(block[i : i + 1])
        else:
            conn.sendall(block)
        return not answer.close

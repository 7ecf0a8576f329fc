"""The bench process's peers: ASTM analyzers sending results and an MLLP LIS ACKing them (asyncio).

Both are written from the standards, not from labmw's code, and kept lean on purpose: they share
the bench process and its CPU with each other, so every microsecond spent here is a microsecond the
measurement could wrongly charge to labmw.

- Analyzer: one TCP connection per analyzer, one E1381 session (ENQ, one frame per record, EOT) per
  message, waiting for the receiver's ACK after every ENQ and frame (E1381 §6; ASTM.md §1.3-1.8).
- LIS: MLLP (VT payload FS CR, HL7 v2.5.1 appendix C) with an original-mode AA acknowledgement whose
  MSA-2 echoes MSH-10 (HL7 v2.5.1 §2.9.2). It reads MSH-10 and OBR-3 by splitting fields, which is
  what a LIS needs to file a result; it does not build a parse tree of every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

ENQ, ACK, NAK, EOT, STX, ETX = b"\x05", b"\x06", b"\x15", b"\x04", b"\x02", b"\x03"
VT, FS, CR = b"\x0b", b"\x1c", b"\r"

#: A cobas-style liver panel; the bench config maps every code to a judged method (no shortcut path).
PANEL = ("ALTL", "ASTL", "GGT2", "ALP2L")


def astm_frame(fn: int, text: bytes) -> bytes:
    """One E1381 end frame: STX FN text ETX C1 C2 CR LF, checksum = sum(FN..ETX) mod 256 in hex."""
    body = str(fn % 8).encode() + text + ETX
    return STX + body + f"{sum(body) % 256:02X}".encode() + b"\r\n"


def astm_message(*, specimen: str, patient: str, sex: str, birth: str,
                 values: Sequence[tuple[str, str]]) -> list[bytes]:
    """The frames of one H, P, O, R..., L message (one record per frame, FN from 1, as cobas sends)."""
    records = [
        rb"H|\^&|||c501^1|||||host|RSUPL^REAL|P|1",
        f"P|1||{patient}||DOE^JANE||{birth}|{sex}".encode(),
        f"O|1|{specimen}|0^5001^1^^S1^SC|^^^{values[0][0]}|R||20261125080000||||N||||1||||||||||F".encode(),
    ]
    for n, (code, value) in enumerate(values, start=1):
        records.append(f"R|{n}|^^^{code}|{value}|U/L||N||F||^System||20261125090000|P1".encode())
    records.append(b"L|1|N")
    return [astm_frame(fn, record + CR) for fn, record in enumerate(records, start=1)]


def workload(tag: str, count: int, per_message: int) -> list[tuple[str, list[bytes]]]:
    """``count`` messages of ``per_message`` results each, as (specimen ID, frames); IDs unique per tag."""
    out = []
    for i in range(count):
        specimen = f"{tag}-{i}"
        sex = "MF"[i % 2]
        values = [(PANEL[k % len(PANEL)], str(20 + (i * 7 + k * 13) % 90)) for k in range(per_message)]
        if i % 50 == 49:  # now and then a critical value, so the HH path and its NTE are exercised too
            values[0] = (values[0][0], "1250")
        out.append((specimen, astm_message(specimen=specimen, patient=f"P{tag}{i}", sex=sex,
                                           birth=f"19{50 + i % 45}0615", values=values)))
    return out


class ProtocolFailure(Exception):
    """A peer answered something the benchmark did not expect (a NAK, a closed connection)."""


@dataclass
class Analyzer:
    """One analyzer connection; ``sent_final``/``acked_final`` record when each message's last frame went/was ACKed."""

    port: int
    sent_final: dict[str, float] = field(default_factory=dict)
    acked_final: dict[str, float] = field(default_factory=dict)
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)

    def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            raise ProtocolFailure(f"port {self.port}: not connected")
        return self._reader, self._writer

    async def _exchange(self, data: bytes) -> None:
        reader, writer = self._streams()
        writer.write(data)
        reply = await reader.read(1)
        if reply != ACK:
            raise ProtocolFailure(f"port {self.port}: expected ACK, got {reply!r} for {data[:30]!r}")

    async def send(self, specimen: str, frames: Sequence[bytes]) -> None:
        """One session: ENQ, every frame, EOT; raises ProtocolFailure on anything but ACK."""
        await self._exchange(ENQ)
        for frame in frames[:-1]:
            await self._exchange(frame)
        self.sent_final[specimen] = time.perf_counter()
        await self._exchange(frames[-1])
        self.acked_final[specimen] = time.perf_counter()
        self._streams()[1].write(EOT)

    async def send_all(self, messages: Sequence[tuple[str, Sequence[bytes]]]) -> None:
        for specimen, frames in messages:
            await self.send(specimen, frames)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None


def _field(segment: bytes, number: int) -> bytes:
    parts = segment.split(b"|", number + 1)
    return parts[number] if len(parts) > number else b""


def _ack(control_id: bytes) -> bytes:
    stamp = time.strftime("%Y%m%d%H%M%S").encode()
    msh = b"MSH|^~\\&|LIS|LAB|LABMW||" + stamp + b"||ACK^R01^ACK|A" + control_id + b"|P|2.5.1"
    return VT + msh + CR + b"MSA|AA|" + control_id + CR + FS + CR


class Lis:
    """An MLLP LIS on 127.0.0.1: ACKs every block AA and notes when each specimen's result arrived.

    ``expect(n)`` arms a phase: :attr:`done` is set when ``n`` more blocks have arrived, and
    :attr:`last_at` is when the last of them did (its ACK is written in the same step).
    :attr:`gaps` holds, for each block after the phase's first, the time from our previous ACK to it:
    with one message in flight that is the sender's whole turn-around per message.
    """

    def __init__(self) -> None:
        self.port = 0
        self.received = 0
        self.arrivals: dict[str, float] = {}
        self.last_at = 0.0
        self.gaps: list[float] = []
        self.done = asyncio.Event()
        self._target = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Lis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def expect(self, count: int) -> None:
        self._target = self.received + count
        self.gaps = []
        self.last_at = 0.0
        self.done.clear()
        if count <= 0:
            self.done.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                buf += data
                while (end := buf.find(FS + CR)) >= 0:
                    block, buf = buf[buf.find(VT) + 1 : end], buf[end + 2 :]
                    now = time.perf_counter()
                    segments = block.split(CR)
                    writer.write(_ack(_field(segments[0], 9)))
                    for segment in segments:
                        if segment.startswith(b"OBR|"):
                            self.arrivals[_field(segment, 3).split(b"^")[0].decode()] = now
                            break
                    self.received += 1
                    if self.last_at:
                        self.gaps.append(now - self.last_at)
                    self.last_at = now
                    if self.received >= self._target:
                        self.done.set()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        """Stop listening and close the open connections (their handlers then end on EOF)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for _ in range(50):
            if not self._writers:
                break
            await asyncio.sleep(0.01)


async def run_senders(ports: Sequence[int], messages: Sequence[Sequence[tuple[str, Sequence[bytes]]]],
                      lis: Lis, expected: int, timeout: float) -> tuple[float, float, list[Analyzer]]:
    """Connect one analyzer per port, send each its messages at once; return (first ENQ, last LIS arrival, analyzers).

    Raises ProtocolFailure or TimeoutError when the results do not all reach the LIS in ``timeout`` s.
    """
    analyzers = [Analyzer(port) for port in ports]
    await asyncio.gather(*(a.connect() for a in analyzers))
    lis.expect(expected)
    start = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(a.send_all(m) for a, m in zip(analyzers, messages, strict=True))),
                               timeout)
        await asyncio.wait_for(lis.done.wait(), max(1.0, timeout - (time.perf_counter() - start)))
    finally:
        await asyncio.gather(*(a.close() for a in analyzers))
    return start, lis.last_at, analyzers


async def paced(ports: Sequence[int], messages: Sequence[tuple[str, Sequence[bytes]]], rate: float,
                lis: Lis, timeout: float) -> list[Analyzer]:
    """Send ``messages`` round-robin over the analyzers at ``rate`` messages/s on a fixed schedule."""
    analyzers = [Analyzer(port) for port in ports]
    await asyncio.gather(*(a.connect() for a in analyzers))
    lis.expect(len(messages))
    start = time.perf_counter() + 0.05

    async def one(k: int, analyzer: Analyzer) -> None:
        for i in range(k, len(messages), len(analyzers)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await analyzer.send(*messages[i])

    try:
        await asyncio.wait_for(asyncio.gather(*(one(k, a) for k, a in enumerate(analyzers))), timeout)
        await asyncio.wait_for(lis.done.wait(), timeout)
    finally:
        await asyncio.gather(*(a.close() for a in analyzers))
    return analyzers

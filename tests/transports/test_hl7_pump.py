"""The MLLP pump over real loopback sockets: split, merged and junk-separated frames, oversize, stalls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import hl7
import hl7.mllp
from structlog.testing import capture_logs

from labmw.config import AnalyzerSettings
from labmw.transports.hl7_pump import pump_hl7
from labmw.wire.hl7_codec import unaddressed_ack
from labmw.wire.hl7_codec import Ack, build_ack, parse_ack
from labmw.wire.mllp import BlockReceived, MllpFramer, frame

ANALYZER = AnalyzerSettings(name="mx", protocol="hl7", transport="tcp-server", max_message_bytes=2048)
NOW = datetime(2024, 5, 1, 10, 15, tzinfo=UTC)


def oru(control_id: str) -> bytes:
    """A small ORU^R01 with the given MSH-10."""
    return (f"MSH|^~\\&|AN|LAB|LIS||20240501101500||ORU^R01|{control_id}|P|2.5.1\r"
            "PID|||P1\rOBR|1||S1|ALT\rOBX|1|NM|ALT||85|U/L|||||F\r").encode()


class Server:
    """pump_hl7 behind asyncio.start_server on 127.0.0.1:0, with a plain handle that ACKs AA."""

    def __init__(self, handle: Callable[[bytes], Awaitable[bytes]] | None = None, **options: Any) -> None:
        self.received: list[bytes] = []
        self.finished = 0
        self._handle = handle
        self._options = options
        self.server: asyncio.Server | None = None

    async def handle(self, payload: bytes) -> bytes:
        self.received.append(payload)
        if self._handle is not None:
            return await self._handle(payload)
        return build_ack(payload, "AA", control_id="ACK1", now=NOW)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await pump_hl7(reader, writer, analyzer=ANALYZER, handle=self.handle, **self._options)
        finally:
            self.finished += 1
            writer.close()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return await asyncio.open_connection("127.0.0.1", port)


async def read_acks(reader: asyncio.StreamReader, count: int, timeout: float = 5.0) -> list[Ack]:
    """Read MLLP blocks until ``count`` ACKs arrived (our framer, python-hl7 reads them in another test)."""
    framer, acks = MllpFramer(), []
    async with asyncio.timeout(timeout):
        while len(acks) < count:
            data = await reader.read(4096)
            assert data, f"connection closed after {len(acks)} of {count} ACKs"
            acks.extend(parse_ack(e.payload) for e in framer.feed(data) if isinstance(e, BlockReceived))
    return acks


async def closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the server closed the connection (EOF) without sending anything more."""
    async with asyncio.timeout(timeout):
        return await reader.read(4096) == b""


def test_split_frames_are_reassembled_and_acked_in_order() -> None:
    """Frames written a few bytes at a time (FS and CR apart) give one ACK each, in order."""
    async def scenario() -> None:
        async with Server() as server:
            reader, writer = await server.connect()
            stream = frame(oru("M1")) + frame(oru("M2"))
            for start in range(0, len(stream), 7):
                writer.write(stream[start:start + 7])
                await writer.drain()
                await asyncio.sleep(0)
            acks = await read_acks(reader, 2)
            assert [(a.code, a.control_id) for a in acks] == [("AA", "M1"), ("AA", "M2")]
            assert server.received == [oru("M1"), oru("M2")]
            writer.close()

    asyncio.run(scenario())


def test_merged_frames_with_junk_between_them() -> None:
    """Two frames in one write with NUL/LF junk around them: both ACKed in order, junk logged."""
    async def scenario() -> None:
        async with Server() as server:
            reader, writer = await server.connect()
            with capture_logs() as logs:
                writer.write(b"\x00\n" + frame(oru("M1")) + b"\n\x00\x00" + frame(oru("M2")))
                await writer.drain()
                acks = await read_acks(reader, 2)
            assert [a.control_id for a in acks] == ["M1", "M2"]
            junk = [e for e in logs if e["event"] == "hl7_junk_discarded"]
            assert sum(e["count"] for e in junk) == 5
            writer.close()

    asyncio.run(scenario())


def test_one_message_at_a_time_even_when_pipelined() -> None:
    """A pipelined second message is handled only after the first one's handle returned."""
    events: list[str] = []

    async def slow(payload: bytes) -> bytes:
        events.append(f"start {payload[40:60]!r}")
        await asyncio.sleep(0.05)
        events.append("end")
        return build_ack(payload, "AA", control_id="ACK1", now=NOW)

    async def scenario() -> None:
        async with Server(slow) as server:
            reader, writer = await server.connect()
            writer.write(frame(oru("M1")) + frame(oru("M2")) + frame(oru("M3")))
            await writer.drain()
            assert [a.control_id for a in await read_acks(reader, 3)] == ["M1", "M2", "M3"]
            writer.close()

    asyncio.run(scenario())
    assert events[1::2] == ["end"] * 3 and all(e.startswith("start") for e in events[0::2])


def test_oversize_block_gets_ae_and_close_while_another_connection_is_served() -> None:
    """A block over max_message_bytes: AE with empty MSA-2, connection closed; others unaffected."""
    async def scenario() -> None:
        async with Server() as server:
            other_reader, other_writer = await server.connect()
            reader, writer = await server.connect()
            with capture_logs() as logs:
                writer.write(frame(oru("BIG") + b"NTE|1||" + b"x" * 4096 + b"\r"))
                await writer.drain()
                (ack,) = await read_acks(reader, 1)
                assert await closed(reader)
            assert (ack.code, ack.control_id) == ("AE", "")
            assert "larger than 2048 bytes" in ack.text
            assert any(e["event"] == "hl7_message_too_large" for e in logs)
            other_writer.write(frame(oru("M9")))
            await other_writer.drain()
            assert [a.control_id for a in await read_acks(other_reader, 1)] == ["M9"]
            assert server.received == [oru("M9")], "the oversize block never reached handle"
            other_writer.close()
            writer.close()

    asyncio.run(scenario())


def test_empty_ack_sends_nothing_and_keeps_serving() -> None:
    """handle returning b"" (an ACK that must not be ACKed) writes nothing; the next message is ACKed."""
    async def picky(payload: bytes) -> bytes:
        return b"" if b"|ACK^" in payload else build_ack(payload, "AA", control_id="ACK1", now=NOW)

    async def scenario() -> None:
        async with Server(picky) as server:
            reader, writer = await server.connect()
            writer.write(frame(b"MSH|^~\\&|LIS||AN||x||ACK^R01^ACK|7|P|2.5.1\rMSA|AA|M0\r") + frame(oru("M1")))
            await writer.drain()
            (ack,) = await read_acks(reader, 1)
            assert ack.control_id == "M1" and len(server.received) == 2
            writer.close()

    asyncio.run(scenario())


def test_mllp2_commit_reply_block_is_ignored() -> None:
    """A lone ACK (0x06) block of MLLP release 2 is not HL7: logged, not handled, not answered."""
    async def scenario() -> None:
        async with Server() as server:
            reader, writer = await server.connect()
            writer.write(frame(b"\x06") + frame(oru("M1")))
            await writer.drain()
            assert [a.control_id for a in await read_acks(reader, 1)] == ["M1"]
            assert server.received == [oru("M1")]
            writer.close()

    asyncio.run(scenario())


def test_eof_mid_block_ends_the_pump_quietly() -> None:
    """A peer that closes half-way through a block ends the pump; nothing is handled."""
    async def scenario() -> None:
        async with Server() as server:
            _reader, writer = await server.connect()
            with capture_logs() as logs:
                writer.write(frame(oru("M1"))[:30])
                await writer.drain()
                writer.close()
                async with asyncio.timeout(5):
                    while not server.finished:
                        await asyncio.sleep(0.01)
            assert server.received == []
            assert any(e["event"] == "hl7_incomplete_block_dropped" for e in logs)

    asyncio.run(scenario())


def test_stalled_block_times_out_and_closes() -> None:
    """A block that stops arriving half-way is abandoned after block_timeout and the socket closed."""
    async def scenario() -> None:
        async with Server(block_timeout=0.2) as server:
            reader, writer = await server.connect()
            writer.write(frame(oru("M1"))[:30])
            await writer.drain()
            assert await closed(reader)
            assert server.received == []
            writer.close()

    asyncio.run(scenario())


def test_idle_connection_is_kept_unless_an_idle_timeout_is_set() -> None:
    """Without idle_timeout an idle peer stays connected; with one it is closed after that time."""
    async def scenario() -> None:
        async with Server(block_timeout=0.1) as patient, Server(idle_timeout=0.1) as strict:
            reader, writer = await patient.connect()
            await asyncio.sleep(0.3)
            writer.write(frame(oru("M1")))
            assert [a.control_id for a in await read_acks(reader, 1)] == ["M1"]
            strict_reader, strict_writer = await strict.connect()
            assert await closed(strict_reader)
            writer.close()
            strict_writer.close()

    asyncio.run(scenario())


def test_handle_failure_answers_ae_and_keeps_the_connection() -> None:
    """If handle raises, the sender gets AE 207 (it will resend) and the connection keeps serving."""
    calls: list[bytes] = []

    async def broken_once(payload: bytes) -> bytes:
        calls.append(payload)
        if len(calls) == 1:
            raise RuntimeError("store thread died")
        return b"MSH|^~\\&|LABMW||MX||20261125||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|M2\r"

    async def scenario() -> None:
        async with Server(broken_once) as server:
            reader, writer = await server.connect()
            with capture_logs() as logs:
                writer.write(frame(oru("M1")) + frame(oru("M2")))
                await writer.drain()
                first, second = await read_acks(reader, 2)
            assert (first.code, second.code) == ("AE", "AA")
            assert any(e["event"] == "hl7_handle_failed" for e in logs)
            writer.close()

    asyncio.run(scenario())


def test_python_hl7_client_reads_our_acks() -> None:
    """python-hl7's asyncio MLLP client, an independent peer, sends and reads the ACKs."""
    async def scenario() -> None:
        async with Server() as server:
            assert server.server is not None
            port = server.server.sockets[0].getsockname()[1]
            reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port, encoding="utf-8")
            for control_id in ("P1", "P2"):
                writer.writemessage(hl7.parse(oru(control_id).decode()))
                await writer.drain()
                ack = await asyncio.wait_for(reader.readmessage(), 5)
                assert str(ack.segment("MSA")[1]) == "AA" and str(ack.segment("MSA")[2]) == control_id
            writer.close()

    asyncio.run(scenario())


def test_unaddressed_ack_is_a_valid_negative_ack() -> None:
    """The ACK for a block with no readable MSH parses, with MSA-2 empty and the 0357 code in ERR."""
    payload = unaddressed_ack("AE", text="too big", error_code="207", now=NOW)
    ack = parse_ack(payload)
    assert (ack.code, ack.control_id) == ("AE", "")
    assert "too big" in ack.text
    assert b"ERR|||207^" in payload
    assert hl7.parse(payload.decode()).segment("MSH")[12][0] == "2.5.1"

"""Drives one MLLP connection from an analyzer: read -> frame -> handle (commit) -> write the ACK.

One message at a time, in the order received: a pipelining sender's second block waits in the
framer (or in the socket) until the first one's ACK is written (HL7.md 1.1, nugget 10). The ACK
bytes come from ``handle``, which returns only after the message is committed (or failed), so
"persist, then acknowledge" (PRODUCT.md guarantee 1) holds here by construction.

Nothing the peer sends makes this raise: junk between blocks is logged and dropped, an oversized
block gets an AE and the connection is closed (HL7.md 6 "huge messages"), a block that stalls
half-way is abandoned after ``block_timeout``. Logs carry counts and codes, never payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from labmw.config import AnalyzerSettings
from labmw.wire.hl7_codec import unaddressed_ack
from labmw.wire.mllp import BlockReceived, BlockTooLarge, JunkDiscarded, MllpFramer, frame

log = structlog.get_logger(__name__)

# handle(payload) commits one message and returns the ACK to send (b"" = send nothing).
HandleMessage = Callable[[bytes], Awaitable[bytes]]

READ_SIZE = 65536
# MLLP release 2 commit replies (HL7.md 1.1): meaningless from an analyzer, answered by nobody.
_MLLP2_REPLIES = (b"\x06", b"\x15")


async def pump_hl7(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, analyzer: AnalyzerSettings,
                   handle: HandleMessage, block_timeout: float | None = None,
                   idle_timeout: float | None = None) -> str:
    """Serve one analyzer connection until the peer closes it; return how it ended.

    Inputs: the stream pair; the analyzer (``max_message_bytes`` caps a block); ``handle``, awaited
    once per block in order, returning the unframed ACK (``b""``: send nothing). ``block_timeout``:
    seconds a started block may take in all, however it trickles in (a deadline, not an idle timer;
    default the analyzer's ``frame_timeout``), before the connection is dropped; ``idle_timeout``: seconds
    without any byte before closing (None: keep idle connections, analyzers reconnect rarely).
    Raises: nothing for peer input or socket errors. If ``handle`` raises, the error is logged and
    answered AE (ERR-3 207), so the sender will send the message again.
    """
    _keepalive(writer)
    framer = MllpFramer(max_size=analyzer.max_message_bytes)
    block_timeout = analyzer.frame_timeout if block_timeout is None else block_timeout
    loop = asyncio.get_running_loop()
    block_deadline: float | None = None  # set when a block starts, cleared when none is pending
    while True:
        if framer.pending_bytes:
            if block_deadline is None:
                block_deadline = loop.time() + block_timeout
            timeout: float | None = max(0.0, block_deadline - loop.time())
        else:
            block_deadline = None
            timeout = idle_timeout
        try:
            async with asyncio.timeout(timeout):
                data = await reader.read(READ_SIZE)
        except TimeoutError:
            if framer.pending_bytes:
                log.warning("hl7_block_timeout", pending_bytes=framer.pending_bytes, timeout_s=timeout)
                return "block timeout"
            log.info("hl7_idle_timeout", timeout_s=timeout)
            return "idle timeout"
        except OSError as exc:
            log.info("analyzer_connection_error", error=str(exc))
            return f"connection error: {type(exc).__name__}"
        if not data:
            if framer.pending_bytes:
                # The sender gave up mid-block; it was never ACKed, so it will be sent again.
                log.warning("hl7_incomplete_block_dropped", pending_bytes=framer.pending_bytes)
            return "closed by peer"
        for event in framer.feed(data):
            if isinstance(event, JunkDiscarded):
                log.info("hl7_junk_discarded", count=event.count)
            elif isinstance(event, BlockTooLarge):
                log.warning("hl7_message_too_large", size=event.size, limit=analyzer.max_message_bytes)
                text = f"message larger than {analyzer.max_message_bytes} bytes"
                await _send(writer, unaddressed_ack("AE", text=text, error_code="207", now=datetime.now(UTC)))
                return "message too large"  # the tail of the block may still be in flight: resynchronising is guesswork
            elif isinstance(event, BlockReceived):
                if not await _answer(writer, event.payload, handle):
                    return "write failed"


async def _answer(writer: asyncio.StreamWriter, payload: bytes, handle: HandleMessage) -> bool:
    """Handle one block and write its ACK; False when the connection must be closed."""
    if payload in _MLLP2_REPLIES:
        log.info("hl7_mllp2_reply_ignored", byte=payload.hex())
        return True
    try:
        ack = await handle(payload)
    except Exception:
        log.exception("hl7_handle_failed", bytes=len(payload))
        ack = unaddressed_ack("AE", text="message not stored, send it again", error_code="207",
                              now=datetime.now(UTC))
    if not ack:
        return True
    return await _send(writer, ack)


async def _send(writer: asyncio.StreamWriter, ack: bytes) -> bool:
    try:
        writer.write(frame(ack))
        await writer.drain()
    except OSError as exc:
        log.info("analyzer_connection_error", error=str(exc))
        return False
    return True


def _keepalive(writer: asyncio.StreamWriter) -> None:
    # Half-open connections (analyzer powered off) are otherwise never noticed (HL7.md 6).
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

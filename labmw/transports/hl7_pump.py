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
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from labmw.config import AnalyzerSettings
from labmw.wire.hl7_codec import build_ack
from labmw.wire.mllp import BlockReceived, BlockTooLarge, JunkDiscarded, MllpFramer, frame

log = structlog.get_logger(__name__)

# handle(payload) commits one message and returns the ACK to send (b"" = send nothing).
HandleMessage = Callable[[bytes], Awaitable[bytes]]

READ_SIZE = 65536
# MLLP release 2 commit replies (HL7.md 1.1): meaningless from an analyzer, answered by nobody.
_MLLP2_REPLIES = (b"\x06", b"\x15")
# The MSH of a message we could not read: an ACK to it has empty MSH-3..6 and MSA-2 (HL7.md 1.3 #4).
_UNKNOWN_MSH = "|".join(("MSH", "^~\\&", *[""] * 8, "P", "2.5.1")).encode("ascii") + b"\r"


def new_control_id() -> str:
    """A fresh MSH-10 for an ACK we originate (20 characters, the v2.5.1 ST limit of MSH-10)."""
    return "A" + uuid.uuid4().hex[:19]


def unaddressed_ack(code: str, *, text: str, error_code: str, now: datetime, encoding: str = "utf-8") -> bytes:
    """A negative ACK when there is no readable MSH to answer: MSA-2 empty, ERR-3 ``error_code``.

    Inputs: table 0008 ``code`` (AE/AR), MSA-3/ERR-8 ``text``, table 0357 ``error_code``, an aware
    ``now``. Output: the ACK message bytes (no MLLP framing). Raises: nothing for valid codes.
    """
    return build_ack(_UNKNOWN_MSH, code, text=text, error_code=error_code, control_id=new_control_id(), now=now,
                     encoding=encoding)


async def pump_hl7(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, analyzer: AnalyzerSettings,
                   handle: HandleMessage, block_timeout: float | None = None,
                   idle_timeout: float | None = None) -> None:
    """Serve one analyzer connection until the peer closes it (then return).

    Inputs: the stream pair; the analyzer (``max_message_bytes`` caps a block); ``handle``, awaited
    once per block in order, returning the unframed ACK (``b""``: send nothing). ``block_timeout``:
    seconds a started block may take in all, however it trickles in (a deadline, not an idle timer;
    default the analyzer's ``frame_timeout``), before the connection is dropped; ``idle_timeout``: seconds
    without any byte before closing (None: keep idle connections, analyzers reconnect rarely).
    Raises: nothing for peer input or socket errors. If ``handle`` raises, the error is logged and
    the connection closed without an ACK, so the sender will send the message again.
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
            else:
                log.info("hl7_idle_timeout", timeout_s=timeout)
            return
        except OSError as exc:
            log.info("analyzer_connection_error", error=str(exc))
            return
        if not data:
            if framer.pending_bytes:
                # The sender gave up mid-block; it was never ACKed, so it will be sent again.
                log.warning("hl7_incomplete_block_dropped", pending_bytes=framer.pending_bytes)
            return
        for event in framer.feed(data):
            if isinstance(event, JunkDiscarded):
                log.info("hl7_junk_discarded", count=event.count)
            elif isinstance(event, BlockTooLarge):
                log.warning("hl7_message_too_large", size=event.size, limit=analyzer.max_message_bytes)
                text = f"message larger than {analyzer.max_message_bytes} bytes"
                await _send(writer, unaddressed_ack("AE", text=text, error_code="207", now=datetime.now(UTC)))
                return  # the tail of the block may still be in flight: resynchronising is guesswork
            elif isinstance(event, BlockReceived):
                if not await _answer(writer, event.payload, handle):
                    return


async def _answer(writer: asyncio.StreamWriter, payload: bytes, handle: HandleMessage) -> bool:
    """Handle one block and write its ACK; False when the connection must be closed."""
    if payload in _MLLP2_REPLIES:
        log.info("hl7_mllp2_reply_ignored", byte=payload.hex())
        return True
    try:
        ack = await handle(payload)
    except Exception:  # the per-connection boundary (STYLE.md 7.3): no ACK, close, the sender resends
        log.exception("hl7_handle_failed", bytes=len(payload))
        return False
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

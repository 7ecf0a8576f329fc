"""Drives one ASTM link engine from one byte stream (a TCP connection or a serial port).

read -> engine -> pipeline (commit) -> write. The only policy here is the order of the last two:
the engine withholds the ACK of a message's final frame until :meth:`AstmLink.message_committed`,
which we call only after the pipeline's transaction committed. Timers come from the engine.

The engine also sends: the pipeline's answers to host queries go to :meth:`AstmLink.send_message`
once their message is committed, and the engine bids for the link when the analyzer's session ends
(ASTM.md §2.8). Because the sender role writes on timers too (a re-bid after a busy NAK, an EOT after
a timeout), the engine's output is written after every input *and* every timer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from labmw.config import AnalyzerSettings
from labmw.errors import WireError
from labmw.model import Outcome
from labmw.wire.astm_events import (
    AckConfirmed,
    BytesIgnored,
    ContentionYielded,
    DuplicateFrame,
    FrameRefused,
    FrameRejected,
    MessageDiscarded,
    MessageReceived,
    MessageSent,
    SendFailed,
)
from labmw.wire.astm_frames import EOT
from labmw.wire.astm_link import REPEATED_FN_CHANGED, AstmLink

log = structlog.get_logger(__name__)

# handle(text, raw) commits one message; audit_discard(reason, text) records an incomplete transfer.
HandleMessage = Callable[[bytes, bytes], Awaitable[Outcome]]
AuditDiscard = Callable[[str, bytes], Awaitable[None]]
# confirmed(message_id): the analyzer provably received our ACK of that stored message.
Confirmed = Callable[[int], None]

READ_SIZE = 65536
SLICE = 1024  # bytes fed to the engine between two yields to the event loop
PACE_MAX = 0.05  # seconds: the longest pause between two slices of one read
PACE_MIN = 0.002  # seconds: a pause shorter than this is owed until it adds up (timer granularity)


def make_link(analyzer: AnalyzerSettings) -> AstmLink:
    """The link engine for one connection of ``analyzer``, with its profile's link settings."""
    return AstmLink(checksum_policy=analyzer.checksum_policy, max_send_text=analyzer.max_frame_text,
                    frame_timeout=analyzer.frame_timeout)


async def pump_astm(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, analyzer: AnalyzerSettings,
                    handle: HandleMessage, audit_discard: AuditDiscard, stats: dict[str, float] | None = None,
                    confirmed: Confirmed | None = None) -> str:
    """Serve one ASTM link until the peer closes it; return how it ended ("closed by peer", ...).

    Never raises for anything the peer sends.
    """
    loop = asyncio.get_running_loop()
    link = make_link(analyzer)
    stats = stats if stats is not None else {}
    while True:
        deadline = link.get_timer()
        try:
            if deadline is None:
                data = await reader.read(READ_SIZE)
            else:
                # asyncio.timeout_at, not wait_for: wait_for wraps every read in a task of its own.
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(READ_SIZE)
        except TimeoutError:
            link.handle_timer(loop.time())
            await _drain(link, handle, audit_discard, stats, confirmed)
            await _write(link, writer)
            continue
        except OSError as exc:
            log.info("analyzer_connection_error", error=str(exc))
            data, ended = b"", f"connection error: {type(exc).__name__}"
        else:
            ended = "closed by peer"
        if not data:
            # The connection is gone: for the receiver this ends the transfer like an EOT, so a
            # partial message is discarded and audited rather than silently lost. A transfer of
            # ours cannot go on either: what is queued is lost with the connection.
            # (That EOT is ours, not the peer's: it confirms no ACK.)
            if link.state in ("RECEIVING", "REJECTING"):
                link.receive_data(EOT, loop.time())
                await _drain(link, handle, audit_discard, stats, None)
            for text in link.pending_messages:
                log.warning("astm_send_failed", reason="connection closed", requeued=False, bytes=len(text))
            return ended
        # In slices, yielding between them: a peer that pipelines thousands of tiny frames into one
        # read must not hold the event loop (every other analyzer, the forwarder) for the whole read.
        # A conforming sender waits for our reply to each frame, so its reads hold one frame; a
        # read of many slices is a pipelining peer, paced to a quarter of the loop's time (it waits
        # three times what its last slice cost) so that it cannot starve the store thread either.
        # The pause is owed, not taken per slice: a timer sleep costs at least the loop's 1 ms clock
        # granularity, so pausing after every cheap slice (junk, an over-long frame being skipped)
        # would read 20 MB in 20 s. Slices that cost little only yield; the pause is taken once owed.
        owed = 0.0
        for start in range(0, len(data), SLICE):
            if start:
                if owed >= PACE_MIN:
                    await asyncio.sleep(min(PACE_MAX, owed))
                    owed = 0.0
                else:
                    await asyncio.sleep(0)
            begun = time.perf_counter()
            try:
                link.receive_data(data[start : start + SLICE], loop.time())
            except WireError as exc:
                log.warning("astm_link_error", error=str(exc))
                return f"link error: {exc}"
            owed += (time.perf_counter() - begun) * 3
            await _drain(link, handle, audit_discard, stats, confirmed)
            await _write(link, writer)


async def _write(link: AstmLink, writer: asyncio.StreamWriter) -> None:
    out = link.data_to_send()
    if out:
        writer.write(out)
        # A write to a peer that reset the connection fails here; the next read then ends the pump.
        try:
            await writer.drain()
        except OSError as exc:
            log.info("analyzer_connection_error", error=str(exc))


async def _drain(link: AstmLink, handle: HandleMessage, audit_discard: AuditDiscard, stats: dict[str, float],
                 confirmed: Confirmed | None) -> None:
    """Process every pending engine event; commit messages before their ACK is released."""
    while True:
        received: list[MessageReceived] = []
        # Repeated frame events (a flood NAKed frame by frame) make one log line with a count.
        repeats: dict[tuple[type, str], int] = {}
        while (event := link.next_event()) is not None:
            if isinstance(event, FrameRejected | DuplicateFrame | BytesIgnored):
                key = (type(event), getattr(event, "reason", "") or getattr(event, "state", ""))
                repeats[key] = repeats.get(key, 0) + 1
                if repeats[key] > 1:
                    continue
            if isinstance(event, MessageReceived):
                received.append(event)
            elif isinstance(event, AckConfirmed):
                if confirmed is not None:
                    confirmed(event.token)
            elif isinstance(event, MessageDiscarded):
                log.warning("astm_transfer_incomplete", reason=event.reason, bytes=len(event.text))
                await audit_discard(event.reason, event.text)
            elif isinstance(event, FrameRejected) and event.reason.startswith(REPEATED_FN_CHANGED):
                # Not a retransmission: a result would be lost if we ACKed it, so NAK and audit it.
                _log_event(event)
                await audit_discard(event.reason, b"")
            else:
                _log_event(event)
        for (kind, detail), count in repeats.items():
            if count > 1:
                log.warning("astm_frame_events_repeated", kind=kind.__name__, detail=detail, count=count)
        if not received:
            return
        replies: list[bytes] = []
        refused, last_id = "", 0
        for message in received:
            try:
                outcome = await handle(message.text, message.raw)
            except Exception as exc:
                log.exception("astm_handle_failed", bytes=len(message.raw))
                outcome = Outcome(stored=False, rejected_reason=f"{type(exc).__name__}: {exc}")
            if not outcome.stored:
                refused = outcome.rejected_reason or "not stored"
                break
            replies += outcome.replies
            stats["messages"] = stats.get("messages", 0) + 1
            stats["results"] = stats.get("results", 0) + outcome.results
            last_id = outcome.message_id
            log.info("astm_message_stored", message_id=outcome.message_id, results=outcome.results,
                     queued=outcome.queued, held=outcome.held, problems=outcome.problems,
                     replies=len(outcome.replies), duplicate=outcome.duplicate)
        if refused:
            # Not durable, so not acknowledged: the NAK makes the analyzer send the frame again.
            # Replies to messages stored before the failure are dropped with them: the analyzer
            # repeats those messages, and their queries, after the NAK.
            log.error("astm_message_not_stored", error=refused)
            link.message_failed(refused)
        else:
            # ACK first, then queue the replies: they go out once the analyzer's session ends.
            link.message_committed(token=last_id)
            for reply in replies:
                link.send_message(reply, now=asyncio.get_running_loop().time())
        # Committing may release buffered bytes that produce further events: loop.


def _log_event(event: object) -> None:
    """Log one engine event that needs no action (counts and codes only, never payloads)."""
    if isinstance(event, FrameRejected):
        log.warning("astm_frame_rejected", reason=event.reason, fn=event.fn)
    elif isinstance(event, DuplicateFrame):
        log.info("astm_duplicate_frame", fn=event.fn)
    elif isinstance(event, BytesIgnored):
        log.debug("astm_bytes_ignored", count=event.count, state=event.state)
    elif isinstance(event, MessageSent):
        log.info("astm_reply_sent", bytes=len(event.text))
    elif isinstance(event, SendFailed):
        log.warning("astm_send_failed", reason=event.reason, requeued=event.requeued, bytes=len(event.text))
    elif isinstance(event, FrameRefused):
        log.info("astm_frame_refused", fn=event.fn, reply=event.reply)
    elif isinstance(event, ContentionYielded):
        log.info("astm_contention_yielded")

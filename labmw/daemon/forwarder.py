"""The outbox worker: sends queued ORU^R01 messages to the LIS over MLLP, one in flight at a time.

Order matters to a LIS (a correction must not overtake the original), so the head of the queue is
retried until it is acknowledged or rejected; nothing behind it jumps ahead. Each entry is sent
with the same bytes and MSH-10 on every attempt, so a LIS can recognise a repeat.

- AA/CA with MSA-2 == our MSH-10: delivered.
- AE/AR/CE/CR: dead letter (visible in ``labmw queue list``); one ``alert_raised`` per episode of
  rejections, not one per message (HL7.md §4.3, Mirth #6313).
- no connection, a closed connection, no matching ACK before the deadline: retry with
  exponential backoff (``retry_initial`` doubling up to ``retry_max``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

import structlog

from labmw.config import LisSettings
from labmw.transports.tls import client_context
from labmw.daemon.pipeline import utcnow
from labmw.daemon.runner import StoreRunner
from labmw.errors import CodecError, ForwardError
from labmw.store import OutboxEntry
from labmw.wire.hl7_codec import Ack, parse_ack
from labmw.wire.mllp import BlockReceived, BlockTooLarge, MllpFramer, frame

log = structlog.get_logger(__name__)

ACCEPTED = ("AA", "CA")
POLL_INTERVAL = 1.0  # seconds between outbox checks when idle


class ConnectionClosed(ForwardError):
    """The LIS closed or reset the connection (as opposed to staying silent)."""

REJECTED = ("AE", "AR", "CE", "CR")


class LisConnection:
    """One MLLP connection to the LIS; reads a whole ACK block before a deadline."""

    def __init__(self, settings: LisSettings) -> None:
        self.settings = settings
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = MllpFramer(max_size=1024 * 1024)
        self._blocks: list[bytes] = []

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing() and not (
            self._reader is not None and self._reader.at_eof())

    async def open(self) -> None:
        endpoint = self.settings.connect
        tls = self.settings.tls
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(endpoint.host, endpoint.port, ssl=client_context(tls) if tls else None,
                                        server_hostname=(tls.server_name or endpoint.host) if tls else None),
                self.settings.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ForwardError(f"cannot connect to LIS {endpoint}: {exc or 'timeout'}") from None
        self._framer = MllpFramer(max_size=1024 * 1024)
        self._blocks = []
        log.info("lis_connected", lis=str(endpoint))

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def exchange(self, entry: OutboxEntry) -> Ack:
        """Send one message and wait for the ACK whose MSA-2 is its MSH-10.

        ACKs for other control IDs (late answers to an earlier attempt) are skipped. The whole ACK
        must arrive before ``ack_timeout`` (a deadline, not an idle timer: HL7.md §1.5).

        Raises:
            ForwardError: connection lost, deadline passed, or an unreadable answer.
        """
        if self._writer is None or self._reader is None:
            raise ForwardError("not connected")
        try:
            self._writer.write(frame(entry.payload))
            await self._writer.drain()
        except OSError as exc:
            raise ConnectionClosed(f"LIS connection lost while sending: {exc}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.ack_timeout
        while True:
            while self._blocks:
                block = self._blocks.pop(0)
                try:
                    ack = parse_ack(block)
                except CodecError as exc:
                    log.warning("lis_answer_unreadable", error=str(exc))
                    continue
                if ack.control_id == entry.control_id:
                    return ack
                log.warning("lis_ack_mismatched", expected=entry.control_id, received=ack.control_id)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ForwardError(f"no ACK for {entry.control_id} within {self.settings.ack_timeout:g} s")
            try:
                data = await asyncio.wait_for(self._reader.read(65536), remaining)
            except TimeoutError:
                raise ForwardError(f"no ACK for {entry.control_id} within {self.settings.ack_timeout:g} s") from None
            except OSError as exc:
                raise ConnectionClosed(f"LIS connection lost while waiting for the ACK: {exc}") from None
            if not data:
                raise ConnectionClosed("LIS closed the connection before acknowledging")
            for event in self._framer.feed(data):
                if isinstance(event, BlockReceived):
                    self._blocks.append(event.payload)
                elif isinstance(event, BlockTooLarge):
                    log.warning("lis_answer_too_large", size=event.size)


class Forwarder:
    """Drains the outbox to the LIS until cancelled."""

    def __init__(self, settings: LisSettings, runner: StoreRunner, wake: asyncio.Event, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.runner = runner
        self.wake = wake
        self.clock = clock
        self.connection = LisConnection(settings)
        self._backoff = settings.retry_initial
        self._rejecting = False  # inside an episode of LIS rejections (one alert per episode)
        self.link_state = "idle"
        self.last_error = ""

    async def run(self) -> None:
        try:
            while True:
                entry = await self.runner.call(self.runner.store.next_pending)
                if entry is None:
                    self.wake.clear()
                    # Re-check after clearing so an enqueue between the two calls is not missed.
                    entry = await self.runner.call(self.runner.store.next_pending)
                    if entry is None:
                        # The CLI (review release, queue retry) enqueues from another process:
                        # poll as well as wait for the in-process wake-up.
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.wake.wait(), POLL_INTERVAL)
                        continue
                await self.deliver(entry)
        finally:
            await self.connection.close()

    async def deliver(self, entry: OutboxEntry) -> None:
        """One attempt at the head of the queue, with its bookkeeping and any backoff sleep."""
        try:
            ack = await self._attempt(entry)
        except ForwardError as exc:
            self.link_state = "down"
            self.last_error = str(exc)
            await self.connection.close()
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self.settings.retry_max)
            log.warning("lis_delivery_failed", control_id=entry.control_id, error=str(exc), retry_in_s=delay)
            await self.runner.call(self.runner.store.mark_attempt_failed, entry, now=self.clock(), error=str(exc),
                                   retry_in=delay)
            await asyncio.sleep(delay)
            return
        self.link_state = "up"
        self.last_error = ""
        self._backoff = self.settings.retry_initial
        if ack.code in ACCEPTED:
            self._rejecting = False
            await self.runner.call(self.runner.store.mark_delivered, entry, now=self.clock(), ack_code=ack.code,
                                   ack_text=ack.text)
            log.info("result_delivered", control_id=entry.control_id, ack=ack.code)
        else:
            reason = f"LIS answered {ack.code}" + (f": {ack.text}" if ack.text else "")
            await self.runner.call(self.runner.store.mark_dead, entry, now=self.clock(), reason=reason,
                                   alert=not self._rejecting)
            self._rejecting = True
            log.error("result_dead_lettered", control_id=entry.control_id, ack=ack.code)

    async def _attempt(self, entry: OutboxEntry) -> Ack:
        reused = self.connection.connected
        if not reused:
            await self.connection.open()
        try:
            return await self.connection.exchange(entry)
        except ConnectionClosed:
            if not reused:
                raise
        # A kept-open connection may have been closed by the LIS since the last ACK (some close
        # after every message): one immediate retry on a fresh connection before backing off.
        await self.connection.close()
        await self.connection.open()
        return await self.connection.exchange(entry)

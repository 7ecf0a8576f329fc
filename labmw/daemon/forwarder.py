"""The outbox worker: sends queued ORU^R01 messages to the LIS over MLLP, one in flight at a time.

Order matters to a LIS (a correction must not overtake the original), so the head of the queue is
retried until it is acknowledged or rejected; nothing behind it jumps ahead. Each entry is sent
with the same bytes and MSH-10 on every attempt, so a LIS can recognise a repeat.

- AA/CA with MSA-2 == our MSH-10: delivered (codes compared case-insensitively).
- AE/CE: dead letter (visible in ``labmw queue list``); one ``alert_raised`` per episode of
  rejections, not one per message (HL7.md §4.3, Mirth #6313).
- AR/CR ("receiving application unavailable", HL7 v2.5.1 §2.9 table 0008), no connection, a closed
  connection, a LIS that does not take the message or answer before the deadline (one deadline
  for the write and the ACK): retry with exponential backoff (``retry_initial`` doubling up to
  ``retry_max``); after ``head_alert_attempts`` such attempts at the same head, one alert.
- An entry that is not as the audit trail recorded it, or cannot be read as stored: refused,
  dead-lettered with the reason and an alert; never sent, and the queue goes on behind it.
- Deliveries the store cannot record (a full disk): nothing more is sent until they are recorded
  (backoff, one alert), so no accepted result is sent again while the daemon runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import structlog

from labmw.config import LisSettings
from labmw.daemon.pipeline import utcnow
from labmw.daemon.runner import StoreRunner
from labmw.errors import CodecError, ForwardError, StoreError
from labmw.store import OutboxEntry
from labmw.transports.tls import client_context
from labmw.wire.hl7_codec import Ack, parse_ack
from labmw.wire.mllp import BlockReceived, BlockTooLarge, MllpFramer, frame

log = structlog.get_logger(__name__)

ACCEPTED = ("AA", "CA")
UNAVAILABLE = ("AR", "CR")  # the LIS application is not available: try again later
POLL_INTERVAL = 1.0  # seconds between outbox checks when idle
BATCH = 64  # outbox entries fetched per store call
MARK_BATCH = 16  # deliveries recorded per store job
ERROR_BACKOFF_INITIAL = 1.0
ERROR_BACKOFF_MAX = 30.0


class ConnectionClosed(ForwardError):
    """The LIS closed or reset the connection (as opposed to staying silent)."""

REJECTED = ("AE", "CE")


class LisConnection:
    """One MLLP connection to the LIS; reads a whole ACK block before a deadline."""

    def __init__(self, settings: LisSettings) -> None:
        self.settings = settings
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = MllpFramer(max_size=1024 * 1024)
        self._blocks: list[bytes] = []
        # Built once (certificate files read at start, a bad one is a start-up error), not per reconnect.
        self._ssl = client_context(settings.tls) if settings.tls else None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing() and not (
            self._reader is not None and self._reader.at_eof())

    async def open(self) -> None:
        endpoint = self.settings.connect
        tls = self.settings.tls
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    endpoint.host, endpoint.port, ssl=self._ssl,
                    server_hostname=(tls.server_name or endpoint.host) if tls else None)
        except (OSError, TimeoutError) as exc:
            raise ForwardError(f"cannot connect to LIS {endpoint}: {exc or 'timeout'}") from None
        self._framer = MllpFramer(max_size=1024 * 1024)
        self._blocks = []
        log.info("lis_connected", lis=str(endpoint))

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            if writer.transport.get_write_buffer_size():
                # Unsent bytes (a LIS that stopped reading): a graceful close would wait for them.
                writer.transport.abort()
            else:
                writer.close()
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.ack_timeout
        try:
            self._writer.write(frame(entry.payload))
            # drain() inside the deadline: a LIS that stops reading must not hold the queue forever.
            async with asyncio.timeout_at(deadline):
                await self._writer.drain()
        except TimeoutError:
            raise ForwardError(f"LIS did not take {entry.control_id} within {self.settings.ack_timeout:g} s"
                               " (not reading)") from None
        except OSError as exc:
            raise ConnectionClosed(f"LIS connection lost while sending: {exc}") from None
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
                async with asyncio.timeout(remaining):
                    data = await self._reader.read(65536)
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
    """Drains the outbox to the LIS until stopped. Nothing that happens to one message, the LIS or
    the store ends this worker: errors are logged, counted and retried with backoff."""

    def __init__(self, settings: LisSettings, runner: StoreRunner, wake: asyncio.Event, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.runner = runner
        self.wake = wake
        self.clock = clock
        self.connection = LisConnection(settings)
        self._backoff = settings.retry_initial
        self._rejecting = False  # inside an episode of LIS rejections (one alert per episode)
        self._stopping = False
        self._after_id = 0  # entries up to this id were sent in this run (their marks may be in flight)
        self._rescan_at = 0.0  # (loop time) when the queue is next looked at from its start
        self._marks: set[asyncio.Future[None]] = set()
        self._delivered: list[tuple[OutboxEntry, str, str]] = []  # accepted, not yet handed to the store
        # Accepted by the LIS, but the store failed to record it: held here (never resent) until recorded.
        self._unrecorded: list[tuple[OutboxEntry, str, str]] = []
        self._unrecorded_alerted = False
        self._head_alerted = 0  # outbox id of the head whose unacknowledged attempts were alerted
        self._retry_now_seen: str | None = None
        self.link_state = "idle"
        self.last_error = ""

    def stop(self) -> None:
        """Finish the exchange in hand, then return from :meth:`run`."""
        self._stopping = True
        self.wake.set()

    async def run(self) -> None:
        error_delay = ERROR_BACKOFF_INITIAL
        try:
            while not self._stopping:
                try:
                    await self._drain_once()
                    error_delay = ERROR_BACKOFF_INITIAL
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 (store full or failing, or a bug: log it, wait, go on)
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("forwarder_error", error=self.last_error, retry_in_s=error_delay)
                    await self.connection.close()
                    await self._sleep(error_delay)
                    error_delay = min(error_delay * 2, ERROR_BACKOFF_MAX)
        finally:
            await self._settle_marks()
            await self.connection.close()

    async def _drain_once(self) -> None:
        """Send a batch of pending entries in id order; when none is left, wait for new ones."""
        if self._after_id == 0:
            # Looking from the start again (first pass, or after a failed attempt): the deliveries
            # recorded so far must be in the store first, or an accepted result would be sent twice.
            await self._settle_marks()
        if self._unrecorded:
            await self._record_unrecorded()
        # The wake-up is cleared before looking: an entry committed after this point wakes the sleep below.
        self.wake.clear()
        batch = await self.runner.call(self.runner.store.pending_after, self._after_id, BATCH)
        if not batch:
            # Nothing newer. Now and then look again from the start: a dead letter put back by
            # `labmw queue retry` keeps its older id, and on PostgreSQL an entry may commit after
            # one with a higher id. Not after every wake-up: at a steady flow that second look
            # (with the wait for the delivery marks it needs) cost as much as the delivery itself.
            now = asyncio.get_running_loop().time()
            if self._after_id and now >= self._rescan_at:
                await self._settle_marks()
                self._after_id = 0
                self._rescan_at = now + POLL_INTERVAL
                batch = await self.runner.call(self.runner.store.pending_after, 0, BATCH)
            if not batch:
                wait = POLL_INTERVAL if not self._after_id else max(0.0, self._rescan_at - now)
                await self._sleep(min(POLL_INTERVAL, wait), wake=True)
                return
        try:
            for entry in batch:
                if self._stopping or self._unrecorded:
                    self._after_id = 0
                    return
                if not await self.deliver(entry):
                    self._after_id = 0  # retry the head next time: order is kept
                    return
                self._after_id = entry.id
        finally:
            self._flush_marks()

    async def _sleep(self, seconds: float, *, wake: bool = False) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (gh-86296),
        # which once left the daemon unable to stop.
        try:
            async with asyncio.timeout(seconds):
                if wake:
                    await self.wake.wait()
                else:
                    while not self._stopping:
                        await asyncio.sleep(min(seconds, 1.0))
        except TimeoutError:
            pass

    async def _settle_marks(self) -> None:
        self._flush_marks()
        if self._marks:
            await asyncio.gather(*self._marks, return_exceptions=True)

    def _flush_marks(self) -> None:
        """Hand the deliveries recorded so far to the store in one job, without waiting for it:
        it rides on the next group commit while the next message is already on its way."""
        items, self._delivered = self._delivered, []
        if not items:
            return
        future = asyncio.ensure_future(self.runner.call_batched(
            self.runner.store.mark_delivered_many, items, now=self.clock()))
        self._marks.add(future)

        def done(f: asyncio.Future[None]) -> None:
            self._marks.discard(f)
            if not f.cancelled() and f.exception() is not None:
                # Still pending in the store: kept here and recorded before anything else is sent
                # (resending them would flood the LIS while the disk is full).
                self._unrecorded.extend(items)
                log.error("delivery_not_recorded", control_ids=[e.control_id for e, _, _ in items],
                          error=str(f.exception()))

        future.add_done_callback(done)

    async def _record_unrecorded(self) -> None:
        """Record the deliveries the store refused earlier; raises (so the caller backs off) while it still refuses."""
        items = list(self._unrecorded)  # more may fail while this runs; they stay for the next turn
        try:
            await self.runner.call(self.runner.store.mark_delivered_many, items, now=self.clock())
        except StoreError as exc:
            if not self._unrecorded_alerted:
                self._unrecorded_alerted = True
                log.error("alert_raised", alert="deliveries_not_recorded", results=len(items), error=str(exc))
            raise ForwardError(f"{len(items)} deliveries accepted by the LIS cannot be recorded, sending stopped:"
                               f" {exc}") from None
        del self._unrecorded[:len(items)]
        if self._unrecorded_alerted:
            self._unrecorded_alerted = False
            log.warning("deliveries_recorded_again", results=len(items))
            await self.runner.call(self.runner.store.append_audit, "alert_raised", now=self.clock(), actor="labmw",
                                   data={"alert": "deliveries_not_recorded", "results": len(items),
                                         "resolved": True})

    async def _failed(self, entry: OutboxEntry, error: str, *, close: bool = True) -> None:
        """An attempt without a usable answer: record it, alert once for a stuck head, back off."""
        self.link_state = "down"
        attempts = entry.attempts + 1
        limit = self.settings.head_alert_attempts
        stuck = limit > 0 and attempts >= limit
        self.last_error = error + (f" (head of the queue {entry.control_id} unacknowledged after {attempts}"
                                   " attempts)" if stuck else "")
        if close:
            await self.connection.close()
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.settings.retry_max)
        log.warning("lis_delivery_failed", control_id=entry.control_id, error=error, retry_in_s=delay)
        await self.runner.call(self.runner.store.mark_attempt_failed, entry, now=self.clock(), error=error,
                               retry_in=delay)
        if stuck and self._head_alerted != entry.id:
            self._head_alerted = entry.id
            log.error("alert_raised", alert="lis_head_unacknowledged", control_id=entry.control_id, attempts=attempts)
            await self.runner.call(self.runner.store.append_audit, "alert_raised", now=self.clock(), actor="labmw",
                                   analyzer=entry.analyzer, ref=entry.control_id,
                                   data={"alert": "lis_head_unacknowledged", "attempts": attempts, "error": error})
        await self._backoff_sleep(delay)

    async def _backoff_sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when `labmw queue retry --now` is asked for meanwhile."""
        store = self.runner.store
        if self._retry_now_seen is None:
            self._retry_now_seen = await self.runner.call(store.retry_now_requested)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self._stopping and (left := end - loop.time()) > 0:
            await self._sleep(min(left, 1.0))
            asked = await self.runner.call(store.retry_now_requested)
            if asked != self._retry_now_seen:
                self._retry_now_seen = asked
                self._backoff = self.settings.retry_initial
                log.info("lis_retry_now")
                return

    async def deliver(self, entry: OutboxEntry) -> bool:
        """One attempt at ``entry``; True when it is settled for now (accepted, rejected or refused)."""
        if entry.problem:
            # Not the message the trail recorded, or not readable as stored: never sent, and the
            # entries behind it go on.
            log.error("delivery_refused", control_id=entry.control_id, outbox_id=entry.id, reason=entry.problem)
            await self.runner.call(self.runner.store.refuse, entry, now=self.clock(), reason=entry.problem)
            return True
        try:
            ack = await self._attempt(entry)
        except ForwardError as exc:
            await self._failed(entry, str(exc))
            return False
        if ack.code in UNAVAILABLE:
            await self._failed(entry, f"LIS answered {ack.code} (application unavailable)"
                               + (f": {ack.text}" if ack.text else ""), close=False)
            return False
        self.link_state = "up"
        self.last_error = ""
        self._backoff = self.settings.retry_initial
        if ack.code in ACCEPTED:
            self._rejecting = False
            self._delivered.append((entry, ack.code, ack.text))
            if len(self._delivered) >= MARK_BATCH:
                self._flush_marks()
            log.debug("result_delivered", control_id=entry.control_id, ack=ack.code)
        else:
            reason = f"LIS answered {ack.code}" + (f": {ack.text}" if ack.text else "")
            await self.runner.call(self.runner.store.mark_dead, entry, now=self.clock(), reason=reason,
                                   alert=not self._rejecting)
            self._rejecting = True
            log.error("delivery_dead_lettered", control_id=entry.control_id, ack=ack.code)
        return True

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

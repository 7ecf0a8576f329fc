"""The one intake boundary both protocols go through: decode -> commit -> answer, total by construction.

For every message a peer completes, :meth:`Intake.receive` returns an :class:`~labmw.model.Outcome`
carrying the answer, and raises nothing:

1. the protocol adapter decodes and maps it off the store thread (on the event loop; a large
   message in a worker thread so that one peer cannot stall the others), and the pipeline judges
   every result and builds its ORU there, reading the history it needs from a read-only snapshot;
2. :meth:`Pipeline.commit` stores it (or its rejection) in one transaction on the store thread;
3. the adapter builds the answer from the outcome.

Any exception in step 1 or 2 that is not a storage failure becomes a stored, audited
``intake_failed`` rejection with the error's type and text and the raw bytes; a storage failure
becomes ``Outcome(stored=False)``, answered NAK / AE 207 so that the peer sends it again. Content
never costs the peer its connection (PRODUCT.md guarantees 1 and 4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

import structlog

from labmw.config import AnalyzerSettings
from labmw.daemon.hl7_adapter import Ignored
from labmw.daemon.pipeline import Decoded, Pipeline, Rejected
from labmw.daemon.runner import StoreRunner
from labmw.errors import StoreError
from labmw.model import Outcome
from labmw.store import History

log = structlog.get_logger(__name__)

# Messages above this size are decoded in a worker thread: their parsing would hold the event loop
# (and every other analyzer, the forwarder and the watchdog) for tens of milliseconds.
OFFLOAD_BYTES = 64 * 1024


class Adapter(Protocol):
    protocol: str

    def decode(self, raw: bytes) -> Decoded | Rejected | Ignored: ...

    def answer(self, item: Any, outcome: Outcome, payload: bytes = b"") -> bytes: ...


class Intake:
    """One analyzer's intake: its adapter, the shared pipeline and store thread, and its link memory."""

    def __init__(self, analyzer: AnalyzerSettings, adapter: Adapter, pipeline: Pipeline, runner: StoreRunner, *,
                 on_refused: Callable[[str, StoreError], None] | None = None,
                 on_stored: Callable[[], Any] | None = None) -> None:
        self.analyzer = analyzer
        self.adapter = adapter
        self.pipeline = pipeline
        self.runner = runner
        self.on_refused = on_refused
        self.on_stored = on_stored
        #: The last message on this link whose final ACK the analyzer provably received (not a resend).
        self.confirmed_id: int | None = None

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.pipeline.clock

    def confirmed(self, message_id: int) -> None:
        """The analyzer went on after our ACK of ``message_id``: an identical next message is a new one."""
        self.confirmed_id = message_id

    async def receive(self, raw: bytes, peer: str, *, text: bytes | None = None) -> Outcome:
        """Store one complete message and return its outcome with the answer. Raises nothing.

        ``raw``: the bytes as received (ASTM: the frames; HL7: the payload), kept in the store;
        ``text``: what the adapter decodes (ASTM: the message text; default ``raw``).
        """
        now = self.clock()
        item = await self._decode(text if text is not None else raw, now)
        if isinstance(item, Ignored):
            log.warning("intake_message_ignored", reason=item.reason, control_id=item.control_id)
            return Outcome(answer=b"")
        outcome = await self._commit(item, raw or (text or b""), peer, now)
        protocol = self.adapter.protocol
        if outcome.stored and outcome.rejected_reason:  # (not stored: logged by _refused)
            log.warning(f"{protocol}_message_rejected",  # noqa: G004 - one fixed event name per protocol
                        message_id=outcome.message_id, reason=outcome.rejected_reason[:200])
        elif outcome.duplicate:
            log.info(f"{protocol}_duplicate_acknowledged",  # noqa: G004 - one fixed event name per protocol
                     message_id=outcome.message_id)
        try:
            answer = self.adapter.answer(item, outcome, raw)
        except Exception as exc:  # noqa: BLE001 - the boundary: a fallback answer, never none
            log.error("intake_answer_failed", error=f"{type(exc).__name__}: {exc}")
            answer = self._fallback_answer(raw, outcome)
        return replace(outcome, answer=answer)

    async def _decode(self, text: bytes, now: datetime) -> Decoded | Rejected | Ignored:
        try:
            if len(text) > OFFLOAD_BYTES:
                return await asyncio.to_thread(self._decode_now, text, now)
            return self._decode_now(text, now)
        except Exception as exc:  # noqa: BLE001 - the boundary: any decoder failure is a rejection
            return Rejected(protocol=self.adapter.protocol, event="intake_failed",
                            reason=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__,
                            kind="E", error_code="207")

    def _decode_now(self, text: bytes, now: datetime) -> Decoded | Rejected | Ignored:
        item = self.adapter.decode(text)
        if isinstance(item, Decoded):
            item = self.pipeline.prepare(self.analyzer, item, now, self._history())
        return item

    def _history(self) -> History | None:
        """The read-only history connection for judging here, or None (then the transaction judges)."""
        try:
            return self.pipeline.store.history_reader()
        except StoreError as exc:
            log.warning("history_reader_unavailable", error=str(exc))
            return None

    async def _commit(self, item: Decoded | Rejected, raw: bytes, peer: str, now: datetime) -> Outcome:
        pipeline, analyzer = self.pipeline, self.analyzer
        try:
            outcome = await self.runner.call_batched(pipeline.commit, analyzer, item, raw, peer, now,
                                                     confirmed_id=self.confirmed_id)
        except StoreError as exc:
            return self._refused(exc)
        except Exception as exc:  # noqa: BLE001 - a bug beyond the pipeline's own boundary
            failed = Rejected(protocol=self.adapter.protocol, event="intake_failed",
                              reason=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__,
                              context=getattr(item, "context", None))
            try:
                outcome = await self.runner.call_batched(pipeline.commit, analyzer, failed, raw, peer, now)
            except Exception as again:  # noqa: BLE001 - not stored at all: say so, the peer resends
                return self._refused(again if isinstance(again, StoreError) else StoreError(str(again)))
        if self.on_stored is not None:
            await self.on_stored()
        return outcome

    def _refused(self, exc: StoreError) -> Outcome:
        log.error("intake_message_not_stored", error=str(exc))
        if self.on_refused is not None:
            self.on_refused(self.analyzer.name, exc)
        return Outcome(stored=False, rejected_reason=str(exc))

    def _fallback_answer(self, raw: bytes, outcome: Outcome) -> bytes:
        try:
            return self.adapter.answer(None, replace(outcome, stored=False), raw)
        except Exception:  # noqa: BLE001 - nothing more to try; the pump closes without an answer
            return b""

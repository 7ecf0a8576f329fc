"""Sans-I/O ASTM E1381 / CLSI LIS01-A2 link engine (receiver role).

Bytes come in through :meth:`AstmLink.receive_data`, events go out through
:meth:`AstmLink.next_event`, and the replies (ACK/NAK) the transport must write come from
:meth:`AstmLink.data_to_send`. Time comes in as ``now`` and deadlines go out through
:meth:`AstmLink.get_timer` (the aioquic style, STYLE.md §1). No I/O, no clock, no logging.

State logic lives in one table, :data:`TRANSITIONS`, keyed by (state, input) (STYLE.md §7.5).
Inputs are what the reader produced, refined by a pure classification of frames (accepted,
duplicate, rejected, ...), plus the timer and the pump's commit calls. The table does not know
about roles: a sender role (host-query replies) adds its own states and inputs (ACK/NAK received,
send requested) without touching the receiver rows.

Policy "persist, then acknowledge" (STYLE.md §6 data flow, step 4): an accepted ETX frame that
completes one or more messages is not ACKed. The engine emits ``MessageReceived`` and waits
in ``AWAITING_COMMIT`` (input is buffered, not processed) until the pump calls
:meth:`AstmLink.message_committed` (ACK) or :meth:`AstmLink.message_failed` (NAK and roll back,
so the sender's retransmission of the same frame completes the message again).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from labmw.errors import LocalProtocolError
from labmw.wire import astm_frames as f
from labmw.wire import astm_events as ev

IDLE = "IDLE"  #: neutral: only ENQ means anything (ASTM.md §1.2)
RECEIVING = "RECEIVING"  #: transfer phase, we are the receiver
AWAITING_COMMIT = "AWAITING_COMMIT"  #: a message was emitted; its frame's reply waits for the pump
REJECTING = "REJECTING"  #: a message grew too large: NAK every frame until EOT, ENQ or timeout

CHECKSUM_POLICIES = ("strict", "warn", "ignore")
_SLICE = 4096  # input is fed to the reader in slices so one huge read cannot balloon the buffer


class Input(enum.Enum):
    """What drives a transition: a token from the reader (refined), the timer, or the pump."""

    ENQ = "ENQ"
    EOT = "EOT"
    ACK = "ACK"
    NAK = "NAK"
    JUNK = "junk"
    FRAME = "frame (not judged outside RECEIVING)"
    FRAME_CUT = "frame cut short by ENQ/EOT"
    FRAME_BAD = "frame to reject"
    FRAME_GOOD = "frame accepted"
    FRAME_COMPLETES = "frame accepted, completes a message"
    FRAME_DUPLICATE = "repeat of the last accepted frame"
    MESSAGE_TOO_LARGE = "frame would grow the message past the limit"
    TIMEOUT = "timer expired"
    COMMITTED = "message_committed()"
    FAILED = "message_failed()"


class Transition(NamedTuple):
    """Run method ``action`` of :class:`AstmLink`, then move to ``target``."""

    action: str
    target: str


def _rows(state: str, inputs: tuple[Input, ...], action: str, target: str) -> dict[tuple[str, Input], Transition]:
    return {(state, i): Transition(action, target) for i in inputs}


_NOISE = (Input.ACK, Input.NAK, Input.JUNK, Input.FRAME_CUT)
_UNJUDGED = (Input.FRAME, Input.FRAME_BAD)  # frames are judged only in RECEIVING; broken ones anywhere

#: Every receiver transition. Wire inputs are total for IDLE, RECEIVING and REJECTING; in
#: AWAITING_COMMIT the engine does not read input, so only the pump's calls appear there.
TRANSITIONS: dict[tuple[str, Input], Transition] = {
    # IDLE ignores everything but ENQ; an EOT there is silently ignored (ASTM.md §6 item 2, §5.7).
    (IDLE, Input.ENQ): Transition("_establish", RECEIVING),
    (IDLE, Input.EOT): Transition("_nothing", IDLE),
    **_rows(IDLE, _NOISE + _UNJUDGED, "_ignore", IDLE),
    # RECEIVING (ASTM.md §1.5, §1.8, §6 items 3-10).
    (RECEIVING, Input.ENQ): Transition("_restart", RECEIVING),
    (RECEIVING, Input.EOT): Transition("_end_transfer", IDLE),
    **_rows(RECEIVING, _NOISE, "_ignore", RECEIVING),
    (RECEIVING, Input.FRAME_BAD): Transition("_reject", RECEIVING),
    (RECEIVING, Input.FRAME_GOOD): Transition("_accept", RECEIVING),
    (RECEIVING, Input.FRAME_COMPLETES): Transition("_deliver", AWAITING_COMMIT),
    (RECEIVING, Input.FRAME_DUPLICATE): Transition("_acknowledge_duplicate", RECEIVING),
    (RECEIVING, Input.MESSAGE_TOO_LARGE): Transition("_abandon", REJECTING),
    (RECEIVING, Input.TIMEOUT): Transition("_time_out", IDLE),
    # AWAITING_COMMIT: persist, then acknowledge.
    (AWAITING_COMMIT, Input.COMMITTED): Transition("_commit", RECEIVING),
    (AWAITING_COMMIT, Input.FAILED): Transition("_roll_back", RECEIVING),
    # REJECTING: the sender retries each NAKed frame (6 times, ASTM.md §1.5) and then gives up with
    # EOT. Accepting a retransmission would deliver the tail of a message without its head.
    (REJECTING, Input.ENQ): Transition("_restart", RECEIVING),
    (REJECTING, Input.EOT): Transition("_end_transfer", IDLE),
    **_rows(REJECTING, _NOISE, "_ignore", REJECTING),
    **_rows(REJECTING, _UNJUDGED, "_refuse", REJECTING),
    (REJECTING, Input.TIMEOUT): Transition("_time_out", IDLE),
}


@dataclass(frozen=True, slots=True)
class _Step:
    """One input with what the actions need to know about it."""

    input: Input
    count: int = 0
    fn: int | None = None
    reason: str = ""
    frame: f.Frame | None = None
    tolerated: tuple[str, str] | None = None
    scan: f.RecordScan | None = None


@dataclass(slots=True)
class _Transfer:
    """Reassembly state of one transfer phase (ASTM.md §6 item 9): text not yet delivered."""

    text: bytearray = field(default_factory=bytearray)
    #: (start, end) of each accepted frame's text in ``text``, and the frame's raw bytes
    frames: list[tuple[int, int, bytes]] = field(default_factory=list)
    #: offsets in ``text`` just past L records seen in ETB frames (delivered at the next ETX)
    ends: list[int] = field(default_factory=list)
    head: bytes = b""
    delimiter: int = f.DEFAULT_DELIMITER
    expected_fn: int = 1
    last_fn: int | None = None

    def copy(self) -> _Transfer:
        return _Transfer(bytearray(self.text), list(self.frames), list(self.ends), self.head,
                         self.delimiter, self.expected_fn, self.last_fn)  # fmt: skip

    def partial_length(self) -> int:
        return len(self.text) - (self.ends[-1] if self.ends else 0)

    def append(self, frame: f.Frame, fn: int, scan: f.RecordScan) -> None:
        base = len(self.text)
        self.text += frame.text
        self.frames.append((base, len(self.text), frame.raw))
        self.ends.extend(base + end for end in scan.ends)
        self.head, self.delimiter = scan.head, scan.delimiter
        self.last_fn, self.expected_fn = fn, (fn + 1) % 8

    def take_messages(self) -> list[ev.MessageReceived]:
        """Cut the complete messages off the front; the last frame carried the last one's end."""
        messages, start, last = [], 0, len(self.frames) - 1
        for number, end in enumerate(self.ends):
            # The frames whose text overlaps the message; the completing frame always counts
            # (its text is empty when the L record came in an ETB frame).
            carriers = [i for i, (s, e, _) in enumerate(self.frames) if s < end and e > start]
            if number == len(self.ends) - 1 and last not in carriers:
                carriers.append(last)
            raw = b"".join(self.frames[i][2] for i in carriers)
            messages.append(ev.MessageReceived(bytes(self.text[start:end]), raw))
            start = end
        del self.text[:start]
        self.frames = [(s - start, e - start, r) for (s, e, r) in self.frames if e > start]
        self.ends = []
        return messages


class AstmLink:
    """One E1381 link (one serial port or TCP connection), receiver role.

    Keyword arguments: ``checksum_policy`` is "strict" (NAK a bad checksum), "warn" (accept and
    emit ``ChecksumMismatchTolerated``) or "ignore"; ``max_frame_text`` bounds one frame's
    text (63,993 per LIS01-A2); ``max_message_bytes`` bounds one reassembled message;
    ``frame_timeout`` is the receiver's frame-wait timer in seconds (30 s, ASTM.md §1.6).
    Raises :class:`LocalProtocolError` on invalid settings.
    """

    def __init__(
        self,
        *,
        checksum_policy: str = "strict",
        max_frame_text: int = f.MAX_TEXT,
        max_message_bytes: int = 4 * 1024 * 1024,
        frame_timeout: float = 30.0,
    ) -> None:
        if checksum_policy not in CHECKSUM_POLICIES:
            raise LocalProtocolError(f"checksum_policy must be one of {CHECKSUM_POLICIES}, got {checksum_policy!r}")
        if max_message_bytes < 1 or not frame_timeout > 0:
            raise LocalProtocolError("max_message_bytes and frame_timeout must be positive")
        self._policy = checksum_policy
        self._max_message = max_message_bytes
        self._timeout = frame_timeout
        self._reader = f.FrameReader(max_text=max_frame_text)  # raises on max_frame_text < 1
        # While awaiting a commit we only buffer; one frame's worth is all a conforming sender
        # can have sent (it waits for our reply), so more than that is dropped.
        self._pending_limit = max_frame_text + 64
        self._state = IDLE
        self._events: deque[ev.Event] = deque()
        self._outgoing = bytearray()
        self._deadline: float | None = None
        self._now = 0.0
        self._rx = _Transfer()
        self._saved: tuple[_Transfer, int] | None = None  # state before the uncommitted frame

    # --- public API -----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The current state name: "IDLE", "RECEIVING", "AWAITING_COMMIT" or "REJECTING"."""
        return self._state

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the transport at time ``now`` (any split; b"" is allowed).

        An expired timer is handled first, as if :meth:`handle_timer` had been called. Produces
        events and replies; in AWAITING_COMMIT the bytes are only buffered (beyond one frame's
        worth they are dropped and reported as ``BytesIgnored``). Raises nothing.
        """
        self._expire(now)
        for start in range(0, len(data), _SLICE):
            chunk = data[start : start + _SLICE]
            if self._state == AWAITING_COMMIT:
                room = max(0, self._pending_limit - self._reader.buffered)
                self._reader.feed(chunk[:room])
                if len(chunk) > room:
                    self._events.append(ev.BytesIgnored(len(chunk) - room, self._state))
                continue
            self._reader.feed(chunk)
            self._process()

    def next_event(self) -> ev.Event | None:
        """Return the oldest pending event, or None. Raises nothing."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes the transport must write now: ACK/NAK, or b""."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def get_timer(self) -> float | None:
        """Return the absolute deadline (same clock as ``now``) of the pending timer, or None.

        There is no timer in IDLE, nor in AWAITING_COMMIT, where we wait on the pump, not the peer.
        """
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Tell the engine the time is ``now``; if the deadline has passed, act on the timeout.

        Receiver timeout (ASTM.md §1.6): go IDLE and emit ``MessageDiscarded`` ("timeout")
        if text was buffered. Calling early or without a timer does nothing. Raises nothing.
        """
        self._expire(now)

    def message_committed(self) -> None:
        """The pump durably stored every message emitted so far: ACK the completing frame.

        Then the bytes buffered meanwhile are processed. Raises :class:`LocalProtocolError` if no
        message awaits a commit.
        """
        self._fire(_Step(Input.COMMITTED))
        self._process()

    def message_failed(self, reason: str) -> None:
        """The pump could not store the emitted messages: NAK the completing frame.

        The reassembly is rolled back to just before that frame and the expected FN kept, so the
        sender's retransmission re-emits the messages. Emits ``FrameRejected`` with
        ``reason``. Raises :class:`LocalProtocolError` if no message awaits a commit.
        """
        self._fire(_Step(Input.FAILED, reason=reason))
        self._process()

    # --- driving the table ----------------------------------------------------------------------
    def _process(self) -> None:
        while self._state != AWAITING_COMMIT:
            token = self._reader.next_token()
            if token is None:
                return
            self._fire(self._step_for(token))

    def _fire(self, step: _Step) -> None:
        transition = TRANSITIONS.get((self._state, step.input))
        if transition is None:
            raise LocalProtocolError(f"{step.input.value} is not allowed in state {self._state}")
        getattr(self, transition.action)(step)
        self._state = transition.target

    def _expire(self, now: float) -> None:
        self._now = max(self._now, now)
        if self._deadline is not None and now >= self._deadline:
            self._fire(_Step(Input.TIMEOUT))

    def _step_for(self, token: f.Token) -> _Step:
        if isinstance(token, f.Junk):
            return _Step(Input.JUNK, count=token.count)
        if isinstance(token, f.ControlByte):
            return _Step(Input[f.CONTROL_NAMES[token.byte]], count=1)
        if isinstance(token, f.BrokenFrame):
            # Cut by ENQ/EOT: the sender restarted or terminated; answering the fragment with NAK
            # would be read as the reply to that ENQ (or sent to an idle peer). Cut by STX or
            # over-long: NAK it (ASTM.md §1.5 (d)).
            cut = token.interrupted_by in (f.ENQ_BYTE, f.EOT_BYTE)
            kind = Input.FRAME_CUT if cut else Input.FRAME_BAD
            return _Step(kind, count=token.count, fn=token.fn, reason=token.reason)
        if self._state != RECEIVING:
            return _Step(Input.FRAME, count=len(token.raw), fn=token.fn, frame=token)
        return self._judge(token)

    def _judge(self, frame: f.Frame) -> _Step:
        """Classify a complete frame received in RECEIVING (ASTM.md §6 items 6-9). Pure."""
        problem, fn = f.frame_problem(frame), frame.fn
        if problem is not None or fn is None:  # frame_problem() is None implies fn is not None
            return _Step(Input.FRAME_BAD, fn=fn, reason=problem or "bad frame number")
        tolerated = None
        if not frame.checksum_ok and self._policy != "ignore":
            expected = frame.expected_checksum.decode("ascii")
            received = frame.received_checksum.decode("latin-1")
            if self._policy == "strict":
                reason = f"checksum mismatch: expected {expected}, received {received}"
                return _Step(Input.FRAME_BAD, fn=fn, reason=reason)
            tolerated = (expected, received)
        if fn != self._rx.expected_fn:
            if fn == self._rx.last_fn:
                return _Step(Input.FRAME_DUPLICATE, fn=fn, frame=frame, tolerated=tolerated)
            reason = f"unexpected frame number {fn} (expected {self._rx.expected_fn})"
            return _Step(Input.FRAME_BAD, fn=fn, reason=reason)
        if self._rx.partial_length() + len(frame.text) > self._max_message:
            reason = f"message exceeds {self._max_message} bytes"
            return _Step(Input.MESSAGE_TOO_LARGE, fn=fn, reason=reason)
        scan = f.scan_records(frame.text, head=self._rx.head, delimiter=self._rx.delimiter, final=frame.final)
        completes = frame.final and bool(self._rx.ends or scan.ends)
        kind = Input.FRAME_COMPLETES if completes else Input.FRAME_GOOD
        return _Step(kind, fn=fn, frame=frame, tolerated=tolerated, scan=scan)

    # --- actions (named in TRANSITIONS) ---------------------------------------------------------
    def _nothing(self, step: _Step) -> None:
        pass

    def _ignore(self, step: _Step) -> None:
        if step.count:
            self._events.append(ev.BytesIgnored(step.count, self._state))

    def _establish(self, step: _Step) -> None:
        # ENQ: reply ACK, expect FN 1, start the 30 s frame-wait timer (ASTM.md §6 item 3).
        self._rx = _Transfer()
        self._events.append(ev.LinkEstablished())
        self._reply(f.ACK)

    def _restart(self, step: _Step) -> None:
        # A new ENQ mid-transfer: the sender restarted. Yield to it (ASTM.md §1.3, §5.8).
        self._discard("new ENQ")
        self._establish(step)

    def _end_transfer(self, step: _Step) -> None:
        # EOT: never answered (ASTM.md §1.8); an incomplete message is discarded.
        self._discard("eot")
        self._events.append(ev.TransferEnded())
        self._deadline = None

    def _time_out(self, step: _Step) -> None:
        self._discard("timeout")
        self._deadline = None

    def _reject(self, step: _Step) -> None:
        self._events.append(ev.FrameRejected(step.reason, step.fn))
        self._reply(f.NAK)

    def _refuse(self, step: _Step) -> None:
        self._events.append(ev.FrameRejected("message too large; refusing the rest of the transfer", step.fn))
        self._reply(f.NAK)

    def _abandon(self, step: _Step) -> None:
        self._discard(step.reason)
        self._reject(step)

    def _acknowledge_duplicate(self, step: _Step) -> None:
        # Our ACK was lost and the sender repeated the frame: ACK it, deliver nothing (§1.5).
        self._tolerate(step)
        assert step.fn is not None  # internal invariant (set by _judge), not input validation
        self._events.append(ev.DuplicateFrame(step.fn))
        self._reply(f.ACK)

    def _accept(self, step: _Step) -> None:
        self._append(step)
        self._reply(f.ACK)

    def _deliver(self, step: _Step) -> None:
        # Persist, then acknowledge: no ACK here, and no timer (the sender waits for our reply and
        # we wait for the pump). Keep the state before this frame in case the store fails.
        assert step.fn is not None  # internal invariant (set by _judge), not input validation
        self._saved = (self._rx.copy(), step.fn)
        self._append(step)
        self._events.extend(self._rx.take_messages())
        self._deadline = None

    def _commit(self, step: _Step) -> None:
        self._saved = None
        self._reply(f.ACK)

    def _roll_back(self, step: _Step) -> None:
        # NAK keeps the expected FN, so the retransmission of the same frame is accepted (§1.5).
        if self._saved is not None:  # always set in AWAITING_COMMIT
            self._rx, fn = self._saved
            self._saved = None
            self._events.append(ev.FrameRejected(f"message not stored: {step.reason}", fn))
        self._reply(f.NAK)

    # --- helpers --------------------------------------------------------------------------------
    def _reply(self, byte: bytes) -> None:
        # Every ACK/NAK we send restarts the receiver's frame-wait timer (ASTM.md §6 item 4).
        self._outgoing += byte
        self._deadline = self._now + self._timeout

    def _tolerate(self, step: _Step) -> None:
        if step.tolerated is not None and step.fn is not None:
            self._events.append(ev.ChecksumMismatchTolerated(step.fn, *step.tolerated))

    def _append(self, step: _Step) -> None:
        # Internal invariant (_judge sets all three for accepted frames), not input validation.
        assert step.frame is not None and step.scan is not None and step.fn is not None
        self._tolerate(step)
        self._rx.append(step.frame, step.fn, step.scan)

    def _discard(self, reason: str) -> None:
        if self._rx.text:
            self._events.append(ev.MessageDiscarded(reason, bytes(self._rx.text)))
        self._rx = _Transfer()

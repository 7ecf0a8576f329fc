"""Sans-I/O ASTM E1381 / CLSI LIS01-A2 link engine (receiver role).

Bytes go in through :meth:`AstmLink.receive_data`, events come out of :meth:`AstmLink.next_event`,
and the ACK/NAK replies to write come from :meth:`AstmLink.data_to_send`. Time comes in as ``now``;
the deadline goes out through :meth:`AstmLink.get_timer` (aioquic style, STYLE.md §1).

All state logic is the table :data:`TRANSITIONS`, keyed by (state, input) (STYLE.md §7.5). Inputs
are reader tokens refined by a pure judgement of frames, plus the timer and the pump's calls. The
table knows no roles: a sender role (host-query replies) adds its own states and inputs without
touching these rows.

"Persist, then acknowledge" (STYLE.md §6, data flow step 4): an accepted ETX frame that completes
messages is not ACKed. The engine emits ``MessageReceived`` and waits in AWAITING_COMMIT, only
buffering input, until the pump calls :meth:`AstmLink.message_committed` (ACK) or
:meth:`AstmLink.message_failed` (NAK and roll back, so the retransmitted frame completes it again).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from labmw.errors import LocalProtocolError
from labmw.wire import astm_events as ev
from labmw.wire import astm_frames as f

IDLE = "IDLE"  #: neutral: only ENQ means anything (ASTM.md §1.2)
RECEIVING = "RECEIVING"  #: transfer phase, we are the receiver
AWAITING_COMMIT = "AWAITING_COMMIT"  #: messages emitted; their frame's reply waits for the pump
REJECTING = "REJECTING"  #: a message grew too large: NAK every frame until EOT, ENQ or timeout

CHECKSUM_POLICIES = ("strict", "warn", "ignore")
_SLICE = 4096  # input reaches the reader in slices, so one huge read cannot balloon its buffer


class Input(enum.Enum):
    """What drives a transition: a reader token (frames judged in RECEIVING), timer or pump."""

    ENQ = "ENQ"
    EOT = "EOT"
    ACK = "ACK"
    NAK = "NAK"
    JUNK = "junk"
    FRAME = "frame, not judged outside RECEIVING"
    FRAME_CUT = "frame cut short by ENQ/EOT"
    FRAME_BAD = "frame to reject"
    FRAME_GOOD = "frame accepted"
    FRAME_COMPLETES = "frame accepted, completes messages"
    FRAME_DUPLICATE = "repeat of the last accepted frame"
    MESSAGE_TOO_LARGE = "frame would grow the message past the limit"
    TIMEOUT = "timer expired"
    COMMITTED = "message_committed()"
    FAILED = "message_failed()"


class Transition(NamedTuple):
    """Run the :class:`AstmLink` method named ``action``, then move to state ``target``."""

    action: str
    target: str


def _rows(state: str, inputs: tuple[Input, ...], action: str) -> dict[tuple[str, Input], Transition]:
    return {(state, i): Transition(action, state) for i in inputs}


_NOISE = (Input.ACK, Input.NAK, Input.JUNK, Input.FRAME_CUT)
_UNJUDGED = (Input.FRAME, Input.FRAME_BAD)  # frames are judged only in RECEIVING, broken ones anywhere

#: Every receiver transition. In AWAITING_COMMIT no input is read, so only the pump's calls appear.
TRANSITIONS: dict[tuple[str, Input], Transition] = {
    # IDLE ignores everything but ENQ; an EOT there is silently ignored (ASTM.md §6 item 2, §5.7).
    (IDLE, Input.ENQ): Transition("_establish", RECEIVING),
    (IDLE, Input.EOT): Transition("_nothing", IDLE),
    **_rows(IDLE, _NOISE + _UNJUDGED, "_ignore"),
    # RECEIVING (ASTM.md §1.5, §1.8, §6 items 3-10).
    (RECEIVING, Input.ENQ): Transition("_restart", RECEIVING),
    (RECEIVING, Input.EOT): Transition("_end_transfer", IDLE),
    **_rows(RECEIVING, _NOISE, "_ignore"),
    (RECEIVING, Input.FRAME_BAD): Transition("_reject", RECEIVING),
    (RECEIVING, Input.FRAME_GOOD): Transition("_accept", RECEIVING),
    (RECEIVING, Input.FRAME_COMPLETES): Transition("_deliver", AWAITING_COMMIT),
    (RECEIVING, Input.FRAME_DUPLICATE): Transition("_acknowledge_duplicate", RECEIVING),
    (RECEIVING, Input.MESSAGE_TOO_LARGE): Transition("_abandon", REJECTING),
    (RECEIVING, Input.TIMEOUT): Transition("_time_out", IDLE),
    # AWAITING_COMMIT: persist, then acknowledge.
    (AWAITING_COMMIT, Input.COMMITTED): Transition("_commit", RECEIVING),
    (AWAITING_COMMIT, Input.FAILED): Transition("_roll_back", RECEIVING),
    # REJECTING: the sender retries a NAKed frame up to 6 times, then gives up with EOT (ASTM.md
    # §1.5). Accepting a retransmission would deliver the tail of a message without its head.
    (REJECTING, Input.ENQ): Transition("_restart", RECEIVING),
    (REJECTING, Input.EOT): Transition("_end_transfer", IDLE),
    **_rows(REJECTING, _NOISE, "_ignore"),
    **_rows(REJECTING, _UNJUDGED, "_refuse"),
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

    def append(self, frame: f.Frame, fn: int, scan: f.RecordScan) -> None:
        base = len(self.text)
        self.text += frame.text
        self.frames.append((base, len(self.text), frame.raw))
        self.ends.extend(base + end for end in scan.ends)
        self.head, self.delimiter = scan.head, scan.delimiter
        self.last_fn, self.expected_fn = fn, (fn + 1) % 8

    def take_messages(self) -> list[ev.MessageReceived]:
        """Cut the complete messages off the front; the newest frame ended the last of them."""
        messages: list[ev.MessageReceived] = []
        start, newest = 0, len(self.frames) - 1
        for number, end in enumerate(self.ends):
            # The frames whose text overlaps the message. The completing frame always counts:
            # its text is empty when the L record came in an ETB frame.
            carriers = [i for i, (s, e, _) in enumerate(self.frames) if s < end and e > start]
            if number == len(self.ends) - 1 and newest not in carriers:
                carriers.append(newest)
            raw = b"".join(self.frames[i][2] for i in carriers)
            messages.append(ev.MessageReceived(bytes(self.text[start:end]), raw))
            start = end
        del self.text[:start]
        self.frames = [(s - start, e - start, r) for (s, e, r) in self.frames if e > start]
        self.ends = []
        return messages


class AstmLink:
    """One E1381 link (a serial port or a TCP connection), receiver role.

    ``checksum_policy``: "strict" NAKs a bad checksum, "warn" accepts it and emits
    ``ChecksumMismatchTolerated``, "ignore" accepts it silently. ``max_frame_text``: text bytes
    per frame (63,993 in LIS01-A2). ``max_message_bytes``: one reassembled message.
    ``frame_timeout``: the receiver's frame-wait timer in seconds (30 s, ASTM.md §1.6).
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
            raise LocalProtocolError(f"checksum_policy {checksum_policy!r} is not one of {CHECKSUM_POLICIES}")
        if max_message_bytes < 1 or not frame_timeout > 0:
            raise LocalProtocolError("max_message_bytes and frame_timeout must be positive")
        self._policy = checksum_policy
        self._max_message = max_message_bytes
        self._timeout = frame_timeout
        self._reader = f.FrameReader(max_text=max_frame_text)  # raises on max_frame_text < 1
        # While awaiting a commit we only buffer. A conforming sender waits for our reply, so one
        # frame's worth is plenty; anything beyond is dropped.
        self._pending_limit = max_frame_text + 64
        self._state = IDLE
        self._events: deque[ev.Event] = deque()
        self._outgoing = bytearray()
        self._deadline: float | None = None
        self._now = 0.0
        self._rx = _Transfer()
        self._saved: tuple[_Transfer, int] | None = None  # state before the uncommitted frame, its FN

    # --- public API -----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The state name: "IDLE", "RECEIVING", "AWAITING_COMMIT" or "REJECTING"."""
        return self._state

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read at time ``now``, split anywhere (b"" only advances the clock).

        An expired timer is handled first, as by :meth:`handle_timer`. In AWAITING_COMMIT the
        bytes are only buffered; past one frame's worth they are dropped and reported as
        ``BytesIgnored``. Raises nothing.
        """
        self._expire(now)
        for start in range(0, len(data), _SLICE):
            chunk = data[start : start + _SLICE]
            if self._state == AWAITING_COMMIT:
                room = max(0, self._pending_limit - self._reader.buffered)
                self._reader.feed(chunk[:room])
                if len(chunk) > room:
                    self._events.append(ev.BytesIgnored(len(chunk) - room, self._state))
            else:
                self._reader.feed(chunk)
                self._process()

    def next_event(self) -> ev.Event | None:
        """Return the oldest pending event, or None. Raises nothing."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Return, and forget, the bytes the transport must write now (ACK/NAK), or b""."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def get_timer(self) -> float | None:
        """Return the absolute deadline (the clock of ``now``), or None.

        No timer runs in IDLE, nor in AWAITING_COMMIT, where we wait on the pump, not the peer.
        """
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Act on the deadline if ``now`` reached it; otherwise do nothing. Raises nothing.

        Receiver timeout (ASTM.md §1.6): go IDLE, emitting ``MessageDiscarded("timeout", text)``
        if text was buffered.
        """
        self._expire(now)

    def message_committed(self) -> None:
        """Report that every emitted message is durably stored: ACK the completing frame.

        The bytes buffered meanwhile are then processed (with the latest ``now`` seen).
        Raises :class:`LocalProtocolError` if no message awaits a commit.
        """
        self._fire(_Step(Input.COMMITTED))
        self._process()

    def message_failed(self, reason: str) -> None:
        """Report that the emitted messages could not be stored: NAK the completing frame.

        Emits ``FrameRejected`` with ``reason`` and rolls the reassembly back to before that frame,
        keeping the expected FN, so the sender's retransmission re-emits the messages.
        Raises :class:`LocalProtocolError` if no message awaits a commit.
        """
        self._fire(_Step(Input.FAILED, reason=reason))
        self._process()

    # --- driving the table ----------------------------------------------------------------------
    def _process(self) -> None:
        while self._state != AWAITING_COMMIT and (token := self._reader.next_token()) is not None:
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
            # Cut by ENQ/EOT: the sender restarted or terminated, and a NAK would read as the
            # reply to that ENQ (or reach an idle peer). Cut by STX or over-long: NAK (§1.5 (d)).
            cut = token.interrupted_by in (f.ENQ_BYTE, f.EOT_BYTE)
            kind = Input.FRAME_CUT if cut else Input.FRAME_BAD
            return _Step(kind, count=token.count, fn=token.fn, reason=token.reason)
        if self._state != RECEIVING:
            return _Step(Input.FRAME, count=len(token.raw), fn=token.fn)
        return self._judge(token)

    def _judge(self, frame: f.Frame) -> _Step:
        """Classify a whole frame received in RECEIVING (ASTM.md §6 items 6-9). Pure."""
        problem, fn = f.frame_problem(frame), frame.fn
        if problem is not None or fn is None:  # no problem implies a frame number
            return _Step(Input.FRAME_BAD, fn=fn, reason=problem or "bad frame number")
        tolerated = None
        if not frame.checksum_ok and self._policy != "ignore":
            expected = frame.expected_checksum.decode("ascii")
            received = frame.received_checksum.decode("latin-1")
            if self._policy == "strict":
                reason = f"checksum mismatch: expected {expected}, received {received}"
                return _Step(Input.FRAME_BAD, fn=fn, reason=reason)
            tolerated = (expected, received)
        rx = self._rx
        if fn != rx.expected_fn:
            if fn == rx.last_fn:
                return _Step(Input.FRAME_DUPLICATE, fn=fn, tolerated=tolerated)
            reason = f"unexpected frame number {fn} (expected {rx.expected_fn})"
            return _Step(Input.FRAME_BAD, fn=fn, reason=reason)
        if len(rx.text) - (rx.ends[-1] if rx.ends else 0) + len(frame.text) > self._max_message:
            return _Step(Input.MESSAGE_TOO_LARGE, fn=fn, reason=f"message exceeds {self._max_message} bytes")
        scan = f.scan_records(frame.text, head=rx.head, delimiter=rx.delimiter, final=frame.final)
        kind = Input.FRAME_COMPLETES if frame.final and (rx.ends or scan.ends) else Input.FRAME_GOOD
        return _Step(kind, fn=fn, frame=frame, tolerated=tolerated, scan=scan)

    # --- actions (named in TRANSITIONS) ---------------------------------------------------------
    def _nothing(self, step: _Step) -> None:
        """Do nothing (an EOT in IDLE)."""

    def _ignore(self, step: _Step) -> None:
        if step.count:
            self._events.append(ev.BytesIgnored(step.count, self._state))

    def _establish(self, step: _Step) -> None:
        # ENQ: reply ACK, expect FN 1, start the frame-wait timer (ASTM.md §6 item 3).
        self._rx = _Transfer()
        self._events.append(ev.LinkEstablished())
        self._reply(f.ACK)

    def _restart(self, step: _Step) -> None:
        # A new ENQ mid-transfer: the sender restarted; yield to it (ASTM.md §1.3, §5.8).
        self._discard("new ENQ")
        self._establish(step)

    def _end_transfer(self, step: _Step) -> None:
        # EOT is never answered (ASTM.md §1.8); an incomplete message is discarded.
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
        assert step.fn is not None  # internal invariant (set by _judge), not input validation
        self._tolerate(step.fn, step.tolerated)
        self._events.append(ev.DuplicateFrame(step.fn))
        self._reply(f.ACK)

    def _accept(self, step: _Step) -> None:
        self._append(step)
        self._reply(f.ACK)

    def _deliver(self, step: _Step) -> None:
        # No ACK and no timer here: the sender waits for our reply, we wait for the pump. Keep the
        # state before this frame in case the store fails.
        assert step.fn is not None  # internal invariant (set by _judge), not input validation
        rx = self._rx
        before = replace(rx, text=bytearray(rx.text), frames=list(rx.frames), ends=list(rx.ends))
        self._saved = (before, step.fn)
        self._append(step)
        self._events.extend(self._rx.take_messages())
        self._deadline = None

    def _commit(self, step: _Step) -> None:
        self._saved = None
        self._reply(f.ACK)

    def _roll_back(self, step: _Step) -> None:
        # The NAK keeps the expected FN, so the sender's retransmission is accepted (§1.5).
        assert self._saved is not None  # internal invariant (set by _deliver), not input validation
        self._rx, fn = self._saved
        self._saved = None
        self._events.append(ev.FrameRejected(f"message not stored: {step.reason}", fn))
        self._reply(f.NAK)

    # --- helpers --------------------------------------------------------------------------------
    def _reply(self, byte: bytes) -> None:
        # Every ACK/NAK we send restarts the frame-wait timer (ASTM.md §6 item 4).
        self._outgoing += byte
        self._deadline = self._now + self._timeout

    def _tolerate(self, fn: int, tolerated: tuple[str, str] | None) -> None:
        if tolerated is not None:
            self._events.append(ev.ChecksumMismatchTolerated(fn, *tolerated))

    def _append(self, step: _Step) -> None:
        # Internal invariant (_judge sets all three for accepted frames), not input validation.
        assert step.frame is not None and step.scan is not None and step.fn is not None
        self._tolerate(step.fn, step.tolerated)
        self._rx.append(step.frame, step.fn, step.scan)

    def _discard(self, reason: str) -> None:
        if self._rx.text:
            self._events.append(ev.MessageDiscarded(reason, bytes(self._rx.text)))
        self._rx = _Transfer()

"""Sans-I/O ASTM E1381 / CLSI LIS01-A2 link engine: receiver and sender roles on one link.

Bytes go in through :meth:`AstmLink.receive_data`, events come out of :meth:`AstmLink.next_event`,
and the bytes to write (ACK/NAK as receiver; ENQ, frames and EOT as sender) come from
:meth:`AstmLink.data_to_send`. Time comes in as ``now``; the deadline goes out through
:meth:`AstmLink.get_timer` (aioquic style, STYLE.md §1).

All state logic is the table :data:`TRANSITIONS`, keyed by (state, input) (STYLE.md §7.5). Inputs
are reader tokens refined by a pure judgement (of frames in RECEIVING, of replies in SENDING), plus
the timer, the pump's calls, and SEND_DUE: "idle, a message is queued and no hold-off is in force".

Sender role (host-query replies, ASTM.md §2.8): :meth:`AstmLink.send_message` queues a message;
from IDLE the engine bids with ENQ (BIDDING), then sends one frame at a time and waits for each
reply (SENDING). labmw is the "computer system", so it always yields to the instrument: an ENQ
received while bidding is ACKed and the engine receives (ASTM.md §1.3, §5.8).

"Persist, then acknowledge" (STYLE.md §6, data flow step 4): an accepted ETX frame that completes
messages is not ACKed. The engine emits ``MessageReceived`` and waits in AWAITING_COMMIT, only
buffering input, until the pump calls :meth:`AstmLink.message_committed` (ACK) or
:meth:`AstmLink.message_failed` (NAK and roll back, so the retransmitted frame completes it again).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from labmw.errors import LocalProtocolError
from labmw.wire import astm_events as ev
from labmw.wire import astm_frames as f

IDLE = "IDLE"  #: neutral: only ENQ means anything (ASTM.md §1.2)
RECEIVING = "RECEIVING"  #: transfer phase, we are the receiver
AWAITING_COMMIT = "AWAITING_COMMIT"  #: messages emitted; their frame's reply waits for the pump
REJECTING = "REJECTING"  #: a message grew too large: NAK every frame until EOT, ENQ or timeout
BIDDING = "BIDDING"  #: we sent ENQ and wait for the reply (ASTM.md §1.3)
SENDING = "SENDING"  #: transfer phase, we are the sender: our frame waits for its reply (§1.5)

CHECKSUM_POLICIES = ("strict", "warn", "ignore")
_SLICE = 4096  # input reaches the reader in slices, so one huge read cannot balloon its buffer

# Sender timers and limits (ASTM.md §1.3, §1.5-1.7 and §6 items 11-14), in seconds.
REPLY_TIMEOUT = 15.0  #: for the reply to our ENQ or to our frame
BUSY_DELAY = 10.0  #: after a NAK to our ENQ (the receiver is busy) before we bid again
CONTENTION_DELAY = 20.0  #: after we yielded to the instrument's ENQ (or until its session ends)
INTERRUPT_DELAY = 15.0  #: after we honoured a receiver interrupt (or until the other side's session ends)
#: After a timeout or 6 refusals. E1381 names no value; the busy back-off keeps a dead peer from
#: being hammered every 15 s.
RETRY_DELAY = 10.0
#: Refusals of one frame, and failed tries (bids and transfers) of one message, before giving up.
MAX_TRIES = 6
#: Start of the reason of a NAK for a frame that repeats the last frame number with other text.
REPEATED_FN_CHANGED = "different text under the repeated frame number"
#: A sender that got our ACK answers it at once (EOT or its next frame); one whose ACK was lost
#: waits out its 15 s reply timer first. A reply within this many seconds confirms the ACK.
CONFIRM_WITHIN = 5.0
#: Bounds on one transfer phase, whatever its messages' sizes (a sender that never sends ETX must
#: not grow our memory): complete messages held back until the next ETX frame, and frames.
MAX_TRANSFER_MESSAGES = 256


class Input(enum.Enum):
    """What drives a transition: a reader token (frames judged in RECEIVING, replies in SENDING),
    the timer, the pump's calls, or SEND_DUE."""

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
    SEND_DUE = "idle, a message queued, no hold-off"
    ACKED_MORE = "ACK to our frame, more to send"
    ACKED_LAST = "ACK to our last queued frame"
    REFUSED = "NAK or another byte in reply to our frame"
    REFUSED_LAST = "the 6th refusal of one frame"
    INTERRUPTED = "EOT in reply to our frame: receiver interrupt"


class Transition(NamedTuple):
    """Run the :class:`AstmLink` method named ``action``, then move to state ``target``."""

    action: str
    target: str


def _rows(state: str, inputs: tuple[Input, ...], action: str) -> dict[tuple[str, Input], Transition]:
    return {(state, i): Transition(action, state) for i in inputs}


_NOISE = (Input.ACK, Input.NAK, Input.JUNK, Input.FRAME_CUT)
_UNJUDGED = (Input.FRAME, Input.FRAME_BAD)  # frames are judged only in RECEIVING, broken ones anywhere

#: Every transition. In AWAITING_COMMIT no input is read, so only the pump's calls appear.
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
    # IDLE with messages queued: bid when no hold-off is in force (ASTM.md §6 item 11). The timer
    # in IDLE is the end of a hold-off.
    (IDLE, Input.SEND_DUE): Transition("_bid", BIDDING),
    (IDLE, Input.TIMEOUT): Transition("_wake", IDLE),
    # BIDDING (ASTM.md §1.3, §6 items 11-12). An ENQ now is contention: the instrument wins.
    (BIDDING, Input.ACK): Transition("_start_sending", SENDING),
    (BIDDING, Input.NAK): Transition("_busy", IDLE),
    (BIDDING, Input.ENQ): Transition("_yield", RECEIVING),
    **_rows(BIDDING, (Input.EOT, Input.JUNK, Input.FRAME_CUT, *_UNJUDGED), "_ignore"),
    (BIDDING, Input.TIMEOUT): Transition("_abort", IDLE),
    # SENDING (ASTM.md §1.5, §1.7, §6 item 14): every reply is judged against the frame in flight.
    (SENDING, Input.ACKED_MORE): Transition("_send_next", SENDING),
    (SENDING, Input.ACKED_LAST): Transition("_finish", IDLE),
    (SENDING, Input.REFUSED): Transition("_retransmit", SENDING),
    (SENDING, Input.REFUSED_LAST): Transition("_abort", IDLE),
    (SENDING, Input.INTERRUPTED): Transition("_interrupted", IDLE),
    (SENDING, Input.TIMEOUT): Transition("_abort", IDLE),
}

#: Wire inputs that SENDING judges as refusals: anything but ACK and EOT (e411 p.24).
_REFUSALS = {Input.NAK: "NAK", Input.ENQ: "ENQ", Input.JUNK: "other bytes", Input.FRAME: "a frame",
             Input.FRAME_CUT: "a broken frame", Input.FRAME_BAD: "a broken frame"}  # fmt: skip


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
    #: text and terminator of the last accepted frame: a repeated FN is a retransmission only if they match
    last_frame: tuple[bytes, bool] = (b"", False)

    def append(self, frame: f.Frame, fn: int, scan: f.RecordScan) -> None:
        base = len(self.text)
        self.text += frame.text
        self.frames.append((base, len(self.text), frame.raw))
        if scan.ends:  # most frames end no message
            self.ends.extend(base + end for end in scan.ends)
        self.head, self.delimiter = scan.head, scan.delimiter
        self.last_fn, self.expected_fn = fn, (fn + 1) % 8
        self.last_frame = (frame.text, frame.final)

    def take_messages(self) -> list[ev.MessageReceived]:
        """Cut the complete messages off the front; the newest frame ended the last of them.

        One pass over frames and ends together (both are in text order): linear in their number.
        """
        messages: list[ev.MessageReceived] = []
        frames, start, newest = self.frames, 0, len(self.frames) - 1
        first = 0  # the first frame that may overlap the current message
        for number, end in enumerate(self.ends):
            while first < len(frames) and frames[first][1] <= start:
                first += 1
            # The frames whose text overlaps the message. The completing frame always counts:
            # its text is empty when the L record came in an ETB frame.
            carriers, index = [], first
            while index < len(frames) and frames[index][0] < end:
                if frames[index][1] > start:
                    carriers.append(index)
                index += 1
            if number == len(self.ends) - 1 and newest not in carriers[-1:]:
                carriers.append(newest)
            raw = b"".join(frames[i][2] for i in carriers)
            messages.append(ev.MessageReceived(bytes(self.text[start:end]), raw))
            start = end
        del self.text[:start]
        self.frames = [(s - start, e - start, r) for (s, e, r) in frames if e > start]
        self.ends = []
        return messages


@dataclass(slots=True)
class _Outgoing:
    """A queued message: its text, the texts of its frames, and how many of its tries failed."""

    text: bytes
    pieces: tuple[tuple[bytes, bool], ...]
    failures: int = 0


@dataclass(slots=True)
class _Flight:
    """The frame in flight as sender: which piece of the first queued message, its FN and bytes."""

    piece: int = 0
    fn: int = 1
    refusals: int = 0
    frame: bytes = b""


class AstmLink:
    """One E1381 link (a serial port or a TCP connection), receiver and sender roles.

    ``checksum_policy``: "strict" NAKs a bad checksum, "warn" accepts it and emits
    ``ChecksumMismatchTolerated``, "ignore" accepts it silently. ``max_frame_text``: text bytes
    per received frame (63,993 in LIS01-A2). ``max_message_bytes``: one reassembled message.
    ``frame_timeout``: the receiver's frame-wait timer in seconds (30 s, ASTM.md §1.6).
    ``max_send_text``: text bytes per frame we send (240 by default, ASTM.md §1.4).
    Raises :class:`LocalProtocolError` on invalid settings.
    """

    def __init__(
        self,
        *,
        checksum_policy: str = "strict",
        max_frame_text: int = f.MAX_TEXT,
        max_message_bytes: int = 4 * 1024 * 1024,
        frame_timeout: float = 30.0,
        max_send_text: int = f.LEGACY_MAX_TEXT,
    ) -> None:
        if checksum_policy not in CHECKSUM_POLICIES:
            raise LocalProtocolError(f"checksum_policy {checksum_policy!r} is not one of {CHECKSUM_POLICIES}")
        if max_message_bytes < 1 or not frame_timeout > 0 or not 1 <= max_send_text <= f.MAX_TEXT:
            raise LocalProtocolError(f"max_message_bytes, frame_timeout and max_send_text (up to {f.MAX_TEXT}) "
                                     "must be positive")
        self._policy = checksum_policy
        self._max_message = max_message_bytes
        # Frames of one transfer: enough for the largest message in the smallest legal frames
        # (240 text bytes); each held frame costs its raw bytes plus ~100 bytes of bookkeeping.
        self._max_frames = max_message_bytes // f.LEGACY_MAX_TEXT + 64
        self._unconfirmed: tuple[int, float] | None = None  # (token, time) of our last commit ACK
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
        self._max_send = max_send_text
        self._outbox: deque[_Outgoing] = deque()
        self._flight = _Flight()
        self._hold_until: float | None = None  # no bid before this time (ASTM.md §1.6 hold-offs)

    # --- public API -----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The state name: IDLE, RECEIVING, AWAITING_COMMIT, REJECTING, BIDDING or SENDING."""
        return self._state

    @property
    def pending_messages(self) -> tuple[bytes, ...]:
        """The texts of the queued messages not yet sent (the one in flight first)."""
        return tuple(item.text for item in self._outbox)

    def send_message(self, text: bytes, now: float | None = None) -> None:
        """Queue one message (records H..L, each ending with CR) to send in the sender role.

        It goes out when the link is idle and no hold-off is in force: the ENQ is in
        :meth:`data_to_send` at once if the link is idle now, else after the current transfer.
        Messages queued before a transfer phase ends go in the same phase. ``now`` advances the
        clock first (default: the latest time seen). Outcomes come as ``MessageSent`` and
        ``SendFailed`` events. Raises :class:`LocalProtocolError` for empty text or text holding a
        restricted byte (nothing is queued then).
        """
        pieces = tuple(f.frame_texts(text, max_text=self._max_send))
        if now is not None:
            self._expire(now)
        self._outbox.append(_Outgoing(bytes(text), pieces))
        self._settle()

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read at time ``now``, split anywhere (b"" only advances the clock).

        An expired timer is handled first, as by :meth:`handle_timer`. In AWAITING_COMMIT the
        bytes are only buffered; past one frame's worth they are dropped and reported as
        ``BytesIgnored``. A queued message is bid for once the input leaves the link idle.
        Raises nothing.
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
        self._settle()

    def next_event(self) -> ev.Event | None:
        """Return the oldest pending event, or None. Raises nothing."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Return, and forget, the bytes the transport must write now, or b"".

        ACK/NAK as receiver; ENQ, frames and EOT as sender. Check it after every call that takes
        ``now`` and after :meth:`send_message`: timers produce bytes too.
        """
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def get_timer(self) -> float | None:
        """Return the absolute deadline (the clock of ``now``), or None.

        The frame wait as receiver, the reply wait as sender, and in IDLE the end of a hold-off
        while a message is queued. None otherwise, and in AWAITING_COMMIT, where we wait on the
        pump, not the peer.
        """
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Act on the deadline if ``now`` reached it; otherwise do nothing. Raises nothing.

        Receiver timeout (ASTM.md §1.6): go IDLE, emitting ``MessageDiscarded("timeout", text)``
        if text was buffered. Sender timeout: EOT, go IDLE, ``SendFailed``. End of a hold-off: bid.
        """
        self._expire(now)
        self._settle()

    def message_committed(self, token: int | None = None) -> None:
        """Report that every emitted message is durably stored: ACK the completing frame.

        The bytes buffered meanwhile are then processed (with the latest ``now`` seen). With a
        ``token`` (the stored message's id), ``AckConfirmed(token)`` follows once the sender's
        prompt reply shows that the ACK arrived. Raises :class:`LocalProtocolError` if no message
        awaits a commit.
        """
        self._fire(_Step(Input.COMMITTED))
        self._unconfirmed = (token, self._now) if token is not None else None
        self._process()
        self._settle()

    def message_failed(self, reason: str) -> None:
        """Report that the emitted messages could not be stored: NAK the completing frame.

        Emits ``FrameRejected`` with ``reason`` and rolls the reassembly back to before that frame,
        keeping the expected FN, so the sender's retransmission re-emits the messages.
        Raises :class:`LocalProtocolError` if no message awaits a commit.
        """
        self._fire(_Step(Input.FAILED, reason=reason))
        self._process()
        self._settle()

    # --- driving the table ----------------------------------------------------------------------
    def _process(self) -> None:
        while self._state != AWAITING_COMMIT and (token := self._reader.next_token()) is not None:
            step = self._step_for(token)
            if self._unconfirmed is not None and self._state == RECEIVING:
                self._confirm(step)
            self._fire(self._judge_reply(step) if self._state == SENDING else step)

    def _confirm(self, step: _Step) -> None:
        """After our ACK of a committed message: did the sender's next move show that it arrived?"""
        assert self._unconfirmed is not None  # internal invariant (checked by the caller)
        token, acked_at = self._unconfirmed
        if step.input is Input.FRAME_DUPLICATE:
            self._unconfirmed = (token, self._now)  # our ACK was lost; the repeat gets a new one
        elif step.input in (Input.EOT, Input.FRAME_GOOD, Input.FRAME_COMPLETES, Input.MESSAGE_TOO_LARGE):
            self._unconfirmed = None
            if self._now - acked_at <= CONFIRM_WITHIN:
                self._events.append(ev.AckConfirmed(token))
        elif step.input is not Input.JUNK:
            self._unconfirmed = None

    def _settle(self) -> None:
        """Idle with messages queued: bid now, or arm the timer for the end of the hold-off."""
        if self._state != IDLE or not self._outbox:
            return
        if self._hold_until is not None and self._now < self._hold_until:
            self._deadline = self._hold_until
        else:
            self._hold_until = None
            self._fire(_Step(Input.SEND_DUE))

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
            if fn == rx.last_fn and rx.last_frame == (frame.text, frame.final):
                return _Step(Input.FRAME_DUPLICATE, fn=fn, tolerated=tolerated)
            if fn == rx.last_fn:
                # E1381 §1.5: a repeated FN is a retransmission of the same frame. Other text under
                # it is a new frame the sender numbered wrongly: ACKing it as a duplicate loses it.
                return _Step(Input.FRAME_BAD, fn=fn, reason=f"{REPEATED_FN_CHANGED} {fn}")
            reason = f"unexpected frame number {fn} (expected {rx.expected_fn})"
            return _Step(Input.FRAME_BAD, fn=fn, reason=reason)
        # Everything held for this transfer counts, not only the open message: complete messages in
        # ETB frames wait for the next ETX, so a sender that never sends one must still be bounded.
        if len(rx.text) + len(frame.text) > self._max_message:
            return _Step(Input.MESSAGE_TOO_LARGE, fn=fn, reason=f"transfer exceeds {self._max_message} bytes")
        if len(rx.frames) >= self._max_frames:
            return _Step(Input.MESSAGE_TOO_LARGE, fn=fn, reason=f"transfer exceeds {self._max_frames} frames")
        if len(rx.ends) >= MAX_TRANSFER_MESSAGES:
            return _Step(Input.MESSAGE_TOO_LARGE, fn=fn,
                         reason=f"transfer exceeds {MAX_TRANSFER_MESSAGES} messages without an ETX frame")
        final = frame.final
        scan = f.scan_records(frame.text, head=rx.head, delimiter=rx.delimiter, final=final)
        kind = Input.FRAME_COMPLETES if final and (rx.ends or scan.ends) else Input.FRAME_GOOD
        return _Step(kind, fn=fn, frame=frame, tolerated=tolerated, scan=scan)

    def _judge_reply(self, step: _Step) -> _Step:
        """Classify the receiver's reply to our frame in flight (ASTM.md §1.5, §6 item 14). Pure."""
        flight, fn = self._flight, self._flight.fn
        if step.input is Input.ACK:
            last = len(self._outbox) == 1 and flight.piece == len(self._outbox[0].pieces) - 1
            return _Step(Input.ACKED_LAST if last else Input.ACKED_MORE, fn=fn)
        if step.input is Input.EOT:
            return _Step(Input.INTERRUPTED, fn=fn)
        # NAK or any other byte: "characters other than [ACK]" reject the frame (e411 p.24).
        kind = Input.REFUSED_LAST if flight.refusals + 1 >= MAX_TRIES else Input.REFUSED
        return _Step(kind, fn=fn, reason=_REFUSALS.get(step.input, "other bytes"))

    # --- actions (named in TRANSITIONS) ---------------------------------------------------------
    def _nothing(self, step: _Step) -> None:
        """Do nothing (an EOT in IDLE)."""

    def _ignore(self, step: _Step) -> None:
        if step.count:
            self._events.append(ev.BytesIgnored(step.count, self._state))

    def _establish(self, step: _Step) -> None:
        # ENQ: reply ACK, expect FN 1, start the frame-wait timer (ASTM.md §6 item 3).
        self._rx = _Transfer()
        self._unconfirmed = None
        self._events.append(ev.LinkEstablished())
        self._reply(f.ACK)

    def _restart(self, step: _Step) -> None:
        # A new ENQ mid-transfer: the sender restarted; yield to it (ASTM.md §1.3, §5.8).
        self._discard("new ENQ")
        self._establish(step)

    def _end_transfer(self, step: _Step) -> None:
        # EOT is never answered (ASTM.md §1.8); an incomplete message is discarded. The other
        # side's session is over, which also ends any hold-off on our bids (§1.6, §5.8).
        self._discard("eot")
        self._events.append(ev.TransferEnded())
        self._deadline = self._hold_until = None

    def _time_out(self, step: _Step) -> None:
        # A silent peer did not finish its session: a hold-off on our bids still runs its course.
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
        before = _Transfer(text=bytearray(rx.text), frames=list(rx.frames), ends=list(rx.ends), head=rx.head,
                           delimiter=rx.delimiter, expected_fn=rx.expected_fn, last_fn=rx.last_fn,
                           last_frame=rx.last_frame)  # fmt: skip
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

    # --- sender actions (named in TRANSITIONS) --------------------------------------------------
    def _bid(self, step: _Step) -> None:
        # ENQ and a 15 s wait for the reply (ASTM.md §1.3).
        self._send(f.ENQ)

    def _wake(self, step: _Step) -> None:
        """The hold-off ended; :meth:`_settle` bids."""
        self._deadline = None

    def _start_sending(self, step: _Step) -> None:
        # The receiver ACKed our ENQ: FN is 1 for the first frame of every transfer phase (§1.4).
        self._flight = _Flight()
        self._send_frame()

    def _send_next(self, step: _Step) -> None:
        self._advance()
        self._send_frame()

    def _finish(self, step: _Step) -> None:
        self._advance()
        self._terminate(hold=None)

    def _retransmit(self, step: _Step) -> None:
        # Same frame, same FN (§1.5); every transmission restarts the 15 s reply timer.
        self._flight.refusals += 1
        self._events.append(ev.FrameRefused(self._flight.fn, step.reason))
        self._send(self._flight.frame)

    def _busy(self, step: _Step) -> None:
        # NAK to ENQ: the receiver is busy; bid again after at least 10 s (§1.3). No EOT: the
        # link was never ours.
        self._deadline = None
        self._hold_until = self._now + BUSY_DELAY
        self._fail("receiver busy: NAK to ENQ")

    def _yield(self, step: _Step) -> None:
        # Contention (§1.3, §6 item 12): the instrument has priority. We ACK its ENQ and receive,
        # and bid again only after 20 s or once its session ends (_end_transfer, _time_out).
        self._events.append(ev.ContentionYielded())
        self._hold_until = self._now + CONTENTION_DELAY
        self._establish(step)

    def _interrupted(self, step: _Step) -> None:
        # Receiver interrupt (§1.7): the frame counts as received. We honour it: EOT, and no bid
        # for 15 s, so the other side can send. A message cut short is sent whole again later.
        if self._flight.piece == len(self._outbox[0].pieces) - 1:
            self._events.append(ev.MessageSent(self._outbox.popleft().text))
        else:
            self._fail(f"receiver interrupt after frame {self._flight.fn}")
        self._terminate(hold=INTERRUPT_DELAY)

    def _abort(self, step: _Step) -> None:
        # Timeout (§1.3, §1.5) or the 6th refusal of one frame (§1.5): EOT, idle, requeue.
        if step.input is Input.REFUSED_LAST:
            self._events.append(ev.FrameRefused(self._flight.fn, step.reason))
            reason = f"frame {self._flight.fn} refused {MAX_TRIES} times (last reply: {step.reason})"
        elif self._state == BIDDING:
            reason = f"no reply to ENQ within {REPLY_TIMEOUT:g} s"
        else:
            reason = f"no reply to frame {self._flight.fn} within {REPLY_TIMEOUT:g} s"
        self._terminate(hold=RETRY_DELAY)
        self._fail(reason)

    # --- helpers --------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        # Every ENQ or frame we send starts the 15 s reply timer (ASTM.md §1.6).
        self._outgoing += data
        self._deadline = self._now + REPLY_TIMEOUT

    def _send_frame(self) -> None:
        flight = self._flight
        text, final = self._outbox[0].pieces[flight.piece]
        flight.frame = f.build_frame(flight.fn, text, final=final)
        self._send(flight.frame)

    def _advance(self) -> None:
        """Our frame was ACKed: move on to the next piece, or to the next queued message."""
        flight, head = self._flight, self._outbox[0]
        if flight.piece == len(head.pieces) - 1:
            self._outbox.popleft()
            self._events.append(ev.MessageSent(head.text))
            flight.piece = 0
        else:
            flight.piece += 1
        flight.fn, flight.refusals = (flight.fn + 1) % 8, 0

    def _terminate(self, *, hold: float | None) -> None:
        # EOT ends our transfer phase; nobody answers it (§1.8).
        self._outgoing += f.EOT
        self._deadline = None
        self._hold_until = None if hold is None else self._now + hold

    def _fail(self, reason: str) -> None:
        """Count a failed try of the first queued message; drop it after the 6th."""
        head = self._outbox[0]
        head.failures += 1
        requeued = head.failures < MAX_TRIES
        if not requeued:
            self._outbox.popleft()
        self._events.append(ev.SendFailed(reason, head.text, requeued))

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

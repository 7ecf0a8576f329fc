"""ASTM E1381 / CLSI LIS01-A2 frames: control bytes, checksum, building, reading, reassembly.

Pure functions and one incremental reader; stdlib only, no I/O. Citations "ASTM.md §x"
refer to the project's research notes (ASTM.md in the shared docs), which quote E1381/LIS01-A2.

A frame on the wire is ``STX FN text ETB|ETX C1 C2 CR LF``. :class:`FrameReader` turns an arbitrary
stream of bytes (TCP and serial reads split and merge frames at will) into tokens: whole frames,
broken frames, single control bytes, and runs of junk. It does not judge frames (checksum, FN,
restricted characters): the link engine does that, because what to do depends on its state and
policy. :func:`scan_records` finds where messages end in the text of accepted frames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from labmw.errors import LocalProtocolError

# --- control bytes (E1381, plain ASCII) -----------------------------------------------------------
SOH_BYTE = 0x01
STX_BYTE = 0x02
ETX_BYTE = 0x03
EOT_BYTE = 0x04
ENQ_BYTE = 0x05
ACK_BYTE = 0x06
LF_BYTE = 0x0A
CR_BYTE = 0x0D
DLE_BYTE = 0x10
NAK_BYTE = 0x15
SYN_BYTE = 0x16
ETB_BYTE = 0x17

STX = bytes([STX_BYTE])
ETX = bytes([ETX_BYTE])
EOT = bytes([EOT_BYTE])
ENQ = bytes([ENQ_BYTE])
ACK = bytes([ACK_BYTE])
LF = bytes([LF_BYTE])
CR = bytes([CR_BYTE])
NAK = bytes([NAK_BYTE])
ETB = bytes([ETB_BYTE])

#: Bytes that may not appear in frame text (E1381 frame text rules, ASTM.md §1.4):
#: SOH STX ETX EOT ENQ ACK DLE NAK SYN ETB LF DC1 DC2 DC3 DC4. CR is allowed as record terminator.
RESTRICTED: frozenset[int] = frozenset(
    {SOH_BYTE, STX_BYTE, ETX_BYTE, EOT_BYTE, ENQ_BYTE, ACK_BYTE, LF_BYTE, DLE_BYTE}
    | {0x11, 0x12, 0x13, 0x14, NAK_BYTE, SYN_BYTE, ETB_BYTE}
)

#: E1381-95 limit (247-byte frame) and the LIS01-A2 limit (64,000-byte frame, 7 bytes overhead).
LEGACY_MAX_TEXT = 240
MAX_TEXT = 63_993

_RESTRICTED_RE = re.compile(b"[" + re.escape(bytes(sorted(RESTRICTED))) + b"]")
# Inside a frame: the terminators ETX/ETB, and STX/ENQ/EOT, which can only mean the frame was cut.
_IN_FRAME_RE = re.compile(b"[\x02\x03\x04\x05\x17]")
# Between frames: bytes that mean something (STX opens a frame; the rest are link control bytes).
_BETWEEN_RE = re.compile(b"[\x02\x04\x05\x06\x15]")
# After an over-long frame: skip until something that can start a fresh exchange.
_RESYNC_RE = re.compile(b"[\x02\x04\x05]")
_INTERRUPTORS = frozenset({STX_BYTE, ENQ_BYTE, EOT_BYTE})

CONTROL_NAMES: dict[int, str] = {
    STX_BYTE: "STX", ETX_BYTE: "ETX", EOT_BYTE: "EOT", ENQ_BYTE: "ENQ",
    ACK_BYTE: "ACK", NAK_BYTE: "NAK", ETB_BYTE: "ETB",
}  # fmt: skip


def checksum(body: bytes) -> bytes:
    """Return the E1381 checksum of ``body`` as two uppercase hex ASCII bytes.

    ``body`` is every byte from FN up to and including ETX or ETB (STX excluded). The sum is taken
    over raw bytes, never decoded text (ASTM.md §1.4, §5.2). Raises nothing.
    """
    return b"%02X" % (sum(body) & 0xFF)


def build_frame(fn: int, text: bytes, *, final: bool) -> bytes:
    """Build one frame ``STX FN text ETX|ETB C1 C2 CR LF``.

    ``fn`` is the frame number 0..7, ``final`` selects ETX (end frame) over ETB (intermediate).
    Raises :class:`LocalProtocolError` if ``fn`` is out of range or ``text`` holds a restricted byte.
    """
    if not 0 <= fn <= 7:
        raise LocalProtocolError(f"frame number must be 0..7, got {fn}")
    bad = _RESTRICTED_RE.search(text)
    if bad is not None:
        raise LocalProtocolError(f"restricted byte 0x{bad.group()[0]:02X} in frame text")
    body = b"%d" % fn + text + (ETX if final else ETB)
    return STX + body + checksum(body) + CR + LF


def build_frames(message_text: bytes, *, max_text: int = LEGACY_MAX_TEXT, first_fn: int = 1) -> list[bytes]:
    """Cut ``message_text`` into intermediate (ETB) frames and one end (ETX) frame.

    Each frame carries at most ``max_text`` bytes of text; a cut may fall inside a record
    (ASTM.md §1.4, "ETB"). Frame numbers start at ``first_fn`` and wrap 7 -> 0. Empty text gives
    one empty end frame. Raises :class:`LocalProtocolError` on ``max_text < 1``, a bad
    ``first_fn`` or a restricted byte in the text.
    """
    if max_text < 1:
        raise LocalProtocolError(f"max_text must be at least 1, got {max_text}")
    if not 0 <= first_fn <= 7:
        raise LocalProtocolError(f"first frame number must be 0..7, got {first_fn}")
    pieces = [message_text[i : i + max_text] for i in range(0, len(message_text), max_text)] or [b""]
    last = len(pieces) - 1
    return [build_frame((first_fn + i) % 8, piece, final=i == last) for i, piece in enumerate(pieces)]


def frame_texts(message_text: bytes, *, max_text: int = LEGACY_MAX_TEXT) -> list[tuple[bytes, bool]]:
    """Cut a message into the texts of the frames that carry it, one record per frame.

    Each record (ending with its CR) starts a new frame, as ASTM.md §6 item 13 recommends; a record
    longer than ``max_text`` continues in further frames. Returns ``(text, final)`` pairs: ``final``
    (an ETX end frame) for the frame that ends a record, ETB for the frames before it. Frame numbers
    are not assigned here: they depend on where the transfer phase stands. Raises
    :class:`LocalProtocolError` on ``max_text < 1``, empty text or a restricted byte in the text.
    """
    if max_text < 1:
        raise LocalProtocolError(f"max_text must be at least 1, got {max_text}")
    if not message_text:
        raise LocalProtocolError("a message needs at least one record")
    bad = _RESTRICTED_RE.search(message_text)
    if bad is not None:
        raise LocalProtocolError(f"restricted byte 0x{bad.group()[0]:02X} in message text")
    pieces: list[tuple[bytes, bool]] = []
    pos = 0
    while pos < len(message_text):
        cr = message_text.find(CR, pos)
        end = len(message_text) if cr == -1 else cr + 1
        starts = range(pos, end, max_text)
        pieces += [(message_text[s : min(s + max_text, end)], s + max_text >= end) for s in starts]
        pos = end
    return pieces


# --- tokens produced by FrameReader --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Frame:
    """A complete frame, not yet judged: ``raw`` is STX through C2 as received (no CR LF)."""

    raw: bytes
    #: index of ETX/ETB in ``raw``
    end: int

    @property
    def number(self) -> bytes:
        """The FN byte as received (empty if the terminator followed STX at once)."""
        return self.raw[1:2] if self.end > 1 else b""

    @property
    def fn(self) -> int | None:
        """The frame number 0..7, or None if FN is missing or not one of '0'..'7'."""
        n = self.number
        return n[0] - 0x30 if n and 0x30 <= n[0] <= 0x37 else None

    @property
    def text(self) -> bytes:
        """The frame text between FN and ETX/ETB."""
        return self.raw[2 : self.end]

    @property
    def final(self) -> bool:
        """True for an end frame (ETX), False for an intermediate frame (ETB)."""
        return self.raw[self.end] == ETX_BYTE

    @property
    def received_checksum(self) -> bytes:
        """C1 C2 as received (not validated: they may be lowercase or not hex at all)."""
        return self.raw[self.end + 1 : self.end + 3]

    @property
    def expected_checksum(self) -> bytes:
        """The checksum computed over FN..ETX/ETB, uppercase."""
        return checksum(self.raw[1 : self.end + 1])

    @property
    def checksum_ok(self) -> bool:
        """Whether C1 C2 match, compared case-insensitively (ASTM.md §5.2: senders differ)."""
        return self.received_checksum.upper() == self.expected_checksum


@dataclass(frozen=True, slots=True)
class BrokenFrame:
    """A frame that cannot be completed: cut by STX/ENQ/EOT (``interrupted_by``) or over-long."""

    reason: str
    fn: int | None
    #: bytes dropped from the stream for this frame
    count: int
    #: the byte that cut the frame short (it is delivered next), or None for an over-long frame
    interrupted_by: int | None


@dataclass(frozen=True, slots=True)
class ControlByte:
    """A single link control byte between frames: ENQ, EOT, ACK or NAK."""

    byte: int


@dataclass(frozen=True, slots=True)
class Junk:
    """A run of bytes outside any frame that mean nothing (noise, stray CR/LF, skipped bytes)."""

    count: int


#: What :meth:`FrameReader.next_token` returns.
Token: TypeAlias = Frame | BrokenFrame | ControlByte | Junk


def frame_problem(frame: Frame) -> str | None:
    """Return why ``frame`` is malformed apart from its checksum and FN sequence, or None.

    Checks that FN is one ASCII digit '0'..'7' and that the text has no restricted byte
    (ASTM.md §1.4). Raises nothing.
    """
    number = frame.number
    if not number:
        return "missing frame number"
    if not 0x30 <= number[0] <= 0x39:
        return f"frame number 0x{number[0]:02X} is not a digit"
    if frame.fn is None:
        return f"frame number {number.decode('ascii')} is out of range 0..7"
    bad = _RESTRICTED_RE.search(frame.text)
    if bad is not None:
        return f"restricted byte 0x{bad.group()[0]:02X} in frame text"
    return None


def _fn_of(buf: bytearray) -> int | None:
    return buf[1] - 0x30 if len(buf) > 1 and 0x30 <= buf[1] <= 0x37 else None


_BETWEEN, _IN_FRAME, _TRAILER_CR, _TRAILER_LF, _SKIP = range(5)


class FrameReader:
    """Incremental E1381 frame reader over a growing byte buffer.

    ``feed(data)`` appends bytes; ``next_token()`` returns the next :data:`Token` or None when more
    bytes are needed. Never assumes one read is one frame (ASTM.md §5.1). Memory is bounded: a
    frame whose text grows past ``max_text`` is dropped (one :class:`BrokenFrame`), and bytes are
    skipped until the next STX, ENQ or EOT. The buffer then holds at most ``max_text + 3`` bytes
    plus whatever was fed and not yet read.

    Trailer tolerance: a frame ends after C1 C2; an immediately following CR, LF or CR LF is
    consumed silently, so LF-only senders (the cobas c111 capture) and senders without a trailer
    both work. Token boundaries do not depend on how the input was chunked, except that a run of
    junk may be reported as several :class:`Junk` tokens.
    """

    def __init__(self, *, max_text: int = MAX_TEXT) -> None:
        if max_text < 1:
            raise LocalProtocolError(f"max_text must be at least 1, got {max_text}")
        self._max_text = max_text
        self._buf = bytearray()
        self._state = _BETWEEN
        self._scan = 1  # where the search for the frame terminator resumes

    @property
    def buffered(self) -> int:
        """Number of bytes held: a partial frame plus input fed but not yet read."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes. Raises nothing."""
        self._buf += data

    def next_token(self) -> Token | None:
        """Return the next token, or None when the buffered bytes do not complete one.

        Raises nothing: every byte sequence maps to tokens.
        """
        buf = self._buf
        while buf:
            state = self._state
            if state == _IN_FRAME:
                return self._read_frame()
            if state == _TRAILER_CR:
                self._state = _TRAILER_LF if buf[0] == CR_BYTE else _BETWEEN
                if buf[0] in (CR_BYTE, LF_BYTE):
                    del buf[:1]
                continue
            if state == _TRAILER_LF:
                self._state = _BETWEEN
                if buf[0] == LF_BYTE:
                    del buf[:1]
                continue
            found = (_RESYNC_RE if state == _SKIP else _BETWEEN_RE).search(buf)
            if found is None or found.start() > 0:
                count = len(buf) if found is None else found.start()
                del buf[:count]
                return Junk(count)
            self._state = _BETWEEN
            if buf[0] == STX_BYTE:
                self._state, self._scan = _IN_FRAME, 1
                continue
            byte = buf[0]
            del buf[:1]
            return ControlByte(byte)
        return None

    def _read_frame(self) -> Token | None:
        buf = self._buf
        # STX + FN + max_text + 1 bytes with no terminator yet: the text is already too long.
        limit = self._max_text + 3
        found = _IN_FRAME_RE.search(buf, self._scan)
        if found is None or found.start() >= limit:
            if len(buf) < limit:
                self._scan = len(buf)
                return None
            return self._drop(limit, f"frame text exceeds {self._max_text} bytes", None, _SKIP)
        at = found.start()
        if buf[at] in _INTERRUPTORS:
            return self._drop(at, f"frame cut short by {CONTROL_NAMES[buf[at]]}", buf[at], _BETWEEN)
        # ETX/ETB at `at`: two checksum bytes must follow. A control byte there cuts the frame too.
        self._scan = at
        for pos in (at + 1, at + 2):
            if pos >= len(buf):
                return None
            if buf[pos] in _INTERRUPTORS:
                return self._drop(pos, f"frame cut short by {CONTROL_NAMES[buf[pos]]}", buf[pos], _BETWEEN)
        raw = bytes(buf[: at + 3])
        del buf[: at + 3]
        self._state = _TRAILER_CR
        return Frame(raw, at)

    def _drop(self, count: int, reason: str, interrupted_by: int | None, next_state: int) -> BrokenFrame:
        fn = _fn_of(self._buf)
        del self._buf[:count]
        self._state = next_state
        return BrokenFrame(reason, fn, count, interrupted_by)


# --- record boundaries in reassembled text (ASTM.md §1.4 "ETB", §6 items 9-10) --------------------
@dataclass(frozen=True, slots=True)
class RecordScan:
    """Where messages end in newly appended frame text, and the scanner state to carry on with.

    ``ends`` are offsets into the scanned text just past each L record (its CR included);
    ``head`` is the first (up to two) bytes of the record still open at the end of the text;
    ``delimiter`` is the field delimiter of the current message (taken from its H record).
    """

    ends: tuple[int, ...]
    head: bytes
    delimiter: int


DEFAULT_DELIMITER = 0x7C  # '|', used until an H record names the message's own delimiter


def scan_records(text: bytes, *, head: bytes, delimiter: int, final: bool) -> RecordScan:
    """Find the L records that end messages in ``text``, appended after an open record.

    ``head`` and ``delimiter`` come from the previous scan (``b""`` and :data:`DEFAULT_DELIMITER`
    at the start of a transfer). Records end at CR; a cut between frames may fall anywhere, so only
    the first two bytes of the open record are carried over. A record is a terminator record when
    it is exactly ``L`` or starts with ``L`` followed by the field delimiter (the message
    terminator record, ASTM.md §6 item 10). When ``final`` (an ETX frame) the open record also
    ends at the end of the text, so an L record whose CR was left out still ends the message.
    Work is linear in ``len(text)``. Raises nothing.
    """
    ends: list[int] = []
    pos = 0
    while True:
        cr = text.find(CR, pos)
        stop = len(text) if cr == -1 else cr
        record_head = (head + text[pos : min(pos + 2, stop)])[:2]
        if cr == -1 and not (final and record_head):
            return RecordScan(tuple(ends), record_head, delimiter)  # the record stays open
        if record_head[:1] == b"H" and len(record_head) == 2:
            delimiter = record_head[1]
        is_terminator = record_head[:1] == b"L" and (len(record_head) == 1 or record_head[1] == delimiter)
        if is_terminator:
            ends.append(stop if cr == -1 else cr + 1)
            delimiter = DEFAULT_DELIMITER
        if cr == -1:
            return RecordScan(tuple(ends), b"" if is_terminator else record_head, delimiter)
        head = b""
        pos = cr + 1

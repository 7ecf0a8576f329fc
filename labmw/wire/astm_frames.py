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
import zlib
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
# FN '0'..'7' then text free of restricted bytes: the whole of a good frame's FN..text, checked in
# one pass; only a frame that fails it is examined byte by byte for the reason.
_CLEAN_FRAME_RE = re.compile(b"[0-7][^" + re.escape(bytes(sorted(RESTRICTED))) + b"]*")
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
    return b"%02X" % (_byte_sum(body) & 0xFF)


# Adler-32's low half is 1 + the byte sum modulo 65521 (RFC 1950 §8.2). Up to 256 bytes the sum is at
# most 65,280, so no reduction happens and the exact sum comes back at C speed (``sum`` iterates in
# Python objects, ten times slower on a typical frame).
_ADLER_CHUNK = 256


def _byte_sum(data: bytes | bytearray | memoryview) -> int:
    """Return the plain sum of the bytes of ``data``. Raises nothing."""
    if len(data) <= _ADLER_CHUNK:
        return (zlib.adler32(data) & 0xFFFF) - 1
    view = memoryview(data)
    return sum((zlib.adler32(view[i : i + _ADLER_CHUNK]) & 0xFFFF) - 1 for i in range(0, len(view), _ADLER_CHUNK))


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
        end = self.end
        return b"%02X" % (_byte_sum(self.raw[1 : end + 1]) & 0xFF)

    @property
    def checksum_ok(self) -> bool:
        """Whether C1 C2 match, compared case-insensitively (ASTM.md §5.2: senders differ)."""
        end = self.end
        received = self.raw[end + 1 : end + 3]
        expected = b"%02X" % (_byte_sum(self.raw[1 : end + 1]) & 0xFF)
        return received == expected or received.upper() == expected


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
    if _CLEAN_FRAME_RE.fullmatch(frame.raw, 1, frame.end) is not None:
        return None  # the common case: one regex pass over FN and text
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


_BETWEEN, _IN_FRAME, _TRAILER_CR, _TRAILER_LF, _SKIP = range(5)
_BETWEEN_BYTES = frozenset({STX_BYTE, EOT_BYTE, ENQ_BYTE, ACK_BYTE, NAK_BYTE})  # what _BETWEEN_RE finds
# Frames are the hot path: built without the dataclass __init__ (two object.__setattr__ calls for a
# frozen class). The slot descriptors set exactly the fields __init__ would.
_new_object = object.__new__
_set_raw = Frame.raw.__set__  # type: ignore[attr-defined]
_set_end = Frame.end.__set__  # type: ignore[attr-defined]


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
        # Bytes before _pos are read; they are cut off the buffer only when a token needs more
        # input or more is fed, so each frame costs one copy, not a shift of the whole buffer.
        self._pos = 0
        self._state = _BETWEEN
        self._scan = 1  # where the search for the frame terminator resumes, from the frame's STX

    @property
    def buffered(self) -> int:
        """Number of bytes held: a partial frame plus input fed but not yet read."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes. Raises nothing."""
        self._compact()
        self._buf += data

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    def next_token(self) -> Token | None:
        """Return the next token, or None when the buffered bytes do not complete one.

        Raises nothing: every byte sequence maps to tokens.
        """
        buf = self._buf
        while (pos := self._pos) < len(buf):
            state = self._state
            if state == _IN_FRAME:
                token = self._read_frame(pos)
                if token is None:
                    break
                return token
            byte = buf[pos]
            if state == _TRAILER_CR:
                self._state = _TRAILER_LF if byte == CR_BYTE else _BETWEEN
                if byte == CR_BYTE or byte == LF_BYTE:
                    self._pos = pos + 1
                continue
            if state == _TRAILER_LF:
                self._state = _BETWEEN
                if byte == LF_BYTE:
                    self._pos = pos + 1
                continue
            if state == _SKIP or byte not in _BETWEEN_BYTES:
                found = (_RESYNC_RE if state == _SKIP else _BETWEEN_RE).search(buf, pos)
                if found is None or found.start() > pos:
                    end = len(buf) if found is None else found.start()
                    self._pos = end
                    return Junk(end - pos)
                byte = buf[pos]
            if byte == STX_BYTE:
                self._state, self._scan = _IN_FRAME, 1
                continue
            self._state, self._pos = _BETWEEN, pos + 1
            return ControlByte(byte)
        self._compact()
        return None

    def _read_frame(self, pos: int) -> Token | None:
        """The frame whose STX is at ``pos``, a BrokenFrame, or None when more bytes are needed."""
        buf = self._buf
        # STX + FN + max_text + 1 bytes with no terminator yet: the text is already too long.
        limit = self._max_text + 3
        found = _IN_FRAME_RE.search(buf, pos + self._scan, pos + limit)
        if found is None:
            if len(buf) - pos < limit:
                self._scan = len(buf) - pos
                return None
            return self._drop(limit, f"frame text exceeds {self._max_text} bytes", None, _SKIP)
        at = found.start()
        # ETX/ETB at `at`: two checksum bytes must follow. STX/ENQ/EOT there or instead cut the frame.
        size = len(buf)
        if (buf[at] in _INTERRUPTORS or at + 2 >= size or buf[at + 1] in _INTERRUPTORS
                or buf[at + 2] in _INTERRUPTORS):  # fmt: skip
            return self._cut_or_wait(pos, at)
        frame = _new_object(Frame)
        _set_raw(frame, bytes(buf[pos : at + 3]))
        _set_end(frame, at - pos)
        self._pos = self._after_trailer(at + 3)
        return frame

    def _cut_or_wait(self, pos: int, at: int) -> BrokenFrame | None:
        """The frame from ``pos`` cut short at or after ``at``, or None while C1 C2 are still due."""
        buf = self._buf
        for check in (at, at + 1, at + 2):
            if check >= len(buf):
                self._scan = at - pos
                return None
            if buf[check] in _INTERRUPTORS:
                cut = buf[check]
                return self._drop(check - pos, f"frame cut short by {CONTROL_NAMES[cut]}", cut, _BETWEEN)
        return None  # not reached: _read_frame comes here only when one of the checks holds

    def _after_trailer(self, at: int) -> int:
        """Skip a CR LF, CR or LF trailer at ``at`` as far as it has arrived; return the new read position.

        What has not arrived yet is left to the _TRAILER_* states, so the result does not depend on
        where reads split the trailer.
        """
        buf, size = self._buf, len(self._buf)
        if at >= size:
            self._state = _TRAILER_CR
            return at
        self._state = _BETWEEN
        byte = buf[at]
        if byte == LF_BYTE:
            return at + 1
        if byte != CR_BYTE:
            return at
        if at + 1 >= size:
            self._state = _TRAILER_LF
            return at + 1
        return at + 2 if buf[at + 1] == LF_BYTE else at + 1

    def _drop(self, count: int, reason: str, interrupted_by: int | None, next_state: int) -> BrokenFrame:
        buf, pos = self._buf, self._pos
        fn = buf[pos + 1] - 0x30 if len(buf) > pos + 1 and 0x30 <= buf[pos + 1] <= 0x37 else None
        self._pos = pos + count
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
    first_cr = text.find(CR_BYTE)
    if first_cr == -1:  # the open record goes on (or, in an end frame, ends with the text)
        record_head = (head + text[:2])[:2]
        if not (final and record_head):
            return _make_scan((), record_head, delimiter)
        delimiter, terminator = _classify(record_head, delimiter)
        return _make_scan((len(text),), b"", delimiter) if terminator else _make_scan((), record_head, delimiter)
    ends: list[int] = []
    # The first record began in earlier text when `head` is set; it ends at the first CR.
    record_head = (head + text[: min(2, first_cr)])[:2]
    if record_head:
        delimiter, terminator = _classify(record_head, delimiter)
        if terminator:
            ends.append(first_cr + 1)
    # Records that end before the last CR: only those starting with H or L matter, and a regex
    # finds them without visiting the others.
    last_cr = text.rfind(CR_BYTE)
    for found in _HL_RECORD_RE.finditer(text, first_cr, last_cr):
        at = found.start() + 1  # where the record starts; its second byte exists (at most the last CR)
        second = text[at + 1]
        if text[at] == _H_BYTE:
            if second != CR_BYTE:
                delimiter = second
        elif second == CR_BYTE or second == delimiter:
            ends.append(text.index(CR_BYTE, at) + 1)
            delimiter = DEFAULT_DELIMITER
    # The record still open after the last CR.
    record_head = text[last_cr + 1 : last_cr + 3]
    if not (final and record_head):
        return _make_scan(tuple(ends), record_head, delimiter)
    delimiter, terminator = _classify(record_head, delimiter)
    if terminator:
        ends.append(len(text))
        return _make_scan(tuple(ends), b"", delimiter)
    return _make_scan(tuple(ends), record_head, delimiter)


_H_BYTE = 0x48
# A record that starts with H (it may name a new delimiter) or L (it may end the message).
_HL_RECORD_RE = re.compile(b"\rH|\rL")


def _classify(record_head: bytes, delimiter: int) -> tuple[int, bool]:
    """The delimiter after a record whose first (up to two) bytes are ``record_head``, and whether it
    is a terminator record (which resets the delimiter for the next message)."""
    kind = record_head[:1]
    if kind == b"H":
        return (record_head[1] if len(record_head) == 2 else delimiter), False
    if kind == b"L" and (len(record_head) == 1 or record_head[1] == delimiter):
        return DEFAULT_DELIMITER, True
    return delimiter, False


# One RecordScan per accepted frame: built like _make_frame, without the frozen __init__.
_set_ends = RecordScan.ends.__set__  # type: ignore[attr-defined]
_set_head = RecordScan.head.__set__  # type: ignore[attr-defined]
_set_delimiter = RecordScan.delimiter.__set__  # type: ignore[attr-defined]


def _make_scan(ends: tuple[int, ...], head: bytes, delimiter: int) -> RecordScan:
    scan = _new_object(RecordScan)
    _set_ends(scan, ends)
    _set_head(scan, head)
    _set_delimiter(scan, delimiter)
    return scan

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
from collections.abc import Callable
from dataclasses import dataclass, field
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

_RESTRICTED_CLASS = re.escape(bytes(sorted(RESTRICTED)))
_RESTRICTED_RE = re.compile(b"[" + _RESTRICTED_CLASS + b"]")
# FN '0'..'7', then text free of restricted bytes: all of a good frame's FN and text in one pass.
_CLEAN_FRAME_RE = re.compile(b"[0-7][^" + _RESTRICTED_CLASS + b"]*")
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
    return _CHECKSUMS[_byte_sum(body) & 0xFF]


# Adler-32's low half is 1 + the byte sum modulo 65521 (RFC 1950 §8.2). Over at most 256 bytes the
# sum stays below 65,281, so it comes back exact, at C speed: ``sum`` is ten times slower per frame.
_ADLER_CHUNK = 256
_adler32 = zlib.adler32
#: The checksum bytes of every byte sum modulo 256, so checking a frame formats no string.
_CHECKSUMS = tuple(b"%02X" % i for i in range(256))


def _byte_sum(data: bytes | bytearray | memoryview) -> int:
    """Return the plain sum of the bytes of ``data``, 256 bytes per Adler-32 call. Raises nothing."""
    if len(data) <= _ADLER_CHUNK:
        return (_adler32(data) & 0xFFFF) - 1
    view = memoryview(data)
    return sum((_adler32(view[i : i + _ADLER_CHUNK]) & 0xFFFF) - 1 for i in range(0, len(view), _ADLER_CHUNK))


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
    """A complete frame, not yet judged: ``raw`` is STX through C2 as received (no CR LF).

    ``Frame(raw, end)``; ``text`` is derived from them (``raw[2:end]``) and not part of the value.
    """

    raw: bytes
    #: index of ETX/ETB in ``raw``
    end: int
    #: the frame text between FN and ETX/ETB, kept because every user of a frame reads it
    text: bytes = field(init=False, repr=False, compare=False)
    # Set by FrameReader when its scan already proved FN '0'..'7' and no restricted byte in the
    # text, so frame_problem need not scan again. Not part of the value.
    _clean: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", self.raw[2 : self.end])

    @property
    def number(self) -> bytes:
        """The FN byte as received (empty if the terminator followed STX at once)."""
        return self.raw[1:2] if self.end > 1 else b""

    @property
    def fn(self) -> int | None:
        """The frame number 0..7, or None if FN is missing or not one of '0'..'7'."""
        raw = self.raw
        return raw[1] - 0x30 if self.end > 1 and len(raw) > 1 and 0x30 <= raw[1] <= 0x37 else None

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
        return _CHECKSUMS[_byte_sum(self.raw[1 : self.end + 1]) & 0xFF]

    @property
    def checksum_ok(self) -> bool:
        """Whether C1 C2 match, compared case-insensitively (ASTM.md §5.2: senders differ)."""
        raw, end = self.raw, self.end
        # See _byte_sum; Adler-32's low half is at least 1, so its low byte minus 1 is the sum's.
        total = _adler32(raw[1 : end + 1]) - 1 if end <= _ADLER_CHUNK else _byte_sum(raw[1 : end + 1])
        received, expected = raw[end + 1 : end + 3], _CHECKSUMS[total & 0xFF]
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
    if frame._clean or _CLEAN_FRAME_RE.fullmatch(frame.raw, 1, frame.end) is not None:
        return None  # the common case: the reader's scan or one regex pass found nothing wrong
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
# A whole frame as nearly all arrive: STX, FN '0'..'7' and text free of restricted bytes (or
# neither: FN missing), ETX/ETB, and two checksum bytes that are not STX/ENQ/EOT. Anything else
# takes the byte-by-byte path, which finds the same tokens.
_WHOLE_FRAME_RE = re.compile(b"\x02(?:[0-7][^" + _RESTRICTED_CLASS + b"]*)?[\x03\x17][^\x02\x04\x05]{2}")
_BETWEEN_BYTES = frozenset({STX_BYTE, EOT_BYTE, ENQ_BYTE, ACK_BYTE, NAK_BYTE})  # what _BETWEEN_RE finds
# Frames are the hot path: the reader builds them without the frozen dataclass's __init__ (an
# object.__setattr__ per field, then __post_init__); the slot descriptors set the same fields.
_new_object = object.__new__
# (read from the class dict: attribute access on the class gives mypy the field's type, not the descriptor's).
_set_raw: Callable[[Frame, bytes], None] = vars(Frame)["raw"].__set__
_set_end: Callable[[Frame, int], None] = vars(Frame)["end"].__set__
_set_text: Callable[[Frame, bytes], None] = vars(Frame)["text"].__set__
_set_clean: Callable[[Frame, bool], None] = vars(Frame)["_clean"].__set__


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
        self._max_end = max_text + 2  # the largest index of ETX/ETB in a frame: STX, FN, text
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
        buf, pos, state = self._buf, self._pos, self._state
        # Fast path: the CR LF (or LF) after the previous frame, then a whole, clean frame, taken as
        # the states below would take them. The returned frame's trailer stays buffered until the
        # next call (it is the first thing the next call reads).
        if state == _TRAILER_CR:
            if buf.startswith(b"\r\n", pos):
                state, pos = _BETWEEN, pos + 2
            elif buf.startswith(b"\n", pos):
                state, pos = _BETWEEN, pos + 1
        if state == _BETWEEN:
            found = _WHOLE_FRAME_RE.match(buf, pos)
            if found is not None and (end := len(raw := found.group()) - 3) <= self._max_end:
                frame = _new_object(Frame)
                _set_raw(frame, raw)
                _set_end(frame, end)
                _set_text(frame, raw[2:end])
                _set_clean(frame, end > 1)  # FN and text matched the clean pattern unless FN is missing
                self._state, self._pos = _TRAILER_CR, found.end()
                return frame
        self._state, self._pos = state, pos
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
                if byte in (CR_BYTE, LF_BYTE):
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
        # ETX/ETB at `at` needs two checksum bytes after it; STX/ENQ/EOT there or instead cut the frame.
        self._scan = at - pos
        for check in (at, at + 1, at + 2):
            if check >= len(buf):
                return None
            if buf[check] in _INTERRUPTORS:
                cut = buf[check]
                return self._drop(check - pos, f"frame cut short by {CONTROL_NAMES[cut]}", cut, _BETWEEN)
        self._state, self._pos = _TRAILER_CR, at + 3
        return Frame(bytes(buf[pos : at + 3]), at - pos)

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
    size, first_cr = len(text), text.find(CR_BYTE)
    if first_cr == size - 1 and first_cr > 0 and not head and text[0] not in _H_OR_L:
        # One whole record that neither starts nor ends a message: the usual frame (ASTM.md §6 item 13).
        return _NOTHING_OPEN if delimiter == DEFAULT_DELIMITER else RecordScan((), b"", delimiter)
    ends: list[int] = []
    last_cr = text.rfind(CR_BYTE)
    if first_cr >= 0:
        # The record begun in earlier text (or at the start of this one) ends at the first CR.
        delimiter, terminator = _classify((head + text[: min(2, first_cr)])[:2], delimiter)
        if terminator:
            ends.append(first_cr + 1)
        # Records after it, up to the last CR: a regex finds those starting with H or L, the only
        # ones that matter, without visiting the others.
        for found in _HL_RECORD_RE.finditer(text, first_cr, last_cr) if last_cr > first_cr else ():
            at = found.start() + 1  # the record's first byte; its second one is at most the last CR
            delimiter, terminator = _classify(text[at : at + 1 if text[at + 1] == CR_BYTE else at + 2], delimiter)
            if terminator:
                ends.append(text.index(CR_BYTE, at) + 1)
    # The record still open at the end: after the last CR, or the one continued from `head`.
    record_head = text[last_cr + 1 : last_cr + 3] if first_cr >= 0 else (head + text[:2])[:2]
    if final and record_head:
        delimiter, terminator = _classify(record_head, delimiter)
        if terminator:
            ends.append(size)
            record_head = b""
    if not ends and not record_head and delimiter == DEFAULT_DELIMITER:
        return _NOTHING_OPEN
    return RecordScan(tuple(ends), record_head, delimiter)


_H_OR_L = b"HL"
# A record that starts with H (it may name a new delimiter) or L (it may end the message).
_HL_RECORD_RE = re.compile(b"\rH|\rL")
_NOTHING_OPEN = RecordScan((), b"", DEFAULT_DELIMITER)


def _classify(record_head: bytes, delimiter: int) -> tuple[int, bool]:
    """The delimiter after a record starting with ``record_head`` (up to two bytes), and whether it
    is a terminator record (which resets the delimiter for the next message)."""
    kind = record_head[:1]
    if kind == b"H":
        return (record_head[1] if len(record_head) == 2 else delimiter), False
    if kind == b"L" and (len(record_head) == 1 or record_head[1] == delimiter):
        return DEFAULT_DELIMITER, True
    return delimiter, False

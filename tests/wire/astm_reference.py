"""Oracles for the ASTM fast paths: the straightforward implementations labmw had before they were
tuned for speed, kept here unchanged in behaviour so property tests can hold the tuned code to them.

Each mirrors one public behaviour: :class:`RefFrameReader` (FrameReader: a bytearray shifted byte by
byte, one regex per token), :func:`ref_checksum` (``sum``), :func:`ref_frame_problem` (one check
after another), :func:`ref_scan_records` (every record visited), :func:`ref_decode_message`
(``Record(...)`` with its checks) and the ``ref_*`` accessors (the field re-split on every call).
"""

from __future__ import annotations

import re

from labmw.errors import CodecError
from labmw.wire.astm_frames import (
    CONTROL_NAMES,
    CR_BYTE,
    DEFAULT_DELIMITER,
    ENQ_BYTE,
    EOT_BYTE,
    LF_BYTE,
    RESTRICTED,
    STX_BYTE,
    BrokenFrame,
    ControlByte,
    Frame,
    Junk,
    Token,
)
from labmw.wire.astm_records import Delimiters, Record

_RESTRICTED_RE = re.compile(b"[" + re.escape(bytes(sorted(RESTRICTED))) + b"]")
_IN_FRAME_RE = re.compile(b"[\x02\x03\x04\x05\x17]")
_BETWEEN_RE = re.compile(b"[\x02\x04\x05\x06\x15]")
_RESYNC_RE = re.compile(b"[\x02\x04\x05]")
_INTERRUPTORS = frozenset({STX_BYTE, ENQ_BYTE, EOT_BYTE})
_BETWEEN, _IN_FRAME, _TRAILER_CR, _TRAILER_LF, _SKIP = range(5)


def ref_checksum(body: bytes) -> bytes:
    """The E1381 checksum of ``body`` by plain summation."""
    return b"%02X" % (sum(body) & 0xFF)


def ref_frame_problem(frame: Frame) -> str | None:
    """Why ``frame`` is malformed apart from checksum and sequence, or None (FrameReader's judge)."""
    number = frame.raw[1:2] if frame.end > 1 else b""
    if not number:
        return "missing frame number"
    if not 0x30 <= number[0] <= 0x39:
        return f"frame number 0x{number[0]:02X} is not a digit"
    if number[0] > 0x37:
        return f"frame number {number.decode('ascii')} is out of range 0..7"
    bad = _RESTRICTED_RE.search(frame.raw[2 : frame.end])
    if bad is not None:
        return f"restricted byte 0x{bad.group()[0]:02X} in frame text"
    return None


class RefFrameReader:
    """FrameReader as it was: every consumed byte is deleted from the front of the buffer."""

    def __init__(self, *, max_text: int) -> None:
        self._max_text = max_text
        self._buf = bytearray()
        self._state = _BETWEEN
        self._scan = 1

    @property
    def buffered(self) -> int:
        """Bytes held."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append bytes."""
        self._buf += data

    def next_token(self) -> Token | None:
        """The next token, or None when more bytes are needed."""
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
        buf = self._buf
        fn = buf[1] - 0x30 if len(buf) > 1 and 0x30 <= buf[1] <= 0x37 else None
        del buf[:count]
        self._state = next_state
        return BrokenFrame(reason, fn, count, interrupted_by)


def ref_scan_records(text: bytes, *, head: bytes, delimiter: int, final: bool) -> tuple[tuple[int, ...], bytes, int]:
    """scan_records as it was, visiting every record; returns (ends, head, delimiter)."""
    ends: list[int] = []
    pos = 0
    while True:
        cr = text.find(b"\r", pos)
        stop = len(text) if cr == -1 else cr
        record_head = (head + text[pos : min(pos + 2, stop)])[:2]
        if cr == -1 and not (final and record_head):
            return tuple(ends), record_head, delimiter
        if record_head[:1] == b"H" and len(record_head) == 2:
            delimiter = record_head[1]
        is_terminator = record_head[:1] == b"L" and (len(record_head) == 1 or record_head[1] == delimiter)
        if is_terminator:
            ends.append(stop if cr == -1 else cr + 1)
            delimiter = DEFAULT_DELIMITER
        if cr == -1:
            return tuple(ends), b"" if is_terminator else record_head, delimiter
        head = b""
        pos = cr + 1


def _delimiter_problem(chars: str) -> str | None:
    if len(chars) != 4:
        return "H-2 must declare four delimiters"
    if len(set(chars)) != 4:
        return "delimiters must be four different characters"
    for ch in chars:
        if ch.isalnum() or ch.isspace() or not ch.isprintable():
            return f"{ch!r} cannot be a delimiter"
    return None


def ref_decode_message(text: bytes, encoding: str = "latin-1") -> list[Record]:
    """decode_message as it was: a regex split into lines, Record(...) with its checks per record."""
    try:
        decoded = text.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise CodecError(f"byte offset {exc.start}: cannot decode {bad!r} as {encoding}") from exc
    except LookupError as exc:
        raise CodecError(f"unknown encoding {encoding!r}") from exc
    delimiters = Delimiters()
    records: list[Record] = []
    seen_header = False
    for line in re.split(r"\r\n|\r|\n", decoded):
        if not line:
            continue
        if line[0] == "H":
            problem = _delimiter_problem(line[1:5])
            if problem:
                raise CodecError(f"record {len(records) + 1}: H record {line[:5]!r}: {problem}")
            delimiters = Delimiters(*line[1:5])
            seen_header = True
        records.append(Record(tuple(line.split(delimiters.field)), delimiters))
    if not records:
        raise CodecError("empty message: no records")
    if not seen_header:
        raise CodecError("message has no H (header) record")
    return records


def _unescape(text: str, d: Delimiters) -> str:
    esc = d.escape
    if esc not in text:
        return text
    known = {"F": d.field, "S": d.component, "R": d.repeat, "E": d.escape}
    out: list[str] = []
    i = 0
    while i < len(text):
        start = text.find(esc, i)
        end = text.find(esc, start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            out.append(text[i:])
            break
        out.append(text[i:start])
        out.append(known.get(text[start + 1 : end], text[start : end + 1]))
        i = end + 1
    return "".join(out)


def _raw(record: Record, n: int) -> str:
    return record.fields[n - 1] if n <= len(record.fields) else ""


def ref_components(record: Record, n: int, repeat: int = 1) -> list[str]:
    """Record.components as it was: the whole field split again on every call."""
    raw = _raw(record, n)
    if n == 2 and record.fields[0] == "H":
        return [raw] if raw and repeat == 1 else []
    parts = raw.split(record.delimiters.repeat) if raw else []
    if repeat > len(parts) or not parts[repeat - 1]:
        return []
    d = record.delimiters
    return [_unescape(c, d) for c in parts[repeat - 1].split(d.component)]


def ref_component(record: Record, n: int, c: int, repeat: int = 1) -> str:
    """Record.component as it was."""
    parts = ref_components(record, n, repeat)
    return parts[c - 1] if c <= len(parts) else ""


def ref_text(record: Record, n: int) -> str:
    """Record.text as it was."""
    raw = _raw(record, n)
    return raw if n == 2 and record.fields[0] == "H" else _unescape(raw, record.delimiters)

"""ASTM E1394 / CLSI LIS02-A2 record codec: message text <-> records, sans-I/O, stdlib only.

A *message* is the reassembled text of one E1381 transfer (the frame layer has already removed STX,
FN, ETB/ETX and checksums): records ``H ... L``, each ended by CR. This module splits that text into
:class:`Record` objects and builds record text back from values.

Rules followed (docs/ASTM.md §2.1-2.2 and §6 items 16-17):

* Field positions are 1-based and include the record type: field 1 is ``"R"``, ``R-3`` is the
  universal test ID (E1394 numbering, which vendor manuals use too).
* Each H record declares the delimiters in H-2: the character right after ``H`` is the field
  delimiter, then come repeat, component and escape (``H|\\^&``; Erba ``H|`^&``; GeneXpert
  ``H|@^\\``). They apply to the H itself and to every record up to the next H. H-2 is never split.
* Escape sequences ``&F& &S& &R& &E&`` are decoded *after* splitting into fields, repeats and
  components. An escape sequence runs from one escape character to the next; any other sequence
  (``&X0D&``, ``&H&``) and an unpaired escape character are kept literally.
* Raw field text is kept exactly (never stripped), so a record can be re-emitted byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from labmw.errors import CodecError

__all__ = [
    "Delimiters",
    "FieldParts",
    "FieldValue",
    "Record",
    "build_record",
    "decode_message",
    "encode_records",
    "split_unframed",
]

# Characters that may never appear inside record text: CR ends a record, and the rest are the
# E1381 restricted characters (§1.4 of docs/ASTM.md) that would break framing.
_RESTRICTED = frozenset("\r\n\x01\x02\x03\x04\x05\x06\x10\x15\x16\x17\x11\x12\x13\x14")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_RAW_LINE_BREAK = re.compile(rb"\r\n|\r|\n")

#: A value for :func:`build_record`: a plain string, or a list of repeats where each repeat is a
#: string or a list of component strings.
FieldValue = str | Sequence[str | Sequence[str]]


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The four E1394 delimiters of a message, as declared by its H record.

    Raises ``ValueError`` when a delimiter is not exactly one printable, non-alphanumeric,
    non-space character or when two of them are equal (the record text would be ambiguous).
    """

    field: str = "|"
    repeat: str = "\\"
    component: str = "^"
    escape: str = "&"

    def __post_init__(self) -> None:
        chars = self.as_tuple()
        if any(not isinstance(ch, str) or len(ch) != 1 for ch in chars):
            raise ValueError(f"invalid ASTM delimiters {chars!r}: each must be one character")
        problem = _delimiter_problem("".join(chars))
        if problem:
            raise ValueError(f"invalid ASTM delimiters {chars!r}: {problem}")

    def as_tuple(self) -> tuple[str, str, str, str]:
        """Return ``(field, repeat, component, escape)``."""
        return (self.field, self.repeat, self.component, self.escape)

    def declaration(self) -> str:
        """Return the H-2 text that declares these delimiters (``"\\^&"`` for the defaults)."""
        return self.repeat + self.component + self.escape


def _delimiter_problem(chars: str) -> str | None:
    """Say why ``chars`` (field, repeat, component, escape) cannot be a delimiter set, or None."""
    if len(chars) != 4:
        return "H-2 must declare four delimiters"
    if len(set(chars)) != 4:
        return "delimiters must be four different characters"
    for ch in chars:
        if ch.isalnum() or ch.isspace() or not ch.isprintable():
            return f"{ch!r} cannot be a delimiter"
    return None


#: One field as :meth:`Record.split_fields` gives it: its unescaped text when it holds no repeat or
#: component delimiter, else its repeats, each a list of unescaped components.
FieldParts = str | list[list[str]]


@dataclass(frozen=True, slots=True)
class Record:
    """One E1394 record: its raw (still escaped) fields and the delimiters in force for it.

    ``fields[0]`` is field 1, the record type. Accessors take E1394 positions (1-based, field 1 =
    type) and return ``""`` / ``[]`` for absent fields, because senders omit trailing empty fields
    (``P|1``). Raises ``ValueError`` at construction when there are no fields or a field contains
    the field delimiter, CR or LF (such a record could not be encoded).
    """

    fields: tuple[str, ...]
    delimiters: Delimiters = Delimiters()
    # Field position -> its repeats' components, filled by the accessors that split: the record is
    # immutable, so each field is split once however often it is read (walking every repeat of a
    # field used to re-split it per repeat). A private memo, not part of the value.
    _split: dict[int, tuple[tuple[str, ...], ...]] | None = field(
        default=None, init=False, repr=False, compare=False)  # fmt: skip

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("a record needs at least its type field")
        for text in self.fields:
            if self.delimiters.field in text or "\r" in text or "\n" in text:
                raise ValueError(f"field text {text!r} contains a field delimiter or line break")

    @property
    def type(self) -> str:
        """The record type, field 1: ``"H"``, ``"P"``, ``"O"``, ``"R"``, ``"Q"``, ``"L"``, ..."""
        return self.fields[0]

    def _is_declaration(self, n: int) -> bool:
        # H-2 holds the delimiters themselves; splitting or unescaping it would destroy it (§6.16).
        return n == 2 and self.fields[0] == "H"

    def raw(self, n: int) -> str:
        """Return field ``n`` exactly as received (escaped, unsplit), ``""`` when absent.

        Raises ``ValueError`` when ``n < 1``.
        """
        if n < 1:
            raise ValueError(f"field positions start at 1, got {n}")
        return self.fields[n - 1] if n <= len(self.fields) else ""

    def text(self, n: int) -> str:
        """Return field ``n`` unescaped but not split (``"-1^0.282"`` stays one string)."""
        raw = self.raw(n)
        return raw if self._is_declaration(n) else _unescape(raw, self.delimiters)

    def repeats(self, n: int) -> list[str]:
        """Return the unescaped repeats of field ``n``; ``[]`` when the field is empty or absent."""
        raw = self.raw(n)
        if not raw:
            return []
        if self._is_declaration(n):
            return [raw]
        return [_unescape(part, self.delimiters) for part in raw.split(self.delimiters.repeat)]

    def components(self, n: int, repeat: int = 1) -> list[str]:
        """Return the unescaped components of repeat ``repeat`` (1-based) of field ``n``.

        ``[]`` when that repeat is empty or absent. Raises ``ValueError`` when ``n`` or ``repeat``
        is below 1.
        """
        if repeat < 1:
            raise ValueError(f"repeat positions start at 1, got {repeat}")
        return list(self._repeat(n, repeat))

    def component(self, n: int, c: int, repeat: int = 1) -> str:
        """Return component ``c`` (1-based) of repeat ``repeat`` of field ``n``, ``""`` when absent.

        Raises ``ValueError`` when a position is below 1.
        """
        if c < 1:
            raise ValueError(f"component positions start at 1, got {c}")
        if repeat < 1:
            raise ValueError(f"repeat positions start at 1, got {repeat}")
        parts = self._repeat(n, repeat)
        return parts[c - 1] if c <= len(parts) else ""

    def _repeat(self, n: int, repeat: int) -> tuple[str, ...]:
        """The components of repeat ``repeat`` (at least 1) of field ``n``; the field is split once."""
        if n < 1:
            raise ValueError(f"field positions start at 1, got {n}")
        fields = self.fields
        if n > len(fields):
            return ()
        if n == 2 and fields[0] == "H":  # the declaration is one component, as written
            return (fields[1],) if fields[1] and repeat == 1 else ()
        cache = self._split
        if cache is None:
            cache = {}
            _set_split(self, cache)
        repeats = cache.get(n)
        if repeats is None:
            repeats = cache[n] = _field_repeats(fields[n - 1], self.delimiters)
        return repeats[repeat - 1] if repeat <= len(repeats) else ()

    def split_fields(self) -> list[FieldParts]:
        """Return every field split into repeats and components, unescaped, in one pass.

        Item ``n - 1`` is field ``n``: its unescaped text when it holds neither a repeat nor a
        component delimiter (an empty field is ``""``), else a list of its repeats, each the list
        of its unescaped components (``[]`` for an empty repeat), so ``split_fields()[n - 1][r - 1]``
        equals ``components(n, r)`` for such a field. H-2, the declaration, stays its text. This is
        the shape of python-astm's decoded records, for callers that want the whole record at
        once; fields without parts cost nothing to split. Returns a new list. Raises nothing.
        """
        fields, d = self.fields, self.delimiters
        declaration: tuple[str, ...] = ()
        if fields[0] == "H" and len(fields) > 1:  # H-2, the declaration, is never split (§6.16)
            declaration, fields = fields[:2], fields[2:]
        line = d.field.join(fields)
        rep, comp, esc = d.repeat, d.component, d.escape
        if rep in line or esc in line:
            parts = [text if rep not in text and comp not in text and esc not in text else _field_parts(text, d)
                     for text in fields]  # fmt: skip
        elif comp in line:  # the usual record: one repeat per field, nothing to unescape
            parts = [[text.split(comp)] if comp in text else text for text in fields]
        else:
            parts = list(fields)
        if declaration:
            parts[:0] = declaration
        return parts


def _field_repeats(raw: str, d: Delimiters) -> tuple[tuple[str, ...], ...]:
    """Split field text into repeats of unescaped components (escapes decoded after splitting)."""
    if not raw:
        return ()
    rep, comp, esc = d.repeat, d.component, d.escape
    if esc in raw:
        return tuple([tuple([c if esc not in c else _unescape(c, d) for c in part.split(comp)]) if part else ()
                      for part in raw.split(rep)])  # fmt: skip
    if rep in raw:
        return tuple([tuple(part.split(comp)) if part else () for part in raw.split(rep)])
    return (tuple(raw.split(comp)),)


def _field_parts(raw: str, d: Delimiters) -> FieldParts:
    """One field for :meth:`Record.split_fields`: its text, or its repeats of components."""
    rep, comp, esc = d.repeat, d.component, d.escape
    if rep not in raw and comp not in raw:
        return raw if esc not in raw else _unescape(raw, d)
    if esc in raw:
        return [[c if esc not in c else _unescape(c, d) for c in part.split(comp)] if part else []
                for part in raw.split(rep)]  # fmt: skip
    return [part.split(comp) if part else [] for part in raw.split(rep)]


def _unescape(text: str, d: Delimiters) -> str:
    """Decode ``&F& &S& &R& &E&`` in one already-split piece; keep any other sequence literally."""
    esc = d.escape
    if esc not in text:
        return text
    known = {"F": d.field, "S": d.component, "R": d.repeat, "E": d.escape}
    out: list[str] = []
    i = 0
    while i < len(text):
        start = text.find(esc, i)
        end = text.find(esc, start + 1) if start >= 0 else -1
        if start < 0 or end < 0:  # no (complete) sequence left: the rest is literal
            out.append(text[i:])
            break
        out.append(text[i:start])
        code = text[start + 1 : end]
        # Unknown sequences (&X..&, &Z..&, &H&, &N&) are kept as written, delimiters included.
        out.append(known.get(code, text[start : end + 1]))
        i = end + 1
    return "".join(out)


def _escape(value: str, d: Delimiters) -> str:
    """Escape delimiter characters in ``value`` (E1394 escape sequences) for writing."""
    for ch in value:
        if ch in _RESTRICTED:
            raise CodecError(f"value {value!r} contains {ch!r}, which record text cannot carry")
    table = {
        ord(d.escape): f"{d.escape}E{d.escape}",
        ord(d.field): f"{d.escape}F{d.escape}",
        ord(d.component): f"{d.escape}S{d.escape}",
        ord(d.repeat): f"{d.escape}R{d.escape}",
    }
    return value.translate(table)


def decode_message(text: bytes, encoding: str = "latin-1") -> list[Record]:
    """Decode one reassembled message text into records.

    ``text`` is the concatenated frame text (or one message from :func:`split_unframed`); it is
    decoded with ``encoding`` first and then split into records on CR. LF and CR LF are accepted as
    record ends too (LF may not occur inside E1381 text) and empty lines are skipped. Each H record
    sets the delimiters for itself and the records after it; records before the first H use the
    defaults ``|\\^&``.

    Returns the records in order. Raises :class:`~labmw.errors.CodecError` when the bytes cannot be
    decoded with ``encoding`` (the message names the byte offset), the encoding is unknown, there
    are no records or no H record, or an H record declares unusable delimiters.
    """
    try:
        decoded = text.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise CodecError(f"byte offset {exc.start}: cannot decode {bad!r} as {encoding}") from exc
    except LookupError as exc:
        raise CodecError(f"unknown encoding {encoding!r}") from exc
    # A message is usually CR-separated; the regex split is needed only when LF occurs.
    lines = decoded.split("\r") if "\n" not in decoded else _LINE_BREAK.split(decoded)
    delimiters = _DEFAULT_DELIMITERS
    declared = _DEFAULT_DECLARATION
    separator = delimiters.field
    records: list[Record] = []
    seen_header = False
    new, set_fields, set_delimiters, set_split = _new_object, _set_fields, _set_delimiters, _set_split
    for line in lines:
        if not line:
            continue
        if line[0] == "H":
            if line[1:5] != declared:  # the same declaration again needs no second check
                problem = _delimiter_problem(line[1:5])
                if problem:
                    raise CodecError(f"record {len(records) + 1}: H record {line[:5]!r}: {problem}")
                declared = line[1:5]
                delimiters = Delimiters(*declared)
                separator = delimiters.field
            seen_header = True
        # Built without Record.__init__: split on the field delimiter and on line breaks, no field
        # can hold either, so the checks of __post_init__ would only repeat what the split ensures.
        record = new(Record)
        set_fields(record, tuple(line.split(separator)))
        set_delimiters(record, delimiters)
        set_split(record, None)
        records.append(record)
    if not records:
        raise CodecError("empty message: no records")
    if not seen_header:
        raise CodecError("message has no H (header) record")
    return records


_DEFAULT_DELIMITERS = Delimiters()
_DEFAULT_DECLARATION = "".join(_DEFAULT_DELIMITERS.as_tuple())
_new_object = object.__new__
# The slot descriptors, read from the class dict: attribute access on the class would give mypy the
# instance type of the field, not the descriptor.
_set_fields: Callable[[Record, tuple[str, ...]], None] = vars(Record)["fields"].__set__
_set_delimiters: Callable[[Record, Delimiters], None] = vars(Record)["delimiters"].__set__
_set_split: Callable[[Record, dict[int, tuple[tuple[str, ...], ...]] | None], None] = vars(Record)["_split"].__set__


def build_record(values: Sequence[FieldValue], delimiters: Delimiters = Delimiters()) -> Record:
    """Build a :class:`Record` from plain values, escaping delimiter characters inside them.

    ``values[0]`` is the record type, ``values[1]`` field 2, and so on. A value is a string (one
    repeat with one component), or a sequence of repeats, each a string or a sequence of component
    strings: ``["", "", "", "ALTL"]`` is four repeats, ``[["", "", "", "ALTL"]]`` one repeat with
    four components. For an H record, field 2 is always written as ``delimiters.declaration()``;
    pass ``""`` (or the declaration) there.

    Raises :class:`~labmw.errors.CodecError` when a value holds CR, LF or another E1381 restricted
    character, and ``ValueError`` when there are no values or H-2 is something else.
    """
    if not values:
        raise ValueError("a record needs at least its type")
    fields = [_encode_field(v, delimiters) for v in values]
    if fields[0] == "H" and len(fields) > 1:
        if values[1] not in ("", delimiters.declaration()):
            raise ValueError(f"H-2 must be '' or {delimiters.declaration()!r}, got {values[1]!r}")
        fields[1] = delimiters.declaration()
    elif fields[0] == "H":
        fields.append(delimiters.declaration())
    return Record(tuple(fields), delimiters)


def _encode_field(value: FieldValue, d: Delimiters) -> str:
    """Escape and join one field value (see :func:`build_record`)."""
    if isinstance(value, str):
        return _escape(value, d)
    repeats = []
    for rep in value:
        if isinstance(rep, str):
            repeats.append(_escape(rep, d))
        else:
            repeats.append(d.component.join(_escape(c, d) for c in rep))
    return d.repeat.join(repeats)


def encode_records(
    records: Sequence[Record | Sequence[FieldValue]],
    delimiters: Delimiters = Delimiters(),
    *,
    encoding: str = "latin-1",
) -> bytes:
    """Encode records as message text: fields joined by the field delimiter, each record + CR.

    Each item is a :class:`Record` (written exactly as held; its delimiters must equal
    ``delimiters``) or a value sequence for :func:`build_record`. The first record should be the H
    so that a receiver learns the delimiters. ``decode_message(encode_records(rs)) == rs`` for
    records that start with an H.

    Raises :class:`~labmw.errors.CodecError` when a value holds a restricted character or cannot be
    encoded with ``encoding`` (or the encoding is unknown), and ``ValueError`` when a Record uses
    other delimiters.
    """
    lines = []
    for item in records:
        record = item if isinstance(item, Record) else build_record(item, delimiters)
        if record.delimiters != delimiters:
            raise ValueError(f"{record.type} record uses {record.delimiters!r}, not {delimiters!r}")
        lines.append(delimiters.field.join(record.fields) + "\r")
    text = "".join(lines)
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise CodecError(f"character {bad!r} cannot be encoded as {encoding}") from exc
    except LookupError as exc:
        raise CodecError(f"unknown encoding {encoding!r}") from exc


def split_unframed(data: bytes, *, frame_numbers: bool = True) -> list[bytes]:
    """Split a "raw records" stream (no E1381 framing) into messages for :func:`decode_message`.

    This is the ``framing = "raw_records"`` mode of docs/ASTM.md §1.9 item 4, selected per
    instrument by configuration and never guessed from the data. Records end in CR, LF or CR LF;
    empty lines are skipped. With ``frame_numbers`` (Roche PSM style, ``1H|\\^&...``) each record
    starts with one frame digit ``0``-``7``, which is removed. A message runs from an ``H`` record
    to the next ``L`` record.

    Returns one bytes object per message, each record ended by CR. Works on the raw bytes, so the
    encoding must keep ASCII bytes as they are (latin-1, UTF-8, cp1251, ...). Raises
    :class:`~labmw.errors.CodecError` when a record lacks its frame digit, a record lies outside
    H..L, or the data ends inside a message.
    """
    messages: list[bytes] = []
    current: list[bytes] | None = None
    for number, line in enumerate(_RAW_LINE_BREAK.split(data), start=1):
        if not line:
            continue
        if frame_numbers:
            if line[:1] not in b"01234567" or len(line) < 2:
                raise CodecError(f"line {number}: record does not start with a frame digit 0-7")
            line = line[1:]
        if line.startswith(b"H"):
            if current is not None:
                raise CodecError(f"line {number}: H record inside a message that has no L record")
            current = []
        elif current is None:
            raise CodecError(f"line {number}: record outside a message (before H or after L)")
        current.append(line + b"\r")
        if line.startswith(b"L"):
            messages.append(b"".join(current))
            current = None
    if current is not None:
        raise CodecError("data ends inside a message (no L record)")
    return messages


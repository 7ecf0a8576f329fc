"""HL7 v2 ER7 helpers: escaping, timestamps, reading and building acknowledgements.

Parsing is delegated to python-hl7 (``hl7``); building is done by hand so that every byte we send
is deliberate. Nothing here touches sockets or clocks: the caller passes ``now``.

References: HL7 v2.5.1 chapter 2 -- 2.7 (escape sequences), 2.9 (acknowledgement rules),
2.14.1 (ERR), 2.14.8 (MSA), 2.14.9 (MSH); tables 0008 (acknowledgement code) and 0357 (message
error condition codes).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

import hl7

from labmw.errors import CodecError, LocalProtocolError

# HL7 v2.5.1 2.5.4: default field, component, repetition, escape and subcomponent characters.
FIELD_SEP = "|"
COMPONENT_SEP = "^"
REPETITION_SEP = "~"
ESCAPE_CHAR = "\\"
SUBCOMPONENT_SEP = "&"
ENCODING_CHARS = COMPONENT_SEP + REPETITION_SEP + ESCAPE_CHAR + SUBCOMPONENT_SEP
SEGMENT_SEP = "\r"

# Table 0008.
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_ERROR_ACK_CODES = frozenset({"AE", "AR", "CE", "CR"})

# Table 0357 (HL7-defined, v2.5+): code -> text, used in ERR-3 (CWE, coding system HL70357).
ERROR_CONDITIONS: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
DEFAULT_ERROR_CONDITION = "207"


@dataclass(frozen=True, slots=True)
class Ack:
    """What an acknowledgement said.

    ``code`` is MSA-1 (table 0008), ``control_id`` MSA-2 (the MSH-10 being acknowledged),
    ``text`` MSA-3 plus any ERR texts joined by ``"; "`` (unescaped), ``message_type`` the
    ACK's own MSH-9 as sent (e.g. ``"ACK^R01^ACK"``).
    """

    code: str
    control_id: str
    text: str
    message_type: str


def escape(text: str) -> str:
    """Escape ``text`` for an ER7 field that uses the default encoding characters ``|^~\\&``.

    Input: any text. Output: the text with ``| ^ & ~ \\`` replaced by
    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (HL7 v2.5.1 2.7.4) and every ASCII control character
    (CR, LF, NUL, VT, FS, ...) replaced by a hex escape ``\\Xhh\\`` (2.7.5): a raw CR would end
    the segment and a raw FS/VT would break MLLP framing. Other characters, non-ASCII included,
    pass unchanged (we send UTF-8).
    Raises: nothing.

    python-hl7's ``Message.escape`` is not reused because it does more than this: it needs a
    parsed message, turns CR into the formatting command ``\\.br\\`` (only valid in FT fields,
    2.7.6) and hex-escapes every non-ASCII character by code point (``ü`` -> ``\\Xfc\\``,
    ``€`` -> ``\\X20ac\\``, ``\\x05`` -> ``\\X 5\\``), which mangles UTF-8 names.
    """
    if _PLAIN.fullmatch(text):  # the common case (codes, numbers, IDs): nothing to replace
        return text
    return _escape(text, FIELD_SEP, COMPONENT_SEP, REPETITION_SEP, ESCAPE_CHAR, SUBCOMPONENT_SEP)


#: Text without a default encoding character or a control character: escape() returns it as is.
_PLAIN = re.compile(r"[^|^&~\\\x00-\x1f\x7f]*")


def _escape(text: str, field: str, component: str, repetition: str, esc: str, sub: str) -> str:
    mapping = {field: "F", component: "S", sub: "T", repetition: "R", esc: "E"}
    out: list[str] = []
    for char in text:
        code = mapping.get(char)
        if code is not None:
            out.append(f"{esc}{code}{esc}")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"{esc}X{ord(char):02X}{esc}")
        else:
            out.append(char)
    return "".join(out)


def format_ts(moment: datetime | None) -> str:
    """Format a timestamp as HL7 DTM ``YYYYMMDDHHMMSS[+/-ZZZZ]`` (v2.5.1 2.A.22).

    Input: a datetime, or None. Output: ``""`` for None; naive datetimes (instrument local time,
    as ASTM sends it) without an offset; aware ones with their own UTC offset.
    Raises: nothing.
    """
    if moment is None:
        return ""
    text = (
        f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"
        f"{moment.hour:02d}{moment.minute:02d}{moment.second:02d}"
    )
    offset = moment.utcoffset()
    if offset is None:
        return text
    # DTM offsets are +/-HHMM; sub-minute offsets (historic local mean time) are truncated.
    total = int(offset.total_seconds())
    sign = "-" if total < 0 else "+"
    hours, rest = divmod(abs(total), 3600)
    mins = rest // 60
    return f"{text}{sign}{hours:02d}{mins:02d}"


def join_segment(*fields: str) -> str:
    """Join a segment ID and already-encoded field values with ``|``, dropping trailing empties.

    Input: the segment ID followed by fields 1..n (ER7 text, escaped by the caller).
    Output: one segment without its terminating CR (HL7 v2.5.1 2.5.2: trailing delimiters may
    be omitted). Raises: nothing.
    """
    return _join(FIELD_SEP, *fields)


def _parse(payload: bytes | str, encoding: str) -> hl7.Message:
    try:
        text = payload.decode(encoding) if isinstance(payload, bytes) else payload
    except (UnicodeDecodeError, LookupError) as exc:
        raise CodecError(f"HL7 payload is not valid {encoding}: {exc}") from exc
    if not text.lstrip().startswith("MSH"):
        raise CodecError("HL7 payload does not start with an MSH segment")
    try:
        message = hl7.parse(text)
    # python-hl7 checks a malformed MSH-1/MSH-2 with `assert` (an AssertionError, not a ParseException).
    except (hl7.ParseException, ValueError, IndexError, KeyError, AssertionError) as exc:
        raise CodecError(f"HL7 payload cannot be parsed: {exc}") from exc
    if not isinstance(message, hl7.Message):
        raise CodecError("HL7 payload is not a single message")
    return message


def _raw(segment: hl7.Segment, number: int) -> str:
    """Field ``number`` of ``segment`` as ER7 text (still escaped), ``""`` when absent."""
    return str(segment(number)) if number < len(segment) else ""


def _first_leaf(raw: str, repetition: str, component_sep: str, sub: str, component: int = 1) -> str:
    """First repetition, given component, first subcomponent of a raw field (still escaped).

    The one reading of a field both ACK parsers use, so MSA-2 ``abcd-7^LIS`` is ``abcd-7`` whichever
    path an acknowledgement takes.
    """
    parts = raw.split(repetition, 1)[0].split(component_sep)
    if component > len(parts):
        return ""
    return parts[component - 1].split(sub, 1)[0]


def _leaf(message: hl7.Message, segment: hl7.Segment, number: int, component: int = 1) -> str:
    """First repetition, given component, first subcomponent of a field, unescaped."""
    separators = message.separators  # "\r|~^&": segment, field, repetition, component, sub
    value = _first_leaf(_raw(segment, number), separators[2], separators[3], separators[4], component)
    return str(message.unescape(value)) if value else ""


def _segments(message: hl7.Message, segment_id: str) -> list[hl7.Segment]:
    return [segment for segment in message if str(segment[0]) == segment_id]


def parse_ack(payload: bytes, encoding: str = "utf-8") -> Ack:
    """Read an HL7 acknowledgement.

    Input: one message (no MLLP framing), its charset. Output: :class:`Ack` with MSA-1, MSA-2,
    the texts of MSA-3 and of every ERR (ERR-8 user message, ERR-3 / v2.3-style ERR-1.4 text or
    code), and MSH-9.
    Raises: :class:`~labmw.errors.CodecError` when the payload cannot be decoded, is not an HL7
    message, has no MSA segment or an empty MSA-1.
    """
    fast = _plain_ack(payload, encoding)
    if fast is not None:
        return fast
    message = _parse(payload, encoding)
    msa_segments = _segments(message, "MSA")
    if not msa_segments:
        raise CodecError("HL7 message has no MSA segment, it is not an acknowledgement")
    msa = msa_segments[0]
    code = _leaf(message, msa, 1).strip().upper()  # table 0008 codes, whatever case the LIS writes
    if not code:
        raise CodecError("MSA-1 (acknowledgement code) is empty")
    texts = [_leaf(message, msa, 3)]
    for err in _segments(message, "ERR"):
        texts.append(_leaf(message, err, 8))
        # ERR-3 (v2.5+) and ERR-1 component 4 (v2.3.1/2.4 form) are coded: prefer the text.
        texts.append(_leaf(message, err, 3, 2) or _leaf(message, err, 3, 1))
        texts.append(_error_text_v23(message, err))
    unique = [text for index, text in enumerate(texts) if text and text not in texts[:index]]
    msh = _segments(message, "MSH")[0]
    return Ack(
        code=code,
        control_id=_leaf(message, msa, 2),
        text="; ".join(unique),
        message_type=_raw(msh, 9),
    )


def _plain_ack(payload: bytes, encoding: str) -> Ack | None:
    """The common case without python-hl7's full parse: MSH + MSA, no ERR, no escapes in MSA.

    The forwarder reads one ACK per result, so this is on the hot path. Anything unusual (ERR
    segments, escape sequences, odd separators) returns None and takes the full parser.
    """
    try:
        text = payload.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None
    if not text.startswith("MSH") or len(text) < 8 or "ERR" in text:
        return None
    field, component, repetition, escape, sub = text[3], text[4], text[5], text[6], text[7]
    msh = msa = None
    for segment in text.split("\r"):
        if segment.startswith("MSH" + field):
            msh = segment
        elif segment.startswith("MSA" + field) and msa is None:
            msa = segment
    if msh is None or msa is None or escape in msa:
        return None
    msa_fields = msa.split(field)
    msh_fields = msh.split(field)

    def leaf(number: int) -> str:
        return _first_leaf(msa_fields[number], repetition, component, sub) if len(msa_fields) > number else ""

    code = leaf(1).strip().upper()
    if not code:
        return None
    return Ack(code=code, control_id=leaf(2), text=leaf(3),
               message_type=msh_fields[8] if len(msh_fields) > 8 else "")


def _error_text_v23(message: hl7.Message, err: hl7.Segment) -> str:
    # ERR-1 is "segment^sequence^field^code&text&system" (CM/ELD); the code is a subcomponent.
    raw = _raw(err, 1).split(message.separators[2], 1)[0]
    parts = raw.split(message.separators[3])
    if len(parts) < 4:
        return ""
    subs = parts[3].split(message.separators[4])
    chosen = subs[1] if len(subs) > 1 and subs[1] else subs[0]
    return str(message.unescape(chosen)) if chosen else ""


def build_ack(
    inbound: bytes | hl7.Message,
    code: str,
    *,
    text: str = "",
    error_code: str | None = None,
    control_id: str,
    now: datetime,
    encoding: str = "utf-8",
) -> bytes:
    """Build the original-mode acknowledgement for an inbound HL7 message (v2.5.1 2.9.2).

    Inputs: the inbound message (bytes in ``encoding``, or a parsed ``hl7.Message``); the
    table 0008 ``code``; MSA-3 ``text``; a table 0357 ``error_code`` for the ERR segment
    (default 207 when ``code`` is AE/AR/CE/CR); our MSH-10 ``control_id``; an aware ``now``.
    Output: ``MSH`` (MSH-3/4 and MSH-5/6 swapped, MSH-7 ``now`` with its offset, MSH-9
    ``ACK^<trigger>^ACK``, MSH-11/12 copied), ``MSA`` (MSA-2 = inbound MSH-10) and, for negative
    codes, a v2.5 ``ERR`` (ERR-3 coded error, ERR-4 ``E``, ERR-8 text); segments end with CR,
    encoded in ``encoding``, no MLLP framing. The inbound message's own delimiters are used.
    Raises: :class:`~labmw.errors.CodecError` when ``inbound`` cannot be parsed;
    :class:`~labmw.errors.LocalProtocolError` for an unknown ``code`` or ``error_code``, an
    ``error_code`` with a positive ``code``, or a naive ``now``.
    """
    if code not in ACK_CODES:
        raise LocalProtocolError(f"unknown acknowledgement code {code!r} (HL7 table 0008)")
    if error_code is not None and error_code not in ERROR_CONDITIONS:
        raise LocalProtocolError(f"unknown error condition {error_code!r} (HL7 table 0357)")
    if error_code is not None and code not in _ERROR_ACK_CODES:
        raise LocalProtocolError(f"error_code {error_code!r} given with positive code {code}")
    if now.utcoffset() is None:
        raise LocalProtocolError("build_ack needs an aware 'now' (MSH-7 carries the offset)")
    message = inbound if isinstance(inbound, hl7.Message) else _parse(inbound, encoding)
    msh_segments = _segments(message, "MSH")
    if not msh_segments:
        raise CodecError("inbound HL7 message has no MSH segment")
    msh = msh_segments[0]
    seps = message.separators
    field_sep, repetition, component, sub = seps[1], seps[2], seps[3], seps[4]
    esc = str(message.esc)

    def enc(value: str) -> str:
        return _escape(value, field_sep, component, repetition, esc, sub)

    trigger = _raw(msh, 9).split(repetition, 1)[0].split(component)
    event = trigger[1] if len(trigger) > 1 else ""
    # v2.4+ wants the message structure ACK, not ACK_<trigger> (connect#1253, node-hl7-client#93).
    message_type = component.join(("ACK", event, "ACK"))
    segments = [
        _join(
            field_sep,
            "MSH",
            _raw(msh, 2),
            _raw(msh, 5),
            _raw(msh, 6),
            _raw(msh, 3),
            _raw(msh, 4),
            format_ts(now),
            "",
            message_type,
            enc(control_id),
            _raw(msh, 11),
            _raw(msh, 12),
        ),
        _join(field_sep, "MSA", code, _raw(msh, 10), enc(text)),
    ]
    if code in _ERROR_ACK_CODES:
        condition = error_code or DEFAULT_ERROR_CONDITION
        coded = component.join((condition, enc(ERROR_CONDITIONS[condition]), "HL70357"))
        segments.append(_join(field_sep, "ERR", "", "", coded, "E", "", "", "", enc(text)))
    try:
        return "".join(segment + SEGMENT_SEP for segment in segments).encode(encoding)
    except UnicodeEncodeError as exc:
        raise CodecError(f"acknowledgement text cannot be encoded in {encoding}: {exc}") from exc


def _join(field_sep: str, *fields: str) -> str:
    values = list(fields)
    while len(values) > 1 and values[-1] == "":
        values.pop()
    return field_sep.join(values)


# The MSH of a message we could not read: an ACK to it has empty MSH-3..6 and MSA-2 (HL7.md 1.3 #4).
_UNKNOWN_MSH = "|".join(("MSH", "^~\\&", *[""] * 8, "P", "2.5.1")).encode("ascii") + b"\r"


def new_control_id() -> str:
    """A fresh MSH-10 for an ACK we originate (20 characters, the v2.5.1 ST limit of MSH-10)."""
    return "A" + uuid.uuid4().hex[:19]


def unaddressed_ack(code: str, *, text: str, error_code: str, now: datetime, encoding: str = "utf-8",
                    control_id: str | None = None) -> bytes:
    """A negative ACK when there is no readable MSH to answer: MSA-2 empty, ERR-3 ``error_code``.

    Inputs: table 0008 ``code`` (AE/AR), MSA-3/ERR-8 ``text``, table 0357 ``error_code``, an aware
    ``now``; ``control_id`` our MSH-10 (a fresh one when None). Output: the ACK message bytes (no
    MLLP framing). Raises: nothing for valid codes.
    """
    return build_ack(_UNKNOWN_MSH, code, text=text, error_code=error_code,
                     control_id=control_id or new_control_id(), now=now, encoding=encoding)

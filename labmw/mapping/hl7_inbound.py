"""HL7 v2 results from analyzers -> :class:`labmw.model.Result` (ORU^R01 2.3.1-2.5.1, IHE LAW OUL^R22).

The ER7 text is split here, not by python-hl7, because the checks that matter for a receiver are
exactly the ones python-hl7 skips (HL7.md 3.2, 6): segments end with CR only (LF-only accepted per
analyzer when the message has no CR at all), and every segment ID must look like one
(``^[A-Z][A-Z0-9]{2}$``), so a stray CR inside a field (wisemed sample) or a line-wrapped segment
(OpenLIS sample) makes the whole message a content error instead of a silently wrong parse.

Field map (HL7.md 2.3, PRODUCT.md "Inputs labmw understands"): patient PID-3 (else PID-2), name
PID-5, birth date PID-7, sex PID-8; specimen SPM-2 (else OBR-3) or OBR-3 / OBR-2 per analyzer;
test OBX-3.1; value OBX-5 read by OBX-2; units OBX-6.1; range OBX-7; flags OBX-8; status OBX-11;
collection OBR-7 else SPM-17; completion OBX-19 else OBX-14. Group structure: in ORU_R01 (v2.5+)
the SPECIMEN group closes its ORDER_OBSERVATION (SPM after the OBX), in OUL_R22 the SPM opens the
specimen and its OBR groups follow; OBX after an SPM and before the next OBR are specimen
observations, not results.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from labmw.errors import CodecError, MappingError
from labmw.mapping.astm_lis2a import PatientContext, parse_value
from labmw.mapping.identity import join_id, mark_gates
from labmw.model import Result

__all__ = ["Hl7Header", "Hl7Mapped", "UnsupportedMessage", "content_digest", "first_segment", "map_hl7",
           "parse_hl7_datetime", "read_header"]

# Message type/event -> versions we map (HL7.md 2.1, 2.2; OUL^R22 exists from v2.5).
SUPPORTED: dict[tuple[str, str], frozenset[str]] = {
    ("ORU", "R01"): frozenset({"2.3.1", "2.4", "2.5", "2.5.1"}),
    ("OUL", "R22"): frozenset({"2.5", "2.5.1"}),
}
# Table 0103: only production data becomes patient results (T training / D debugging do not).
PROCESSING_IDS = frozenset({"P"})
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_DTM = re.compile(r"(\d{4})(\d{2})(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,4})?)?)?)?([+-]\d{4})?")
# OBX-2 types whose text may be a number with an optional comparator (SN is handled apart).
_TEXT_NUMERIC = frozenset({"NM", "ST", "TX", "FT"})
_CODED = frozenset({"CE", "CWE", "CNE", "IS", "ID"})
_NOT_MAPPED = {"ED": "encapsulated data", "RP": "reference pointer"}
# IHE LAW supplemental observations carry these in OBX-3 component 4 (HL7.md 2.2).
_SUPPLEMENTAL = frozenset({"S_OTHER", "S_RAW"})
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "U": "U", "UNKNOWN": "U"}
_SEX_OTHER = frozenset({"O", "A", "N", "OTHER", "AMBIGUOUS"})  # table 0001, no range partition
_COMPARATORS = frozenset({"<", ">", "<=", ">="})
_NULL = '""'  # HL7 explicit null (2.5.3): "unknown/delete", never a literal value


class UnsupportedMessage(MappingError):
    """A well-formed message we do not take: answer AR with ``code`` (HL7 table 0357).

    ``code`` is ``"200"`` message type, ``"201"`` event, ``"202"`` processing ID or ``"203"`` version.
    """

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        super().__init__(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hl7Header:
    """What MSH says (values unescaped; MSH-3/4 whole, with their components)."""

    sending_application: str  # MSH-3
    sending_facility: str  # MSH-4
    control_id: str  # MSH-10
    message_type: str  # MSH-9.1
    trigger: str  # MSH-9.2
    structure: str  # MSH-9.3
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1
    accept_ack: str  # MSH-15 (table 0155)
    application_ack: str  # MSH-16 (table 0155, or a vendor's misuse of it)

    @property
    def sender(self) -> str:
        """MSH-3 and MSH-4 component 1, joined by ``/`` (for audit and logs)."""
        parts = (self.sending_application.split("^", 1)[0], self.sending_facility.split("^", 1)[0])
        return "/".join(p for p in parts if p)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hl7Mapped:
    """One message's header, its results in OBX order, and one sentence per thing not mapped."""

    header: Hl7Header
    results: tuple[Result, ...]
    problems: tuple[str, ...]


class _Er7:
    """A decoded message split into segments, with its own delimiters (HL7 v2.5.1 2.5)."""

    def __init__(self, text: str, *, encoding: str, lf_segments: bool) -> None:
        if not text.startswith("MSH") or len(text) < 8:
            raise CodecError("HL7 payload does not start with an MSH segment")
        self.field_sep = text[3]
        self.encoding = encoding
        chars = text[4:].split(self.field_sep, 1)[0]
        if len(chars) < 4 or len(set(chars[:4] + self.field_sep)) != 5:
            raise CodecError(f"MSH-2 must hold four distinct encoding characters, got {chars[:8]!r}")
        self.component, self.repetition, self.escape, self.sub = chars[0], chars[1], chars[2], chars[3]
        # CR LF segment ends (Windows senders): LF may not occur inside a segment, so the pair is
        # unambiguous; it is read as CR and said so, rather than refusing the whole message.
        self.crlf = "\r\n" in text
        if self.crlf:
            text = text.replace("\r\n", "\r")
        self.segments = [self._fields(line) for line in _lines(text, lf_segments, self.field_sep)]

    def _fields(self, line: str) -> list[str]:
        parts = line.split(self.field_sep)
        # MSH-1 is the field separator itself, so MSH fields are shifted by one (2.14.9.1).
        return [parts[0], self.field_sep, *parts[1:]] if parts[0] == "MSH" else parts

    def raw(self, seg: list[str], number: int) -> str:
        """Field ``number`` as sent (still escaped), ``""`` when absent."""
        return seg[number] if number < len(seg) else ""

    def comp(self, seg: list[str], number: int, component: int = 1, sub: int = 1) -> str:
        """First repetition, given component and sub-component, unescaped and stripped; null is ``""``."""
        parts = self.raw(seg, number).split(self.repetition, 1)[0].split(self.component)
        if component > len(parts):
            return ""
        subs = parts[component - 1].split(self.sub)
        value = subs[sub - 1] if sub <= len(subs) else ""
        return "" if value == _NULL else self.unescape(value).strip()

    def components(self, text: str) -> list[str]:
        return [self.unescape(part) for part in text.split(self.component)]

    def unescape(self, text: str) -> str:
        """Resolve 2.7 escape sequences; formatting and charset switches are dropped."""
        if self.escape not in text:
            return text
        pattern = re.escape(self.escape) + r"([^" + re.escape(self.escape) + r"]*)" + re.escape(self.escape)
        plain = {"F": self.field_sep, "S": self.component, "T": self.sub, "R": self.repetition,
                 "E": self.escape, ".br": "\n", "H": "", "N": ""}

        def one(match: re.Match[str]) -> str:
            body = match.group(1)
            if body in plain:
                return plain[body]
            if body[:1] == "X":
                try:
                    return bytes.fromhex(body[1:]).decode(self.encoding, errors="replace")
                except ValueError:
                    return match.group(0)
            # \Cxxyy\ / \Mxxyyzz\ charset switches and \Zxx\ locals: no meaning for a result value.
            return "" if body[:1] in ("C", "M", "Z") else match.group(0)

        return re.sub(pattern, one, text)


def _lines(text: str, lf_segments: bool, field_sep: str) -> list[str]:
    """Split into segments and validate their IDs (HL7.md nuggets 2 and 19)."""
    if "\r" in text:
        lines = text.split("\r")
    elif "\n" in text and not lf_segments:
        raise CodecError("segments are separated by LF, not CR (HL7 v2 ends segments with CR only); "
                         "set lf_segments for this analyzer if it really sends LF")
    else:
        lines = text.split("\n")
    lines = [line for line in lines if line.strip()]
    for number, line in enumerate(lines, start=1):
        if line.startswith("\n"):
            raise CodecError(f"segment {number} starts with LF: segments must end with CR only, not CR LF")
        if not _SEGMENT_ID.fullmatch(line.split(field_sep, 1)[0]):
            # Only the first characters are quoted: a wrapped line may start with patient data.
            raise CodecError(f"segment {number}: invalid segment ID {line.split(field_sep, 1)[0][:8]!r} (CR inside a "
                             "field or a wrapped line?); IDs are [A-Z][A-Z0-9]{2}")
    return lines


def _decode(payload: bytes, encoding: str, problems: list[str]) -> str:
    try:
        return payload.decode(encoding)
    except LookupError as exc:
        raise CodecError(f"unknown encoding {encoding!r}") from exc
    except UnicodeDecodeError:
        # HL7.md nugget 3: decode strictly, fall back to Latin-1 (never fails) and say so.
        problems.append(f"message is not valid {encoding}; decoded as latin-1")
        return payload.decode("latin-1")


def first_segment(payload: bytes) -> bytes:
    """The bytes of the first segment (MSH), without its terminator (CR, or LF in an LF message)."""
    ends = [i for i in (payload.find(b"\r"), payload.find(b"\n")) if i >= 0]
    return payload[: min(ends)] if ends else payload


def content_digest(payload: bytes) -> str:
    """SHA-256 (hex) of the message with MSH-7 blanked: the duplicate check's content key.

    A resend after an ACK timeout may carry a new MSH-7 (HL7.md 1.4); everything else must match.
    """
    msh = first_segment(payload)
    rest = payload[len(msh):]
    if msh.startswith(b"MSH") and len(msh) > 3:
        parts = msh.split(msh[3:4])
        if len(parts) > 6:
            parts[6] = b""  # parts[0] "MSH", parts[1] MSH-2, ..., parts[6] MSH-7
        msh = msh[3:4].join(parts)
    return hashlib.sha256(msh + rest).hexdigest()


def parse_hl7_datetime(text: str) -> datetime | None:
    """HL7 TS/DTM ``YYYYMMDD[HH[MM[SS[.S+]]]][+/-ZZZZ]`` -> datetime (aware when an offset is sent).

    Returns None for empty, partial (year or month only) or impossible values. Never raises.
    """
    match = _DTM.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        tz = None
        if offset:
            delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
            tz = timezone(-delta if offset[0] == "-" else delta)
        return datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                        tzinfo=tz)
    except ValueError:
        return None


def read_header(payload: bytes, *, encoding: str, lf_segments: bool) -> Hl7Header:
    """Read MSH only (enough to ACK, drop an ACK, or key a duplicate).

    Raises: :class:`~labmw.errors.CodecError` when there is no usable MSH segment.
    """
    text = _decode(first_segment(payload), encoding, [])
    return _header(_Er7(text, encoding=encoding, lf_segments=lf_segments))


def _header(er7: _Er7) -> Hl7Header:
    msh = er7.segments[0]
    return Hl7Header(
        sending_application=er7.unescape(er7.raw(msh, 3)), sending_facility=er7.unescape(er7.raw(msh, 4)),
        control_id=er7.comp(msh, 10), message_type=er7.comp(msh, 9, 1).upper(), trigger=er7.comp(msh, 9, 2).upper(),
        structure=er7.comp(msh, 9, 3).upper(), processing_id=er7.comp(msh, 11).upper(), version=er7.comp(msh, 12),
        accept_ack=er7.comp(msh, 15).upper(), application_ack=er7.comp(msh, 16).upper())


def _check_supported(header: Hl7Header) -> None:
    if not header.message_type:
        raise MappingError("MSH-9 (message type) is empty")
    if not header.control_id:
        raise MappingError("MSH-10 (message control ID) is empty")
    kind = f"{header.message_type}^{header.trigger}"
    if header.message_type not in {t for t, _ in SUPPORTED}:
        raise UnsupportedMessage("200", f"unsupported message type {kind} (labmw takes ORU^R01 and OUL^R22)")
    versions = SUPPORTED.get((header.message_type, header.trigger))
    if versions is None:
        raise UnsupportedMessage("201", f"unsupported event {kind} (labmw takes ORU^R01 and OUL^R22)")
    if header.version not in versions:
        raise UnsupportedMessage("203", f"unsupported version {header.version!r} for {kind} "
                                        f"(labmw takes {', '.join(sorted(versions))})")
    if header.processing_id not in PROCESSING_IDS:
        raise UnsupportedMessage("202", f"unsupported processing ID {header.processing_id!r} (only P, production)")



@dataclass(slots=True)
class _Order:
    obr: list[str]
    patient: PatientContext
    spm: list[str] | None
    observations: list[tuple[int, list[str]]] = field(default_factory=list)


def map_hl7(payload: bytes, *, analyzer: str, encoding: str, specimen_field: str, lf_segments: bool) -> Hl7Mapped:
    """Map one ORU^R01 / OUL^R22 message (no MLLP framing) to results.

    Inputs: the payload bytes; the analyzer name stored in each Result; its charset; where its
    specimen ID is (``"SPM-2"``, ``"OBR-3"``, ``"OBR-2"``); whether LF-only segments are tolerated.
    Output: :class:`Hl7Mapped`; ``Result.sequence`` is the OBX's 1-based position among all OBX.
    Raises: :class:`~labmw.errors.CodecError` when the message cannot be split (no MSH, bad
    segment ID, LF separators not allowed); :class:`UnsupportedMessage` for another message
    type/event/version/processing ID; :class:`~labmw.errors.MappingError` when a required field
    is missing (MSH-9, MSH-10, a result's OBX-3 or OBX-11).
    """
    problems: list[str] = []
    er7 = _Er7(_decode(payload, encoding, problems), encoding=encoding, lf_segments=lf_segments)
    header = _header(er7)
    _check_supported(header)
    if er7.crlf:
        problems.append("segments end with CR LF; read as CR (HL7 v2 ends segments with CR only)")
    orders = _walk(er7, header.message_type == "OUL", problems)
    results: list[Result] = []
    for order in orders:
        results.extend(_order_results(er7, order, analyzer, specimen_field, problems))
    return Hl7Mapped(header=header, results=mark_gates(results), problems=tuple(problems))


def _walk(er7: _Er7, oul: bool, problems: list[str]) -> list[_Order]:
    """Group OBX under their OBR, with the patient and SPM that apply to them."""
    orders: list[_Order] = []
    patient = PatientContext()
    order: _Order | None = None
    spm: list[str] | None = None
    in_order = False  # last of OBR/SPM/PID seen was an OBR: an OBX here is a result
    obx_count = 0
    for seg in er7.segments[1:]:
        kind = seg[0]
        if kind == "PID":
            patient, order, spm, in_order = _patient(er7, seg, problems), None, None, False
        elif kind == "SPM":
            spm, in_order = seg, False
            if not oul and order is not None and order.spm is None:
                order.spm = seg  # ORU_R01: SPECIMEN closes the ORDER_OBSERVATION group
        elif kind == "OBR":
            order, in_order = _Order(obr=seg, patient=patient, spm=spm if oul else None), True
            orders.append(order)
        elif kind == "OBX":
            obx_count += 1
            if in_order and order is not None:
                order.observations.append((obx_count, seg))
            else:
                where = "a specimen observation (after SPM)" if spm is not None else "not inside an OBR group"
                problems.append(f"OBX {obx_count} is {where} and was not mapped")
    return orders


def _patient(er7: _Er7, pid: list[str], problems: list[str]) -> PatientContext:
    patient_id, authority = er7.comp(pid, 3), er7.comp(pid, 3, 4)  # CX.1 ID, CX.4 assigning authority (HD.1)
    if not patient_id and er7.comp(pid, 2):
        patient_id, authority = er7.comp(pid, 2), er7.comp(pid, 2, 4)
        problems.append("PID-3 is empty; patient ID taken from PID-2")
    parts = [p.strip() for p in er7.components(er7.raw(pid, 5).split(er7.repetition, 1)[0])]
    # XPN components 1-6 are the name; 7 alone (LAW's "^^^^^^U") is a name type, not a name.
    name = "^".join(parts).rstrip("^") if any(parts[:6]) else ""
    birth_text = er7.comp(pid, 7)
    birth = parse_hl7_datetime(birth_text)
    if birth_text and birth is None:
        problems.append("PID-7 birth date is not a valid date (YYYYMMDD...); ignored")  # value is PHI
    sex_text = er7.comp(pid, 8).upper()
    sex = _SEX.get(sex_text, "U" if sex_text else "")
    if sex_text and sex_text not in _SEX:
        known = "table 0001 value without a reference-range partition" if sex_text in _SEX_OTHER else "unknown"
        problems.append(f"PID-8 sex {sex_text[:10]!r} ({known}) mapped to U")
    return PatientContext(patient_id=patient_id, name=name, birth_date=birth.date() if birth else None, sex=sex,
                          authority=authority)


def _specimen(er7: _Er7, order: _Order, specimen_field: str) -> tuple[str, str]:
    """(specimen ID, where it was looked for)."""
    if specimen_field == "OBR-2":
        return er7.comp(order.obr, 2), "OBR-2"
    if specimen_field == "SPM-2" and order.spm is not None:
        # EIP: placer EI ^ filler EI, each "ID&namespace" (LAW: "498151&BARCODE").
        spm_id = er7.comp(order.spm, 2, 1, 1) or er7.comp(order.spm, 2, 2, 1)
        if spm_id:
            return spm_id, "SPM-2"
    # Before v2.5 there is no SPM: the filler's number (OBR-3) is what analyzers send.
    return er7.comp(order.obr, 3), "SPM-2 and OBR-3" if specimen_field == "SPM-2" else "OBR-3"


def _order_results(er7: _Er7, order: _Order, analyzer: str, specimen_field: str,
                   problems: list[str]) -> list[Result]:
    specimen, looked = _specimen(er7, order, specimen_field)
    collected_text = er7.comp(order.obr, 7) or (er7.comp(order.spm, 17) if order.spm else "")
    collected = _when(collected_text, "collection time (OBR-7/SPM-17)", problems)
    results: list[Result] = []
    for number, obx in order.observations:
        code = er7.comp(obx, 3)
        value_type = er7.comp(obx, 2).upper()
        if er7.comp(obx, 3, 4).upper() in _SUPPLEMENTAL:
            continue  # IHE LAW supplemental (pipetting time, calibration, QC, limits): not a result
        if value_type in _CODED and any(r.test_code == code for r in results):
            # LAW: a CE OBX repeating a result's OBX-3 carries instrument flags for it.
            if er7.comp(obx, 5):
                problems.append(f"OBX {number} (test {code}) instrument result flag {er7.comp(obx, 5)!r} "
                                "is not mapped")
            continue
        if value_type in _NOT_MAPPED:
            problems.append(f"OBX {number} (test {code}) holds {_NOT_MAPPED[value_type]} and was not mapped")
            continue
        if not specimen:
            problems.append(f"OBX {number} (test {code}) has no specimen ID: {looked} empty")
        results.append(_result(er7, obx, number, value_type, analyzer, problems, order=order,
                               specimen=specimen, collected=collected))
    return results


def _result(er7: _Er7, obx: list[str], number: int, value_type: str, analyzer: str, problems: list[str], *,
            order: _Order, specimen: str, collected: datetime | None) -> Result:
    """Build the Result of one result OBX (OBX-3/11 required: MappingError when missing)."""
    code, status = er7.comp(obx, 3), er7.comp(obx, 11)
    if not code:
        raise MappingError(f"OBX {number} has no observation identifier (OBX-3 is required)")
    if not status:
        raise MappingError(f"OBX {number} (test {code}) has no result status (OBX-11 is required)")
    raw_field = er7.raw(obx, 5)
    raw = er7.unescape(raw_field)  # kept as sent: "^182", ">^500", "<5"
    comparator: str | None = None
    value: Decimal | None = None
    if value_type == "SN":
        comparator, value = _structured_numeric(er7, raw_field)
    elif value_type in _TEXT_NUMERIC:
        comparator, value = parse_value(raw)  # ST "<5" means what ASTM's "<5" means
    if value is None and raw.strip() and value_type in ("NM", "SN"):
        problems.append(f"OBX {number} (test {code}) {value_type} value is not a number; kept as text")
    elif value_type and value_type not in _TEXT_NUMERIC | _CODED | {"SN"}:
        problems.append(f"OBX {number} (test {code}) has value type {value_type[:5]!r}; value kept as text")
    completed = _when(er7.comp(obx, 19) or er7.comp(obx, 14), f"OBX {number} completion time (OBX-19/OBX-14)",
                      problems)
    patient = order.patient
    # Kept as sent for the LIS (issue 13): the whole OBX-3, OBX-4, OBX-2 and OBX-5's components.
    test_id = join_id(er7.components(er7.raw(obx, 3).split(er7.repetition, 1)[0]))
    units_parts = er7.components(er7.raw(obx, 6).split(er7.repetition, 1)[0])
    return Result(
        analyzer=analyzer, test_code=code, raw_value=raw, value=value, comparator=comparator,
        test_id=test_id if test_id != code else "", protocol="hl7", sub_id=er7.comp(obx, 4), value_type=value_type,
        value_parts=tuple(er7.components(raw_field.split(er7.repetition, 1)[0])) if raw_field != _NULL else (),
        units_parts=tuple(units_parts) if len([p for p in units_parts if p]) > 1 else (),
        units=er7.comp(obx, 6), instrument_flags=_flags(er7, obx), instrument_range=er7.unescape(er7.raw(obx, 7)),
        status=status, completed_at=completed, specimen_id=specimen, collected_at=collected,
        patient_id=patient.patient_id, patient_authority=patient.authority,
        patient_name=patient.name, birth_date=patient.birth_date, sex=patient.sex,
        sequence=number, specimen_role=_specimen_role(er7, order), order_code=er7.comp(order.obr, 4))


def _specimen_role(er7: _Er7, order: _Order) -> str:
    """``Q`` when SPM-11 (specimen role, table 0369) says control: Q (QC) or C (calibrator/control)."""
    role = er7.comp(order.spm, 11).upper() if order.spm is not None else ""
    return "Q" if role in ("Q", "C") else ""


def _structured_numeric(er7: _Er7, raw_field: str) -> tuple[str | None, Decimal | None]:
    """SN (2.A.72) ``comparator^num1^separator^num2``: only a single number gets a value."""
    parts = [*er7.components(raw_field.split(er7.repetition, 1)[0]), "", "", "", ""]
    comparator, number, separator, second = (p.strip() for p in parts[:4])
    if separator or second:
        return None, None  # a range (10^-^20) or ratio (1^:^128) is no single reading
    if comparator not in _COMPARATORS | {"", "="}:
        return None, None  # "<>" (not equal) says nothing comparable
    inner, value = parse_value(number)
    if inner is not None or value is None:
        return None, None
    return (comparator if comparator in _COMPARATORS else None), value


def _flags(er7: _Er7, obx: list[str]) -> tuple[str, ...]:
    """OBX-8 repetitions, first component each (LAW sends ``N^^HL70078``)."""
    flags = []
    for rep in er7.raw(obx, 8).split(er7.repetition):
        flag = er7.unescape(rep.split(er7.component, 1)[0]).strip()
        if flag and flag != _NULL:
            flags.append(flag)
    return tuple(flags)


def _when(text: str, what: str, problems: list[str]) -> datetime | None:
    moment = parse_hl7_datetime(text) if text else None
    if text and moment is None:
        problems.append(f"{what} {text[:26]!r} is not a valid HL7 timestamp; ignored")
    return moment

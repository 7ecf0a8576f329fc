"""Result + Evaluation -> outbound HL7 v2.5.1 ORU^R01 for the LIS.

One message per result, grouped as v2.5.1 chapter 7 ORU_R01 requires::

    MSH  PATIENT_RESULT{ [PATIENT: PID]
                         ORDER_OBSERVATION{ OBR  OBSERVATION{ OBX [{NTE}] }  [SPECIMEN{ SPM }] } }

The instrument's reading travels untouched (OBX-5 raw text, OBX-6 units, OBX-8 its flags first);
labmw's conclusions are added, never substituted: its flags as further OBX-8 repetitions (table
0078), its applied range in OBX-7 and its reasons as ``NTE|n|O|labmw: ...`` right after the OBX
(HL7.md 2.7, PRODUCT.md "Rules and flags"). Every value taken from the result is escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime

from labmw.errors import LocalProtocolError, MappingError
from labmw.model import Evaluation, Method, Result
from labmw.wire.hl7_codec import (
    COMPONENT_SEP,
    ENCODING_CHARS,
    REPETITION_SEP,
    SEGMENT_SEP,
    escape,
    format_ts,
    join_segment,
)

VERSION = "2.5.1"
MESSAGE_TYPE = "ORU^R01^ORU_R01"
PROCESSING_ID = "P"
NOTE_PREFIX = "labmw: "

# HL7 v2.5.1 2.A.47 NM: optional sign, digits, optional decimal point; no exponent, no blanks.
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_NM = re.compile(_NUMBER)
# SN (2.A.72) comparator + num1. The instrument may have written "<5" (ASTM) or "<^5" (HL7 SN).
_SN = re.compile(rf"(<=|>=|<>|<|>|=)\^?({_NUMBER})")

# SPM-4 (specimen type) is required in v2.5.1, but neither analyzer nor method tells us the
# specimen type. Table 0353 "CWE statuses" is the standard way to say "unknown" in a CWE field.
_SPECIMEN_TYPE_UNKNOWN = "U^Unknown^HL70353"


def build_oru(
    result: Result,
    evaluation: Evaluation,
    *,
    method: Method | None,
    control_id: str,
    now: datetime,
    sending_application: str = "LABMW",
    sending_facility: str = "",
    receiving_application: str = "LIS",
    receiving_facility: str = "",
) -> bytes:
    """Encode one result and labmw's evaluation of it as an HL7 v2.5.1 ORU^R01.

    Inputs: the instrument's ``result``; labmw's ``evaluation`` (flags, applied range, notes);
    the matched ``method`` (LOINC coding, fallback units, OBX-17) or None; our MSH-10
    ``control_id`` (stable across resends); an aware ``now`` for MSH-7 and OBR-22; MSH-3..6.
    Output: the message as UTF-8 bytes, segments ending in CR, no MLLP framing. PID is left out
    when the result carries no patient data at all (the PATIENT group is optional).
    Raises: :class:`~labmw.errors.MappingError` when the result has no test code or no status
    (OBX-3 and OBX-11 are required); :class:`~labmw.errors.LocalProtocolError` for a naive
    ``now``.
    """
    return build_oru_group(((result, evaluation, method),), control_id=control_id, now=now,
                           sending_application=sending_application, sending_facility=sending_facility,
                           receiving_application=receiving_application, receiving_facility=receiving_facility)


def build_oru_group(
    items: Sequence[tuple[Result, Evaluation, Method | None]],
    *,
    control_id: str,
    now: datetime,
    sending_application: str = "LABMW",
    sending_facility: str = "",
    receiving_application: str = "LIS",
    receiving_facility: str = "",
) -> bytes:
    """One ORU^R01 for the results of one specimen: one OBR, one OBX (and its NTEs) per result.

    ``items`` are ``(result, evaluation, method)`` in OBX order, all of one specimen and patient
    (the first one's PID, specimen and collection time are used). With one item this is exactly
    :func:`build_oru`. OBR-4 is the result's identifier for one result, else the analyzer's name as
    a local code (a panel labmw did not order). Raises as :func:`build_oru` for any item, and
    :class:`~labmw.errors.MappingError` for no items.
    """
    if not items:
        raise MappingError("no results to send")
    for result, _evaluation, _method in items:
        if not result.test_code:
            raise MappingError("result has no test code; OBX-3 is required")
        if not result.status:
            raise MappingError("result has no status; OBX-11 is required")
    if now.utcoffset() is None:
        raise LocalProtocolError("build_oru needs an aware 'now' (MSH-7 carries the offset)")
    first = items[0][0]
    ids = [_observation_id(result, method) for result, _evaluation, method in items]
    statuses = {result.status for result, _evaluation, _method in items}
    observations: list[str] = []
    for number, ((result, evaluation, method), observation_id) in enumerate(zip(items, ids, strict=True), start=1):
        observations.append(_obx(result, evaluation, method, observation_id, set_id=number))
        observations.extend(join_segment("NTE", str(n), "O", escape(NOTE_PREFIX + note))
                            for n, note in enumerate(evaluation.notes, start=1))
    panel = ids[0] if len(items) == 1 else COMPONENT_SEP.join((escape(first.analyzer), escape(first.analyzer), "L"))
    segments = [
        join_segment(
            "MSH",
            ENCODING_CHARS,
            escape(sending_application),
            escape(sending_facility),
            escape(receiving_application),
            escape(receiving_facility),
            format_ts(now),
            "",
            MESSAGE_TYPE,
            escape(control_id),
            PROCESSING_ID,
            VERSION,
        ),
        *_pid(first),
        join_segment(
            "OBR",
            "1",
            "",
            escape(first.specimen_id),
            panel,
            "",
            "",
            format_ts(first.collected_at),
            *[""] * 14,  # OBR-8 .. OBR-21
            format_ts(now),  # OBR-22: when this result report was produced
            "",
            "",
            escape(first.status if len(statuses) == 1 else ("C" if "C" in statuses else "F")),  # OBR-25
        ),
        *observations,
        # v2.5.1 allows SPM only as the SPECIMEN group closing ORDER_OBSERVATION, i.e. after
        # the OBSERVATION groups (OBX + their NTEs), not between OBR and OBX.
        join_segment("SPM", "1", escape(first.specimen_id), "", _SPECIMEN_TYPE_UNKNOWN),
    ]
    return "".join(segment + SEGMENT_SEP for segment in segments).encode("utf-8")


def _observation_id(result: Result, method: Method | None) -> str:
    """OBX-3 / OBR-4 (CE): LOINC first when known, the instrument's full test identifier as alternate.

    An HL7 analyzer's OBX-3 is a CE/CWE already: its components are kept as sent. An ASTM
    identifier with components (GeneXpert ``rpoB1^Ct``) is one code: its ``^`` is escaped
    (``rpoB1\\S\\Ct``), so the LIS reads back exactly what the instrument sent, and two results
    the instrument told apart never share an OBX-3.
    """
    if result.test_id and result.protocol == "hl7":
        sent = [escape(part) for part in result.test_id.split(COMPONENT_SEP)]
        if method is not None and method.loinc:
            sent = [escape(method.loinc), escape(method.analyte), "LN", *[*sent, "", ""][:3]]
        return COMPONENT_SEP.join(sent).rstrip(COMPONENT_SEP)
    code = escape(result.identity)
    parts: tuple[str, ...]
    if method is not None and method.loinc:
        parts = (escape(method.loinc), escape(method.analyte), "LN", code, code, "L")
    else:
        parts = (code, code, "L")
    return COMPONENT_SEP.join(parts)


def _pid(result: Result) -> list[str]:
    if not (result.patient_id or result.patient_name or result.birth_date or result.sex):
        return []
    return [
        join_segment(
            "PID",
            "",
            "",
            escape(result.patient_id) + (f"^^^{escape(result.patient_authority)}" if result.patient_authority else ""),
            "",
            _name(result.patient_name),
            "",
            _date(result.birth_date),
            escape(result.sex),
        )
    ]


def _name(name: str) -> str:
    # The mapper hands the name over already in XPN shape (FAMILY^GIVEN^...): keep the component
    # boundaries, escape everything inside them.
    return COMPONENT_SEP.join(escape(part) for part in name.split(COMPONENT_SEP))


def _date(day: date | None) -> str:
    if day is None:
        return ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _value(result: Result) -> tuple[str, str]:
    """(OBX-2, OBX-5): the value type and the instrument's reading, never re-formatted.

    The type chosen at intake wins (an HL7 analyzer's own OBX-2; SN/CWE for an ASTM value with
    components): OBX-5 is then the sent components, each escaped, so ``^182`` stays SN ``^182``
    and ``<=1.005`` stays ST. Otherwise NM, SN for a comparator, else ST (README "How values travel").
    """
    if result.value_parts and (result.value_type in ("SN", "CWE") or (result.value_type and result.protocol == "hl7")):
        return result.value_type, COMPONENT_SEP.join(escape(part) for part in result.value_parts)
    raw = result.value_parts[0] if len(result.value_parts) == 1 else result.raw_value
    if result.comparator is not None:
        match = _SN.fullmatch(raw)
        if match is not None:
            # SN puts the comparator and the number in separate components; both are the
            # instrument's own characters ("<5" -> "<^5"), nothing is rounded or re-written.
            return "SN", COMPONENT_SEP.join((match[1], match[2]))
    elif result.value is not None and _NM.fullmatch(raw):
        return "NM", raw
    return "ST", escape(raw)


def _repetitions(values: Iterable[str]) -> str:
    return REPETITION_SEP.join(escape(value) for value in values if value)


def _obx(result: Result, evaluation: Evaluation, method: Method | None, observation_id: str, *,
         set_id: int = 1) -> str:
    value_type, value = _value(result)
    units = result.units or (method.units if method is not None else "")
    # Composite units as sent (BA400 "U/L^U/L^A400"): every component kept, each escaped.
    units_field = (COMPONENT_SEP.join(escape(part) for part in result.units_parts).rstrip(COMPONENT_SEP)
                   if result.units_parts else escape(units))
    return join_segment(
        "OBX",
        str(set_id),
        value_type,
        observation_id,
        escape(result.sub_id),  # OBX-4 as the analyzer sent it (part of its result identity)
        value,
        units_field,
        escape(evaluation.applied_range),
        # Table 0078: the instrument's flags first (some receivers read only the first
        # repetition), then labmw's (HL7.md 2.7 item 2).
        _repetitions((*result.instrument_flags, *evaluation.flags)),
        "",
        "",
        escape(result.status),  # OBX-11
        "",
        "",
        format_ts(result.collected_at),  # OBX-14
        "",
        "",
        escape(method.name) if method is not None else "",  # OBX-17
        escape(result.analyzer),  # OBX-18
        format_ts(result.completed_at),  # OBX-19
    )

"""Generic LIS2-A2 (ASTM E1394) records -> :class:`labmw.model.Result`.

The walk keeps the E1394 hierarchy as parent context: H (message) > P (patient) > O (order) > R
(result), with C comments anywhere, Q queries and L to end. Every R becomes one ``Result`` carrying
the enclosing P and O data. Field positions are E1394's (docs/ASTM.md §2.3-2.8, §6 items 17-20):

* patient: P-3 component 1, else P-4, else P-5; name P-6 (``last^first^...``, forwarded as HL7 XPN);
  birth date P-8; sex P-9.
* specimen: O-3 component ``profile.specimen_component``, else O-4 component 1; collection time O-8.
* result: test code R-3 component ``profile.test_code_component``; value R-4; units R-5;
  instrument range R-6; flags R-7; status R-9; completion time R-13.

Nothing is dropped silently: whatever cannot be mapped is described in ``MappedMessage.problems``
for the audit trail. Dates are instrument local time with no zone, so datetimes stay naive
(see :mod:`labmw.model`).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal

from labmw.mapping.identity import TEST_CODE_MISSING, astm_value, join_id, mark_gates
from labmw.model import Result
from labmw.wire.astm_records import Record

__all__ = [
    "AstmProfile",
    "MappedMessage",
    "map_message",
    "parse_astm_date",
    "parse_astm_datetime",
    "parse_value",
]

# E1394 §10.1.4 values: optional comparator, then a plain decimal number. Leading "." and padding
# are real (PSM ".995455", Sysmex XP "  5.5"); components ("-1^0.282") are not numbers.
_VALUE = re.compile(r"\s*(<=|>=|<|>)?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*", re.ASCII)
_TIMESTAMP = re.compile(r"\s*(\d{8}|\d{12}|\d{14})\s*", re.ASCII)
# Roche cobas-mode host codes are numeric with a "/dilution[/...]" suffix: "685/", "8/1/not".
_HOST_CODE = re.compile(r"(\d+)/")
_SEX_WORDS = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "U": "U", "UNKNOWN": "U"}
# Records that are understood but carry nothing for a Result (docs/ASTM.md §2.7).
_NOT_MAPPED = {"M": "manufacturer information", "S": "scientific information"}


@dataclass(frozen=True, slots=True, kw_only=True)
class AstmProfile:
    """Per-analyzer settings for this mapping.

    ``test_code_component``: which component of R-3 holds the local test code (4 per E1394; 5 on
    Sysmex, 2 on GeneXpert). ``specimen_component``: which component of O-3 is the specimen ID
    (2 on the cobas c311's ``counter^ID^...``). ``encoding``: the codec for this analyzer's bytes.
    ``final_statuses``: R-9 values that count as final (docs/ASTM.md §6 item 19).

    Raises ``ValueError`` when a component number is below 1 or the encoding is unknown.
    """

    test_code_component: int = 4
    specimen_component: int = 1
    encoding: str = "latin-1"
    final_statuses: tuple[str, ...] = ("F", "C")
    #: the O record field holding the specimen ID (3 per E1394; 4 on Sysmex XP/XN: ``^^S123``)
    specimen_field: int = 3

    def __post_init__(self) -> None:
        if self.test_code_component < 1 or self.specimen_component < 1 or self.specimen_field < 2:
            raise ValueError("component numbers start at 1")
        try:
            codecs.lookup(self.encoding)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {self.encoding!r}") from exc

    def is_final(self, status: str) -> bool:
        """Return True when R-9 ``status`` is one of this analyzer's final statuses."""
        return status in self.final_statuses


@dataclass(frozen=True, slots=True, kw_only=True)
class MappedMessage:
    """What one ASTM message yielded.

    ``results`` in message order; ``queries`` the Q records as received (to answer or forward);
    ``sender`` H-5 component 1 and ``processing_id`` H-12 component 1 of the first H, stripped;
    ``problems`` one human-readable sentence per thing that could not be mapped.
    """

    results: tuple[Result, ...]
    queries: tuple[Record, ...]
    sender: str
    processing_id: str
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientContext:
    """The patient a result belongs to, as the message identified them (shared by ASTM and HL7 mapping)."""

    patient_id: str = ""
    name: str = ""
    birth_date: date | None = None
    sex: str = ""
    authority: str = ""  # HL7 PID-3.4 (ASTM's P-3 has no assigning authority)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Order:
    specimen_id: str = ""
    # Why specimen_id is empty, for the problem text; the default stands for "no O record yet".
    missing_reason: str = "no O record precedes it"
    collected_at: datetime | None = None
    action_code: str = ""  # O-12: "Q" marks a quality-control specimen (E1394 §9.4.12)
    order_code: str = ""  # O-5 as sent (universal test ID), for per-analyzer QC patterns


def parse_value(text: str) -> tuple[str | None, Decimal | None]:
    """Split an R-4 value into ``(comparator, number)``.

    ``"<3.00"`` -> ``("<", Decimal("3.00"))``; ``"  5.5"`` -> ``(None, Decimal("5.5"))``. The
    Decimal keeps the digits as written (``"12.000"`` stays ``Decimal("12.000")``). Anything that
    is not an optional ``<``, ``>``, ``<=``, ``>=`` followed by a decimal number (``-----``, ``NA``,
    ``-1^0.282``, ``NOT DETECTED^``) gives ``(None, None)``. Never raises.
    """
    match = _VALUE.fullmatch(text)
    if match is None:
        return None, None
    return match.group(1), Decimal(match.group(2))


def parse_astm_datetime(text: str) -> datetime | None:
    """Parse an E1394 ``YYYYMMDD[HHMM[SS]]`` timestamp (8, 12 or 14 digits) as a naive datetime.

    Returns None for empty, malformed or impossible values (``20230231``). Never raises.
    """
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    # Date-only and minute-precision stamps are real (Omnilab, Pentra): pad to midnight / :00.
    d = match.group(1).ljust(14, "0")
    try:
        # E1394 timestamps carry no zone: the analyzer's local time, kept naive on purpose.
        return datetime(int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[8:10]), int(d[10:12]),  # noqa: DTZ001
                        int(d[12:14]))
    except ValueError:
        return None


def parse_astm_date(text: str) -> date | None:
    """Parse the date part of an 8-, 12- or 14-digit E1394 timestamp; None when invalid."""
    moment = parse_astm_datetime(text)
    return moment.date() if moment is not None else None


def map_message(records: Sequence[Record], *, analyzer: str, profile: AstmProfile) -> MappedMessage:
    """Map the records of one decoded message to results, queries and problems.

    ``analyzer`` is the configured instrument name stored in each ``Result``. ``Result.sequence`` is
    the 1-based position of the R record among all R records of the message (unmapped ones count
    too). ``Result.status`` is R-9 as sent, ``""`` when empty (no default is invented). C records
    are skipped silently, M and S with a problem, Q records are returned in ``queries``.

    Never raises for any decoded input; everything odd ends up in ``problems``.
    """
    problems: list[str] = []
    results: list[Result] = []
    queries: list[Record] = []
    sender = processing_id = ""
    seen_header = False
    patient, order = PatientContext(), _Order()
    r_count = 0  # running index of R records: Result.sequence
    after_result = False  # the previous record was an R (or a C after an R)
    for line, record in enumerate(records, start=1):
        kind = record.type
        where = f"{kind} record at line {line}"
        if kind == "H":
            if not seen_header:
                sender = record.component(5, 1).strip()
                processing_id = record.component(12, 1).strip()
                seen_header = True
            patient, order = PatientContext(), _Order()
        elif kind == "P":
            patient, order = _map_patient(record, where, problems), _Order()
        elif kind == "O":
            order = _map_order(record, profile, where, problems)
        elif kind == "R":
            r_count += 1
            result = _map_result(record, r_count, where, analyzer, profile, patient, order,
                                 problems)
            if result is not None and not result.specimen_id:
                problems.append(f"{where} (result {r_count}, test {result.test_code}) has no "
                                f"specimen ID: {order.missing_reason}")
            if result is not None and "Q" in (order.action_code, processing_id.upper()):
                # O-12 action code or H-12 processing ID "Q": a control, never a patient result (labmw.qc).
                result = replace(result, specimen_role="Q")
            if result is not None:
                results.append(result)
        elif kind == "Q":
            queries.append(record)
        elif kind in _NOT_MAPPED:
            problems.append(f"{where} ({_NOT_MAPPED[kind]}) is not mapped")
        elif kind == "C" and after_result and results:
            # A comment after an R record belongs to that result (LIS2-A2 §11): kept with it, shown
            # in review and forwarded as an NTE (#11).
            text = " ".join(part.strip() for part in record.components(4) if part.strip())
            if text:
                results[-1] = replace(results[-1], comments=(*results[-1].comments, text))
        elif kind not in ("C", "L"):
            problems.append(f"{where} has unknown record type {kind!r} and was not mapped")
        after_result = kind == "R" or (kind == "C" and after_result)
    if not seen_header:
        problems.append("message has no H record")
    return MappedMessage(results=mark_gates(results, processing_id=processing_id), queries=tuple(queries),
                         sender=sender, processing_id=processing_id, problems=tuple(problems))


def _map_patient(record: Record, where: str, problems: list[str]) -> PatientContext:
    """Read the patient fields of a P record (E1394 §8)."""
    patient_id = ""
    for n in (3, 4, 5):  # practice-assigned, laboratory-assigned, ID No. 3
        patient_id = record.component(n, 1).strip()
        if patient_id:
            break
    # P-6 last^first^middle^suffix^title goes out as HL7 XPN, so keep the components as sent and
    # only drop trailing empty ones (PSM sends a bare "^").
    parts = record.components(6)
    while parts and not parts[-1]:
        parts.pop()
    name = "^".join(parts)
    birth_text = record.component(8, 1).strip()
    birth_date = parse_astm_date(birth_text)
    if birth_text and birth_date is None:
        # The value itself is PHI and stays out of the problem text.
        problems.append(f"{where} has an invalid birth date in P-8 (not YYYYMMDD[HHMM[SS]])")
    sex_text = record.component(9, 1).strip()
    sex = _SEX_WORDS.get(sex_text.upper(), "U") if sex_text else ""
    if sex_text and sex_text.upper() not in _SEX_WORDS:
        problems.append(f"{where} has an unknown sex {sex_text!r} in P-9, mapped to U")
    return PatientContext(patient_id=patient_id, name=name, birth_date=birth_date, sex=sex)


def _map_order(record: Record, profile: AstmProfile, where: str, problems: list[str]) -> _Order:
    """Read the specimen ID and collection time of an O record (E1394 §9.4)."""
    # Composite or padded IDs are common (c311 "11625^CL-PL-24-0370   ^1^^004"): hence the
    # configurable component and the strip.
    where_id = profile.specimen_field
    specimen = record.component(where_id, profile.specimen_component).strip()
    if not specimen and where_id == 3:  # the default place, with E1394's instrument specimen ID after it
        specimen = record.component(4, 1).strip()
    why = "" if specimen else (f"O-{where_id} component {profile.specimen_component}"
                               + (" and O-4 component 1 are empty" if where_id == 3 else " is empty"))
    collected_text = record.component(8, 1).strip()
    collected_at = parse_astm_datetime(collected_text)
    if collected_text and collected_at is None:
        problems.append(f"{where} has an invalid collection time {collected_text!r} in O-8")
    return _Order(specimen_id=specimen, missing_reason=why, collected_at=collected_at,
                  action_code=record.component(12, 1).strip().upper(), order_code=record.text(5).strip())


def _map_result(
    record: Record,
    sequence: int,
    where: str,
    analyzer: str,
    profile: AstmProfile,
    patient: PatientContext,
    order: _Order,
    problems: list[str],
) -> Result | None:
    """Build the Result for one R record (E1394 §10.1), or None with a problem when impossible."""
    code = record.component(3, profile.test_code_component).strip()
    host = _HOST_CODE.match(code)
    # The full identifier: every component from the configured one on (GeneXpert "rpoB1^Ct",
    # ARCHITECT "16^ALT^UNDILUTED^F"); a cobas host code is its number alone.
    test_id = code if host is not None else join_id(record.components(3)[profile.test_code_component - 1:])
    if host is not None:
        code = test_id = host.group(1)
    gates: tuple[str, ...] = ()
    if not code:
        # Held, never dropped: a misconfigured component must be loud (issue 13).
        problems.append(f"{where} (result {sequence}) has no test code in R-3 component "
                        f"{profile.test_code_component}; held as {TEST_CODE_MISSING}")
        test_id, gates = join_id(record.components(3)), (TEST_CODE_MISSING,)
    raw_value = record.text(4)  # kept exactly: "<3.00", "-----", "-1^0.282"
    value_type, value_parts, comparator, value = astm_value(record.components(4))
    if not value_type:
        # One component left once the empty trailing ones are dropped ("NOT DETECTED^"): that is the value.
        single = value_parts[0] if value_parts else ""
        value_parts = (single,) if single != raw_value else ()
        comparator, value = parse_value(single if value_parts else raw_value)
    completed_text = record.component(13, 1).strip()
    completed_at = parse_astm_datetime(completed_text)
    if completed_text and completed_at is None:
        problems.append(f"{where} (result {sequence}) has an invalid completion time "
                        f"{completed_text!r} in R-13")
    units_parts = record.components(5)
    return Result(
        analyzer=analyzer,
        test_code=code,
        test_id=test_id if test_id != code else "",
        protocol="astm",
        value_type=value_type,
        value_parts=value_parts,
        units_parts=tuple(units_parts) if len(units_parts) > 1 else (),
        gates=gates,
        raw_value=raw_value,
        value=value,
        comparator=comparator,
        units=(units_parts[0] if len(units_parts) > 1 else record.text(5)).strip(),
        # A flag with components (ARCHITECT "EXP^<") is several flags: one OBX-8 repetition each.
        instrument_flags=tuple(part.strip() for n in range(1, len(record.repeats(7)) + 1)
                               for part in record.components(7, n) if part.strip()),
        instrument_range=record.text(6).strip(),
        status=record.text(9).strip(),
        completed_at=completed_at,
        specimen_id=order.specimen_id,
        collected_at=order.collected_at,
        patient_id=patient.patient_id, patient_authority=patient.authority,
        patient_name=patient.name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        sequence=sequence,
        order_code=order.order_code,
    )

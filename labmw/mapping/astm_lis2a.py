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
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

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

    def __post_init__(self) -> None:
        if self.test_code_component < 1 or self.specimen_component < 1:
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


@dataclass(frozen=True, slots=True, kw_only=True)
class _Order:
    specimen_id: str = ""
    # Why specimen_id is empty, for the problem text; the default stands for "no O record yet".
    missing_reason: str = "no O record precedes it"
    collected_at: datetime | None = None


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
            if result is not None:
                results.append(result)
        elif kind == "Q":
            queries.append(record)
        elif kind in _NOT_MAPPED:
            problems.append(f"{where} ({_NOT_MAPPED[kind]}) is not mapped")
        elif kind not in ("C", "L"):
            problems.append(f"{where} has unknown record type {kind!r} and was not mapped")
    if not seen_header:
        problems.append("message has no H record")
    return MappedMessage(results=tuple(results), queries=tuple(queries), sender=sender,
                         processing_id=processing_id, problems=tuple(problems))


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
    specimen = record.component(3, profile.specimen_component).strip()
    if not specimen:
        specimen = record.component(4, 1).strip()
    why = "" if specimen else (f"O-3 component {profile.specimen_component} and O-4 component 1 "
                               "are empty")
    collected_text = record.component(8, 1).strip()
    collected_at = parse_astm_datetime(collected_text)
    if collected_text and collected_at is None:
        problems.append(f"{where} has an invalid collection time {collected_text!r} in O-8")
    return _Order(specimen_id=specimen, missing_reason=why, collected_at=collected_at)


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
    if host is not None:
        code = host.group(1)
    if not code:
        problems.append(f"{where} (result {sequence}) has no test code in R-3 component "
                        f"{profile.test_code_component}")
        return None
    raw_value = record.text(4)  # kept exactly: "<3.00", "-----", "-1^0.282"
    comparator, value = parse_value(raw_value)
    completed_text = record.component(13, 1).strip()
    completed_at = parse_astm_datetime(completed_text)
    if completed_text and completed_at is None:
        problems.append(f"{where} (result {sequence}) has an invalid completion time "
                        f"{completed_text!r} in R-13")
    return Result(
        analyzer=analyzer,
        test_code=code,
        raw_value=raw_value,
        value=value,
        comparator=comparator,
        units=record.text(5).strip(),
        instrument_flags=tuple(f.strip() for f in record.repeats(7) if f.strip()),
        instrument_range=record.text(6).strip(),
        status=record.text(9).strip(),
        completed_at=completed_at,
        specimen_id=order.specimen_id,
        collected_at=order.collected_at,
        patient_id=patient.patient_id,
        patient_name=patient.name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        sequence=sequence,
    )

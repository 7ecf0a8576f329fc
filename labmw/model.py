"""Plain domain types shared by mapping, rules, store and daemon.

Frozen, slotted, keyword-only dataclasses. Values that are compared with limits are ``Decimal``
(reported precision matters; floats have no place in range math). Timestamps are timezone-aware
when the source says so; ASTM times carry no zone and are kept naive (instrument local time).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal


class Flag(enum.StrEnum):
    """HL7 table 0078 codes that labmw itself adds (after the instrument's own flags)."""

    LOW = "L"
    HIGH = "H"
    CRITICAL_LOW = "LL"
    CRITICAL_HIGH = "HH"
    BELOW_MEASURING_RANGE = "<"
    ABOVE_MEASURING_RANGE = ">"
    DELTA_UP = "U"
    DELTA_DOWN = "D"


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """One analyzer result, exactly as the instrument reported it, plus where it came from.

    ``raw_value`` is the instrument's text; ``value`` its numeric reading when it has one and
    ``comparator`` a leading ``<``, ``>``, ``<=`` or ``>=`` ("<5" -> comparator "<", value 5).
    """

    analyzer: str
    test_code: str
    raw_value: str
    value: Decimal | None = None
    comparator: str | None = None
    units: str = ""
    instrument_flags: tuple[str, ...] = ()
    instrument_range: str = ""
    status: str = "F"
    completed_at: datetime | None = None
    specimen_id: str = ""
    collected_at: datetime | None = None
    patient_id: str = ""
    patient_name: str = ""  # PHI: never logged, only stored and forwarded
    birth_date: date | None = None  # PHI
    sex: str = ""  # "M", "F", "U" or "" when not sent
    sequence: int = 0  # position of the result in its message, 1-based


@dataclass(frozen=True, slots=True, kw_only=True)
class AgeBound:
    """An age limit as a lab writes it: ``18y``, ``6m``, ``30d`` (compared in calendar units)."""

    amount: int
    unit: str  # "d", "m" or "y"

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeRule:
    """A reference interval for one partition of a method: sex (None = both) and age band.

    The age band is half-open: ``age_min <= age < age_max``.
    """

    low: Decimal
    high: Decimal
    sex: str | None = None
    age_min: AgeBound | None = None
    age_max: AgeBound | None = None
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaRule:
    """The simple delta rule of ``labmw delta set``; an unset threshold is not applied."""

    abs_change: Decimal | None = None
    pct_change: Decimal | None = None
    window_days: Decimal = Decimal(7)
    action: str = "flag"  # "flag" or "hold"


@dataclass(frozen=True, slots=True, kw_only=True)
class Method:
    """One assay method: an analyte measured one particular way, with its own limits."""

    name: str
    analyte: str
    units: str
    loinc: str = ""
    measuring_low: Decimal | None = None
    measuring_high: Decimal | None = None
    critical_low: Decimal | None = None
    critical_high: Decimal | None = None
    ranges: tuple[RangeRule, ...] = ()
    delta: DeltaRule | None = None
    status: str = "active"  # "active" or "pending review"
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PreviousResult:
    """The same patient's earlier result of the same method, for delta checks."""

    value: Decimal
    collected_at: datetime
    specimen_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One rule's verdict, kept for the audit trail with the inputs it looked at."""

    rule: str
    outcome: str
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """What labmw concluded about one result.

    ``flags`` are the table-0078 codes labmw adds, in order, after the instrument's own flags.
    ``applied_range`` is the OBX-7 text (``"9-59"``) or ``""`` when no range applied.
    ``notes`` are the human explanations that go in NTE segments (NTE-2 = ``O``).
    """

    method: str | None
    flags: tuple[str, ...] = ()
    applied_range: str = ""
    notes: tuple[str, ...] = ()
    hold: bool = False
    decisions: tuple[Decision, ...] = ()

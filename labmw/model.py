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
    # "active"; "pending review" (applied, and every result it judges says so: CLINICAL.md item 25);
    # "disabled" (kept in the file for the record, never applied).
    status: str = "active"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaRule:
    """The simple delta rule of ``labmw delta set``; an unset threshold is not applied."""

    abs_change: Decimal | None = None
    pct_change: Decimal | None = None
    window_days: Decimal = Decimal(7)
    action: str = "flag"  # "flag" or "hold"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitConversion:
    """Another unit a method's results may arrive in (CLINICAL.md item 4).

    A value in ``units`` times ``factor`` is the value in the method's units (µkat/L x 60 = U/L).
    ``decimals`` is how many places the applied range gets when it is shown back in ``units``.
    """

    units: str
    factor: Decimal
    decimals: int = 2
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionThreshold:
    """A decision limit that is not a reference interval (ACG, Prati, SAFETY: CLINICAL.md item 5).

    When ``enabled``, a value above ``value`` for a patient in the sex/age partition gets a note
    (never a flag). The age band is half-open as for :class:`RangeRule`.
    """

    name: str
    value: Decimal
    sex: str | None = None
    age_min: AgeBound | None = None
    age_max: AgeBound | None = None
    enabled: bool = False
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Grading:
    """A severity scale by multiples of the applied upper limit (CTCAE v5: CLINICAL.md §2.1).

    Grade n applies when value > ``above_uln[n-1]`` x ULN (the highest such n).
    """

    scheme: str
    above_uln: tuple[Decimal, ...]
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SignificantChange:
    """ALT delta tier 1 (flag U/D, no hold), CLINICAL.md §3.5 step 2.

    Fires when new/old >= ``ratio_up`` or <= ``ratio_down`` and |new - old| >=
    max(``min_change``, ``min_change_uln`` x ULN).
    """

    ratio_up: Decimal
    ratio_down: Decimal
    min_change: Decimal
    min_change_uln: Decimal
    enabled: bool = True
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImplausibleFall:
    """ALT delta tier 2 (hold), CLINICAL.md §3.5 step 3.

    Holds when old > ``previous_above_uln`` x ULN and new < ``fraction_of_expected`` x
    old x 0.5^(hours / ``half_life_hours``).
    """

    previous_above_uln: Decimal
    half_life_hours: Decimal
    fraction_of_expected: Decimal
    enabled: bool = True
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AbruptRise:
    """ALT delta tier 3 (hold), CLINICAL.md §3.5 step 4.

    Holds when new >= ``ratio`` x old and new - old >= ``min_rise`` within ``within_hours``.
    """

    ratio: Decimal
    min_rise: Decimal
    within_hours: Decimal
    enabled: bool = True
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AltDeltaTiers:
    """The tiered ALT delta rule of CLINICAL.md §3.5; each tier ``None`` when not configured.

    ``skip_when_both_within_uln``: step 1's gate (no tier fires when old and new are both <= ULN).
    """

    window_days: Decimal
    significant_change: SignificantChange | None = None
    implausible_fall: ImplausibleFall | None = None
    abrupt_rise: AbruptRise | None = None
    skip_when_both_within_uln: bool = True
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HysLawRule:
    """The Hy's-law candidate note (CLINICAL.md §2.3 and item 7): a note, never a flag or a call.

    Candidate when an aminotransferase is >= ``aminotransferase_uln`` x its ULN, a bilirubin >
    ``bilirubin_uln`` x its ULN and every ALP <= ``alp_uln`` x its ULN (at least one ALP), all
    collected within ``window_hours`` of the result being judged. The analyte names say which
    results count as which.
    """

    aminotransferase_uln: Decimal
    bilirubin_uln: Decimal
    alp_uln: Decimal
    window_hours: Decimal
    aminotransferases: tuple[str, ...] = ("ALT", "AST")
    bilirubin: tuple[str, ...] = ("TBIL",)
    alkaline_phosphatase: tuple[str, ...] = ("ALP",)
    enabled: bool = True
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RelatedResult:
    """One of the patient's recent results of another analyte, for the Hy's-law note.

    ``value`` and ``uln`` in the same units (the upper limit applied when that result was judged);
    ``analyte`` is its method's analyte (``AST``, ``TBIL``, ``ALP``).
    """

    analyte: str
    value: Decimal
    uln: Decimal
    collected_at: datetime
    method: str = ""
    specimen_id: str = ""


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
    conversions: tuple[UnitConversion, ...] = ()
    thresholds: tuple[DecisionThreshold, ...] = ()
    grading: Grading | None = None
    alt_delta: AltDeltaTiers | None = None
    hys_law: HysLawRule | None = None

    @property
    def delta_window_days(self) -> Decimal | None:
        """How far back the store must look for the previous result (days), or ``None``.

        The widest window of the simple delta rule and the ALT tiers; ``None`` when the method
        has neither, so no previous result is needed. The latest earlier result within the widest
        window is also the latest within any narrower one, so one look-up serves both rules.
        """
        windows = [rule.window_days for rule in (self.delta, self.alt_delta) if rule is not None]
        return max(windows) if windows else None


@dataclass(frozen=True, slots=True, kw_only=True)
class PreviousResult:
    """The same patient's earlier result of the same method, for delta checks."""

    value: Decimal
    collected_at: datetime
    specimen_id: str = ""
    units: str = ""  # as stored with that result; "" means the method's units


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one inbound message became (for logs, answers and tests: counts only, never patient data).

    Shared by the intake (which makes it) and the transports (which answer by it), so it lives here,
    below both. ``stored`` False means nothing was committed: the peer must get a negative answer
    (NAK, AE 207) so that it sends the message again.
    """

    message_id: int = 0
    results: int = 0
    queued: int = 0
    held: int = 0
    problems: int = 0
    rejected_reason: str = ""
    #: Messages to send back to the analyzer on the same link (answers to host queries, ASTM.md §2.8).
    replies: tuple[bytes, ...] = ()
    #: A resend of a message already stored: acknowledged again, nothing new stored or forwarded.
    duplicate: bool = False
    #: False: nothing was committed (storage refused it); the answer is negative.
    stored: bool = True
    #: The protocol's answer to write back (HL7: the ACK without MLLP framing; b"": send nothing).
    answer: bytes = b""

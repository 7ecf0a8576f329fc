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
    # PID-3.4 assigning authority: with patient_id it says who the patient is, so sites sharing one
    # history (PostgreSQL) never compare two patients whose MRNs from different registries coincide.
    patient_authority: str = ""
    patient_name: str = ""  # PHI: never logged, only stored and forwarded
    birth_date: date | None = None  # PHI
    sex: str = ""  # "M", "F", "U" or "" when not sent
    sequence: int = 0  # position of the result in its message, 1-based
    comments: tuple[str, ...] = ()  # ASTM C records after the R record (instrument comments)
    # "Q" when the instrument marked the specimen as a control (ASTM O-12 or H-12 "Q", HL7 SPM-11
    # "Q"/"C"); "" for patient specimens and when the instrument says nothing (see labmw.qc).
    specimen_role: str = ""
    # The order's universal service / test ID as sent (ASTM O-5, HL7 OBR-4 component 1), for
    # per-analyzer QC patterns of instruments that mark controls there (HemoScreen "LQC").
    order_code: str = ""
    # Fidelity (issue 13): what the instrument sent beyond the mapped test code and text value.
    # ``test_id``: its full test identifier ("MTB-RIF^^^rpoB1^Ct", components joined by "^";
    # "" = the same as ``test_code``); ``sub_id``: HL7 OBX-4. ``value_type``/``value_parts``: the
    # HL7 data type chosen at intake and the value's components as sent (unescaped), so OBX-5 is
    # the instrument's text with its component boundaries; ``units_parts``: composite units as sent
    # (``U/L^U/L^A400``). ``gates``: named holds decided from the message itself
    # (NO_SPECIMEN_ID, TEST_CODE_MISSING, IDENTITY_COLLISION; labmw.mapping.identity).
    test_id: str = ""
    sub_id: str = ""
    value_type: str = ""
    value_parts: tuple[str, ...] = ()
    units_parts: tuple[str, ...] = ()
    gates: tuple[str, ...] = ()
    protocol: str = ""  # "astm" or "hl7": how test_id's components map onto OBX-3

    @property
    def identity(self) -> str:
        """The test as the instrument identified it: ``test_id``, else ``test_code``."""
        return self.test_id or self.test_code


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
    #: The same interval as published in other units, as (units, low, high): a result reported in those
    #: units is judged against them and OBX-7 shows them (Ceriotti's 0.15-0.99 ukat/L, not 59/60 = 0.98).
    in_units: tuple[tuple[str, Decimal, Decimal], ...] = ()


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
    #: Autoverification plausibility limits (gate ABSURD): at or below ``absurd_low`` or above
    #: ``absurd_high`` a value is held as implausible (CLINICAL.md §4.2 step 6, item 14).
    absurd_low: Decimal | None = None
    absurd_high: Decimal | None = None
    #: A non-critical "alert" threshold (CLINICAL.md 2.4): at or above it the result keeps H and gets
    #: a note, never HH (HH/LL are only for limits configured as critical).
    alert_high: Decimal | None = None
    #: Gate actions of this method as (gate name, "hold" | "flag") pairs; they override the analyzer's.
    gates: tuple[tuple[str, str], ...] = ()

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
    #: Autoverification gates that held the result (labmw.rules.gates), in rule order.
    gates: tuple[str, ...] = ()
    #: Gates that fired but were set to "flag": released with a clinician NTE.
    flagged_gates: tuple[str, ...] = ()
    #: Notes for the reviewer only (why a gate held, who released): never sent to the LIS.
    review_notes: tuple[str, ...] = ()
    #: Content hash of the rule set in force when the result was judged (labmw rules version).
    rules_version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Suspension:
    """An active ``labmw autoverify suspend``: empty analyzer/method means every one."""

    id: int = 0
    analyzer: str = ""
    method: str = ""
    reason: str = ""
    actor: str = ""
    since: str = ""

    def covers(self, analyzer: str, method: str | None) -> bool:
        """Whether this suspension applies to a result of ``analyzer`` and ``method``."""
        return (not self.analyzer or self.analyzer == analyzer) and (
            not self.method or self.method == (method or "")
        )

    def describe(self) -> str:
        scope = " ".join(
            part for part in (
                f"analyzer {self.analyzer}" if self.analyzer else "",
                f"method {self.method}" if self.method else "",
            ) if part
        ) or "all analyzers and methods"
        return f"autoverification suspended for {scope}: {self.reason}"


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


@dataclass(frozen=True, slots=True, kw_only=True)
class QcGate:
    """The QC state of one analyzer x method when a patient result of it is judged (CLINICAL.md item 17).

    ``state``: ``ok`` (the latest run was accepted, within the interval), ``QC_FAILED`` (the latest
    run was rejected) or ``QC_EXPIRED`` (no accepted run within ``interval_hours``). ``run_id`` is
    the run the state rests on (0 when there has been none); ``rules`` the rules it violated.
    """

    analyzer: str
    method: str
    state: str
    run_id: int = 0
    rules: tuple[str, ...] = ()
    last_accepted_at: str = ""
    interval_hours: Decimal = Decimal(24)

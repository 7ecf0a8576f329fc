"""Choose the reference range of a method that applies to one patient (sex and age partition).

PRODUCT.md "Rules and flags" and the ``labmw range add`` row: a method carries reference ranges
partitioned by sex (``None`` = both) and a half-open age band; the most specific matching range
applies. CLINICAL.md item 3: with sex or birth date missing, apply the widest applicable band and
mark the demographics incomplete. Pure: stdlib and ``labmw.model`` / ``labmw.errors`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from labmw.model import Method, RangeRule
from labmw.rules.age import AgeAt, approx_days, describe_band, matches

#: The status of a range row kept in the file but never applied.
DISABLED = "disabled"
#: The status of a range row applied but not yet signed off (CLINICAL.md item 25).
PENDING_REVIEW = "pending review"

#: How the partition of a synthetic "widest band" selection starts.
WIDEST = "widest of "

#: Sex codes that can select a sex-specific range (HL7 table 0001 / ASTM P-9). Anything else
#: ("U", "O", "A", "N", "") is "sex unknown" for range selection.
KNOWN_SEXES: tuple[str, ...] = ("M", "F")

# An open upper age bound counts as this many days when ranking band widths (150 years): any
# closed band is narrower than an open one that starts at the same age.
_OPEN_UPPER_DAYS = Decimal(150) * Decimal("365.25")


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeSelection:
    """The outcome of :func:`select_range`.

    ``rule`` is the applied range: one configured rule, a synthetic "widest band" rule built from
    several (demographics incomplete), or ``None`` when no range applies. ``reason`` says why in
    one sentence (no birth date in it); ``incomplete_demographics`` is CLINICAL.md's
    DEMOG_INCOMPLETE (item 3).
    """

    rule: RangeRule | None
    incomplete_demographics: bool = False
    reason: str = ""
    age: str = "unknown"  # completed age as used (``44y``, ``6m``, ``12d``) or ``unknown``
    partition: str = ""  # ``M 18y+``, or ``widest of M 18y+, F 18y+`` for a synthetic band

    @property
    def applied_range(self) -> str:
        """The OBX-7 text ``low-high`` with the limits as configured (``9-59``), or ``""``."""
        if self.rule is None:
            return ""
        return f"{self.rule.low}-{self.rule.high}"


def normalize_sex(sex: str | None) -> str | None:
    """``"M"`` or ``"F"`` (case and blanks ignored), else ``None`` meaning unknown for ranges."""
    if sex is None:
        return None
    code = sex.strip().upper()
    return code if code in KNOWN_SEXES else None


def describe_partition(rule: RangeRule) -> str:
    """The rule's partition as short text: ``M 18y+``, ``any sex 1y to <13y``, ``F all ages``."""
    sex = (rule.sex or "").strip().upper() or "any sex"
    return f"{sex} {describe_band(rule)}"


def select_range(
    method: Method, *, sex: str, birth_date: date | None, at: date | None
) -> RangeSelection:
    """Pick the reference range of ``method`` for a patient of ``sex`` born ``birth_date``.

    Inputs: the method (its ``ranges`` in configuration order; rows with status ``disabled`` are
    never considered); the patient's sex code (``"M"``,
    ``"F"``; anything else, including ``""`` and ``"U"``, is unknown); the birth date or ``None``;
    the collection date the age is computed at, or ``None`` when the result carries no time.

    With sex and age known, a rule matches when its sex is the patient's or ``None`` and the age
    lies in ``[age_min, age_max)`` (each bound in its own unit). The most specific match wins:
    sex-specific beats both-sexes; then more age bounds set beats fewer; then the narrower age band
    (bounds converted to approximate days, an open upper bound counting as 150 years); a remaining
    tie goes to the first rule in configuration order. No match gives ``rule=None``.

    With sex unknown and/or the age unknown (no birth date, no collection date, or a birth date
    after the collection date), the unknown datum matches anything and the candidates are the rules
    that match on what *is* known. If some candidates do not need the missing datum (sex-agnostic
    when sex is unknown, without age bounds when the age is unknown), the most specific of those
    applies. Otherwise the *widest applicable band* applies: a synthetic both-sexes, all-ages rule
    with the lowest low and the highest high among the candidates, so that only values abnormal
    for every partition the patient could be in are flagged. ``incomplete_demographics`` is set
    whenever a missing datum mattered, that is when some candidate needs it.

    Output: a :class:`RangeSelection`. Raises: :class:`~labmw.errors.RuleError` when a configured
    age bound has an unknown unit (bad configuration, caught by whoever validates it).
    """
    patient_sex = normalize_sex(sex)
    age = _age_at(birth_date, at)
    missing = _missing(sex, patient_sex, birth_date, at, age)

    candidates = [
        (index, rule)
        for index, rule in enumerate(method.ranges)
        if rule.status != DISABLED
        and _sex_matches(rule, patient_sex)
        and (age is None or matches(rule, age))
    ]
    age_text = age.describe() if age is not None else "unknown"
    known = f"sex {patient_sex or 'unknown'}, age {age_text}"

    if not missing:
        if not candidates:
            return RangeSelection(rule=None, reason=f"no reference range for {known}", age=age_text)
        chosen = _most_specific(candidates)
        return RangeSelection(
            rule=chosen,
            reason=f"range {_limits(chosen)} for {describe_partition(chosen)} ({known})",
            age=age_text,
            partition=describe_partition(chosen),
        )

    what = " and ".join(missing)
    exact = [(i, r) for i, r in candidates if not _needs_missing(r, patient_sex, age)]
    incomplete = len(exact) < len(candidates)
    if exact:
        chosen = _most_specific(exact)
        return RangeSelection(
            rule=chosen,
            incomplete_demographics=incomplete,
            reason=f"{what}: range {_limits(chosen)} for {describe_partition(chosen)} applied",
            age=age_text,
            partition=describe_partition(chosen),
        )
    if not candidates:
        return RangeSelection(
            rule=None, reason=f"{what}: no reference range for {known}", age=age_text
        )
    widest = _widest([r for _, r in candidates])
    return RangeSelection(
        rule=widest,
        incomplete_demographics=True,
        reason=(
            f"{what}: widest band {_limits(widest)} of {len(candidates)} candidate ranges applied"
        ),
        age=age_text,
        partition=WIDEST + ", ".join(describe_partition(r) for _, r in candidates),
    )


def _age_at(birth_date: date | None, at: date | None) -> AgeAt | None:
    # A birth date after the collection date is bad data; treat the age as unknown, not as an error.
    if birth_date is None or at is None or birth_date > at:
        return None
    return AgeAt(birth=birth_date, at=at)


def _missing(
    raw_sex: str, sex: str | None, birth: date | None, at: date | None, age: AgeAt | None
) -> list[str]:
    """Short phrases naming each missing datum, for the selection's reason."""
    missing: list[str] = []
    if sex is None:
        code = raw_sex.strip()
        missing.append(f"sex unknown ({code})" if code else "sex not sent")
    if age is None:
        if birth is None:
            missing.append("birth date not sent")
        elif at is None:
            missing.append("no collection time for the age")
        else:
            missing.append("birth date after collection date")
    return missing


def _sex_matches(rule: RangeRule, sex: str | None) -> bool:
    """Unknown patient sex matches every rule here; :func:`_needs_missing` tells them apart."""
    rule_sex = (rule.sex or "").strip().upper()
    return not rule_sex or sex is None or rule_sex == sex


def _needs_missing(rule: RangeRule, sex: str | None, age: AgeAt | None) -> bool:
    needs_sex = bool((rule.sex or "").strip())
    needs_age = rule.age_min is not None or rule.age_max is not None
    return (sex is None and needs_sex) or (age is None and needs_age)


def _band_width(rule: RangeRule) -> Decimal:
    low = approx_days(rule.age_min) if rule.age_min is not None else Decimal(0)
    high = approx_days(rule.age_max) if rule.age_max is not None else _OPEN_UPPER_DAYS
    return high - low


def _most_specific(candidates: list[tuple[int, RangeRule]]) -> RangeRule:
    def key(item: tuple[int, RangeRule]) -> tuple[int, int, Decimal, int]:
        index, rule = item
        bounds = (rule.age_min is not None) + (rule.age_max is not None)
        # max() keeps the largest key: negate width and index so narrower and earlier win.
        return (int(bool((rule.sex or "").strip())), bounds, -_band_width(rule), -index)

    return max(candidates, key=key)[1]


def _widest(rules: list[RangeRule]) -> RangeRule:
    # min()/max() return the configured Decimal objects, so OBX-7 keeps their text ("8", not "8.0").
    low = min(r.low for r in rules)
    high = max(r.high for r in rules)
    sources = "; ".join(dict.fromkeys(r.source for r in rules if r.source))
    # The synthetic band is only as reviewed as the least reviewed row it is built from.
    pending = any(r.status == PENDING_REVIEW for r in rules)
    return RangeRule(low=low, high=high, sex=None, source=sources,
                     status=PENDING_REVIEW if pending else "active")


def _limits(rule: RangeRule) -> str:
    return f"{rule.low}-{rule.high}"

"""Checks of a method's reference ranges that catch a misleading configuration before go-live.

- :func:`ambiguous_pairs`: two applied ranges that both match some patient where neither is
  narrower in both sex and age (the "most specific range" would be a coin toss) — refused by
  ``labmw range add`` and ``labmw config validate``.
- :func:`coverage_gaps`: every sex x age stretch from birth to 120 years with no applied range
  (e.g. "no range for an 18-year-old on Vitros"), reported as warnings by ``config validate``.

Ages are compared in approximate days (1 m = 30.4375 d, 1 y = 365.25 d), which is exact for bounds
written in one unit and close enough to find gaps and overlaps between units. Pure.
"""

from __future__ import annotations

from decimal import Decimal

from labmw.model import AgeBound, Method, RangeRule
from labmw.rules.age import approx_days
from labmw.rules.ranges import DISABLED, describe_partition

#: The age up to which coverage is checked (CLINICAL.md 1.4: adult bands run to 120 y).
COVERAGE_YEARS = 120
_END = Decimal(COVERAGE_YEARS) * Decimal("365.25")


def _band(rule: RangeRule) -> tuple[Decimal, Decimal]:
    low = approx_days(rule.age_min) if rule.age_min is not None else Decimal(0)
    high = approx_days(rule.age_max) if rule.age_max is not None else Decimal("Infinity")
    return low, high


def _sexes(rule: RangeRule) -> frozenset[str]:
    return frozenset({rule.sex}) if rule.sex else frozenset({"M", "F"})


def _contains(outer: RangeRule, inner: RangeRule) -> bool:
    (olo, ohi), (ilo, ihi) = _band(outer), _band(inner)
    return _sexes(inner) <= _sexes(outer) and olo <= ilo and ihi <= ohi


def ambiguous_pairs(method: Method) -> list[tuple[int, int]]:
    """Index pairs (i < j) of applied ranges of ``method`` that overlap without one being narrower."""
    applied = [(i, r) for i, r in enumerate(method.ranges) if r.status != DISABLED]
    pairs: list[tuple[int, int]] = []
    for a, (i, first) in enumerate(applied):
        for j, second in applied[a + 1:]:
            if not _sexes(first) & _sexes(second):
                continue
            (alo, ahi), (blo, bhi) = _band(first), _band(second)
            if max(alo, blo) >= min(ahi, bhi):
                continue
            same = _sexes(first) == _sexes(second) and (alo, ahi) == (blo, bhi)
            if same or not (_contains(first, second) or _contains(second, first)):
                pairs.append((i, j))
    return pairs


def describe_pair(method: Method, i: int, j: int) -> str:
    first, second = method.ranges[i], method.ranges[j]
    return (f"ranges[{i}] ({describe_partition(first)} {first.low}-{first.high}) and ranges[{j}] "
            f"({describe_partition(second)} {second.low}-{second.high}) both match some patients and "
            "neither is narrower in both sex and age")


def _age_text(days: Decimal) -> str:
    if days == 0:
        return "birth"
    years = days / Decimal("365.25")
    if years == years.to_integral_value():
        return f"{int(years)}y"
    months = days / Decimal("30.4375")
    if months == months.to_integral_value():
        return f"{int(months)}m"
    return f"{int(days)}d"


def coverage_gaps(method: Method) -> list[str]:
    """One sentence per sex x age stretch from birth to 120 y that no applied range covers."""
    gaps: list[str] = []
    for sex in ("M", "F"):
        bands = sorted(_band(r) for r in method.ranges if r.status != DISABLED and sex in _sexes(r))
        covered_to = Decimal(0)
        for low, high in bands:
            if low > covered_to:
                gaps.append(f"{method.name}: no range for sex {sex} aged {_age_text(covered_to)} to "
                            f"<{_age_text(low)}")
            covered_to = max(covered_to, high)
            if covered_to >= _END:
                break
        if covered_to < _END:
            gaps.append(f"{method.name}: no range for sex {sex} aged {_age_text(covered_to)} to "
                        f"{COVERAGE_YEARS}y")
    return gaps


def age_order_problem(age_min: AgeBound | None, age_max: AgeBound | None) -> str:
    """Why ``age_min``/``age_max`` cannot form a band (``""`` when they can)."""
    if age_min is None or age_max is None:
        return ""
    if approx_days(age_min) >= approx_days(age_max):
        return f"age_min {age_min} must be below age_max {age_max}"
    return ""

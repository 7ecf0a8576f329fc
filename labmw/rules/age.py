"""Ages as laboratories write them (``30d``, ``6m``, ``18y``) and completed ages on a given date.

Reference intervals are partitioned by age bands that labs write in whole calendar units
(CLINICAL.md §1.4 and item 3: neonates in days, children and adults in years). An age is always the
number of *completed* units between the birth date and the collection date, counted on the calendar,
never as days divided by 365.

Month ends and 29 February: the n-th anniversary of a birth date falls on the same day of the month,
or on the last day of the month when that month is shorter (the convention of ``dateutil``'s
``relativedelta``). A child born 31 January completes one month on 28 (or 29) February; a person
born 29 February completes 18 years on 28 February of a common year.

Pure: stdlib and ``labmw.model`` / ``labmw.errors`` only.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Protocol

from labmw.errors import RuleError
from labmw.model import AgeBound

#: The units an age bound may carry: days, months, years.
UNITS: tuple[str, ...] = ("d", "m", "y")

# A whole number, optionally followed by one unit letter. Six digits is generous (999999d is
# ~2700 years) and keeps absurd input from turning into huge integers.
_AGE_TEXT = re.compile(r"(\d{1,6})\s*([dmy]?)", re.ASCII)

# Approximate lengths, used only to *rank* age bands by width, never to compute an age.
_APPROX_DAYS: dict[str, Decimal] = {
    "d": Decimal(1),
    "m": Decimal("30.4375"),
    "y": Decimal("365.25"),
}


class Banded(Protocol):
    """Anything with a half-open age band: a reference range, a decision threshold."""

    @property
    def age_min(self) -> AgeBound | None: ...

    @property
    def age_max(self) -> AgeBound | None: ...


def parse_age(text: str) -> AgeBound:
    """Parse an age as the CLI and configuration accept it.

    Input: ``"30d"``, ``"6m"``, ``"18y"`` or a bare whole number meaning years (``"18"``);
    surrounding blanks and upper-case units are tolerated.
    Output: the :class:`~labmw.model.AgeBound`.
    Raises: :class:`~labmw.errors.RuleError` naming what is expected for anything else
    (negative or fractional numbers, other units, empty text).
    """
    match = _AGE_TEXT.fullmatch(text.strip().lower())
    if match is None:
        raise RuleError(
            f"age {text!r} is not valid: expected a whole number followed by d, m or y "
            "(30d, 6m, 18y), or a bare whole number of years"
        )
    return AgeBound(amount=int(match.group(1)), unit=match.group(2) or "y")


def add_months(start: date, months: int) -> date:
    """Return ``start`` moved by ``months`` calendar months, clamped to the end of a short month.

    Input: a date and a month count (may be negative). Output: the new date.
    Raises: ``OverflowError`` only if the result leaves the range of ``datetime.date``.
    """
    index = start.year * 12 + (start.month - 1) + months
    year, month0 = divmod(index, 12)
    last_day = calendar.monthrange(year, month0 + 1)[1]
    return date(year, month0 + 1, min(start.day, last_day))


def age_in(unit: str, birth: date, at: date) -> int:
    """Completed days, months or years between ``birth`` and ``at``.

    Input: ``unit`` one of ``"d"``, ``"m"``, ``"y"``; the birth date; the date the age is wanted at
    (the collection date). Output: a non-negative whole number of completed units; the anniversary
    rule for month ends and 29 February is in the module docstring.
    Raises: :class:`~labmw.errors.RuleError` for an unknown unit, or when ``at`` is before ``birth``
    (a collection before birth is bad data, not an age).
    """
    if unit not in UNITS:
        raise RuleError(f"age unit {unit!r} is not valid: expected one of d, m, y")
    if at < birth:
        raise RuleError("the collection date is before the birth date: no age can be computed")
    if unit == "d":
        return (at - birth).days
    months = (at.year - birth.year) * 12 + (at.month - birth.month)
    # ``months`` counts calendar-month steps; the last one is complete only once its anniversary
    # (clamped to the month end) has been reached.
    if add_months(birth, months) > at:
        months -= 1
    # Anniversaries are strictly increasing in n, so completed years are completed months // 12.
    return months if unit == "m" else months // 12


def approx_days(bound: AgeBound) -> Decimal:
    """An age bound's approximate length in days (1 m = 30.4375 d, 1 y = 365.25 d).

    Only for ranking age bands by width; ages themselves are always counted on the calendar.
    Raises: :class:`~labmw.errors.RuleError` for an unknown unit.
    """
    try:
        return bound.amount * _APPROX_DAYS[bound.unit]
    except KeyError:
        raise RuleError(f"age unit {bound.unit!r} is not valid: expected one of d, m, y") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgeAt:
    """A patient's birth date together with the date their age is wanted at (collection date)."""

    birth: date
    at: date

    def amount(self, unit: str) -> int:
        """Completed units (``d``/``m``/``y``) at ``at``; raises ``RuleError`` as :func:`age_in`."""
        return age_in(unit, self.birth, self.at)

    def describe(self) -> str:
        """A short age text for notes and audit inputs (``44y``, ``6m``, ``12d``); no birth date."""
        years = self.amount("y")
        if years >= 1:
            return f"{years}y"
        months = self.amount("m")
        if months >= 1:
            return f"{months}m"
        return f"{self.amount('d')}d"


def matches(rule: Banded, age: AgeAt) -> bool:
    """Whether ``age`` lies in the rule's half-open band ``[age_min, age_max)``.

    Each bound is compared in its own unit: ``age_min=18y`` compares completed years,
    ``age_max=30d`` completed days. A missing bound is open. Sex is not looked at here.
    Raises: :class:`~labmw.errors.RuleError` for a bound with an unknown unit.
    """
    if rule.age_min is not None and age.amount(rule.age_min.unit) < rule.age_min.amount:
        return False
    return rule.age_max is None or age.amount(rule.age_max.unit) < rule.age_max.amount


def describe_band(rule: Banded) -> str:
    """The rule's age band as text: ``all ages``, ``18y+``, ``<1y`` or ``1y to <13y``."""
    low, high = rule.age_min, rule.age_max
    if low is None and high is None:
        return "all ages"
    if high is None:
        return f"{low}+"
    if low is None:
        return f"<{high}"
    return f"{low} to <{high}"

"""Tests for labmw.rules.age: age text parsing and completed calendar ages."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labmw.errors import RuleError
from labmw.model import AgeBound, RangeRule
from labmw.rules.age import (
    AgeAt,
    add_months,
    age_in,
    approx_days,
    describe_band,
    matches,
    parse_age,
)

DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))


@pytest.mark.parametrize(
    ("text", "amount", "unit"),
    [
        ("30d", 30, "d"),
        ("6m", 6, "m"),
        ("18y", 18, "y"),
        ("18", 18, "y"),
        ("0d", 0, "d"),
        (" 13Y ", 13, "y"),
        ("120y", 120, "y"),
    ],
)
def test_parse_age_accepts_lab_notation(text: str, amount: int, unit: str) -> None:
    """Whole numbers with d/m/y, or bare years, parse into the matching AgeBound."""
    assert parse_age(text) == AgeBound(amount=amount, unit=unit)


@pytest.mark.parametrize("text", ["", "y", "-1y", "1.5y", "18w", "18 years", "y18", "1e3", "18yy"])
def test_parse_age_rejects_other_text_naming_the_expected_form(text: str) -> None:
    """Anything but a whole number with an optional d/m/y unit is a RuleError naming the form."""
    with pytest.raises(RuleError, match=r"30d, 6m, 18y"):
        parse_age(text)


@pytest.mark.parametrize(
    ("unit", "birth", "at", "expected"),
    [
        ("y", date(2008, 11, 20), date(2026, 11, 20), 18),  # birthday itself: completed
        ("y", date(2008, 11, 21), date(2026, 11, 20), 17),  # day before the birthday
        ("y", date(2008, 2, 29), date(2026, 2, 28), 18),  # leap-day birth, common year
        ("y", date(2008, 2, 29), date(2026, 2, 27), 17),
        ("y", date(2008, 2, 29), date(2028, 2, 28), 19),  # leap year: not yet on the 28th
        ("y", date(2008, 2, 29), date(2028, 2, 29), 20),
        ("m", date(2026, 1, 31), date(2026, 2, 28), 1),  # month end clamps
        ("m", date(2026, 1, 31), date(2026, 2, 27), 0),
        ("m", date(2026, 1, 31), date(2026, 3, 30), 1),
        ("m", date(2026, 1, 31), date(2026, 3, 31), 2),
        ("m", date(2025, 12, 15), date(2026, 6, 14), 5),
        ("m", date(2025, 12, 15), date(2026, 6, 15), 6),
        ("d", date(2026, 2, 1), date(2026, 3, 1), 28),
        ("d", date(2024, 2, 1), date(2024, 3, 1), 29),
        ("d", date(2026, 3, 1), date(2026, 3, 1), 0),
    ],
)
def test_age_in_counts_completed_calendar_units(
    unit: str, birth: date, at: date, expected: int
) -> None:
    """Ages are completed days, months or years on the calendar, including 29 February."""
    assert age_in(unit, birth, at) == expected


def test_age_in_rejects_collection_before_birth() -> None:
    """A collection date before the birth date is bad data and raises RuleError."""
    with pytest.raises(RuleError, match="before the birth date"):
        age_in("y", date(2026, 5, 2), date(2026, 5, 1))


def test_age_in_rejects_unknown_unit() -> None:
    """Only d, m and y are units."""
    with pytest.raises(RuleError, match="expected one of d, m, y"):
        age_in("w", date(2020, 1, 1), date(2026, 1, 1))


@given(birth=DATES, offset=st.integers(min_value=0, max_value=60_000))
def test_completed_months_bracket_the_date(birth: date, offset: int) -> None:
    """The n-th month anniversary is on or before the date and the (n+1)-th after it."""
    at = birth + timedelta(days=offset)
    months = age_in("m", birth, at)
    assert add_months(birth, months) <= at < add_months(birth, months + 1)
    assert age_in("y", birth, at) == months // 12


@given(birth=DATES, first=st.integers(0, 40_000), extra=st.integers(0, 40_000))
def test_ages_never_decrease_with_time(birth: date, first: int, extra: int) -> None:
    """A later date never gives a smaller age in any unit."""
    earlier = birth + timedelta(days=first)
    later = earlier + timedelta(days=extra)
    for unit in ("d", "m", "y"):
        assert age_in(unit, birth, earlier) <= age_in(unit, birth, later)


@pytest.mark.parametrize(
    ("age_min", "age_max", "birth", "at", "expected"),
    [
        ("18y", None, date(2008, 11, 20), date(2026, 11, 20), True),
        ("18y", None, date(2008, 11, 21), date(2026, 11, 20), False),
        (None, "1y", date(2025, 11, 21), date(2026, 11, 20), True),
        (None, "1y", date(2025, 11, 20), date(2026, 11, 20), False),  # half-open: 1y is out
        ("1y", "13y", date(2013, 11, 21), date(2026, 11, 20), True),
        ("1y", "13y", date(2013, 11, 20), date(2026, 11, 20), False),
        ("30d", "6m", date(2026, 10, 21), date(2026, 11, 20), True),
        ("30d", "6m", date(2026, 10, 22), date(2026, 11, 20), False),
        (None, None, date(1900, 1, 1), date(2026, 11, 20), True),
    ],
)
def test_matches_uses_half_open_band_in_each_bounds_unit(
    age_min: str | None, age_max: str | None, birth: date, at: date, expected: bool
) -> None:
    """An age matches [age_min, age_max), each bound compared in its own unit."""
    rule = RangeRule(
        low=Decimal(1),
        high=Decimal(2),
        age_min=parse_age(age_min) if age_min else None,
        age_max=parse_age(age_max) if age_max else None,
    )
    assert matches(rule, AgeAt(birth=birth, at=at)) is expected


@pytest.mark.parametrize(
    ("birth", "expected"),
    [(date(1980, 5, 1), "46y"), (date(2026, 5, 20), "6m"), (date(2026, 11, 8), "12d")],
)
def test_age_at_describe_uses_the_largest_whole_unit(birth: date, expected: str) -> None:
    """Ages are described in years, else months, else days."""
    assert AgeAt(birth=birth, at=date(2026, 11, 20)).describe() == expected


def test_band_helpers_describe_and_size_bands() -> None:
    """describe_band writes bands compactly and approx_days ranks month and year bounds."""
    both = RangeRule(
        low=Decimal(1), high=Decimal(2), age_min=parse_age("1y"), age_max=parse_age("13y")
    )
    assert describe_band(both) == "1y to <13y"
    assert describe_band(RangeRule(low=Decimal(1), high=Decimal(2))) == "all ages"
    assert approx_days(parse_age("1y")) == Decimal("365.25")
    assert approx_days(parse_age("12m")) == Decimal("365.25")
    with pytest.raises(RuleError):
        approx_days(AgeBound(amount=1, unit="w"))

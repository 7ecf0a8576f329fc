"""Tests for labmw.rules.ranges: choosing the reference range for a patient's sex and age."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labmw.errors import RuleError
from labmw.model import AgeBound, Method, RangeRule
from labmw.rules.age import parse_age
from labmw.rules.ranges import RangeSelection, normalize_sex, select_range

AT = date(2026, 11, 20)
ADULT = date(1980, 5, 1)  # 46 years at AT
TEEN = date(2011, 1, 1)  # 15 years at AT
CHILD = date(2020, 1, 1)  # 6 years at AT
INFANT = date(2026, 6, 1)  # 5 months at AT


def rng(
    low: str, high: str, sex: str | None = None, lo: str | None = None, hi: str | None = None
) -> RangeRule:
    """A RangeRule written the way `labmw range add` takes it."""
    return RangeRule(
        low=Decimal(low),
        high=Decimal(high),
        sex=sex,
        age_min=parse_age(lo) if lo else None,
        age_max=parse_age(hi) if hi else None,
    )


def method_with(*ranges: RangeRule) -> Method:
    """A U/L method carrying ``ranges`` in configuration order."""
    return Method(name="X", analyte="ALT", units="U/L", ranges=ranges)


# CLINICAL.md §1.4: IFCC adult ranges plus the CALIPER paediatric defaults.
LIBRARY = Method(
    name="ALT_IFCC_P5P",
    analyte="ALT",
    units="U/L",
    ranges=(
        rng("9", "59", "M", "18y"),
        rng("8", "41", "F", "18y"),
        rng("5", "51", None, None, "1y"),
        rng("11", "30", None, "1y", "13y"),
        rng("10", "33", "M", "13y", "18y"),
        rng("8", "24", "F", "13y", "18y"),
    ),
)
ADULT_ONLY = Method(name="ALT-T", analyte="ALT", units="U/L", ranges=LIBRARY.ranges[:2])


@pytest.mark.parametrize(
    ("sex", "birth", "applied"),
    [
        ("M", ADULT, "9-59"),
        ("F", ADULT, "8-41"),
        ("f", ADULT, "8-41"),
        ("M", TEEN, "10-33"),
        ("F", TEEN, "8-24"),
        ("M", CHILD, "11-30"),
        ("F", INFANT, "5-51"),
    ],
)
def test_complete_demographics_pick_the_partition(sex: str, birth: date, applied: str) -> None:
    """With sex and age known the patient's own partition applies, demographics complete."""
    selection = select_range(LIBRARY, sex=sex, birth_date=birth, at=AT)
    assert selection.applied_range == applied
    assert selection.incomplete_demographics is False


def test_eighteenth_birthday_is_adult() -> None:
    """On the 18th birthday the 18y+ range applies; the day before it does not."""
    on_birthday = select_range(ADULT_ONLY, sex="M", birth_date=date(2008, 11, 20), at=AT)
    day_before = select_range(ADULT_ONLY, sex="M", birth_date=date(2008, 11, 21), at=AT)
    assert on_birthday.applied_range == "9-59"
    assert day_before.rule is None
    assert "no reference range for sex M, age 17y" in day_before.reason


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        # sex-specific beats both sexes, whatever the order
        ((rng("1", "100"), rng("9", "59", "M")), "9-59"),
        ((rng("9", "59", "M"), rng("1", "100", None, "18y", "65y")), "9-59"),
        # more age bounds beat fewer, even when the two-bound band is wider
        ((rng("1", "100", None, "18y"), rng("2", "90", None, "10y", "120y")), "2-90"),
        # then the narrower band, bounds in approximate days (600m = 50y is narrower than 65y)
        ((rng("1", "100", None, "18y", "65y"), rng("2", "90", None, "216m", "600m")), "2-90"),
        ((rng("1", "100", None, "40y", "50y"), rng("2", "90", None, "18y", "120y")), "1-100"),
        # an open upper end counts as 150 y: the band that starts later is narrower
        ((rng("1", "100", None, "18y"), rng("2", "90", None, "40y")), "2-90"),
        ((rng("1", "100", None, None, "120y"), rng("2", "90", None, None, "50y")), "2-90"),
        # ties go to the first in configuration order
        ((rng("1", "100", "M", "18y"), rng("2", "90", "M", "18y")), "1-100"),
        ((rng("2", "90"), rng("1", "100")), "2-90"),
    ],
)
def test_most_specific_matching_range_wins(ranges: tuple[RangeRule, ...], expected: str) -> None:
    """Sex-specific, then more bounds, then narrower band, then configuration order."""
    method = method_with(*ranges)
    assert select_range(method, sex="M", birth_date=ADULT, at=AT).applied_range == expected


def test_sex_missing_applies_the_widest_adult_band() -> None:
    """Sex not sent, only sex-specific ranges: lowest low, highest high, marked incomplete."""
    selection = select_range(ADULT_ONLY, sex="", birth_date=ADULT, at=AT)
    assert selection.applied_range == "8-59"
    assert selection.incomplete_demographics is True
    assert selection.reason == "sex not sent: widest band 8-59 of 2 candidate ranges applied"
    assert selection.partition == "widest of M 18y+, F 18y+"


@pytest.mark.parametrize("sex", ["U", "O", "A", " "])
def test_any_other_sex_code_is_unknown(sex: str) -> None:
    """Only M and F select sex-specific ranges; other codes count as unknown."""
    selection = select_range(ADULT_ONLY, sex=sex, birth_date=ADULT, at=AT)
    assert normalize_sex(sex) is None
    assert selection.applied_range == "8-59"
    assert selection.incomplete_demographics is True


def test_sex_missing_prefers_a_sex_agnostic_range_that_matches() -> None:
    """A both-sexes range for the known age applies before any widening, marked incomplete."""
    method = method_with(*LIBRARY.ranges, rng("7", "45", None, "18y"))
    selection = select_range(method, sex="U", birth_date=ADULT, at=AT)
    assert selection.applied_range == "7-45"
    assert selection.incomplete_demographics is True
    assert selection.reason.startswith("sex unknown (U): range 7-45 for any sex 18y+")


def test_sex_missing_does_not_matter_where_no_range_needs_it() -> None:
    """For a 6-year-old the 1-13y range is sex-agnostic, so missing sex is not incomplete."""
    selection = select_range(LIBRARY, sex="", birth_date=CHILD, at=AT)
    assert selection.applied_range == "11-30"
    assert selection.incomplete_demographics is False


@pytest.mark.parametrize(
    ("sex", "birth", "at", "applied", "missing"),
    [
        ("M", None, AT, "9-59", "birth date not sent"),  # widest among M: the adult range only
        ("F", None, AT, "8-41", "birth date not sent"),
        ("M", ADULT, None, "9-59", "no collection time for the age"),
        ("M", date(2027, 1, 1), AT, "9-59", "birth date after collection date"),
        ("", None, AT, "8-59", "sex not sent and birth date not sent"),
    ],
)
def test_age_unknown_applies_widest_band_matching_on_sex(
    sex: str, birth: date | None, at: date | None, applied: str, missing: str
) -> None:
    """Without an age, age-banded ranges are only candidates for the widest band."""
    selection = select_range(ADULT_ONLY, sex=sex, birth_date=birth, at=at)
    assert selection.applied_range == applied
    assert selection.incomplete_demographics is True
    assert selection.reason.startswith(missing + ": ")
    assert selection.age == "unknown"


def test_age_unknown_over_the_whole_library_spans_every_band_of_the_sex() -> None:
    """Birth date missing for a male: widest band over all ranges that M could fall in."""
    selection = select_range(LIBRARY, sex="M", birth_date=None, at=AT)
    assert selection.applied_range == "5-59"
    assert selection.rule is not None and selection.rule.sex is None


def test_age_unknown_prefers_an_all_ages_range() -> None:
    """A range without age bounds applies as is when the birth date is missing."""
    method = method_with(rng("9", "59", "M", "18y"), rng("3", "70", "M"))
    selection = select_range(method, sex="M", birth_date=None, at=AT)
    assert selection.applied_range == "3-70"
    assert selection.incomplete_demographics is True


def test_no_ranges_configured_gives_no_range() -> None:
    """A method without ranges selects nothing and says so."""
    selection = select_range(method_with(), sex="", birth_date=None, at=None)
    assert selection == RangeSelection(
        rule=None,
        reason=(
            "sex not sent and birth date not sent: "
            "no reference range for sex unknown, age unknown"
        ),
    )


def test_limits_keep_their_configured_text() -> None:
    """OBX-7 uses the Decimal text as configured, trailing zeros included."""
    method = method_with(rng("0.50", "41.0", "M"), rng("0.4", "33", "F"))
    assert select_range(method, sex="M", birth_date=ADULT, at=AT).applied_range == "0.50-41.0"
    assert select_range(method, sex="", birth_date=ADULT, at=AT).applied_range == "0.4-41.0"


def test_bad_age_unit_in_configuration_raises_rule_error() -> None:
    """An age bound with an unknown unit cannot be evaluated."""
    bad = RangeRule(low=Decimal(1), high=Decimal(2), age_min=AgeBound(amount=1, unit="w"))
    with pytest.raises(RuleError):
        select_range(method_with(bad), sex="M", birth_date=ADULT, at=AT)


@given(
    sex=st.sampled_from(["M", "F", "", "U"]),
    birth=st.none() | st.dates(min_value=date(1900, 1, 1), max_value=AT),
)
def test_widest_band_contains_every_candidate(sex: str, birth: date | None) -> None:
    """Whatever is known, the applied band contains every range the patient could be in."""
    selection = select_range(LIBRARY, sex=sex, birth_date=birth, at=AT)
    assert selection.rule is not None
    possible = [
        select_range(LIBRARY, sex=s, birth_date=birth or b, at=AT).rule
        for s in ([sex] if sex in ("M", "F") else ["M", "F"])
        for b in ([birth] if birth else [ADULT, TEEN, CHILD, INFANT])
    ]
    for rule in possible:
        assert rule is not None
        assert selection.rule.low <= rule.low and rule.high <= selection.rule.high

"""Tests for labmw.rules.grading: multiples of the ULN, CTCAE grades, decision thresholds."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from labmw.errors import RuleError
from labmw.model import DecisionThreshold, Grading
from labmw.rules.age import AgeAt, parse_age
from labmw.rules.grading import (
    describe_threshold,
    grade,
    threshold_applies,
    uln_note,
    validate_grading,
)

# CLINICAL.md 2.1: CTCAE v5.0 "ALT increased", baseline normal: > 1, > 3, > 5, > 20 x ULN.
CTCAE5 = Grading(scheme="CTCAE v5.0", above_uln=(Decimal(1), Decimal(3), Decimal(5), Decimal(20)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("59", 0), ("59.1", 1), ("177", 1), ("177.1", 2), ("295", 2), ("296", 3), ("1180", 3),
        ("1181", 4), ("50000", 4),
    ],
)
def test_ctcae_boundaries_are_exclusive(value: str, expected: int) -> None:
    """Exactly 3 x ULN is still grade 1; anything above it is grade 2 (and so on)."""
    assert grade(Decimal(value), Decimal(59), CTCAE5).grade == expected


def test_ctcae_v3_scale_is_just_other_configuration() -> None:
    """CTCAE v3.0 (grade 2 from 2.5 x ULN) needs no code change, only other boundaries."""
    v3 = Grading(scheme="CTCAE v3.0", above_uln=(Decimal(1), Decimal("2.5"), Decimal(5), Decimal(20)))
    assert grade(Decimal(160), Decimal(59), v3).grade == 2
    assert grade(Decimal(160), Decimal(59), CTCAE5).grade == 1


def test_uln_note_names_multiple_limit_and_grade() -> None:
    """The note keeps the engine's 'x ULN' text and adds the scheme, grade and its boundary."""
    assert uln_note(Decimal(85), Decimal(59), None) == "1.4 x ULN 59"
    assert uln_note(Decimal(178), Decimal(59), CTCAE5) == (
        "3.0 x ULN 59: CTCAE v5.0 grade 2 (> 3 x ULN)"
    )


@pytest.mark.parametrize(
    "bounds", [(), (Decimal(0), Decimal(3)), (Decimal(3), Decimal(1)), (Decimal(1), Decimal(1))]
)
def test_bad_scales_raise_rule_error(bounds: tuple[Decimal, ...]) -> None:
    """Empty, non-positive or non-increasing boundaries are rejected with the scheme's name."""
    with pytest.raises(RuleError, match="CTCAE"):
        validate_grading(Grading(scheme="CTCAE", above_uln=bounds))


def test_grading_needs_a_positive_uln() -> None:
    """A zero upper limit cannot be a denominator."""
    with pytest.raises(RuleError, match="positive upper limit"):
        grade(Decimal(5), Decimal(0), CTCAE5)


ACG_M = DecisionThreshold(name="ACG 2017", value=Decimal(33), sex="M", age_min=parse_age("18y"))
AT_45 = AgeAt(birth=date(1980, 1, 1), at=date(2025, 6, 1))


@pytest.mark.parametrize(
    ("sex", "age", "applies"),
    [("M", AT_45, True), ("F", AT_45, False), (None, AT_45, False), ("M", None, False),
     ("M", AgeAt(birth=date(2010, 1, 1), at=date(2025, 6, 1)), False)],
)
def test_threshold_applies_only_when_certain(sex: str | None, age: AgeAt | None, applies: bool) -> None:
    """A threshold is quoted only when its sex and age band certainly cover the patient."""
    assert threshold_applies(ACG_M, sex, age) is applies


def test_threshold_description() -> None:
    """Notes name the threshold, its limit and its partition."""
    assert describe_threshold(ACG_M) == "ACG 2017 33 (M 18y+)"

"""Tests for labmw.rules.delta: the simple delta rule of `labmw delta set`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labmw.errors import RuleError
from labmw.model import DeltaRule, PreviousResult
from labmw.rules.delta import DeltaOutcome, check_simple_delta, skip_reason

NOW = datetime(2026, 11, 22, 8, 0)
EARLIER = datetime(2026, 11, 20, 8, 0)


def rule(
    abs_: str | None = None, pct: str | None = None, window: str = "7", action: str = "flag"
) -> DeltaRule:
    """A DeltaRule written the way `labmw delta set` takes it."""
    return DeltaRule(
        abs_change=Decimal(abs_) if abs_ is not None else None,
        pct_change=Decimal(pct) if pct is not None else None,
        window_days=Decimal(window),
        action=action,
    )


def prev(value: str, at: datetime = EARLIER) -> PreviousResult:
    """A previous result of the same patient and method."""
    return PreviousResult(value=Decimal(value), collected_at=at, specimen_id="S0")


def check(delta: DeltaRule, value: str, previous: PreviousResult | None) -> DeltaOutcome | None:
    """check_simple_delta for a result collected at NOW."""
    return check_simple_delta(delta, value=Decimal(value), collected_at=NOW, previous=previous)


def test_rise_fires_with_the_documented_note() -> None:
    """85 after 40 two days earlier, abs 20 and pct 50: U with change and percent in the note."""
    outcome = check(rule("20", "50"), "85", prev("40"))
    assert outcome is not None
    assert outcome.flag == "U"
    assert outcome.hold is False
    assert outcome.note == "delta: 85 vs 40 at 2026-11-20 08:00 (+45, +112.5%)"
    assert outcome.change == Decimal(45)
    assert outcome.percent == Decimal("112.5")


@pytest.mark.parametrize(
    ("abs_", "pct", "new", "old", "expected"),
    [
        ("20", None, "60", "40", "U"),  # exactly the absolute threshold fires
        ("20", None, "59", "40", None),
        ("20", None, "20", "40", "D"),
        (None, "50", "60", "40", "U"),  # exactly 50 %
        (None, "50", "59.9", "40", None),
        (None, "50", "20", "40", "D"),  # -50 % relative to the old value
        ("20", "50", "75", "48", "U"),  # +27 and +56 %: both met (CLINICAL.md §3.5 example)
        ("30", "50", "75", "48", None),  # abs not reached
        ("20", "60", "75", "48", None),  # pct not reached
        ("20", "50", "30", "10", "U"),  # +20 and +200 %: both met
        ("25", "50", "30", "10", None),  # +200 % but abs 20 < 25
        (None, None, "41", "40", "U"),  # no thresholds: any change fires
        (None, None, "40", "40", None),  # a zero change has no direction
        ("0", None, "40", "40", None),
        ("20", None, "25", "0", "U"),  # old 0 with pct unset: abs alone decides
        ("20", "50", "25", "0", None),  # old 0 with pct set: percent undefined, no fire
        (None, "50", "-30", "-20", "D"),  # relative to |old| for negative analytes
    ],
)
def test_thresholds(
    abs_: str | None, pct: str | None, new: str, old: str, expected: str | None
) -> None:
    """Fires when |new-old| >= abs (if set) and 100*|new-old|/old >= pct (if set)."""
    outcome = check(rule(abs_, pct), new, prev(old))
    assert (outcome.flag if outcome else None) == expected


def test_old_zero_note_has_no_percent() -> None:
    """When the previous value is 0 the note gives the change only."""
    outcome = check(rule("20"), "25", prev("0"))
    assert outcome is not None
    assert outcome.percent is None
    assert outcome.note == "delta: 25 vs 0 at 2026-11-20 08:00 (+25)"


def test_fall_note_is_signed() -> None:
    """A fall shows a negative change and percent."""
    outcome = check(rule("20"), "40", prev("85"))
    assert outcome is not None
    assert outcome.note == "delta: 40 vs 85 at 2026-11-20 08:00 (-45, -52.9%)"


def test_hold_action_sets_hold() -> None:
    """A rule with action hold marks the outcome as a hold."""
    outcome = check(rule("20", action="hold"), "85", prev("40"))
    assert outcome is not None and outcome.hold is True and outcome.flag == "U"


@pytest.mark.parametrize(
    ("previous_at", "window", "reason"),
    [
        (NOW - timedelta(days=7), "7", None),  # the far edge of the window is inside
        (NOW - timedelta(days=7, seconds=1), "7", "previous result older than 7 days"),
        (NOW - timedelta(hours=12), "0.5", None),
        (NOW - timedelta(hours=13), "0.5", "previous result older than 0.5 days"),
        (NOW, "7", "previous result not collected before this one"),
        (NOW + timedelta(hours=1), "7", "previous result not collected before this one"),
        (
            EARLIER.replace(tzinfo=UTC),
            "7",
            "previous result time not comparable (time zone on one side only)",
        ),
    ],
)
def test_window(previous_at: datetime, window: str, reason: str | None) -> None:
    """The previous result must be strictly earlier and no more than window_days before."""
    delta = rule("20", window=window)
    assert skip_reason(delta, collected_at=NOW, previous=prev("40", previous_at)) == reason
    outcome = check(delta, "85", prev("40", previous_at))
    assert (outcome is not None) is (reason is None)


def test_no_previous_result_does_not_fire() -> None:
    """Without a previous result there is nothing to compare."""
    assert skip_reason(rule("20"), collected_at=NOW, previous=None) == "no previous result"
    assert check(rule("20"), "85", None) is None


def test_aware_times_in_different_zones_compare_as_instants() -> None:
    """Aware times are compared as instants, whatever their zone."""
    now = datetime(2026, 11, 22, 10, 0, tzinfo=timezone(timedelta(hours=2)))  # 08:00 UTC
    earlier = datetime(2026, 11, 15, 8, 0, tzinfo=UTC)  # exactly 7 days before
    assert skip_reason(rule("20"), collected_at=now, previous=prev("40", earlier)) is None


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        (rule("20", window="0"), "window_days"),
        (rule("20", window="-1"), "window_days"),
        (rule("-1"), "delta abs"),
        (rule(None, "-5"), "delta pct"),
        (rule("20", action="page"), "flag or hold"),
        (DeltaRule(abs_change=Decimal("NaN")), "delta abs"),
    ],
)
def test_invalid_rules_raise_rule_error(delta: DeltaRule, message: str) -> None:
    """A rule that cannot be evaluated as configured raises RuleError naming the field."""
    with pytest.raises(RuleError, match=message):
        check(delta, "85", prev("40"))


VALUES = st.decimals(min_value=Decimal("0.1"), max_value=Decimal(5000), places=1)


@given(a=VALUES, b=VALUES, threshold=st.decimals(min_value=0, max_value=500, places=1))
def test_swapping_previous_mirrors_direction(a: Decimal, b: Decimal, threshold: Decimal) -> None:
    """With an absolute threshold, a rise a->b and a fall b->a fire alike, with mirrored flags."""
    delta = rule(str(threshold))
    forward = check(delta, str(b), prev(str(a)))
    backward = check(delta, str(a), prev(str(b)))
    assert (forward is None) == (backward is None)
    if forward is not None and backward is not None:
        assert {forward.flag, backward.flag} == {"U", "D"}
        assert forward.change == -backward.change


@given(new=VALUES, old=VALUES, pct=st.decimals(min_value=0, max_value=300, places=1))
def test_direction_follows_the_sign_of_the_change(new: Decimal, old: Decimal, pct: Decimal) -> None:
    """Whenever the rule fires, U means new > old and D means new < old."""
    outcome = check(rule(None, str(pct)), str(new), prev(str(old)))
    if outcome is not None:
        assert outcome.flag == ("U" if new > old else "D")
        assert abs(outcome.percent or 0) >= pct

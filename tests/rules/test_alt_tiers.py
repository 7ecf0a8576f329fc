"""Tests for labmw.rules.alt_tiers: the tiered ALT delta rule of CLINICAL.md 3.5."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labmw.errors import RuleError
from labmw.model import (
    AbruptRise,
    AltDeltaTiers,
    ImplausibleFall,
    PreviousResult,
    SignificantChange,
)
from labmw.rules.alt_tiers import TierOutcome, check_alt_tiers, log_rcv_ratios

# The numbers of CLINICAL.md 3.5, as the shipped library configures them.
TIERS = AltDeltaTiers(
    window_days=Decimal(7),
    significant_change=SignificantChange(
        ratio_up=Decimal("1.45"), ratio_down=Decimal("0.69"), min_change=Decimal(20),
        min_change_uln=Decimal("0.5"),
    ),
    implausible_fall=ImplausibleFall(
        previous_above_uln=Decimal(3), half_life_hours=Decimal(47), fraction_of_expected=Decimal("0.5")
    ),
    abrupt_rise=AbruptRise(ratio=Decimal(5), min_rise=Decimal(300), within_hours=Decimal(48)),
)
NOW = datetime(2026, 11, 22, 8, 0)


def judge(
    old: str, new: str, hours: float, uln: str | None = "41", tiers: AltDeltaTiers = TIERS, specimen: str = "S2"
) -> dict[str, TierOutcome]:
    """Run the tiers for old -> new after ``hours``; outcomes keyed by tier name."""
    previous = PreviousResult(value=Decimal(old), collected_at=NOW - timedelta(hours=hours), specimen_id="S1")
    outcomes = check_alt_tiers(
        tiers, value=Decimal(new), collected_at=NOW, previous=previous,
        uln=None if uln is None else Decimal(uln), units="U/L", specimen_id=specimen,
    )
    return {o.tier: o for o in outcomes}


def test_clinical_example_rise_flags_u() -> None:
    """CLINICAL.md 3.5 step 2: 48 -> 75 U/L in 3 days with ULN 41 gives U (ratio 1.56, change 27)."""
    got = judge("48", "75", 72)
    assert got["significant_change"].outcome == "U" and not got["significant_change"].hold
    assert got["significant_change"].note.startswith(
        "delta U (ALT significant change): 75 vs 48 U/L at 2026-11-19 08:00, +27 U/L (+56.3%) in 72 h, x1.56"
    )


def test_change_must_reach_half_the_uln() -> None:
    """With ULN 59 the same 27 U/L change is below max(20, 29.5): no flag."""
    assert judge("48", "75", 72, uln="59")["significant_change"].outcome == "not fired"


def test_clinical_example_implausible_fall_holds() -> None:
    """Step 3: 800 -> 150 after 12 h: floor 0.5 x 800 x 0.5^(12/47) = 335, so hold."""
    got = judge("800", "150", 12)
    fall = got["implausible_fall"]
    assert fall.outcome == "hold" and fall.hold
    assert "leaves at least 670.2 U/L, hold below 335.1 U/L" in fall.note
    assert got["significant_change"].outcome == "D"


def test_clinical_example_plausible_fall_does_not_hold() -> None:
    """Step 3: 400 -> 120 after 48 h: floor 98.5, 120 is above it: no hold."""
    assert judge("400", "120", 48)["implausible_fall"].outcome == "not fired"


def test_implausible_fall_needs_a_previous_above_three_uln() -> None:
    """A fall from 100 (not above 3 x 41 = 123) is never an identity question."""
    assert judge("100", "10", 1)["implausible_fall"].reason == "previous not above 123"


@pytest.mark.parametrize(
    ("old", "new", "hours", "outcome"),
    [("60", "400", 24, "hold"), ("60", "400", 48, "hold"), ("60", "400", 49, "not fired"),
     ("100", "450", 24, "not fired"), ("50", "299", 24, "not fired")],
)
def test_abrupt_rise(old: str, new: str, hours: float, outcome: str) -> None:
    """Step 4: hold when x5 and +300 U/L within 48 h (all three needed)."""
    assert judge(old, new, hours)["abrupt_rise"].outcome == outcome


def test_both_within_uln_fires_nothing() -> None:
    """Step 1: 10 -> 40 with ULN 41 is a fourfold rise of 30 U/L, but both are normal."""
    got = judge("10", "40", 24)
    assert {o.outcome for o in got.values()} == {"not fired"}
    assert got["significant_change"].reason == "both results within the upper limit 41"


def test_gate_can_be_switched_off() -> None:
    """Without the gate, the same pair fires tier 1."""
    tiers = replace(TIERS, skip_when_both_within_uln=False)
    assert judge("10", "40", 24, tiers=tiers)["significant_change"].outcome == "U"


def test_without_a_uln_only_tier_3_is_judged() -> None:
    """No applied range: tiers 1 and 2 need the ULN and skip; tier 3 does not need it."""
    got = judge("60", "400", 24, uln=None)
    assert got["significant_change"].outcome == "skipped"
    assert got["implausible_fall"].reason == "no upper reference limit applies"
    assert got["abrupt_rise"].outcome == "hold"


@pytest.mark.parametrize(
    ("hours", "specimen", "reason"),
    [(24 * 8, "S2", "previous result older than 7 days"),
     (0, "S2", "previous result not collected before this one"),
     (12, "S1", "previous result is from the same specimen (a correction replaces it, not compared)")],
)
def test_skips_say_why(hours: float, specimen: str, reason: str) -> None:
    """Out of the window, not earlier, or the same specimen (a correction): every tier skips."""
    got = judge("800", "150", hours, specimen=specimen)
    assert all(o.outcome == "skipped" and o.reason == reason for o in got.values())


def test_disabled_tiers_are_not_judged() -> None:
    """A tier with enabled = false gives no outcome at all."""
    tiers = replace(TIERS, abrupt_rise=replace(TIERS.abrupt_rise, enabled=False))  # type: ignore[arg-type]
    assert set(judge("60", "400", 24, tiers=tiers)) == {"significant_change", "implausible_fall"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"window_days": Decimal(0)}, "window_days"),
     ({"significant_change": replace(TIERS.significant_change, ratio_down=Decimal("1.2"))},  # type: ignore[type-var]
      "ratio_down"),
     ({"implausible_fall": replace(TIERS.implausible_fall, half_life_hours=Decimal(0))},  # type: ignore[type-var]
      "half_life_hours"),
     ({"abrupt_rise": replace(TIERS.abrupt_rise, ratio=Decimal("0.5"))}, "abrupt_rise.ratio")],  # type: ignore[type-var]
)
def test_invalid_tiers_raise_rule_error(changes: dict[str, object], message: str) -> None:
    """A misconfigured tier is named in the error."""
    with pytest.raises(RuleError, match=message):
        judge("48", "75", 72, tiers=replace(TIERS, **changes))  # type: ignore[arg-type]


def test_shipped_ratios_are_the_log_normal_rcv99() -> None:
    """1.45 / 0.69 follow from CVA 4 %, CVI 9.3 %, z 2.576 (CLINICAL.md 3.2: +44.6 % / -30.8 %)."""
    up, down = log_rcv_ratios(Decimal("0.04"), Decimal("0.093"), Decimal("2.576"))
    assert round(up, 2) == TIERS.significant_change.ratio_up  # type: ignore[union-attr]
    assert round(down, 2) == TIERS.significant_change.ratio_down  # type: ignore[union-attr]
    up95, down95 = log_rcv_ratios(Decimal("0.04"), Decimal("0.093"), Decimal("1.96"))
    assert round((up95 - 1) * 100, 1) == Decimal("32.3") and round((down95 - 1) * 100, 1) == Decimal("-24.4")


RATIOS = st.decimals(min_value="0.70", max_value="1.44", places=2)


@given(old=st.integers(min_value=1, max_value=5000), ratio=RATIOS)
def test_tier_1_never_fires_inside_the_ratio_band(old: int, ratio: Decimal) -> None:
    """Whatever the change in U/L, a ratio strictly between 0.69 and 1.45 is no significant change."""
    new = Decimal(old) * ratio
    assert judge(str(old), str(new), 24)["significant_change"].outcome != "U"
    assert judge(str(old), str(new), 24)["significant_change"].outcome != "D"


@given(old=st.integers(min_value=42, max_value=5000), new=st.integers(min_value=42, max_value=5000))
def test_tier_1_direction_follows_the_change(old: int, new: int) -> None:
    """When tier 1 fires, U means new > old and D means new < old."""
    outcome = judge(str(old), str(new), 24)["significant_change"].outcome
    if outcome in ("U", "D"):
        assert (outcome == "U") == (new > old)

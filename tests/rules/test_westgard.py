"""The Westgard multirule, rule by rule, with a case that fires and one that just does not."""

from __future__ import annotations

from decimal import Decimal

import pytest

from labmw.rules.westgard import RULES, Observation, judge, z_score


def obs(*zs: float, level: int = 1) -> list[Observation]:
    return [Observation(level=level, z=Decimal(str(z))) for z in zs]


def two_levels(z1: float, z2: float) -> list[Observation]:
    return [Observation(level=1, z=Decimal(str(z1))), Observation(level=2, z=Decimal(str(z2)))]


def test_z_score_is_value_minus_mean_over_sd() -> None:
    assert z_score(Decimal(57), Decimal(50), Decimal(2)) == Decimal("3.50")
    assert z_score(Decimal("49.1"), Decimal(50), Decimal(2)) == Decimal("-0.45")
    with pytest.raises(ValueError, match="SD above 0"):
        z_score(Decimal(1), Decimal(1), Decimal(0))


@pytest.mark.parametrize(("run", "history", "violated", "warnings"), [
    (obs(0.5), [], (), ()),                                   # in control
    (obs(2.5), [], (), ("1-2s",)),                            # 1-2s warns only
    (obs(2.0), [], (), ()),                                   # exactly 2 SD is not beyond
    (obs(3.5), [], ("1-3s",), ("1-2s",)),                     # 1-3s
    (obs(-3.01), [], ("1-3s",), ("1-2s",)),
    (obs(3.0), [], (), ("1-2s",)),                            # exactly 3 SD is not beyond
    (two_levels(2.2, 2.4), [], ("2-2s",), ("1-2s",)),         # 2-2s within the run
    (two_levels(2.2, 1.9), [], (), ("1-2s",)),
    (obs(2.5), obs(2.5), ("2-2s",), ("1-2s",)),               # 2-2s across runs, same level
    (obs(2.5), obs(-2.5), (), ("1-2s",)),                     # R-4s is within a run only
    (obs(2.5, level=1), obs(2.5, level=2), (), ("1-2s",)),    # across runs needs the same level
    (two_levels(2.1, -2.1), [], ("R-4s",), ("1-2s",)),        # R-4s within the run
    (obs(1.2), obs(1.5, 1.1, 1.3), ("4-1s",), ()),            # 4-1s across runs
    (obs(1.2), obs(1.5, 0.9, 1.3), (), ()),
    (obs(0.2), obs(0.1, 0.3, 0.5, 0.2, 0.9, 0.4, 0.1, 0.6, 0.3), ("10x",), ()),  # 10x
    (obs(0.2), obs(0.1, 0.3, 0.5, 0.2, -0.1, 0.4, 0.1, 0.6, 0.3), (), ()),
])
def test_each_rule(run: list[Observation], history: list[Observation], violated: tuple[str, ...],
                   warnings: tuple[str, ...]) -> None:
    judgement = judge(run, history)
    assert (judgement.violated, judgement.warnings) == (violated, warnings)
    assert judgement.accepted is (not violated)


def test_rule_set_is_configurable() -> None:
    assert judge(obs(2.5), obs(2.5), rules=["1-3s"]).accepted, "a 6-sigma method runs 1-3s alone"
    assert judge(obs(3.5), [], rules=["1-3s"]).violated == ("1-3s",)
    with pytest.raises(ValueError, match="unknown Westgard rule"):
        judge(obs(1), [], rules=["2of3-2s"])
    with pytest.raises(ValueError, match="at least one"):
        judge([], [])
    assert set(RULES) == {"1-2s", "1-3s", "2-2s", "R-4s", "4-1s", "10x"}

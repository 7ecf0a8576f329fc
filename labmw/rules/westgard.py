"""Westgard multirule QC judgement of one control run, within and across levels and runs.

A *run* is the set of control observations of one analyzer x method that arrived together (one
message). Each observation is a z-score, ``(value - mean) / sd`` with the material's target mean
and SD. The rules (Westgard, "Westgard Rules" multirule pages, westgard.com; CLINICAL.md §4.2 step 3,
§4.3 and item 17):

* ``1-2s`` one observation beyond ±2 SD: a **warning** only, never a rejection.
* ``1-3s`` one observation beyond ±3 SD: reject (random error).
* ``2-2s`` two consecutive observations beyond 2 SD on the same side: within the run (two levels)
  or across runs (the same level's previous observation): reject (systematic error).
* ``R-4s`` within the run, one level beyond +2 SD and another beyond -2 SD: reject (random error).
  Applied within a run only, as Westgard recommends (across runs it would mix in systematic error).
* ``4-1s`` the last four observations (this run and earlier ones, all levels, newest last) beyond
  1 SD on the same side: reject (systematic error).
* ``10x`` the last ten observations on the same side of the mean: reject (systematic error).

"Beyond" is strict: z = 2.0 exactly is not beyond 2 SD. Which rules apply is configured per method
(sigma-based selection: a high-sigma method needs only 1-3s; see the shipped ``[qc]`` comments).

Pure: stdlib only; no store, no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

#: Every rule this module knows, in the order they are reported.
RULES: tuple[str, ...] = ("1-2s", "1-3s", "2-2s", "R-4s", "4-1s", "10x")
#: Rules that only warn: they never reject a run (Westgard: 1-2s is a warning/trigger, not a rejection).
WARNING_RULES: frozenset[str] = frozenset({"1-2s"})
#: The classic multirule, used when a method configures no rule set of its own.
DEFAULT_RULES: tuple[str, ...] = RULES


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One control result as a z-score; ``level`` is the material's control level (1, 2, 3...)."""

    level: int
    z: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class Judgement:
    """What the rules concluded about one run: ``violated`` rejecting rules, ``warnings`` warning rules."""

    violated: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        return not self.violated


def z_score(value: Decimal, mean: Decimal, sd: Decimal) -> Decimal:
    """``(value - mean) / sd``, rounded to 2 places for display and storage (the rules compare it).

    Raises:
        ValueError: ``sd`` is not above 0.
    """
    if sd <= 0:
        raise ValueError(f"expected an SD above 0, got {sd}")
    return ((value - mean) / sd).quantize(Decimal("0.01"))


def judge(run: Sequence[Observation], history: Sequence[Observation], *,
          rules: Sequence[str] = DEFAULT_RULES) -> Judgement:
    """Judge ``run`` against the earlier observations ``history`` (oldest first) of the same analyzer x method.

    ``history`` should hold only observations of runs that were accepted (a rejected run is
    corrected, not carried forward). ``rules`` names the rules to apply (a subset of :data:`RULES`).

    Raises:
        ValueError: an unknown rule name, or an empty run.
    """
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown Westgard rule(s) {', '.join(unknown)}; known: {', '.join(RULES)}")
    if not run:
        raise ValueError("a run needs at least one observation")
    fired = {name for name in rules if _CHECKS[name](run, history)}
    ordered = [name for name in RULES if name in fired]
    return Judgement(violated=tuple(r for r in ordered if r not in WARNING_RULES),
                     warnings=tuple(r for r in ordered if r in WARNING_RULES))


def _beyond(z: Decimal, limit: int) -> int:
    """+1 above +limit SD, -1 below -limit SD, else 0."""
    return 1 if z > limit else -1 if z < -limit else 0


def _one_2s(run: Sequence[Observation], history: Sequence[Observation]) -> bool:
    return any(_beyond(o.z, 2) for o in run)


def _one_3s(run: Sequence[Observation], history: Sequence[Observation]) -> bool:
    return any(_beyond(o.z, 3) for o in run)


def _two_2s(run: Sequence[Observation], history: Sequence[Observation]) -> bool:
    # Within the run: two levels beyond 2 SD on the same side.
    sides = [_beyond(o.z, 2) for o in run]
    if sides.count(1) >= 2 or sides.count(-1) >= 2:
        return True
    # Across runs: the same level's previous observation beyond 2 SD on the same side.
    for obs in run:
        side = _beyond(obs.z, 2)
        if not side:
            continue
        earlier = [h for h in history if h.level == obs.level]
        if earlier and _beyond(earlier[-1].z, 2) == side:
            return True
    return False


def _range_4s(run: Sequence[Observation], history: Sequence[Observation]) -> bool:
    sides = {_beyond(o.z, 2) for o in run}
    return 1 in sides and -1 in sides


def _same_side(observations: Sequence[Observation], count: int, limit: Decimal) -> bool:
    """The newest ``count`` observations all beyond ``limit`` SD on one side (0 = the mean itself)."""
    if len(observations) < count:
        return False
    last = observations[-count:]
    return all(o.z > limit for o in last) or all(o.z < -limit for o in last)


def _four_1s(run: Sequence[Observation], history: Sequence[Observation]) -> bool:
    return _same_side([*history, *run], 4, Decimal(1))


def _ten_x(run: Sequence[Observation], history: Sequence[Observation]) -> bool:
    return _same_side([*history, *run], 10, Decimal(0))


_CHECKS = {"1-2s": _one_2s, "1-3s": _one_3s, "2-2s": _two_2s, "R-4s": _range_4s, "4-1s": _four_1s,
           "10x": _ten_x}

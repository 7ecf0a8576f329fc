"""The tiered ALT delta rule of CLINICAL.md §3.5, judged against the previous result handed in.

Inputs are the current value x2 at t2, the same patient's previous result x1 at t1 of the same
method (found by the store), dt = t2 - t1 in hours, and the ULN applied to the current result.

1. Eligibility: 0 < dt <= window; no tier fires when x1 <= ULN and x2 <= ULN (when configured).
2. Tier 1, significant change (flag ``U``/``D``, no hold): x2/x1 >= ratio_up or <= ratio_down
   (1.45 / 0.69 = log-normal RCV99 with CVA 4 %, CVI 9.3 %: §3.2) and |x2 - x1| >=
   max(min_change, min_change_uln x ULN).
3. Tier 2, implausible fall (hold: identity check): x1 > previous_above_uln x ULN and
   x2 < fraction_of_expected x x1 x 0.5^(dt / half_life_hours) (ALT half-life ~47 h: §2.2).
4. Tier 3, abrupt rise (hold: confirm identity and repeat): x2 >= ratio x x1 and x2 - x1 >=
   min_rise within within_hours.

Every number is configuration (``[methods.NAME.alt_delta.*]``); none is a constant here. Tiers 2
and 3 are labmw design choices, not published limits (CLINICAL.md says so) and must be tuned on
the laboratory's own history. Not implemented: the acute-injury order context that may waive
tier 3, and the multi-analyte ``ID_SUSPECT`` check (step 5), which need data labmw does not have.

Pure: stdlib and ``labmw.model`` / ``labmw.errors`` / ``labmw.rules`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from labmw.errors import RuleError
from labmw.model import (
    AbruptRise,
    AltDeltaTiers,
    Flag,
    ImplausibleFall,
    PreviousResult,
    SignificantChange,
)
from labmw.rules.delta import window_skip_reason

#: Tier names, in the order they are judged; decisions are recorded as ``alt_delta.<tier>``.
TIERS: tuple[str, ...] = ("significant_change", "implausible_fall", "abrupt_rise")

_HOUR = timedelta(hours=1)
_HALF = Decimal("0.5")


@dataclass(frozen=True, slots=True, kw_only=True)
class TierOutcome:
    """One tier's verdict.

    ``outcome`` is ``U``/``D`` (tier 1 fired), ``hold`` (tier 2 or 3 fired), ``not fired`` (judged,
    did not fire; ``reason`` may say why) or ``skipped`` (could not be judged; ``reason`` says why).
    ``note`` is the NTE text when the tier fired; ``inputs`` the audit inputs, all strings.
    """

    tier: str
    outcome: str
    reason: str = ""
    flag: str = ""
    hold: bool = False
    note: str = ""
    inputs: dict[str, str] = field(default_factory=dict)


def validate_tiers(tiers: AltDeltaTiers) -> None:
    """Check that every configured tier can be evaluated.

    Raises: :class:`~labmw.errors.RuleError` naming the tier and value: the window must be a
    positive number of days; ratio_up > 1 > ratio_down > 0; changes and rises >= 0; half-life,
    multiples and hours > 0; fraction_of_expected in (0, 1].
    """
    _require(tiers.window_days > 0, "window_days", tiers.window_days, "a positive number of days")
    if (t1 := tiers.significant_change) is not None:
        _require(t1.ratio_up > 1, "significant_change.ratio_up", t1.ratio_up, "a number above 1")
        _require(0 < t1.ratio_down < 1, "significant_change.ratio_down", t1.ratio_down,
                 "a number between 0 and 1")
        _require(t1.min_change >= 0, "significant_change.min_change", t1.min_change, ">= 0")
        _require(t1.min_change_uln >= 0, "significant_change.min_change_uln", t1.min_change_uln,
                 ">= 0")
    if (t2 := tiers.implausible_fall) is not None:
        _require(t2.previous_above_uln > 0, "implausible_fall.previous_above_uln",
                 t2.previous_above_uln, "a positive number")
        _require(t2.half_life_hours > 0, "implausible_fall.half_life_hours", t2.half_life_hours,
                 "a positive number of hours")
        _require(0 < t2.fraction_of_expected <= 1, "implausible_fall.fraction_of_expected",
                 t2.fraction_of_expected, "a number above 0 and at most 1")
    if (t3 := tiers.abrupt_rise) is not None:
        _require(t3.ratio > 1, "abrupt_rise.ratio", t3.ratio, "a number above 1")
        _require(t3.min_rise >= 0, "abrupt_rise.min_rise", t3.min_rise, ">= 0")
        _require(t3.within_hours > 0, "abrupt_rise.within_hours", t3.within_hours,
                 "a positive number of hours")


def log_rcv_ratios(
    cv_analytical: Decimal, cv_within_subject: Decimal, z: Decimal
) -> tuple[Decimal, Decimal]:
    """The log-normal reference change value as ratios (up, down), CLINICAL.md §3.2.

    sigma = sqrt(ln(1 + CVA^2) + ln(1 + CVI^2)) with CVs as fractions (4 % -> 0.04);
    up = exp(z sqrt(2) sigma), down = 1 / up. With CVA 4 %, CVI 9.3 %, z 2.576 (99 %) this gives
    1.45 / 0.69, the tier-1 defaults; a laboratory recomputes them from its own CVA.
    Raises: :class:`~labmw.errors.RuleError` for a negative CV or a non-positive z.
    """
    if cv_analytical < 0 or cv_within_subject < 0 or z <= 0:
        raise RuleError("log-normal RCV: expected CVs >= 0 and z > 0")
    one = Decimal(1)
    sigma = ((one + cv_analytical**2).ln() + (one + cv_within_subject**2).ln()).sqrt()
    up = (z * Decimal(2).sqrt() * sigma).exp()
    return up, one / up


def check_alt_tiers(
    tiers: AltDeltaTiers,
    *,
    value: Decimal,
    collected_at: datetime | None,
    previous: PreviousResult | None,
    uln: Decimal | None,
    units: str,
    specimen_id: str = "",
) -> tuple[TierOutcome, ...]:
    """Judge ``value`` against ``previous`` with every enabled tier.

    Inputs: the tiers; the current value and collection time (value and previous both in the
    method's units); the previous result or ``None``; the ULN applied to the current result or
    ``None`` when no range applied (tiers 1 and 2 then skip, tier 3 needs no ULN); the units for
    the notes; this result's specimen (a previous result of the same specimen is not compared).
    Output: one :class:`TierOutcome` per enabled tier, in :data:`TIERS` order.
    Raises: :class:`~labmw.errors.RuleError` for invalid tiers (:func:`validate_tiers`).
    """
    validate_tiers(tiers)
    enabled: list[tuple[str, SignificantChange | ImplausibleFall | AbruptRise]] = [
        (name, tier)
        for name, tier in zip(
            TIERS, (tiers.significant_change, tiers.implausible_fall, tiers.abrupt_rise),
            strict=True,
        )
        if tier is not None and tier.enabled
    ]
    reason = window_skip_reason(
        tiers.window_days, collected_at=collected_at, previous=previous, specimen_id=specimen_id
    )
    if reason is not None or previous is None or collected_at is None:
        reason = reason or "no collection time"
        base = {"value": str(value), "window_days": str(tiers.window_days), "reason": reason}
        return tuple(
            TierOutcome(tier=n, outcome="skipped", reason=reason, inputs=base) for n, _ in enabled
        )
    pair = _Pair(value=value, previous=previous, collected_at=collected_at, uln=uln, units=units)
    gate = (
        tiers.skip_when_both_within_uln
        and uln is not None
        and previous.value <= uln
        and value <= uln
    )
    outcomes = []
    for name, tier in enabled:
        if gate:
            outcome = TierOutcome(tier=name, outcome="not fired",
                                  reason=f"both results within the upper limit {uln}")
        elif isinstance(tier, SignificantChange):
            outcome = _significant_change(pair, tier)
        elif isinstance(tier, ImplausibleFall):
            outcome = _implausible_fall(pair, tier)
        else:
            outcome = _abrupt_rise(pair, tier)
        outcomes.append(_with_inputs(outcome, pair))
    return tuple(outcomes)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pair:
    """The two results being compared and the quantities every tier uses."""

    value: Decimal
    previous: PreviousResult
    collected_at: datetime
    uln: Decimal | None
    units: str

    @property
    def old(self) -> Decimal:
        return self.previous.value

    @property
    def change(self) -> Decimal:
        return self.value - self.previous.value

    @property
    def hours(self) -> Decimal:
        # Whole microseconds keep the arithmetic exact (no float seconds).
        elapsed = (self.collected_at - self.previous.collected_at) // timedelta(microseconds=1)
        return Decimal(elapsed) / Decimal(3_600_000_000)

    def describe(self) -> str:
        """``75 vs 48 U/L at 2026-11-19 08:00, +27 U/L (+56.3%) in 72 h``."""
        pct = "" if self.old == 0 else f" ({_fixed(100 * self.change / self.old, 1, sign=True)}%)"
        when = self.previous.collected_at.strftime("%Y-%m-%d %H:%M")
        return (
            f"{self.value} vs {self.old} {self.units} at {when}, "
            f"{self.change:+} {self.units}{pct} in {_short(self.hours)} h"
        )


def _significant_change(pair: _Pair, tier: SignificantChange) -> TierOutcome:
    name = "significant_change"
    if pair.uln is None:
        return TierOutcome(tier=name, outcome="skipped", reason="no upper reference limit applies")
    if pair.old <= 0:
        return TierOutcome(tier=name, outcome="skipped", reason="previous value not positive")
    ratio = pair.value / pair.old
    needed = max(tier.min_change, tier.min_change_uln * pair.uln)
    fired = (ratio >= tier.ratio_up or ratio <= tier.ratio_down) and abs(pair.change) >= needed
    if not fired:
        why = f"ratio {_fixed(ratio, 2)}, change {pair.change:+}, needs {_short(needed)}"
        return TierOutcome(tier=name, outcome="not fired", reason=why)
    flag = (Flag.DELTA_UP if pair.change > 0 else Flag.DELTA_DOWN).value
    rate = pair.change / pair.hours * 24
    note = (
        f"delta {flag} (ALT significant change): {pair.describe()}, x{_fixed(ratio, 2)}, "
        f"{_fixed(rate, 1, sign=True)} {pair.units} per day; fires at x{tier.ratio_up} or "
        f"x{tier.ratio_down} with a change of at least {_short(needed)} {pair.units}"
    )
    return TierOutcome(tier=name, outcome=flag, flag=flag, note=note)


def _implausible_fall(pair: _Pair, tier: ImplausibleFall) -> TierOutcome:
    name = "implausible_fall"
    if pair.uln is None:
        return TierOutcome(tier=name, outcome="skipped", reason="no upper reference limit applies")
    expected = pair.old * _HALF ** (pair.hours / tier.half_life_hours)
    floor = tier.fraction_of_expected * expected
    limit = tier.previous_above_uln * pair.uln
    if pair.old <= limit or pair.value >= floor:
        why = (f"previous not above {_short(limit)}" if pair.old <= limit
               else f"not below {_short(floor)}")
        return TierOutcome(tier=name, outcome="not fired", reason=why)
    note = (
        f"delta hold (ALT implausible fall): {pair.describe()}; clearance with a "
        f"{tier.half_life_hours} h half-life leaves at least {_short(expected)} {pair.units}, "
        f"hold below {_short(floor)} {pair.units}: check the specimen's identity"
    )
    return TierOutcome(tier=name, outcome="hold", hold=True, note=note)


def _abrupt_rise(pair: _Pair, tier: AbruptRise) -> TierOutcome:
    name = "abrupt_rise"
    fired = (
        pair.hours <= tier.within_hours
        and pair.value >= tier.ratio * pair.old
        and pair.change >= tier.min_rise
    )
    if not fired:
        return TierOutcome(tier=name, outcome="not fired")
    note = (
        f"delta hold (ALT abrupt rise): {pair.describe()}; holds at x{tier.ratio} and "
        f"+{tier.min_rise} {pair.units} within {tier.within_hours} h: confirm identity and repeat"
    )
    return TierOutcome(tier=name, outcome="hold", hold=True, note=note)


def _with_inputs(outcome: TierOutcome, pair: _Pair) -> TierOutcome:
    inputs = {
        "value": str(pair.value),
        "previous_value": str(pair.old),
        "previous_collected_at": pair.previous.collected_at.isoformat(),
        "previous_specimen": pair.previous.specimen_id,
        "hours": _short(pair.hours),
        "uln": "" if pair.uln is None else str(pair.uln),
    }
    if outcome.reason:
        inputs["reason"] = outcome.reason
    return TierOutcome(tier=outcome.tier, outcome=outcome.outcome, reason=outcome.reason,
                       flag=outcome.flag, hold=outcome.hold, note=outcome.note, inputs=inputs)


def _fixed(number: Decimal, places: int, *, sign: bool = False) -> str:
    """``number`` to ``places`` decimals, rounded half up as people do (56.25 -> ``56.3``)."""
    text = str(number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
    return f"+{text}" if sign and not text.startswith("-") else text


def _short(number: Decimal) -> str:
    """One decimal place at most, trailing zeros dropped: 72.0 -> ``72``, 334.96 -> ``335``."""
    rounded = number.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    whole = rounded.to_integral_value()
    return str(whole) if rounded == whole else str(rounded)


def _require(ok: bool, key: str, value: Decimal, expected: str) -> None:
    if not ok:
        raise RuleError(f"alt_delta {key} {value} is not valid: expected {expected}")

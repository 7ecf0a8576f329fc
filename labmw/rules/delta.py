"""The simple delta check of ``labmw delta set`` (PRODUCT.md command table).

Compare a result with the same patient's latest earlier result of the same method whose collection
time lies within ``window_days`` before this one. The rule fires when the absolute change is at
least ``abs_change`` and the relative change ``100 * |new - old| / old`` is at least ``pct_change``;
a threshold that is not set is not applied. Finding the previous result is the store's job; this
module only judges the one it is handed.

Deliberately *not* here: the tiered ALT rules of CLINICAL.md §3.5 (ratio limits, ULN gating, the
clearance-based implausible fall), which live in :mod:`labmw.rules.alt_tiers` and share
:func:`window_skip_reason`; this is the lab-configured simple one.

Pure: stdlib and ``labmw.model`` / ``labmw.errors`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from labmw.errors import RuleError
from labmw.model import DeltaRule, Flag, PreviousResult

#: Values ``DeltaRule.action`` may take.
ACTIONS: tuple[str, ...] = ("flag", "hold")

_MICROSECONDS_PER_DAY = 86_400_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaOutcome:
    """A delta rule that fired.

    ``flag`` is ``U`` (new > old) or ``D``; ``hold`` is true when the rule's action is ``hold``;
    ``note`` is the NTE text, e.g. ``delta: 85 vs 40 at 2026-11-20 08:00 (+45, +112.5%)``;
    ``change`` is new - old and ``percent`` the signed relative change (``None`` when old is 0).
    """

    flag: str
    hold: bool
    note: str
    change: Decimal
    percent: Decimal | None


def validate_delta_rule(rule: DeltaRule) -> None:
    """Check that ``rule`` can be evaluated.

    Raises: :class:`~labmw.errors.RuleError` when the window is not a positive number of days, a
    threshold is negative or not finite, or the action is not ``flag`` or ``hold``.
    """
    if not rule.window_days.is_finite() or rule.window_days <= 0:
        raise RuleError(
            f"delta window_days {rule.window_days} is not valid: expected a positive number"
        )
    for name, threshold in (("abs", rule.abs_change), ("pct", rule.pct_change)):
        if threshold is not None and (not threshold.is_finite() or threshold < 0):
            raise RuleError(f"delta {name} {threshold} is not valid: expected a number >= 0")
    if rule.action not in ACTIONS:
        raise RuleError(f"delta action {rule.action!r} is not valid: expected flag or hold")


def skip_reason(
    rule: DeltaRule,
    *,
    collected_at: datetime | None,
    previous: PreviousResult | None,
    specimen_id: str = "",
) -> str | None:
    """Why ``previous`` cannot be compared with a result collected at ``collected_at``, or ``None``.

    See :func:`window_skip_reason`, applied with the rule's ``window_days``.
    Raises: :class:`~labmw.errors.RuleError` for an invalid rule (see :func:`validate_delta_rule`).
    """
    validate_delta_rule(rule)
    return window_skip_reason(
        rule.window_days, collected_at=collected_at, previous=previous, specimen_id=specimen_id
    )


def window_skip_reason(
    window_days: Decimal,
    *,
    collected_at: datetime | None,
    previous: PreviousResult | None,
    specimen_id: str = "",
) -> str | None:
    """Why ``previous`` cannot be compared with this result, or ``None`` when it can.

    The previous result must have been collected strictly before this one and no earlier than
    ``window_days`` before it (the window's far edge is included). Times that cannot be compared
    (one with a time zone, one without) are a reason to skip, not an error. A previous result of
    the *same specimen* (``specimen_id``, when given) is never compared: a correction (status C)
    replaces the value it corrects, and comparing the two would report the correction as a change
    in the patient (the store hands the specimen's own earlier result only by mistake).
    """
    if previous is None:
        return "no previous result"
    if collected_at is None:
        return "no collection time"
    if specimen_id and previous.specimen_id == specimen_id:
        return "previous result is from the same specimen (a correction replaces it, not compared)"
    if (collected_at.tzinfo is None) != (previous.collected_at.tzinfo is None):
        return "previous result time not comparable (time zone on one side only)"
    if previous.collected_at >= collected_at:
        return "previous result not collected before this one"
    window = timedelta(microseconds=int(window_days * _MICROSECONDS_PER_DAY))
    if collected_at - previous.collected_at > window:
        return f"previous result older than {window_days} days"
    return None


def check_simple_delta(
    rule: DeltaRule,
    *,
    value: Decimal,
    collected_at: datetime,
    previous: PreviousResult | None,
    specimen_id: str = "",
) -> DeltaOutcome | None:
    """Apply the simple delta rule to ``value`` against ``previous``.

    Inputs: the rule; this result's numeric value and collection time; the previous result or
    ``None``. Output: a :class:`DeltaOutcome` when the rule fires, else ``None`` (no previous, out
    of the window, or a change below a threshold; :func:`skip_reason` tells which of the first two).

    Fires when ``|new - old| >= abs_change`` (if set) and
    ``100 * |new - old| / |old| >= pct_change`` (if set). Choices the contract leaves open:

    * ``old == 0``: the relative change is undefined, so a rule with ``pct_change`` set does not
      fire; without it the rule fires on ``abs_change`` alone.
    * The relative change divides by ``|old|``, which equals the contract's ``old`` for the positive
      values labs meet and keeps the check meaningful for analytes that can be negative.
    * A zero change never fires: it has no direction to report (and with both thresholds unset,
      any non-zero change fires, as the contract reads).

    Raises: :class:`~labmw.errors.RuleError` for an invalid rule (see :func:`validate_delta_rule`).
    """
    reason = skip_reason(
        rule, collected_at=collected_at, previous=previous, specimen_id=specimen_id
    )
    if reason is not None or previous is None:
        return None
    old = previous.value
    change = value - old
    if change == 0:
        return None
    if rule.abs_change is not None and abs(change) < rule.abs_change:
        return None
    percent = None if old == 0 else 100 * change / abs(old)
    if rule.pct_change is not None and (percent is None or abs(percent) < rule.pct_change):
        return None
    flag = Flag.DELTA_UP if change > 0 else Flag.DELTA_DOWN
    relative = "" if percent is None else f", {percent:+.1f}%"
    when = previous.collected_at.strftime("%Y-%m-%d %H:%M")
    note = f"delta: {value} vs {old} at {when} ({change:+}{relative})"
    return DeltaOutcome(
        flag=flag.value, hold=rule.action == "hold", note=note, change=change, percent=percent
    )

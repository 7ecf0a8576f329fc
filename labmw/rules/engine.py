"""Judge one result against its method: measuring range, reference range, critical limits, delta.

PRODUCT.md "Rules and flags": labmw adds HL7 table-0078 codes after the instrument's own flags,
``L``/``H`` outside the patient's reference range, ``LL``/``HH`` beyond a critical limit (in place
of ``L``/``H``), ``<``/``>`` outside the measuring range, ``U``/``D`` for a significant change;
OBX-7 carries the applied range and NTE notes explain in words. Every rule's verdict is kept as a
:class:`~labmw.model.Decision` with its inputs as strings for the audit trail.

Pure: no store, no clock, no logging, no I/O. Stdlib and ``labmw.model`` / ``labmw.errors`` only.
"""

from __future__ import annotations

from decimal import Decimal

from labmw.model import Decision, Evaluation, Flag, Method, PreviousResult, Result
from labmw.rules.delta import check_simple_delta, skip_reason
from labmw.rules.ranges import RangeSelection, normalize_sex, select_range

#: Result statuses (OBX-11 / ASTM R-9) that are range-checked: final and corrected. An empty
#: status counts as final, because many ASTM analyzers leave R-9 blank on ordinary results.
CHECKED_STATUSES: tuple[str, ...] = ("F", "C")


class _Draft:
    """The evaluation being built; local to one :func:`evaluate` call, never shared."""

    __slots__ = ("decisions", "hold", "method", "notes", "range_flag", "scale_flag", "delta_flag")

    def __init__(self, method: str | None) -> None:
        self.method = method
        self.range_flag = ""  # L, H, LL or HH
        self.scale_flag = ""  # < or >
        self.delta_flag = ""  # U or D
        self.hold = False
        self.notes: list[str] = []
        self.decisions: list[Decision] = []

    def decide(self, rule: str, outcome: str, **inputs: str) -> None:
        self.decisions.append(Decision(rule=rule, outcome=outcome, inputs=dict(inputs)))

    def finish(self, applied_range: str = "") -> Evaluation:
        # Table 0078 order: reference/critical first, then measuring range, then delta.
        flags = tuple(f for f in (self.range_flag, self.scale_flag, self.delta_flag) if f)
        return Evaluation(
            method=self.method,
            flags=flags,
            applied_range=applied_range,
            notes=tuple(self.notes),
            hold=self.hold,
            decisions=tuple(self.decisions),
        )


def evaluate(
    result: Result, method: Method | None, *, previous: PreviousResult | None = None
) -> Evaluation:
    """Evaluate ``result`` against ``method`` (and ``previous`` for the delta rule).

    Inputs: the result as the instrument reported it; its mapped method, or ``None`` when the test
    code maps to none; the same patient's previous result of the method, if the caller found one.

    Output: an :class:`~labmw.model.Evaluation`. In order:

    1. No method: no flags, a note naming the test code.
    2. Gates that stop all checking (no flags at all, a note and a decision saying why): a status
       other than final ``F`` or corrected ``C`` (empty counts as ``F``); a non-numeric value;
       units other than the method's (case-insensitive; empty units mean the method's).
    3. Measuring range: ``<`` below ``measuring_low``, ``>`` above ``measuring_high``; a comparator
       value is judged by what it asserts (``<5`` with low 5 gives ``<``, ``>7000`` with high 7000
       gives ``>``). A comparator value then stops: no reference, critical or delta checks.
    4. Reference range from :func:`~labmw.rules.ranges.select_range`: ``L`` below low, ``H`` above
       high (a value equal to a limit is inside); ``applied_range`` is ``low-high`` as configured.
    5. Critical limits, even without a reference range: ``HH`` when value >= critical_high and
       ``LL`` when value <= critical_low, in place of ``H``/``L``. With ``H``/``HH`` and a range, a
       note ``"{x:.1f} x ULN {high}"``.
    6. Simple delta against ``previous``: ``U``/``D`` appended, or ``hold=True`` instead of a flag
       when the rule's action is ``hold``.

    Flags come out as [L|H|LL|HH] then [<|>] then [U|D].
    Raises: :class:`~labmw.errors.RuleError` when the method is misconfigured (an age bound with an
    unknown unit, an invalid delta rule).
    """
    if method is None:
        draft = _Draft(None)
        draft.notes.append(
            f"no method mapped for test code {result.test_code}: forwarded without range flags"
        )
        draft.decide(
            "method", "unmapped", test_code=result.test_code, analyzer=result.analyzer
        )
        return draft.finish()

    draft = _Draft(method.name)
    value = result.value
    if not _passes_gates(result, method, draft) or value is None:
        return draft.finish()

    _check_measuring_range(result, value, method, draft)
    if result.comparator:
        draft.notes.append(
            f"comparator value {result.raw_value.strip()}: not checked against reference range"
        )
        draft.decide("comparator", "not checked", value=result.raw_value)
        return draft.finish()

    selection = _select(result, method)
    rule = selection.rule
    _check_reference_range(result, value, selection, draft)
    _check_critical(value, method, draft)
    if rule is not None and draft.range_flag in (Flag.HIGH, Flag.CRITICAL_HIGH) and rule.high > 0:
        draft.notes.append(f"{value / rule.high:.1f} x ULN {rule.high}")
    _check_delta(result, value, method, previous, draft)
    return draft.finish(selection.applied_range)


def _passes_gates(result: Result, method: Method, draft: _Draft) -> bool:
    """Status, numeric value and units; records why a result is not checked at all."""
    status = result.status.strip().upper() or "F"
    if status not in CHECKED_STATUSES:
        draft.notes.append(f"status {status} is not final: not range-checked")
        draft.decide("status", "not checked", status=status)
        return False
    if result.value is None:
        draft.notes.append("value is not numeric: not range-checked")
        draft.decide("value", "not checked", value=result.raw_value)
        return False
    units = result.units.strip() or method.units
    if units.casefold() != method.units.strip().casefold():
        draft.notes.append(
            f"units {units} not checked: method {method.name} expects {method.units}"
        )
        draft.decide("units", "not checked", units=units, method_units=method.units)
        return False
    return True


def _check_measuring_range(result: Result, value: Decimal, method: Method, draft: _Draft) -> None:
    low, high = method.measuring_low, method.measuring_high
    if low is None and high is None:
        return
    comparator = result.comparator or ""
    outcome = "inside"
    if low is not None and _asserts_below(value, comparator, low):
        draft.scale_flag = outcome = Flag.BELOW_MEASURING_RANGE.value
        draft.notes.append(f"below measuring range {_span(low, high)}")
    elif high is not None and _asserts_above(value, comparator, high):
        draft.scale_flag = outcome = Flag.ABOVE_MEASURING_RANGE.value
        draft.notes.append(f"above measuring range {_span(low, high)}")
    draft.decide(
        "measuring_range",
        outcome,
        value=result.raw_value,
        measuring_low=_text(low),
        measuring_high=_text(high),
    )


def _asserts_below(value: Decimal, comparator: str, low: Decimal) -> bool:
    """Whether the reported value says the true value lies below ``low``.

    A comparator value asserts where the true value lies: ``<5`` means below 5, so it is below a
    measuring range that starts at 5; ``<=5`` means at or below 5, which may still be inside; a
    ``>`` or ``>=`` value says nothing about the low end.
    """
    if comparator == "<":
        return value <= low
    if comparator in ("", "<="):
        return value < low
    return False


def _asserts_above(value: Decimal, comparator: str, high: Decimal) -> bool:
    """Mirror of :func:`_asserts_below` for the high end (``>7000`` with high 7000 is above)."""
    if comparator == ">":
        return value >= high
    if comparator in ("", ">="):
        return value > high
    return False


def _span(low: Decimal | None, high: Decimal | None) -> str:
    return f"{_text(low)}-{_text(high)}"


def _select(result: Result, method: Method) -> RangeSelection:
    when = result.collected_at or result.completed_at
    return select_range(
        method,
        sex=result.sex,
        birth_date=result.birth_date,
        at=when.date() if when is not None else None,
    )


def _check_reference_range(
    result: Result, value: Decimal, selection: RangeSelection, draft: _Draft
) -> None:
    rule = selection.rule
    inputs = {
        "value": result.raw_value,
        "sex": normalize_sex(result.sex) or "unknown",
        "age": selection.age,
        "range": selection.applied_range,
        "partition": selection.partition,
        "incomplete_demographics": str(selection.incomplete_demographics).lower(),
        "reason": selection.reason,
    }
    if selection.incomplete_demographics:
        draft.notes.append(f"incomplete demographics: {selection.reason}")
    if rule is None:
        draft.notes.append(f"{selection.reason}: forwarded without L/H flags")
        draft.decide("reference_range", "no range", **inputs)
        return
    outcome = "inside"
    if value < rule.low:
        draft.range_flag = outcome = Flag.LOW.value
    elif value > rule.high:
        draft.range_flag = outcome = Flag.HIGH.value
    draft.decide("reference_range", outcome, low=str(rule.low), high=str(rule.high), **inputs)


def _check_critical(value: Decimal, method: Method, draft: _Draft) -> None:
    low, high = method.critical_low, method.critical_high
    if low is None and high is None:
        return
    outcome = "not critical"
    if high is not None and value >= high:
        draft.range_flag = outcome = Flag.CRITICAL_HIGH.value
        draft.notes.append(f"at or above critical limit {high}")
    elif low is not None and value <= low:
        draft.range_flag = outcome = Flag.CRITICAL_LOW.value
        draft.notes.append(f"at or below critical limit {low}")
    draft.decide(
        "critical", outcome, value=str(value), critical_low=_text(low), critical_high=_text(high)
    )


def _check_delta(
    result: Result,
    value: Decimal,
    method: Method,
    previous: PreviousResult | None,
    draft: _Draft,
) -> None:
    rule = method.delta
    if rule is None:
        return
    when = result.collected_at or result.completed_at
    inputs = {
        "value": str(value),
        "collected_at": when.isoformat() if when is not None else "",
        "previous_value": str(previous.value) if previous is not None else "",
        "previous_collected_at": previous.collected_at.isoformat() if previous is not None else "",
        "previous_specimen": previous.specimen_id if previous is not None else "",
        "abs": _text(rule.abs_change),
        "pct": _text(rule.pct_change),
        "window_days": str(rule.window_days),
        "action": rule.action,
    }
    reason = skip_reason(rule, collected_at=when, previous=previous)
    if reason is not None or when is None:
        draft.decide("delta", "skipped", reason=reason or "no collection time", **inputs)
        return
    outcome = check_simple_delta(rule, value=value, collected_at=when, previous=previous)
    if outcome is None:
        draft.decide("delta", "not fired", **inputs)
        return
    draft.notes.append(outcome.note)
    if outcome.hold:
        draft.hold = True
        draft.notes.append("held for review by the delta rule")
        draft.decide("delta", f"hold {outcome.flag}", **inputs)
    else:
        draft.delta_flag = outcome.flag
        draft.decide("delta", outcome.flag, **inputs)


def _text(value: Decimal | None) -> str:
    return "" if value is None else str(value)


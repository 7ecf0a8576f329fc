"""Judge one result against its method: units, measuring range, ranges, critical limits, deltas.

PRODUCT.md "Rules and flags": labmw adds HL7 table-0078 codes after the instrument's own flags,
``L``/``H`` outside the patient's reference range, ``LL``/``HH`` beyond a critical limit (in place
of ``L``/``H``), ``<``/``>`` outside the measuring range, ``U``/``D`` for a significant change;
OBX-7 carries the applied range and NTE notes explain in words. Every rule's verdict is kept as a
:class:`~labmw.model.Decision` with its inputs as strings for the audit trail.

The follow-up rules that need the applied range (grading, decision thresholds, both delta rules,
the Hy's-law note) are in :mod:`labmw.rules.followup`.

Pure: no store, no clock, no logging, no I/O. Stdlib and ``labmw.model`` / ``labmw.errors`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal

from labmw.model import Evaluation, Flag, Method, PreviousResult, QcGate, RangeRule, RelatedResult, Result
from labmw.rules.draft import Draft
from labmw.rules.followup import check_followups
from labmw.rules.gates import FINAL_STATUSES, INTAKE, RANGE, VALUE, GateContext, GatePolicy, run_stage
from labmw.rules.grading import grade
from labmw.rules.ranges import PENDING_REVIEW, RangeSelection, normalize_sex, select_range
from labmw.rules.units import Converted, from_method_units, to_method_units, unit_key

#: Result statuses (OBX-11 / ASTM R-9) that are range-checked: final and corrected. An empty
#: status counts as final, because many ASTM analyzers leave R-9 blank on ordinary results.
CHECKED_STATUSES: tuple[str, ...] = FINAL_STATUSES


def evaluate(
    result: Result,
    method: Method | None,
    *,
    previous: PreviousResult | None = None,
    related: Sequence[RelatedResult] = (),
    policy: GatePolicy | None = None,
    rules_version: str = "",
    qc: QcGate | None = None,
) -> Evaluation:
    """Evaluate ``result`` against ``method`` (``previous`` for deltas, ``related`` for Hy's law).

    Inputs: the result as the instrument reported it; its mapped method, or ``None`` when the test
    code maps to none; the same patient's previous result of the method (latest earlier collection
    within :attr:`~labmw.model.Method.delta_window_days`), if the caller found one; the patient's
    recent results of other analytes (only the Hy's-law note reads them); the analyzer's gate
    ``policy`` (gate actions, unmapped codes, instrument-flag table, active suspensions; the
    defaults hold everything); the ``rules_version`` hash stamped on the evaluation; the QC state
    of the result's analyzer x method (``None`` when no control material applies; the gates
    ``QC_FAILED``/``QC_EXPIRED`` of :mod:`labmw.rules.gates` read it).

    Output: an :class:`~labmw.model.Evaluation`. In order (CLINICAL.md §4.2):

    1. Intake gates (:mod:`labmw.rules.gates`): the kill switch, ``METHOD_UNKNOWN``,
       ``INSTRUMENT_FLAG``, ``RESULT_STATUS`` (anything but ``F``/``C``; empty counts as ``F``).
    2. Value gates: ``UNIT_UNKNOWN`` (units neither the method's nor converted by one of its
       ``conversions``; a converted value is checked in the method's units from here on),
       ``NEEDS_DILUTION`` (above the measuring range, or ``>X`` with X at its upper end),
       ``ABSURD`` (not numeric, at or below ``absurd_low``, above ``absurd_high``).
    3. Measuring range: ``<`` below ``measuring_low``, ``>`` above ``measuring_high``; a comparator
       value is judged by what it asserts (``<5`` with low 5 gives ``<``).
    4. Reference range from :func:`~labmw.rules.ranges.select_range` and the range gates
       ``DEMOG_INCOMPLETE``, ``NO_RANGE``, ``RANGE_UNAPPROVED``. ``L`` below low, ``H`` above high
       (a value equal to a limit is inside); ``applied_range`` is ``low-high`` as configured.
    5. Critical limits, even without a reference range: ``HH`` when value >= critical_high and
       ``LL`` when value <= critical_low, in place of ``H``/``L``. A comparator value is judged
       against every limit it decides (``>1500`` with critical-high 1000 is ``HH``; ``<8`` with a
       range 10-49 is ``L``); a limit it leaves undecided is said in a note.
    6. Follow-ups for numeric values (:func:`~labmw.rules.followup.check_followups`): the multiple
       of the ULN and grade, decision thresholds, the simple delta rule, the ALT tiers, Hy's law.

    A gate that fires holds the result (reason for the reviewer in ``review_notes``, gate name in
    ``gates``) unless the lab set it to ``flag`` (a clinician NTE instead). Flags come out as
    [L|H|LL|HH] then [<|>] then [U|D].
    Raises: :class:`~labmw.errors.RuleError` when the method is misconfigured (an age bound with an
    unknown unit, an invalid delta rule, tier, scale or conversion).
    """
    policy = policy if policy is not None else GatePolicy()
    if qc is not None:
        policy = replace(policy, extra={**policy.extra, "qc": qc})
    draft = Draft(method.name if method is not None else None)
    for comment in result.comments:
        draft.notes.append(f"instrument comment: {comment}")
    ctx = GateContext(result=result, method=method, policy=policy)
    if not run_stage(INTAKE, ctx, draft) or method is None:
        if method is None:
            draft.decide("method", "unmapped", test_code=result.test_code, analyzer=result.analyzer)
        else:
            draft.notes.append(f"status {result.status.strip().upper()} is not final: not range-checked")
            draft.decide("status", "not checked", status=result.status.strip().upper())
        return draft.finish(rules_version=rules_version)

    if method.status == PENDING_REVIEW:
        draft.notes.append(f"method {method.name} is pending laboratory review")
    converted = _convert(result, method, draft)
    ctx = replace(ctx, converted=converted)
    if not run_stage(VALUE, ctx, draft) or converted is None:
        return draft.finish(rules_version=rules_version)
    value = converted.value

    _check_measuring_range(result, value, method, draft)
    selection = _select(result, method)
    ctx = replace(ctx, selection=selection)
    if result.comparator:
        _judge_comparator(result, value, method, selection, draft)
        run_stage(RANGE, ctx, draft)
        return draft.finish(_applied_range(selection, converted), rules_version)

    _check_reference_range(result, converted, selection, draft)
    run_stage(RANGE, ctx, draft)
    _check_critical(value, method, draft)
    check_followups(
        result, value, method, selection, draft, previous=previous, related=related
    )
    return draft.finish(_applied_range(selection, converted), rules_version)


def _convert(result: Result, method: Method, draft: Draft) -> Converted | None:
    """The value in the method's units, or ``None`` (not numeric, or units it cannot convert)."""
    if result.value is None:
        draft.notes.append("value is not numeric: not range-checked")
        draft.decide("value", "not checked", value=result.raw_value)
        return None
    status = result.status.strip().upper() or "F"
    if status == "C":
        # The store replaces the corrected value; the delta rules never compare the two.
        draft.decide("status", "corrected", status=status, specimen=result.specimen_id)
    units = result.units.strip() or method.units
    converted = to_method_units(result.value, units, method)
    if converted is None:
        draft.notes.append(
            f"units {units} not checked: method {method.name} expects {method.units}"
        )
        draft.decide("units", "not checked", units=units, method_units=method.units)
        return None
    if converted.conversion is not None:
        factor = converted.conversion.factor
        draft.notes.append(
            f"{result.raw_value.strip()} {units} = {converted.value} {method.units} "
            f"(x {factor}): checked in {method.units}"
        )
        draft.decide("units", "converted", units=units, method_units=method.units,
                     factor=str(factor), value=str(converted.value))
    return converted


def _judge_comparator(
    result: Result, value: Decimal, method: Method, selection: RangeSelection, draft: Draft
) -> None:
    """Judge ``>X`` / ``<X`` against every limit it decides; say which limits it leaves open.

    ``>X`` asserts the true value is above X (``>=X``: at or above), so it is above every limit
    below X and beyond a critical-high limit at or below X; ``<X`` mirrors it. A limit the
    assertion does not decide (``<30`` with a range 10-49) is named in a note and a decision.
    """
    comparator = result.comparator or ""
    raw = result.raw_value.strip()
    rule = selection.rule
    up = comparator in (">", ">=")
    strict = comparator in (">", "<")
    undecided: list[str] = []
    flag = ""
    crit_low, crit_high = method.critical_low, method.critical_high
    if up:
        # True value > X (or >= X): HH when it is certainly >= critical_high.
        if crit_high is not None:
            if value >= crit_high:
                flag = Flag.CRITICAL_HIGH.value
            else:
                undecided.append(f"critical limit {crit_high}")
        if not flag and rule is not None:
            if value > rule.high or (strict and value == rule.high):
                flag = Flag.HIGH.value
            elif value >= rule.low:
                undecided.append(f"upper reference limit {rule.high}")
            else:
                undecided.append(f"reference range {rule.low}-{rule.high}")
    else:
        # True value < X (or <= X): LL when certainly <= critical_low, L when certainly < low.
        if crit_low is not None:
            if value <= crit_low:
                flag = Flag.CRITICAL_LOW.value
            else:
                undecided.append(f"critical limit {crit_low}")
        if not flag and rule is not None:
            if value < rule.low or (strict and value == rule.low):
                flag = Flag.LOW.value
            elif value <= rule.high:
                undecided.append(f"lower reference limit {rule.low}")
            else:
                undecided.append(f"reference range {rule.low}-{rule.high}")
    if flag:
        draft.range_flag = flag
    if undecided:
        draft.notes.append(f"{raw} does not decide the {' or '.join(undecided)}")
    if flag == Flag.CRITICAL_HIGH.value:
        draft.notes.append(f"{raw}: above critical limit {crit_high}")
    elif flag == Flag.CRITICAL_LOW.value:
        draft.notes.append(f"{raw}: below critical limit {crit_low}")
    draft.decide("comparator", flag or "undecided", value=result.raw_value,
                 range=selection.applied_range, critical_low=_text(crit_low),
                 critical_high=_text(crit_high), undecided="; ".join(undecided))
    if crit_low is not None or crit_high is not None:
        critical = flag if flag in (Flag.CRITICAL_HIGH.value, Flag.CRITICAL_LOW.value) else (
            "undecided" if any(u.startswith("critical") for u in undecided) else "not critical")
        draft.decide("critical", critical, value=result.raw_value, critical_low=_text(crit_low),
                     critical_high=_text(crit_high))
    if rule is not None and up and method.grading is not None and rule.high > 0:
        graded = grade(value, rule.high, method.grading)
        if graded.grade:
            draft.decide("grading", f"at least grade {graded.grade}", scheme=method.grading.scheme,
                         multiple=f"{graded.multiple:.2f}", uln=str(rule.high))


def _applied_range(selection: RangeSelection, converted: Converted) -> str:
    """OBX-7 in the result's own units: U/L limits beside a µkat/L value would mislead the LIS."""
    rule, conversion = selection.rule, converted.conversion
    if rule is None or conversion is None:
        return selection.applied_range
    published = _published(rule, conversion.units)
    if published is not None:
        return f"{published[0]}-{published[1]}"
    return f"{from_method_units(rule.low, conversion)}-{from_method_units(rule.high, conversion)}"


def _published(rule: RangeRule, units: str) -> tuple[Decimal, Decimal] | None:
    """The rule's limits as published in ``units`` (``in_units``), or None."""
    key = unit_key(units)
    return next(((low, high) for u, low, high in rule.in_units if unit_key(u) == key), None)


def _check_measuring_range(result: Result, value: Decimal, method: Method, draft: Draft) -> None:
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
    result: Result, converted: Converted, selection: RangeSelection, draft: Draft
) -> None:
    rule, value = selection.rule, converted.value
    inputs = {
        "value": result.raw_value,
        "sex": normalize_sex(result.sex) or "unknown",
        "age": selection.age,
        "range": selection.applied_range,
        "partition": selection.partition,
        "incomplete_demographics": str(selection.incomplete_demographics).lower(),
        "reason": selection.reason,
    }
    if converted.conversion is not None:
        inputs["checked_value"] = str(value)
    if selection.incomplete_demographics:
        draft.notes.append(f"incomplete demographics: {selection.reason}")
    if rule is not None and rule.status == PENDING_REVIEW:
        draft.notes.append(
            f"reference range {selection.applied_range} ({selection.partition}) is pending "
            "laboratory review"
        )
        inputs["range_status"] = rule.status
    if rule is None:
        draft.notes.append(f"{selection.reason}: forwarded without L/H flags")
        draft.decide("reference_range", "no range", **inputs)
        return
    outcome = "inside"
    low, high = rule.low, rule.high
    published = _published(rule, converted.conversion.units) if converted.conversion is not None else None
    if published is not None and result.value is not None:
        # Judged in the units the interval was published in: no rounding between the two.
        value, (low, high) = result.value, published
        inputs["published_in"] = converted.conversion.units if converted.conversion else ""
    if value < low:
        draft.range_flag = outcome = Flag.LOW.value
    elif value > high:
        draft.range_flag = outcome = Flag.HIGH.value
    draft.decide("reference_range", outcome, low=str(low), high=str(high), **inputs)


def _check_critical(value: Decimal, method: Method, draft: Draft) -> None:
    alert = method.alert_high
    if alert is not None:
        above = value >= alert
        if above:
            draft.notes.append(f"at or above alert limit {alert} (not a critical value)")
        draft.decide("alert", "above" if above else "not above", value=str(value), alert_high=str(alert))
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


def _text(value: Decimal | None) -> str:
    return "" if value is None else str(value)

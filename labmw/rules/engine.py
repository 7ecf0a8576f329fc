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
from decimal import Decimal

from labmw.model import Evaluation, Flag, Method, PreviousResult, QcGate, RelatedResult, Result
from labmw.rules.draft import Draft
from labmw.rules.followup import check_followups
from labmw.rules.qc_gate import check_qc
from labmw.rules.ranges import PENDING_REVIEW, RangeSelection, normalize_sex, select_range
from labmw.rules.units import Converted, from_method_units, to_method_units

#: Result statuses (OBX-11 / ASTM R-9) that are range-checked: final and corrected. An empty
#: status counts as final, because many ASTM analyzers leave R-9 blank on ordinary results.
CHECKED_STATUSES: tuple[str, ...] = ("F", "C")


def evaluate(
    result: Result,
    method: Method | None,
    *,
    previous: PreviousResult | None = None,
    related: Sequence[RelatedResult] = (),
    qc: QcGate | None = None,
) -> Evaluation:
    """Evaluate ``result`` against ``method`` (``previous`` for deltas, ``related`` for Hy's law).

    Inputs: the result as the instrument reported it; its mapped method, or ``None`` when the test
    code maps to none; the same patient's previous result of the method (latest earlier collection
    within :attr:`~labmw.model.Method.delta_window_days`), if the caller found one; the patient's
    recent results of other analytes (only the Hy's-law note reads them); the QC state of the
    result's analyzer x method (``None`` when no control material applies), see
    :mod:`labmw.rules.qc_gate`.

    Output: an :class:`~labmw.model.Evaluation`. In order:

    1. No method: no flags, a note naming the test code. A method ``pending review`` says so.
    2. Gates that stop all checking (no flags at all, a note and a decision saying why): a status
       other than final ``F`` or corrected ``C`` (empty counts as ``F``); a non-numeric value;
       units that are neither the method's (case-insensitive, micro signs as ``u``; empty units
       mean the method's) nor converted by one of its ``conversions``. A converted value is
       checked in the method's units from here on; the applied range comes back in the result's.
    3. Measuring range: ``<`` below ``measuring_low``, ``>`` above ``measuring_high``; a comparator
       value is judged by what it asserts (``<5`` with low 5 gives ``<``, ``>7000`` with high 7000
       gives ``>``). A comparator value then stops: no reference, critical or delta checks.
    4. Reference range from :func:`~labmw.rules.ranges.select_range`: ``L`` below low, ``H`` above
       high (a value equal to a limit is inside); ``applied_range`` is ``low-high`` as configured.
       A range pending review, or incomplete demographics, is said in a note.
    5. Critical limits, even without a reference range: ``HH`` when value >= critical_high and
       ``LL`` when value <= critical_low, in place of ``H``/``L``.
    6. Follow-ups (:func:`~labmw.rules.followup.check_followups`): the multiple of the ULN and
       grade, decision thresholds, the simple delta rule, the ALT tiers, the Hy's-law note.

    Flags come out as [L|H|LL|HH] then [<|>] then [U|D].
    Raises: :class:`~labmw.errors.RuleError` when the method is misconfigured (an age bound with an
    unknown unit, an invalid delta rule, tier, scale or conversion).
    """
    if method is None:
        draft = Draft(None)
        draft.notes.append(
            f"no method mapped for test code {result.test_code}: forwarded without range flags"
        )
        draft.decide(
            "method", "unmapped", test_code=result.test_code, analyzer=result.analyzer
        )
        return draft.finish()

    draft = Draft(method.name)
    if method.status == PENDING_REVIEW:
        draft.notes.append(f"method {method.name} is pending laboratory review")
    # QC gate (CLINICAL.md §4.2 step 3): holds after a rejected or expired run; the checks go on.
    check_qc(qc, draft)
    converted = _passes_gates(result, method, draft)
    if converted is None:
        return draft.finish()
    value = converted.value

    _check_measuring_range(result, value, method, draft)
    if result.comparator:
        draft.notes.append(
            f"comparator value {result.raw_value.strip()}: not checked against reference range"
        )
        draft.decide("comparator", "not checked", value=result.raw_value)
        return draft.finish()

    selection = _select(result, method)
    _check_reference_range(result, converted, selection, draft)
    _check_critical(value, method, draft)
    check_followups(
        result, value, method, selection, draft, previous=previous, related=related
    )
    return draft.finish(_applied_range(selection, converted))


def _passes_gates(result: Result, method: Method, draft: Draft) -> Converted | None:
    """Status, numeric value and units; records why a result is not checked at all.

    Returns the value in the method's units, or ``None`` when the result is not checked.
    """
    status = result.status.strip().upper() or "F"
    if status not in CHECKED_STATUSES:
        draft.notes.append(f"status {status} is not final: not range-checked")
        draft.decide("status", "not checked", status=status)
        return None
    if result.value is None:
        draft.notes.append("value is not numeric: not range-checked")
        draft.decide("value", "not checked", value=result.raw_value)
        return None
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


def _applied_range(selection: RangeSelection, converted: Converted) -> str:
    """OBX-7 in the result's own units: U/L limits beside a µkat/L value would mislead the LIS."""
    rule, conversion = selection.rule, converted.conversion
    if rule is None or conversion is None:
        return selection.applied_range
    return f"{from_method_units(rule.low, conversion)}-{from_method_units(rule.high, conversion)}"


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
    if value < rule.low:
        draft.range_flag = outcome = Flag.LOW.value
    elif value > rule.high:
        draft.range_flag = outcome = Flag.HIGH.value
    draft.decide("reference_range", outcome, low=str(rule.low), high=str(rule.high), **inputs)


def _check_critical(value: Decimal, method: Method, draft: Draft) -> None:
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

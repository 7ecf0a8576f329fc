"""The rules judged after the reference range: grading, decision thresholds, deltas, Hy's law.

They all need what the reference-range step found (the applied ULN, the patient's partition) and
a value already in the method's units; :func:`check_followups` runs them in this order and writes
flags, holds, notes and decisions into the engine's :class:`~labmw.rules.draft.Draft`:

1. ``grading``: above the applied ULN, the note ``"1.4 x ULN 59"`` plus the grade when the
   method has a scale (CTCAE v5.0), and a decision whenever a scale and a ULN exist.
2. ``threshold``: each enabled decision threshold whose partition certainly covers the patient:
   a note when the value is above it (never a flag).
3. ``delta``: the simple rule of ``labmw delta set`` (``U``/``D`` or a hold).
4. ``alt_delta.<tier>``: the ALT tiers of CLINICAL.md §3.5 (``U``/``D`` from tier 1, holds from
   tiers 2 and 3). The first delta rule that fires sets the one ``U``/``D`` flag.
5. ``hys_law``: the Hy's-law candidate note from the related results handed in.

A previous result reported in other units is converted like the current one; one whose units the
method cannot convert is not compared (both delta rules skip and say why). Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from decimal import Decimal

from labmw.model import Method, PreviousResult, RelatedResult, Result
from labmw.rules.age import AgeAt
from labmw.rules.alt_tiers import check_alt_tiers
from labmw.rules.delta import check_simple_delta, skip_reason
from labmw.rules.draft import Draft
from labmw.rules.grading import describe_threshold, grade, threshold_applies, uln_note
from labmw.rules.hys_law import check_hys_law
from labmw.rules.ranges import WIDEST, RangeSelection, normalize_sex
from labmw.rules.units import to_method_units


def check_followups(
    result: Result,
    value: Decimal,
    method: Method,
    selection: RangeSelection,
    draft: Draft,
    *,
    previous: PreviousResult | None,
    related: Sequence[RelatedResult],
) -> None:
    """Run the follow-up rules for one result (see the module docstring) into ``draft``.

    Inputs: the result; its value in the method's units; the method; the range selection; the
    draft; the previous result as the store found it; the patient's related results.
    Raises: :class:`~labmw.errors.RuleError` for a misconfigured rule.
    """
    uln = selection.rule.high if selection.rule is not None else None
    if selection.partition.startswith(WIDEST):
        # Sex or age unknown: the widest band's ULN belongs to no patient, so no multiple or grade
        # is computed from it (a woman's 2 x ULN would be graded against a man's limit).
        draft.decide("grading", "not graded", reason="sex or age unknown: no patient ULN")
        _thresholds(result, value, method, draft)
        before, problem = _previous_in_method_units(previous, method)
        _simple_delta(result, value, method, before, problem, draft)
        _alt_delta(result, value, method, before, problem, uln, draft)
        return
    _grade(value, uln, method, draft)
    _thresholds(result, value, method, draft)
    before, problem = _previous_in_method_units(previous, method)
    _simple_delta(result, value, method, before, problem, draft)
    _alt_delta(result, value, method, before, problem, uln, draft)
    _hys_law(result, value, method, uln, related, draft)


def _grade(value: Decimal, uln: Decimal | None, method: Method, draft: Draft) -> None:
    if uln is None or uln <= 0:
        return
    if value > uln:
        draft.notes.append(uln_note(value, uln, method.grading))
    if method.grading is not None:
        graded = grade(value, uln, method.grading)
        draft.decide(
            "grading",
            f"grade {graded.grade}" if graded.grade else "not graded",
            scheme=method.grading.scheme,
            multiple=f"{graded.multiple:.2f}",
            uln=str(uln),
            above_uln=", ".join(str(b) for b in method.grading.above_uln),
        )


def _thresholds(result: Result, value: Decimal, method: Method, draft: Draft) -> None:
    sex, age = normalize_sex(result.sex), _age(result)
    for threshold in method.thresholds:
        if not threshold.enabled or not threshold_applies(threshold, sex, age):
            continue
        above = value > threshold.value
        if above:
            draft.notes.append(
                f"above decision limit {describe_threshold(threshold)}: not a reference interval"
            )
        draft.decide(
            "threshold",
            "above" if above else "not above",
            name=threshold.name,
            threshold=describe_threshold(threshold),
            value=str(value),
            source=threshold.source,
        )


def _age(result: Result) -> AgeAt | None:
    when = result.collected_at or result.completed_at
    birth: date | None = result.birth_date
    if birth is None or when is None or birth > when.date():
        return None
    return AgeAt(birth=birth, at=when.date())


def _previous_in_method_units(
    previous: PreviousResult | None, method: Method
) -> tuple[PreviousResult | None, str]:
    """The previous result with its value in the method's units, or why it cannot be compared."""
    if previous is None:
        return None, ""
    converted = to_method_units(previous.value, previous.units, method)
    if converted is None:
        return None, f"previous result in {previous.units}: no conversion to {method.units}"
    return replace(previous, value=converted.value, units=method.units), ""


def _simple_delta(
    result: Result,
    value: Decimal,
    method: Method,
    previous: PreviousResult | None,
    problem: str,
    draft: Draft,
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
    reason = problem or skip_reason(
        rule, collected_at=when, previous=previous, specimen_id=result.specimen_id
    )
    if reason or when is None:
        draft.decide("delta", "skipped", reason=reason or "no collection time", **inputs)
        return
    outcome = check_simple_delta(
        rule, value=value, collected_at=when, previous=previous, specimen_id=result.specimen_id
    )
    if outcome is None:
        draft.decide("delta", "not fired", **inputs)
        return
    draft.notes.append(outcome.note)
    if outcome.hold:
        draft.hold = True
        draft.notes.append("held for review by the delta rule")
        draft.decide("delta", f"hold {outcome.flag}", **inputs)
    else:
        draft.delta_flag = draft.delta_flag or outcome.flag
        draft.decide("delta", outcome.flag, **inputs)


def _alt_delta(
    result: Result,
    value: Decimal,
    method: Method,
    previous: PreviousResult | None,
    problem: str,
    uln: Decimal | None,
    draft: Draft,
) -> None:
    tiers = method.alt_delta
    if tiers is None:
        return
    when = result.collected_at or result.completed_at
    outcomes = check_alt_tiers(
        tiers, value=value, collected_at=when, previous=previous, uln=uln, units=method.units,
        specimen_id=result.specimen_id,
    )
    held = False
    for outcome in outcomes:
        inputs = dict(outcome.inputs)
        if problem:
            # A previous result in foreign units was withheld from the tiers: say that, not
            # "no previous result".
            inputs["reason"] = problem
        draft.decide(f"alt_delta.{outcome.tier}", outcome.outcome, **inputs)
        if outcome.note:
            draft.notes.append(outcome.note)
        if outcome.flag:
            draft.delta_flag = draft.delta_flag or outcome.flag
        held = held or outcome.hold
    if held:
        draft.hold = True
        draft.notes.append("held for review by the ALT delta rule")


def _hys_law(
    result: Result,
    value: Decimal,
    method: Method,
    uln: Decimal | None,
    related: Sequence[RelatedResult],
    draft: Draft,
) -> None:
    rule = method.hys_law
    if rule is None or not rule.enabled:
        return
    outcome = check_hys_law(
        rule,
        analyte=method.analyte,
        value=value,
        uln=uln,
        collected_at=result.collected_at or result.completed_at,
        related=related,
    )
    if outcome.candidate:
        draft.notes.append(outcome.note)
    inputs = dict(outcome.inputs)
    if outcome.reason:
        inputs["reason"] = outcome.reason
    draft.decide("hys_law", "candidate" if outcome.candidate else "not a candidate", **inputs)


def _text(value: Decimal | None) -> str:
    return "" if value is None else str(value)

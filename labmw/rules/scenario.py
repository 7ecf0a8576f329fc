"""What labmw would do with one made-up result: the engine behind ``labmw rules test`` and the
cases of ``labmw rules check``.

A :class:`Scenario` is written the way a laboratory director thinks of a result: a method, a
value as the analyzer would print it (``61``, ``<5``, ``>700``, ``-----``), sex, age (``45y``,
``6m``, ``12d``), units, status, and optionally the previous result ``VALUE[ UNITS]@TIME`` and
other analytes' results ``ANALYTE=VALUE/ULN[@TIME]`` (for the Hy's-law note). TIME is how long
before this result's collection (``72h``, ``3d``, ``1.5h``) or an ISO date-time.

Nothing is sent or stored: :func:`run_scenario` builds a :class:`~labmw.model.Result` and calls
:func:`~labmw.rules.engine.evaluate`, exactly as the daemon does. Pure: the caller passes ``at``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal

from labmw.errors import RuleError
from labmw.model import AgeBound, Evaluation, Method, PreviousResult, RelatedResult, Result, Suspension
from labmw.rules.age import add_months, parse_age
from labmw.rules.engine import evaluate
from labmw.rules.gates import GatePolicy

# The same value grammar as the ASTM mapping's parse_value (E1394 §10.1.4): an optional comparator
# and a plain decimal number; anything else (``-----``, ``NA``) is not numeric. Repeated here
# because rules may not import mapping (STYLE.md §6 dependency rule).
_VALUE = re.compile(r"\s*(<=|>=|<|>)?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*", re.ASCII)
_AGO = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([hd])\s*", re.ASCII)
_NUMBER_AND_UNITS = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(.*?)\s*", re.ASCII)

#: Specimen IDs of the made-up results (a correction case names the current one as previous).
SPECIMEN = "CASE"
PREVIOUS_SPECIMEN = "PREVIOUS"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One made-up result and its context; see the module docstring for the text forms.

    ``at`` is the collection time of the result. ``sex`` ``""`` and ``age`` ``""`` mean "not sent"
    (incomplete demographics); ``units`` ``""`` means the method's units.
    """

    method: str
    value: str
    at: datetime
    sex: str = ""
    age: str = ""
    units: str = ""
    status: str = "F"
    previous: str = ""
    previous_specimen: str = PREVIOUS_SPECIMEN
    related: tuple[str, ...] = ()
    # Autoverification inputs: the instrument's own flags, the analyzer whose gate policy applies
    # ("" = defaults: every gate holds), a kill switch in force, and the test code when ``method``
    # is "" (a code mapped to no method).
    instrument_flags: tuple[str, ...] = ()
    analyzer: str = ""
    suspended: bool = False
    test_code: str = "UNMAPPED"


def parse_value(text: str) -> tuple[str | None, Decimal | None]:
    """``"<5"`` -> ``("<", Decimal("5"))``; ``"61"`` -> ``(None, Decimal("61"))``; anything not
    a number (``"-----"``) -> ``(None, None)``. Never raises."""
    match = _VALUE.fullmatch(text)
    if match is None:
        return None, None
    return match.group(1), Decimal(match.group(2))


def parse_when(text: str, at: datetime) -> datetime:
    """``72h`` / ``3d`` / ``1.5h`` before ``at``, or an ISO date-time (given a zone only if ``at``
    has one). Raises: :class:`~labmw.errors.RuleError` naming the expected forms."""
    match = _AGO.fullmatch(text)
    if match is not None:
        hours = Decimal(match.group(1)) * (24 if match.group(2) == "d" else 1)
        return at - timedelta(microseconds=int(hours * 3_600_000_000))
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise RuleError(
            f"time {text!r} is not valid: expected hours or days before this result "
            "(72h, 3d) or an ISO date-time (2026-11-20T08:00)"
        ) from None


def parse_previous(text: str, at: datetime, specimen_id: str = PREVIOUS_SPECIMEN) -> PreviousResult:
    """``VALUE[ UNITS]@TIME`` (``48@72h``, ``0.80 ukat/L@2d``) -> a previous result.

    Raises: :class:`~labmw.errors.RuleError` naming the expected form.
    """
    value_text, sep, when = text.rpartition("@")
    match = _NUMBER_AND_UNITS.fullmatch(value_text)
    if not sep or match is None:
        raise RuleError(
            f"previous result {text!r} is not valid: expected VALUE@TIME, e.g. 48@72h, "
            "48@2026-11-20T08:00 or '0.80 ukat/L@3d'"
        )
    return PreviousResult(value=Decimal(match.group(1)), collected_at=parse_when(when, at),
                          specimen_id=specimen_id, units=match.group(2))


def parse_related(text: str, at: datetime) -> RelatedResult:
    """``ANALYTE=VALUE/ULN[@TIME]`` (``TBIL=45/21@2h``) -> a related result; TIME defaults to
    ``at``. Raises: :class:`~labmw.errors.RuleError` naming the expected form."""
    head, sep, when = text.partition("@")
    analyte, eq, numbers = head.partition("=")
    value_text, slash, uln_text = numbers.partition("/")
    value, uln = parse_value(value_text)[1], parse_value(uln_text)[1]
    if not eq or not slash or not analyte.strip() or value is None or uln is None or uln <= 0:
        raise RuleError(
            f"related result {text!r} is not valid: expected ANALYTE=VALUE/ULN[@TIME], "
            "e.g. TBIL=45/21@2h (ULN above 0)"
        )
    collected = parse_when(when, at) if sep else at
    return RelatedResult(analyte=analyte.strip(), value=value, uln=uln, collected_at=collected)


def birth_date_for(age: AgeBound, at: date) -> date:
    """A birth date that makes the patient exactly ``age`` old (completed units) on ``at``."""
    if age.unit == "d":
        return at - timedelta(days=age.amount)
    return add_months(at, -age.amount * (12 if age.unit == "y" else 1))


def run_scenario(methods: Mapping[str, Method], scenario: Scenario, *,
                 policy: GatePolicy | None = None, rules_version: str = "") -> Evaluation:
    """Evaluate the scenario's result against its method from ``methods`` (the configuration).

    Output: the :class:`~labmw.model.Evaluation` the daemon would produce.
    Raises: :class:`~labmw.errors.RuleError` for an unknown method, a bad age, previous or
    related text, or a misconfigured method.
    """
    method = methods.get(scenario.method)
    policy = policy if policy is not None else GatePolicy()
    if scenario.suspended:
        policy = replace(policy, suspensions=(
            *policy.suspensions, Suspension(id=0, analyzer="", reason="suspended in this scenario")))
    if method is None and not scenario.method:
        # A test code mapped to no method: only the gates judge it.
        result = Result(analyzer=scenario.analyzer or "rules-test", test_code=scenario.test_code,
                        raw_value=scenario.value, value=parse_value(scenario.value)[1],
                        comparator=parse_value(scenario.value)[0], units=scenario.units,
                        status=scenario.status, instrument_flags=scenario.instrument_flags,
                        collected_at=scenario.at, specimen_id=SPECIMEN, patient_id="TEST", sex=scenario.sex)
        return evaluate(result, None, policy=policy, rules_version=rules_version)
    if method is None:
        known = ", ".join(sorted(methods)) or "none"
        raise RuleError(f"unknown method {scenario.method!r} (configured: {known})")
    comparator, value = parse_value(scenario.value)
    birth = birth_date_for(parse_age(scenario.age), scenario.at.date()) if scenario.age else None
    previous = (
        parse_previous(scenario.previous, scenario.at, scenario.previous_specimen)
        if scenario.previous else None
    )
    related = tuple(parse_related(r, scenario.at) for r in scenario.related)
    result = Result(
        analyzer=scenario.analyzer or "rules-test", test_code=method.name,
        instrument_flags=scenario.instrument_flags, raw_value=scenario.value, value=value,
        comparator=comparator, units=scenario.units, status=scenario.status,
        collected_at=scenario.at, specimen_id=SPECIMEN, patient_id="TEST", birth_date=birth,
        sex=scenario.sex,
    )
    return evaluate(result, method, previous=previous, related=related, policy=policy,
                    rules_version=rules_version)


def describe(evaluation: Evaluation) -> list[str]:
    """The evaluation as lines for people: flags, hold, applied range, notes, every decision."""
    lines = [
        f"method: {evaluation.method or 'none'}",
        f"flags: {' '.join(evaluation.flags) or 'none'}",
        f"hold: {'yes' if evaluation.hold else 'no'}"
        + (f" (gates: {', '.join(evaluation.gates)})" if evaluation.gates else ""),
        f"applied range: {evaluation.applied_range or 'none'}",
        "notes:" if evaluation.notes else "notes: none",
        *(f"  {note}" for note in evaluation.notes),
        *([f"for the reviewer: {note}" for note in evaluation.review_notes]),
        *([f"rules version: {evaluation.rules_version}"] if evaluation.rules_version else []),
        "reasons:",
    ]
    for d in evaluation.decisions:
        inputs = ", ".join(f"{k}={v}" for k, v in d.inputs.items() if v != "")
        lines.append(f"  {d.rule}: {d.outcome}" + (f" ({inputs})" if inputs else ""))
    return lines


def as_json(evaluation: Evaluation) -> dict[str, object]:
    """The evaluation as a JSON-ready dict (flags, hold, applied_range, notes, decisions)."""
    return {
        "method": evaluation.method,
        "flags": list(evaluation.flags),
        "hold": evaluation.hold,
        "gates": list(evaluation.gates),
        "flagged_gates": list(evaluation.flagged_gates),
        "review_notes": list(evaluation.review_notes),
        "rules_version": evaluation.rules_version,
        "applied_range": evaluation.applied_range,
        "notes": list(evaluation.notes),
        "decisions": [
            {"rule": d.rule, "outcome": d.outcome, "inputs": dict(d.inputs)}
            for d in evaluation.decisions
        ],
    }

"""``labmw rules check``: a file of expected outcomes run against the current configuration.

CLINICAL.md item 21 and §4.1 (Jin 2021: 6 % of 833 rules failed verification): rule sets are
versioned artifacts with an automated regression suite, at least one positive and one negative
case per rule. A cases file is TOML::

    at = "2026-01-15T08:00"      # optional: collection time of every case (default: now)

    [[cases]]
    name = "ALT-P5P adult man 61 U/L is above Ceriotti's 59"
    method = "ALT-P5P"
    value = "61"                 # as the analyzer prints it: 61, <5, >700, -----
    sex = "M"                    # optional: M, F, U; absent = not sent
    age = "45y"                  # optional: 45y, 6m, 12d; absent = no birth date
    units = "ukat/L"             # optional: absent = the method's units
    status = "F"                 # optional: F (default), C, P, ...
    previous = "48@72h"          # optional: VALUE[ UNITS]@TIME (72h/3d before, or ISO)
    previous_specimen = "CASE"   # optional: "CASE" makes the previous the same specimen
    related = ["TBIL=45/21@2h"]  # optional: ANALYTE=VALUE/ULN[@TIME] for the Hy's-law note
    flags = ["H"]                # expected, exactly (in table-0078 order)
    hold = false                 # expected
    range = "9-59"               # optional: the expected OBX-7 text
    notes = ["1.0 x ULN 59"]     # optional: each must be part of some note
    absent_notes = ["decision"]  # optional: none may be part of any note
    decisions = { reference_range = "H" }  # optional: rule -> outcome that must be recorded

Coverage is derived from what the cases actually did, never from what they claim: every
decision maps to a rule id (:func:`rule_outcomes`) and counts as positive (the rule fired) or
negative (judged, did not fire). :func:`method_rules` lists the rules a method has in force.
Pure: the caller reads the file and passes the parsed document and ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from labmw.errors import RuleError
from labmw.model import Evaluation, Method, QcGate
from labmw.rules.alt_tiers import TIERS
from labmw.rules.gates import GATE_NAMES, GatePolicy
from labmw.rules.grading import describe_threshold
from labmw.rules.qc_gate import QC_EXPIRED, QC_FAILED
from labmw.rules.ranges import DISABLED, describe_partition
from labmw.rules.scenario import PREVIOUS_SPECIMEN, Scenario, run_scenario

_CASE_KEYS = frozenset({
    "name", "method", "value", "sex", "age", "units", "status", "previous", "previous_specimen",
    "related", "at", "flags", "hold", "range", "notes", "absent_notes", "decisions",
    "instrument_flags", "analyzer", "suspended", "test_code", "gates", "without_ranges", "qc",
})
#: What a case may say of the QC state of its analyzer x method (``qc = "QC_FAILED"``; none: no QC applies).
_QC_STATES = ("ok", QC_FAILED, QC_EXPIRED)
# Decisions whose outcome means "judged, did not fire"; "skipped" and gates count as neither.
_NEGATIVE = frozenset({"inside", "not critical", "not fired", "not graded", "not above",
                       "not a candidate"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One expected outcome: a scenario and what must come out of it."""

    name: str
    scenario: Scenario
    flags: tuple[str, ...]
    hold: bool
    applied_range: str | None = None
    notes: tuple[str, ...] = ()
    absent_notes: tuple[str, ...] = ()
    decisions: Mapping[str, str] = field(default_factory=dict)
    gates: tuple[str, ...] | None = None  # expected holding gates, exactly (None: not checked)
    # Range ids (``labmw range list``) left out for this case only: what a gap in the ranges does.
    without_ranges: tuple[int, ...] = ()
    # The QC state of the result's analyzer x method ("" when no control material applies).
    qc: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    """A case, what the engine produced, and every way the two differ (empty when it passed)."""

    case: Case
    evaluation: Evaluation
    mismatches: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckReport:
    """All case results plus coverage: ``gaps`` names each rule lacking a positive or negative."""

    results: tuple[CaseResult, ...]
    rules: int
    gaps: tuple[str, ...]

    @property
    def failed(self) -> tuple[CaseResult, ...]:
        """The cases whose outcome differs from what they expect."""
        return tuple(r for r in self.results if r.mismatches)

    def ok(self, *, require_coverage: bool) -> bool:
        """True when no case failed (and, if required, every rule has both kinds of case)."""
        return not self.failed and not (require_coverage and self.gaps)

    def lines(self) -> list[str]:
        """The report as lines for people: one per case, then totals and coverage."""
        out = [
            f"{'FAIL' if r.mismatches else 'ok  '}  {r.case.name}"
            + (f": {'; '.join(r.mismatches)}" if r.mismatches else "")
            for r in self.results
        ]
        passed = len(self.results) - len(self.failed)
        out.append(f"{len(self.results)} cases: {passed} passed, {len(self.failed)} failed")
        if self.gaps:
            out.append(f"coverage: {len(self.gaps)} gaps in {self.rules} rules:")
            out.extend(f"  {gap}" for gap in self.gaps)
        else:
            out.append(f"coverage: each of {self.rules} rules has a positive and a negative case")
        return out


def load_cases(doc: Mapping[str, Any], *, now: datetime) -> tuple[Case, ...]:
    """Read a parsed cases document (see the module docstring).

    ``now`` is the collection time of cases when the file sets no ``at``.
    Raises: :class:`~labmw.errors.RuleError` naming the key (``cases[3].flags``) and what is
    expected, for a missing or mistyped key, an unknown key or an empty file.
    """
    for key in doc:
        if key not in ("at", "cases"):
            raise RuleError(f"{key}: unknown key (expected at or [[cases]])")
    default_at = _time(doc, "at", now, "at")
    raw = doc.get("cases")
    if not isinstance(raw, list) or not raw:
        raise RuleError("cases: expected at least one [[cases]] table")
    return tuple(_case(f"cases[{i}]", item, default_at) for i, item in enumerate(raw))


def check_cases(methods: Mapping[str, Method], cases: Sequence[Case], *,
                policies: Mapping[str, GatePolicy] | None = None,
                default_policy: GatePolicy | None = None) -> CheckReport:
    """Run every case against ``methods`` and measure rule coverage.

    Coverage covers the methods the cases use: for each rule of :func:`method_rules`, at least one
    case in which it fired and one in which it was judged and did not fire.
    Raises: :class:`~labmw.errors.RuleError` when a case names an unknown method or carries
    unreadable inputs (the message names the case).
    """
    results = []
    seen: dict[tuple[str, str], set[bool]] = {}
    for case in cases:
        try:
            analyzer = case.scenario.analyzer
            if analyzer and analyzer not in (policies or {}):
                raise RuleError(f"unknown analyzer {analyzer!r}")
            policy = (policies or {})[analyzer] if analyzer else default_policy
            case_methods = methods
            if case.without_ranges and case.scenario.method in methods:
                method = methods[case.scenario.method]
                kept = tuple(r for i, r in enumerate(method.ranges) if i not in case.without_ranges)
                case_methods = {**methods, method.name: replace(method, ranges=kept)}
            if case.qc:
                base = policy or GatePolicy()
                qc_state = QcGate(analyzer=analyzer or "case", method=case.scenario.method or "", state=case.qc,
                                  run_id=1, rules=("1-3s",) if case.qc == QC_FAILED else ())
                policy = replace(base, extra={**base.extra, "qc": qc_state})
            evaluation = run_scenario(case_methods, case.scenario, policy=policy)
        except RuleError as exc:
            raise RuleError(f"case {case.name!r}: {exc}") from None
        results.append(CaseResult(case=case, evaluation=evaluation,
                                  mismatches=_mismatches(case, evaluation)))
        for rule, fired in rule_outcomes(evaluation):
            # Gates are one rule set for all methods: covered once, whichever method showed them.
            scope = "*" if rule.startswith("gate.") else case.scenario.method
            seen.setdefault((scope, rule), set()).add(fired)
    used = dict.fromkeys(c.scenario.method for c in cases if c.scenario.method)
    gaps = []
    total = 0
    for gate in GATE_NAMES:
        total += 1
        kinds = seen.get(("*", f"gate.{gate}"), set())
        missing = [k for k, fired in (("positive", True), ("negative", False)) if fired not in kinds]
        if missing:
            gaps.append(f"gate {gate}: no {' and no '.join(missing)} case")
    for name in used:
        for rule in method_rules(methods[name]):
            total += 1
            kinds = seen.get((name, rule), set())
            missing = [k for k, fired in (("positive", True), ("negative", False))
                       if fired not in kinds]
            if missing:
                gaps.append(f"{name} {rule}: no {' and no '.join(missing)} case")
    return CheckReport(results=tuple(results), rules=total, gaps=tuple(gaps))


def method_rules(method: Method) -> tuple[str, ...]:
    """The rule ids a method has in force: each applied range row, critical limits, measuring
    range, simple delta, each enabled ALT tier, grading, each enabled threshold, Hy's law."""
    rules = [f"reference_range {describe_partition(r)}" for r in method.ranges
             if r.status != DISABLED]
    if method.critical_low is not None or method.critical_high is not None:
        rules.append("critical")
    if method.measuring_low is not None or method.measuring_high is not None:
        rules.append("measuring_range")
    if method.delta is not None:
        rules.append("delta")
    if method.alt_delta is not None:
        tiers = (method.alt_delta.significant_change, method.alt_delta.implausible_fall,
                 method.alt_delta.abrupt_rise)
        rules += [f"alt_delta.{n}" for n, t in zip(TIERS, tiers, strict=True) if t and t.enabled]
    if method.grading is not None:
        rules.append("grading")
    rules += [f"threshold {describe_threshold(t)}" for t in method.thresholds if t.enabled]
    if method.hys_law is not None and method.hys_law.enabled:
        rules.append("hys_law")
    return tuple(dict.fromkeys(rules))


def rule_outcomes(evaluation: Evaluation) -> list[tuple[str, bool]]:
    """Each decision as (rule id, fired); decisions that judged nothing (skipped, gates) omitted."""
    out = []
    for d in evaluation.decisions:
        rule = d.rule
        if rule.startswith("gate."):
            out.append((rule, d.outcome != "pass"))
            continue
        if rule == "reference_range":
            partition = d.inputs.get("partition", "")
            if not partition or partition.startswith("widest of"):
                continue  # a synthetic band is not a configured rule
            rule = f"reference_range {partition}"
        elif rule == "threshold":
            rule = f"threshold {d.inputs.get('threshold', '')}"
        elif rule not in ("critical", "measuring_range", "delta", "grading", "hys_law") and not (
            rule.startswith("alt_delta.")
        ):
            continue
        if d.outcome in _NEGATIVE:
            out.append((rule, False))
        elif d.outcome not in ("skipped", "no range"):
            out.append((rule, True))
    return out


def _mismatches(case: Case, evaluation: Evaluation) -> tuple[str, ...]:
    found = []
    if evaluation.flags != case.flags:
        found.append(f"flags: expected {_flags(case.flags)}, got {_flags(evaluation.flags)}")
    if evaluation.hold != case.hold:
        found.append(f"hold: expected {_yes(case.hold)}, got {_yes(evaluation.hold)}")
    if case.applied_range is not None and evaluation.applied_range != case.applied_range:
        expected, got = case.applied_range or "none", evaluation.applied_range or "none"
        found.append(f"range: expected {expected}, got {got}")
    for text in case.notes:
        if not any(text in note for note in evaluation.notes):
            found.append(f"notes: none contains {text!r}")
    for text in case.absent_notes:
        if any(text in note for note in evaluation.notes):
            found.append(f"notes: one contains {text!r}, expected none to")
    if case.gates is not None and evaluation.gates != case.gates:
        found.append(f"gates: expected {_flags(case.gates)}, got {_flags(evaluation.gates)}")
    for rule, outcome in case.decisions.items():
        outcomes = [d.outcome for d in evaluation.decisions if d.rule == rule]
        if outcome not in outcomes:
            found.append(f"decision {rule}: expected {outcome!r}, got {', '.join(outcomes) or 'none'}")
    return tuple(found)


def _case(key: str, item: Any, default_at: datetime) -> Case:
    if not isinstance(item, Mapping):
        raise RuleError(f"{key}: expected a table")
    for name in item:
        if name not in _CASE_KEYS:
            expected = ", ".join(sorted(_CASE_KEYS))
            raise RuleError(f"{key}.{name}: unknown key (expected one of {expected})")
    flags: Any = item.get("flags")  # checked just below
    hold = item.get("hold")
    if not _strings(flags):
        raise RuleError(f"{key}.flags: required, expected a list of flags ([] for none)")
    if not isinstance(hold, bool):
        raise RuleError(f"{key}.hold: required, expected true or false")
    related, decisions = item.get("related", []), item.get("decisions", {})
    notes, absent = item.get("notes", []), item.get("absent_notes", [])
    if not _strings(related):
        raise RuleError(f"{key}.related: expected a list of ANALYTE=VALUE/ULN[@TIME] texts")
    for name, texts in (("notes", notes), ("absent_notes", absent)):
        if not _strings(texts):
            raise RuleError(f"{key}.{name}: expected a list of texts")
    if not isinstance(decisions, Mapping) or not all(
        isinstance(v, str) for v in decisions.values()
    ):
        raise RuleError(f"{key}.decisions: expected a table of rule = \"outcome\"")
    scenario = Scenario(
        method=_text(item, key, "method", None), value=_text(item, key, "value", None),
        at=_time(item, "at", default_at, f"{key}.at"), sex=_text(item, key, "sex", ""),
        age=_text(item, key, "age", ""), units=_text(item, key, "units", ""),
        status=_text(item, key, "status", "F"), previous=_text(item, key, "previous", ""),
        previous_specimen=_text(item, key, "previous_specimen", PREVIOUS_SPECIMEN),
        related=tuple(related),
        instrument_flags=tuple(_list(item, key, "instrument_flags")),
        analyzer=_text(item, key, "analyzer", ""),
        suspended=_flag(item, key, "suspended"),
        test_code=_text(item, key, "test_code", "UNMAPPED"),
    )
    gates = item.get("gates")
    if gates is not None and not _strings(gates):
        raise RuleError(f"{key}.gates: expected a list of gate names ([] for none)")
    range_text = item.get("range")
    if range_text is not None and not isinstance(range_text, str):
        raise RuleError(f"{key}.range: expected the OBX-7 text, e.g. \"9-59\" (\"\" for none)")
    return Case(name=_text(item, key, "name", key), scenario=scenario, flags=tuple(flags),
                hold=hold, applied_range=range_text, notes=tuple(notes), absent_notes=tuple(absent),
                decisions=dict(decisions), gates=tuple(gates) if gates is not None else None,
                without_ranges=tuple(_ids(item, key)), qc=_qc_state(item, key))


def _qc_state(item: Mapping[str, Any], key: str) -> str:
    state = _text(item, key, "qc", "")
    if state and state not in _QC_STATES:
        raise RuleError(f"{key}.qc: expected one of {', '.join(_QC_STATES)}, got {state!r}")
    return state


def _ids(item: Mapping[str, Any], key: str) -> list[int]:
    value = item.get("without_ranges", [])
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RuleError(f"{key}.without_ranges: expected a list of range ids, e.g. [4]")
    return list(value)


def _list(item: Mapping[str, Any], key: str, name: str) -> list[str]:
    value = item.get(name, [])
    if not _strings(value):
        raise RuleError(f"{key}.{name}: expected a list of texts")
    return list(value)


def _flag(item: Mapping[str, Any], key: str, name: str) -> bool:
    value = item.get(name, False)
    if not isinstance(value, bool):
        raise RuleError(f"{key}.{name}: expected true or false")
    return value


def _text(item: Mapping[str, Any], key: str, name: str, default: str | None) -> str:
    value = item.get(name, default)
    if value is None:
        raise RuleError(f"{key}.{name}: required, expected a string")
    if not isinstance(value, str):
        raise RuleError(f"{key}.{name}: expected a string, got {value!r}")
    return value


def _time(item: Mapping[str, Any], name: str, default: datetime, key: str) -> datetime:
    value = item.get(name)
    if value is None:
        return default
    if isinstance(value, datetime):  # a TOML local date-time
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise RuleError(f"{key}: expected an ISO date-time such as 2026-01-15T08:00") from None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _flags(flags: Sequence[str]) -> str:
    return " ".join(flags) or "none"


def _yes(value: bool) -> str:
    return "hold" if value else "no hold"

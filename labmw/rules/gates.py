"""Autoverification gates: the named rules a result must pass before it is released unseen.

CLINICAL.md §4.2 (rule order) and "Defaults and rules for our developers" items 1, 3, 14, 15, 20,
21; CLSI AUTO10/AUTO15; CAP GEN.43875-43893. A result is autoverified only when every gate passed;
anything the rules cannot judge is held for a person, with the gate's name as the reason.

Each gate is one entry of :data:`GATES`: a name, the stage of the engine at which it is judged and a
pure check. A check returns ``None`` when the gate does not apply to the result (nothing to judge),
:data:`PASS` when it was judged and passed, or a :class:`Fired` saying why it fired. The engine
(:func:`run_stage`) records every gate's outcome as a decision ``gate.NAME`` and, for a fired gate,
applies its action:

- ``hold`` (the default for every gate): the result waits for ``labmw review release``; the reason
  is a note for the reviewer, never sent to the LIS;
- ``flag``: the result is released with a clinician-worded NTE (from the configuration's reviewed
  texts) instead of being held. A lab chooses this per method or per analyzer; it is audited like
  any configuration change.

Another gate (e.g. QC) is added with ONE entry in :data:`GATES`; its inputs travel in
:attr:`GatePolicy.extra` (a mapping the caller fills, e.g. ``{"qc": ...}``).

Pure: stdlib, ``labmw.model`` and other ``labmw.rules`` modules only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labmw.model import Method, QcGate, Result, Suspension
from labmw.rules.draft import Draft
from labmw.rules.qc_gate import QC_EXPIRED, QC_FAILED, qc_inputs, qc_reason
from labmw.rules.ranges import PENDING_REVIEW, RangeSelection
from labmw.rules.units import Converted

HOLD = "hold"
FLAG = "flag"
#: What a lab may set a gate to (``autoverify.gates`` of a method or an analyzer).
GATE_ACTIONS: tuple[str, ...] = (HOLD, FLAG)
#: What an instrument flag may do (``labmw analyzer flag set NAME FLAG --action ...``).
FLAG_ACTIONS: tuple[str, ...] = ("hold", "flag", "ignore")
#: What an analyzer does with a test code mapped to no method (``--unmapped``).
UNMAPPED_ACTIONS: tuple[str, ...] = ("hold", "forward")

#: HL7 table 0078 codes an instrument may send that need no table entry (CLINICAL.md §4.4): the
#: range and scale flags labmw itself understands. Anything else (``E``, ``Samp.S``) holds unless the
#: analyzer's flag table names it.
TABLE_0078_KNOWN: frozenset[str] = frozenset(
    {"", "L", "H", "LL", "HH", "<", ">", "N", "A", "AA", "U", "D", "B", "W"}
)

#: Result statuses that may be autoverified as final (OBX-11 / ASTM R-9): final and corrected.
FINAL_STATUSES: tuple[str, ...] = ("F", "C")

# Stages of the engine at which gates are judged.
INTAKE = "intake"  # before the value is read: who sent it, which method, flags, status
VALUE = "value"  # the value itself: units, measuring range, plausibility
RANGE = "range"  # the reference range chosen for the patient


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagRule:
    """One row of an analyzer's instrument-flag table."""

    action: str  # hold, flag or ignore
    comment: str = ""  # why the lab chose this (shown in review and audit, never sent)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatePolicy:
    """How the gates behave for one result: the analyzer's settings and the current state.

    ``actions`` are the analyzer's gate actions (gate name -> hold|flag); a method's own
    ``gates`` override them. ``unmapped`` is hold|forward for test codes with no method; ``flags``
    the analyzer's instrument-flag table; ``suspensions`` the active kill switches (read from the
    store at judgement time); ``texts`` the reviewed clinician NTE texts per gate; ``extra`` inputs
    of gates added later (QC state, ...).
    """

    actions: Mapping[str, str] = field(default_factory=dict)
    unmapped: str = HOLD
    flags: Mapping[str, FlagRule] = field(default_factory=dict)
    suspensions: tuple[Suspension, ...] = ()
    texts: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class GateContext:
    """What the checks may read: the result, its method, the policy, and what earlier stages found."""

    result: Result
    method: Method | None
    policy: GatePolicy
    converted: Converted | None = None
    selection: RangeSelection | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Fired:
    """A gate that fired: why (for the reviewer), its inputs, and whether checking stops here."""

    reason: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    stops: bool = False  # nothing after it can be judged (no method, no number, unknown units)
    action: str | None = None  # forced action (a flag table row, an unmapped code), else configured


#: The outcome of a gate that was judged and passed.
PASS = Fired(reason="")

Check = Callable[[GateContext], Fired | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    name: str
    stage: str
    check: Check
    configurable: bool = True  # False: always holds (the kill switch)


# --- the checks ----------------------------------------------------------------------------------
def _suspended(ctx: GateContext) -> Fired | None:
    method = ctx.method.name if ctx.method is not None else None
    hits = [s for s in ctx.policy.suspensions if s.covers(ctx.result.analyzer, method)]
    if not hits:
        return PASS
    return Fired(reason="; ".join(s.describe() for s in hits),
                 inputs={"suspensions": ",".join(str(s.id) for s in hits)}, action=HOLD)


def _method_unknown(ctx: GateContext) -> Fired | None:
    if ctx.method is not None:
        return PASS
    forward = ctx.policy.unmapped == "forward"
    return Fired(
        reason=f"test code {ctx.result.test_code} is mapped to no method: its rules cannot be applied",
        inputs={"test_code": ctx.result.test_code, "analyzer": ctx.result.analyzer,
                "unmapped": ctx.policy.unmapped},
        stops=True, action="forward" if forward else HOLD)


def _instrument_flag(ctx: GateContext) -> Fired | None:
    fired: list[str] = []
    flagged: list[str] = []
    for raw in ctx.result.instrument_flags:
        flag = raw.strip()
        rule = ctx.policy.flags.get(flag)
        if rule is not None:
            if rule.action == "hold":
                fired.append(flag)
            elif rule.action == "flag":
                flagged.append(flag)
        elif flag not in TABLE_0078_KNOWN:
            fired.append(flag)
    if not fired and not flagged:
        return PASS
    names = fired or flagged
    return Fired(reason=f"instrument flag {', '.join(names)} "
                        + ("is not in the analyzer's flag table" if any(
                            f not in ctx.policy.flags for f in names) else "holds per the flag table"),
                 inputs={"flags": ",".join(ctx.result.instrument_flags)},
                 action=HOLD if fired else FLAG)


def _status(ctx: GateContext) -> Fired | None:
    status = ctx.result.status.strip().upper() or "F"
    if status in FINAL_STATUSES:
        return PASS
    return Fired(reason=f"result status {status} is not final: never autoverified as final",
                 inputs={"status": status}, stops=True)


def _qc_check(state: str) -> Check:
    def check(ctx: GateContext) -> Fired | None:
        gate = ctx.policy.extra.get("qc")
        if not isinstance(gate, QcGate):
            return None  # no control material applies to this analyzer x method
        reason = qc_reason(gate, state)
        if reason is None:
            return PASS
        return Fired(reason=reason, inputs=qc_inputs(gate), action=HOLD)
    return check


def _unit_unknown(ctx: GateContext) -> Fired | None:
    method, result = ctx.method, ctx.result
    if method is None or result.value is None:
        return None
    if ctx.converted is not None:
        return PASS
    units = result.units.strip() or method.units
    return Fired(reason=f"units {units} cannot be converted to {method.units}",
                 inputs={"units": units, "method_units": method.units}, stops=True)


def _needs_dilution(ctx: GateContext) -> Fired | None:
    method, result, converted = ctx.method, ctx.result, ctx.converted
    if method is None or converted is None or method.measuring_high is None:
        return None
    high, value, comparator = method.measuring_high, converted.value, result.comparator or ""
    above = value >= high if comparator in (">", ">=") else value > high
    if comparator in ("<", "<="):
        above = False
    if not above:
        return PASS
    return Fired(reason=f"{result.raw_value.strip()} is above the measuring range (to {high}): "
                        "rerun with dilution; never released as a raw above-range number",
                 inputs={"value": result.raw_value, "measuring_high": str(high)})


def _absurd(ctx: GateContext) -> Fired | None:
    method, result = ctx.method, ctx.result
    if method is None:
        return None
    if result.value is None:
        return Fired(reason=f"value {result.raw_value.strip() or '(empty)'} is not numeric",
                     inputs={"value": result.raw_value}, stops=True)
    if ctx.converted is None:
        return None
    value = ctx.converted.value
    low, high = method.absurd_low, method.absurd_high
    comparator = result.comparator or ""
    if low is not None and value <= low and comparator not in (">", ">="):
        return Fired(reason=f"value {result.raw_value.strip()} is at or below the absurd limit {low}",
                     inputs={"value": result.raw_value, "absurd_low": str(low)}, stops=True)
    if high is not None and value > high and comparator not in ("<", "<="):
        return Fired(reason=f"value {result.raw_value.strip()} is above the absurd limit {high}",
                     inputs={"value": result.raw_value, "absurd_high": str(high)}, stops=True)
    return PASS


def _demog_incomplete(ctx: GateContext) -> Fired | None:
    selection = ctx.selection
    if selection is None:
        return None
    if not selection.incomplete_demographics:
        return PASS
    return Fired(reason=f"incomplete demographics: {selection.reason}",
                 inputs={"partition": selection.partition, "age": selection.age})


def _no_range(ctx: GateContext) -> Fired | None:
    selection = ctx.selection
    if selection is None:
        return None
    if selection.rule is not None:
        return PASS
    return Fired(reason=selection.reason, inputs={"age": selection.age})


def _range_unapproved(ctx: GateContext) -> Fired | None:
    selection, method = ctx.selection, ctx.method
    if selection is None or method is None:
        return None
    if method.status == PENDING_REVIEW:
        return Fired(reason=f"method {method.name} is pending laboratory review",
                     inputs={"method_status": method.status})
    if selection.rule is None:
        return None
    if selection.rule.status != PENDING_REVIEW:
        return PASS
    return Fired(reason=f"reference range {selection.applied_range} ({selection.partition}) is pending "
                        "laboratory review (labmw range approve)",
                 inputs={"range": selection.applied_range, "partition": selection.partition})


#: The gates in CLINICAL.md §4.2 order (the kill switch first: it stops autoverification of all).
#: QC gates (§4.2 step 3) go right after INSTRUMENT_FLAG.
GATES: tuple[Gate, ...] = (
    Gate(name="AUTOVERIFY_SUSPENDED", stage=INTAKE, check=_suspended, configurable=False),
    Gate(name="METHOD_UNKNOWN", stage=INTAKE, check=_method_unknown),
    Gate(name="INSTRUMENT_FLAG", stage=INTAKE, check=_instrument_flag),
    # QC (CAP GEN.43878): never "flag" — a failed or expired control run always blocks autoverification.
    Gate(name=QC_FAILED, stage=INTAKE, check=_qc_check(QC_FAILED), configurable=False),
    Gate(name=QC_EXPIRED, stage=INTAKE, check=_qc_check(QC_EXPIRED), configurable=False),
    Gate(name="RESULT_STATUS", stage=INTAKE, check=_status),
    Gate(name="UNIT_UNKNOWN", stage=VALUE, check=_unit_unknown),
    Gate(name="NEEDS_DILUTION", stage=VALUE, check=_needs_dilution),
    Gate(name="ABSURD", stage=VALUE, check=_absurd),
    Gate(name="DEMOG_INCOMPLETE", stage=RANGE, check=_demog_incomplete),
    Gate(name="NO_RANGE", stage=RANGE, check=_no_range),
    Gate(name="RANGE_UNAPPROVED", stage=RANGE, check=_range_unapproved),
)
GATE_NAMES: tuple[str, ...] = tuple(g.name for g in GATES)

#: Clinician-worded NTE texts used when a lab sets a gate to ``flag`` and the configuration has no
#: reviewed text of its own (``[autoverify.texts]``; the shipped configuration carries them).
DEFAULT_TEXTS: Mapping[str, str] = {
    "METHOD_UNKNOWN": "Result not checked against reference limits by the laboratory middleware.",
    "INSTRUMENT_FLAG": "The analyzer flagged this measurement; interpret with caution.",
    "RESULT_STATUS": "Preliminary result; a final result will follow.",
    "UNIT_UNKNOWN": "Result not checked against reference limits (units not recognised).",
    "NEEDS_DILUTION": "Result above the measuring range of the method.",
    "ABSURD": "Result outside the plausible range; interpret with caution.",
    "DEMOG_INCOMPLETE": "Patient sex or age unknown: the widest reference interval was applied.",
    "NO_RANGE": "No reference interval is established for this patient's age and sex.",
    "RANGE_UNAPPROVED": "Reference interval not yet verified by the laboratory.",
}


def action_for(gate: Gate, fired: Fired, method: Method | None, policy: GatePolicy) -> str:
    """The action of a fired gate: forced by the check, else the method's, else the analyzer's, else hold."""
    if fired.action is not None or not gate.configurable:
        return fired.action or HOLD
    own = dict(method.gates) if method is not None else {}
    if gate.name in own:
        return own[gate.name]
    return policy.actions.get(gate.name, HOLD)


def run_stage(stage: str, ctx: GateContext, draft: Draft) -> bool:
    """Judge every gate of ``stage``; record each outcome; returns False when checking must stop."""
    go_on = True
    for gate in GATES:
        if gate.stage != stage:
            continue
        fired = gate.check(ctx)
        if fired is None:
            continue
        if fired is PASS or not fired.reason:
            draft.decide(f"gate.{gate.name}", "pass")
            continue
        action = action_for(gate, fired, ctx.method, ctx.policy)
        draft.decide(f"gate.{gate.name}", action, reason=fired.reason, **dict(fired.inputs))
        if action == HOLD:
            draft.hold = True
            draft.gates.append(gate.name)
            draft.review_notes.append(f"{gate.name}: {fired.reason}")
        elif action in (FLAG, "forward"):
            draft.flagged_gates.append(gate.name)
            text = ctx.policy.texts.get(gate.name) or DEFAULT_TEXTS.get(gate.name, "")
            if text and text not in draft.notes:
                draft.notes.append(text)
        # "forward" (an unmapped code the lab does not want judged) goes out with the same NTE as a flag.
        if fired.stops:
            go_on = False
            break
    return go_on


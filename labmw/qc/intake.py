"""The pipeline's QC step: control results are stored, audited and judged, never forwarded.

Called inside the pipeline's transaction (so a control run and the patient results after it in
the same message commit together, and the gate reads what the run wrote):

* :func:`split_controls` separates a message's control results from its patient results;
* :func:`store_controls` judges the controls, one run per analyzer x method of the message, and
  holds any control that matches no material as ``QC_UNKNOWN_MATERIAL``;
* :func:`qc_gate` is the QC state the rules engine gates a patient result on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from labmw.config import AnalyzerSettings, Settings
from labmw.model import Decision, Evaluation, QcGate, Result
from labmw.qc.recognize import Recognition, recognise
from labmw.qc.settings import ControlMaterial
from labmw.rules.qc_gate import QC_EXPIRED, QC_FAILED, QC_OK, QC_UNKNOWN_MATERIAL
from labmw.rules.westgard import Observation, judge, z_score
from labmw.store import Tx

#: How many earlier accepted observations the across-run rules look at (10x needs nine).
HISTORY = 20
#: Reasons a run is rejected besides the Westgard rules (fail closed: a control that cannot be judged).
LOT_EXPIRED = "lot-expired"
NOT_NUMERIC = "not-numeric"

Control = tuple[Result, Recognition]


def split_controls(settings: Settings, analyzer: AnalyzerSettings,
                   results: Sequence[Result]) -> tuple[list[Result], list[Control]]:
    """(patient results, control results with why they are controls), each in message order."""
    patients: list[Result] = []
    controls: list[Control] = []
    for result in results:
        recognition = recognise(result, analyzer.map.get(result.test_code), settings.qc)
        if recognition is None:
            patients.append(result)
        else:
            controls.append((result, recognition))
    return patients, controls


def store_controls(tx: Tx, settings: Settings, analyzer: AnalyzerSettings, message_id: int,
                   controls: Sequence[Control]) -> int:
    """Store, audit and judge ``controls``; returns how many were held (no material)."""
    runs: dict[str, list[tuple[Result, ControlMaterial, str]]] = {}
    held = 0
    for result, recognition in controls:
        who = {"analyzer": analyzer.name, "specimen": result.specimen_id}
        tx.audit("qc_result_received", **who, ref=str(message_id),
                 data={"message_id": message_id, "test_code": result.test_code, "raw_value": result.raw_value,
                       "units": result.units, "reason": recognition.reason,
                       "material": recognition.material.name if recognition.material else None})
        if recognition.material is None:
            _hold_unknown(tx, analyzer, message_id, result, recognition)
            held += 1
            continue
        runs.setdefault(recognition.material.method, []).append((result, recognition.material, recognition.reason))
    for method, members in runs.items():
        _judge_run(tx, settings, analyzer, message_id, method, members)
    return held


def qc_gate(tx: Tx, settings: Settings, analyzer: str, method: str | None) -> QcGate | None:
    """The QC state of ``analyzer`` x ``method`` now; ``None`` when no control material applies to it."""
    if method is None or not settings.qc.materials_for(analyzer, method):
        return None
    interval = settings.qc.interval_hours
    latest, accepted = tx.qc.latest(analyzer=analyzer, method=method)
    return gate_state(analyzer, method, latest_id=latest.id if latest else 0,
                      latest_accepted=latest.accepted if latest else False,
                      latest_rules=latest.violated if latest else (),
                      accepted_at=accepted.received_at if accepted else "", interval_hours=interval, now=tx.now)


def gate_state(analyzer: str, method: str, *, latest_id: int, latest_accepted: bool, latest_rules: tuple[str, ...],
               accepted_at: str, interval_hours: Decimal, now: datetime) -> QcGate:
    """The gate from the latest run and the latest accepted run (shared with `labmw status`)."""
    if latest_id and not latest_accepted:
        state, rules = QC_FAILED, latest_rules
    elif not accepted_at or datetime.fromisoformat(accepted_at) + timedelta(hours=float(interval_hours)) < now:
        state, rules = QC_EXPIRED, ()
    else:
        state, rules = QC_OK, ()
    return QcGate(analyzer=analyzer, method=method, state=state, run_id=latest_id, rules=rules,
                  last_accepted_at=accepted_at, interval_hours=interval_hours)


def _judge_run(tx: Tx, settings: Settings, analyzer: AnalyzerSettings, message_id: int, method: str,
               members: Sequence[tuple[Result, ControlMaterial, str]]) -> None:
    extra: list[str] = []
    observations: list[Observation] = []
    scored: list[tuple[Result, ControlMaterial, Decimal | None]] = []
    today = tx.now.date()
    for result, material, _ in members:
        z = None
        if result.value is None or result.comparator:
            extra.append(NOT_NUMERIC)
        else:
            z = z_score(result.value, material.mean, material.sd)
            observations.append(Observation(level=material.level, z=z))
        if material.expires is not None and material.expires < today:
            extra.append(LOT_EXPIRED)
        scored.append((result, material, z))
    history = [Observation(level=level, z=z) for level, z in tx.qc.history(analyzer=analyzer.name, method=method,
                                                                            limit=HISTORY)]
    rules = settings.qc.rules_for(method)
    violated: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    if observations:
        judgement = judge(observations, history, rules=rules)
        violated, warnings = judgement.violated, judgement.warnings
    violated = (*violated, *dict.fromkeys(extra))
    run_id = tx.qc.add_run(message_id=message_id, analyzer=analyzer.name, method=method, violated=violated,
                           warnings=warnings)
    for result, material, z in scored:
        tx.qc.add_result(run_id=run_id, material=material.name, level=material.level, lot=material.lot,
                         specimen=result.specimen_id, test_code=result.test_code, raw_value=result.raw_value,
                         value=result.value, units=result.units, mean=material.mean, sd=material.sd, z=z,
                         completed_at=result.completed_at)
    tx.audit("qc_run_judged", analyzer=analyzer.name, ref=str(run_id),
             data={"run_id": run_id, "message_id": message_id, "method": method,
                   "status": "rejected" if violated else "accepted", "rules_violated": list(violated),
                   "warnings": list(warnings), "rules_applied": list(rules),
                   "results": [{"material": m.name, "level": m.level, "lot": m.lot, "value": r.raw_value,
                                "mean": str(m.mean), "sd": str(m.sd), "z": None if z is None else str(z)}
                               for r, m, z in scored]})


def _hold_unknown(tx: Tx, analyzer: AnalyzerSettings, message_id: int, result: Result,
                  recognition: Recognition) -> None:
    method = analyzer.map.get(result.test_code)
    note = (f"{QC_UNKNOWN_MATERIAL}: a QC result ({recognition.reason}) that matches no control material of "
            f"{analyzer.name} {method or result.test_code}; never sent to the LIS")
    # The gate is named like every other hold (review list); the reason is for the reviewer only.
    evaluation = Evaluation(method=method, hold=True, notes=(note,), gates=(QC_UNKNOWN_MATERIAL,),
                            review_notes=(note,),
                            decisions=(Decision(rule="qc", outcome=QC_UNKNOWN_MATERIAL,
                                                inputs={"reason": recognition.reason, "test_code": result.test_code,
                                                        "specimen": result.specimen_id}),))
    result_id = tx.add_result(message_id=message_id, result=result, evaluation=evaluation, state="held")
    tx.qc.mark_control(result_id)
    tx.audit("result_held", analyzer=analyzer.name, specimen=result.specimen_id, patient=result.patient_id,
             ref=str(result_id), data={"notes": [note], "qc": True})

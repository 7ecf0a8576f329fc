"""What a failed QC run touches: the patient results released before it (to re-run) and those it holds.

`labmw qc impact` and the review workstation's QC page both call :func:`run_impact`, so the lists agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labmw.rules.qc_gate import QC_FAILED
from labmw.store import Store
from labmw.store.qc import QcRun

GATE_DECISION = f"gate.{QC_FAILED}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Impact:
    run: QcRun
    released: list[dict[str, Any]]  # released between the last accepted run and this one
    held: list[dict[str, Any]]  # held now because this run was rejected (QC_FAILED naming this run)

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run.as_dict(), "results": self.released, "held": self.held}


def run_impact(store: Store, run_id: int) -> Impact:
    """The impact of QC run ``run_id``; StoreError when there is no such run."""
    run = store.qc.run(run_id)
    released = store.qc.impact(run_id)
    held = []
    for h in store.held_results():
        if QC_FAILED not in h.gates or (h.analyzer, h.method) != (run.analyzer, run.method):
            continue
        evaluation = store.browse.evaluation(h.id, h.specimen) or {}
        runs = {str((d.get("inputs") or {}).get("run", "")) for d in evaluation.get("decisions", [])
                if isinstance(d, dict) and d.get("rule") == GATE_DECISION}
        if str(run_id) in runs:
            held.append({"result_id": h.id, "received_at": h.held_at, "specimen": h.specimen, "patient": h.patient,
                         "test_code": h.test_code, "value": h.value, "units": h.units, "state": "held"})
    return Impact(run=run, released=released, held=held)

"""The QC gate of a patient result (CLINICAL.md §4.2 step 3 and item 17; CAP GEN.43878).

After a rejected control run, patient results of that analyzer x method are held (``QC_FAILED``)
until a run is accepted; with no accepted run within the configured interval they are held as
``QC_EXPIRED``. The gate only holds: the other rules still run, so the reviewer sees the flags.

Pure: stdlib and ``labmw.model`` only.
"""

from __future__ import annotations

from labmw.model import QcGate
from labmw.rules.draft import Draft

QC_OK = "ok"
QC_FAILED = "QC_FAILED"
QC_EXPIRED = "QC_EXPIRED"
QC_UNKNOWN_MATERIAL = "QC_UNKNOWN_MATERIAL"


def check_qc(gate: QcGate | None, draft: Draft) -> None:
    """Record the QC state of the result's analyzer x method; hold unless it is ``ok``.

    ``None``: no control material is configured for this analyzer x method, so no gate applies.
    """
    if gate is None:
        return
    inputs = {"analyzer": gate.analyzer, "method": gate.method, "run": str(gate.run_id),
              "rules": ",".join(gate.rules), "last_accepted_at": gate.last_accepted_at,
              "interval_hours": str(gate.interval_hours)}
    if gate.state == QC_OK:
        draft.decide("qc", "accepted", **inputs)
        return
    draft.hold = True
    if gate.state == QC_FAILED:
        draft.notes.append(f"{QC_FAILED}: QC run {gate.run_id} of {gate.analyzer} {gate.method} was rejected "
                           f"({', '.join(gate.rules)}); held until a QC run is accepted")
    else:
        since = f"last accepted {gate.last_accepted_at}" if gate.last_accepted_at else "no accepted run yet"
        draft.notes.append(f"{QC_EXPIRED}: no accepted QC run of {gate.analyzer} {gate.method} within "
                           f"{gate.interval_hours} h ({since}); held until a QC run is accepted")
    draft.decide("qc", gate.state, **inputs)

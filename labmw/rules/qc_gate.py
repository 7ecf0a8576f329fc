"""The QC gate of a patient result (CLINICAL.md §4.2 step 3 and item 17; CAP GEN.43878).

After a rejected control run, patient results of that analyzer x method are held (``QC_FAILED``)
until a run is accepted; with no accepted run within the configured interval they are held as
``QC_EXPIRED``. The gate only holds: the other rules still run, so the reviewer sees the flags.

Pure: stdlib and ``labmw.model`` only.
"""

from __future__ import annotations

from labmw.model import QcGate

QC_OK = "ok"
QC_FAILED = "QC_FAILED"
QC_EXPIRED = "QC_EXPIRED"
QC_UNKNOWN_MATERIAL = "QC_UNKNOWN_MATERIAL"


def qc_reason(gate: QcGate | None, state: str) -> str | None:
    """Why ``gate`` holds a patient result in ``state`` (QC_FAILED or QC_EXPIRED); None when it does not.

    ``None`` gate: no control material is configured for this analyzer x method, so no gate applies.
    """
    if gate is None or gate.state != state:
        return None
    if state == QC_FAILED:
        return (f"QC run {gate.run_id} of {gate.analyzer} {gate.method} was rejected "
                f"({', '.join(gate.rules)}); held until a QC run is accepted")
    since = f"last accepted {gate.last_accepted_at}" if gate.last_accepted_at else "no accepted run yet"
    return (f"no accepted QC run of {gate.analyzer} {gate.method} within {gate.interval_hours} h ({since}); "
            "held until a QC run is accepted")


def qc_inputs(gate: QcGate) -> dict[str, str]:
    """The QC state a gate decision records in the audit trail."""
    return {"analyzer": gate.analyzer, "method": gate.method, "run": str(gate.run_id), "qc_state": gate.state,
            "rules": ",".join(gate.rules), "last_accepted_at": gate.last_accepted_at or "",
            "interval_hours": str(gate.interval_hours)}

"""Which results are controls, and which control material each one is (CLINICAL.md §4.2 step 3).

A result is a control when any of these holds, checked in this order (the first gives the reason):

1. the instrument marked the specimen (``Result.specimen_role == "Q"``: ASTM O-12 action code or
   H-12 processing ID ``Q``, HL7 SPM-11 ``Q``/``C``);
2. its specimen ID is one a material of this analyzer lists (``specimen_ids``);
3. one of the analyzer's ``[qc.analyzers.NAME] patterns`` matches (instruments that mark QC elsewhere).

Its material is the one of the result's method and this analyzer that lists the specimen ID, else
the one whose lot number is the specimen ID; none is ``None`` (held QC_UNKNOWN_MATERIAL upstream).

Pure: no store, no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from labmw.model import Result
from labmw.qc.settings import ControlMaterial, QcSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class Recognition:
    """Why a result is a control (``reason``) and its material (``None`` when none matches)."""

    reason: str
    material: ControlMaterial | None


def control_reason(result: Result, qc: QcSettings) -> str:
    """Why ``result`` is a control, or ``""`` for a patient result."""
    if result.specimen_role.strip().upper() == "Q":
        return "the instrument marked the specimen as a control (O-12/H-12 or SPM-11)"
    specimen = result.specimen_id.strip()
    if specimen and any(specimen in m.specimen_ids for m in qc.materials.values() if m.applies_to(result.analyzer)):
        return f"specimen ID {specimen} is listed by a control material"
    for pattern in qc.patterns.get(result.analyzer, ()):
        if pattern.regex.search(_field(result, pattern.field)):
            return f"analyzer QC pattern {pattern} matched"
    return ""


def recognise(result: Result, method: str | None, qc: QcSettings) -> Recognition | None:
    """``None`` for a patient result; else why it is a control and which material it is."""
    reason = control_reason(result, qc)
    if not reason:
        return None
    return Recognition(reason=reason, material=find_material(result, method, qc))


def find_material(result: Result, method: str | None, qc: QcSettings) -> ControlMaterial | None:
    if method is None:
        return None
    candidates = qc.materials_for(result.analyzer, method)
    specimen = result.specimen_id.strip()
    for material in candidates:
        if specimen and specimen in material.specimen_ids:
            return material
    for material in candidates:
        if specimen and specimen.casefold() == material.lot.casefold():
            return material
    return None


def _field(result: Result, name: str) -> str:
    return {"specimen": result.specimen_id, "order_code": result.order_code, "test_code": result.test_code,
            "patient": result.patient_id}.get(name, "")

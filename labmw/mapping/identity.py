"""Result identity and value shape, kept as the instrument sent them (issue 13, PRODUCT.md guarantee 3).

Three things are decided here, for ASTM and HL7 alike, and nowhere else:

* the full test identifier (all R-3 components from the configured one on; HL7 OBX-3 as sent),
  so results an instrument tells apart (GeneXpert ``rpoB1^Ct`` / ``rpoB1^EndPt``, ARCHITECT
  final / interpretation / RLU under one assay number) reach the LIS apart;
* which HL7 data type carries a value so that its text and component boundaries survive
  (``^24.7`` is SN, ``NOT DETECTED^`` is ST ``NOT DETECTED``, ``POS^12.5`` is CWE);
* the named holds a message can force on its own results, before any rule runs:
  ``NO_SPECIMEN_ID``, ``TEST_CODE_MISSING``, ``IDENTITY_COLLISION`` and ``NOT_PRODUCTION`` (an
  ASTM message whose H-12 says quality control, training or debugging: QC results never reach
  the LIS as patient results). A result labmw cannot
  identify is held for a person, never acknowledged and dropped (fail closed).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal

from labmw.model import Decision, Evaluation, Result

__all__ = [
    "GATES",
    "IDENTITY_COLLISION",
    "NOT_PRODUCTION",
    "NO_SPECIMEN_ID",
    "TEST_CODE_MISSING",
    "apply_gates",
    "astm_value",
    "join_id",
    "mark_gates",
]

NO_SPECIMEN_ID = "NO_SPECIMEN_ID"
TEST_CODE_MISSING = "TEST_CODE_MISSING"
IDENTITY_COLLISION = "IDENTITY_COLLISION"
NOT_PRODUCTION = "NOT_PRODUCTION"
GATES = {
    NOT_PRODUCTION: "the message's processing ID (ASTM H-12) is Q (quality control), T (training) or D "
                    "(debugging): not a patient result, never forwarded as one",
    NO_SPECIMEN_ID: "no specimen ID where this analyzer's profile says it is; the LIS could not file it",
    TEST_CODE_MISSING: "no test code in the configured R-3 component (check test_code_component)",
    IDENTITY_COLLISION: "another result of this message has the same specimen and test identity; "
                        "the LIS could not tell them apart",
}

_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*", re.ASCII)
_COMPARATORS = ("<=", ">=", "<>", "<", ">", "=")


def join_id(parts: Sequence[str]) -> str:
    """Components joined by ``^``, trailing empty ones dropped (they are insignificant in both standards)."""
    items = [p.strip() for p in parts]
    while items and not items[-1]:
        items.pop()
    return "^".join(items)


def astm_value(parts: Sequence[str]) -> tuple[str, tuple[str, ...], str | None, Decimal | None]:
    """The HL7 shape of an ASTM R-4 that has components: ``(type, parts, comparator, number)``.

    Trailing empty components are dropped first. One part left: ``""`` (the caller's usual
    NM/ST/SN choice applies to it). ``[comparator]^number`` is SN and gets its number (``^24.7``
    -> SN ``^24.7``, value 24.7). Anything else is CWE with the components as sent. Never raises.
    """
    items = list(parts)
    while items and not items[-1].strip():
        items.pop()
    if len(items) <= 1:
        return "", tuple(items), None, None
    if len(items) == 2 and items[0].strip() in ("", *_COMPARATORS) and _NUMBER.fullmatch(items[1]):
        comparator = items[0].strip()
        return ("SN", tuple(items), comparator if comparator in ("<", ">", "<=", ">=") else None,
                Decimal(items[1].strip()) if comparator in ("", "=", "<", ">", "<=", ">=") else None)
    return "CWE", tuple(items), None, None


def mark_gates(results: Sequence[Result], *, processing_id: str = "P") -> tuple[Result, ...]:
    """Each result with the named holds its message forces on it (``Result.gates``).

    ``processing_id``: the message's (ASTM H-12 component 1); Q, T and D hold every result.

    An identity is specimen + full test identifier + HL7 sub-ID; every result sharing one with
    another result of the same message is held (which one is the right one is for a person to say).
    """
    keys = Counter((r.specimen_id, r.identity, r.sub_id) for r in results if r.test_code and r.specimen_id)
    marked = []
    for result in results:
        gates = list(result.gates)
        if processing_id[:1].upper() in ("Q", "T", "D") and NOT_PRODUCTION not in gates:
            gates.append(NOT_PRODUCTION)
        if not result.specimen_id and NO_SPECIMEN_ID not in gates:
            gates.append(NO_SPECIMEN_ID)
        if not result.test_code and TEST_CODE_MISSING not in gates:
            gates.append(TEST_CODE_MISSING)
        if (result.test_code and result.specimen_id
                and keys[(result.specimen_id, result.identity, result.sub_id)] > 1):
            gates.append(IDENTITY_COLLISION)
        marked.append(replace(result, gates=tuple(gates)) if gates != list(result.gates) else result)
    return tuple(marked)


def apply_gates(result: Result, evaluation: Evaluation) -> Evaluation:
    """``evaluation`` held, with one reviewer note and one decision per gate of ``result`` (unchanged when none).

    The gates join the autoverification gates (``Evaluation.gates``, named in ``review list``); their
    reasons are for the reviewer only (``review_notes``), never sent to the LIS.
    """
    if not result.gates:
        return evaluation
    reasons = tuple(f"{gate}: {GATES.get(gate, 'held')}; held for review" for gate in result.gates)
    decisions = tuple(Decision(rule=f"gate.{gate}", outcome="hold",
                               inputs={"specimen": result.specimen_id, "test": result.identity})
                      for gate in result.gates)
    return replace(evaluation, hold=True, gates=(*evaluation.gates, *result.gates),
                   review_notes=(*evaluation.review_notes, *reasons),
                   decisions=(*evaluation.decisions, *decisions))

"""The Hy's-law candidate note (CLINICAL.md §2.3 and "Defaults" item 7).

FDA DILI guidance (2009): a Hy's-law case has ALT or AST >= 3 x ULN, total bilirubin > 2 x ULN
and no initial cholestasis (ALP not > 2 x ULN). labmw can only see the laboratory part, so it
writes a *candidate* note, research/pharmacovigilance output and never a diagnosis, a flag or a
critical call. The multiples, the window (24 h) and which analytes count as aminotransferase,
bilirubin and ALP are configuration (``[methods.NAME.hys_law]``).

The daemon hands in the patient's recent results of other analytes as
:class:`~labmw.model.RelatedResult` (value, the ULN applied to it, collection time); this module
decides. Pure: stdlib and ``labmw.model`` / ``labmw.errors`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from labmw.errors import RuleError
from labmw.model import HysLawRule, RelatedResult


@dataclass(frozen=True, slots=True, kw_only=True)
class HysLawOutcome:
    """``candidate`` with the NTE ``note``, or not with a ``reason``; ``inputs`` for the audit."""

    candidate: bool
    note: str = ""
    reason: str = ""
    inputs: dict[str, str] = field(default_factory=dict)


def validate_hys_law(rule: HysLawRule) -> None:
    """Raise :class:`~labmw.errors.RuleError` unless every multiple and the window are positive
    and every analyte list is non-empty."""
    for name in ("aminotransferase_uln", "bilirubin_uln", "alp_uln", "window_hours"):
        number: Decimal = getattr(rule, name)
        if not number.is_finite() or number <= 0:
            raise RuleError(f"hys_law {name} {number} is not valid: expected a positive number")
    for name in ("aminotransferases", "bilirubin", "alkaline_phosphatase"):
        if not getattr(rule, name):
            raise RuleError(f"hys_law {name}: expected at least one analyte name")


def check_hys_law(
    rule: HysLawRule,
    *,
    analyte: str,
    value: Decimal,
    uln: Decimal | None,
    collected_at: datetime | None,
    related: Sequence[RelatedResult],
) -> HysLawOutcome:
    """Whether this result, with the patient's ``related`` results, makes a Hy's-law candidate.

    Inputs: the rule; this result's analyte, value and applied ULN (``None``: no range applied)
    and collection time; the patient's other recent results. A related result counts when it was
    collected within ``window_hours`` of this one (either side) and its ULN is positive.
    Candidate when: an aminotransferase (this result or a related one) >= aminotransferase_uln x
    ULN; some bilirubin > bilirubin_uln x ULN; at least one ALP and every ALP <= alp_uln x ULN.
    Output: a :class:`HysLawOutcome`. Raises: :class:`~labmw.errors.RuleError` for a bad rule.
    """
    validate_hys_law(rule)
    if collected_at is None:
        return HysLawOutcome(candidate=False, reason="no collection time")
    window = timedelta(microseconds=int(rule.window_hours * 3_600_000_000))
    near = [
        r for r in related
        if r.uln > 0 and _comparable(r.collected_at, collected_at)
        and abs(r.collected_at - collected_at) <= window
    ]
    key = analyte.strip().upper()
    own = (
        [RelatedResult(analyte=key, value=value, uln=uln, collected_at=collected_at)]
        if uln is not None and uln > 0 and key in _names(rule.aminotransferases)
        else []
    )
    transaminases = _of(own + near, rule.aminotransferases)
    bilirubins = _of(near, rule.bilirubin)
    alps = _of(near, rule.alkaline_phosphatase)
    inputs = {"window_hours": str(rule.window_hours), "related": str(len(near))}

    high_at = [r for r in transaminases if r.value >= rule.aminotransferase_uln * r.uln]
    high_bili = [r for r in bilirubins if r.value > rule.bilirubin_uln * r.uln]
    cholestatic = [r for r in alps if r.value > rule.alp_uln * r.uln]
    missing = _first_missing(rule, high_at, high_bili, alps, cholestatic)
    if missing:
        return HysLawOutcome(candidate=False, reason=missing, inputs={**inputs, "reason": missing})
    parts = [_part(high_at[0]), _part(high_bili[0]), *(_part(r) for r in alps)]
    note = (
        f"Hy's-law candidate (FDA DILI guidance 2009): {', '.join(parts)} within "
        f"{rule.window_hours} h; laboratory criteria only, not a diagnosis"
    )
    return HysLawOutcome(candidate=True, note=note, inputs={**inputs, "criteria": ", ".join(parts)})


def _first_missing(
    rule: HysLawRule,
    high_at: list[RelatedResult],
    high_bili: list[RelatedResult],
    alps: list[RelatedResult],
    cholestatic: list[RelatedResult],
) -> str:
    """Which criterion is not met, in words; ``""`` when all are."""
    hours = f"within {rule.window_hours} h"
    if not high_at:
        return f"no aminotransferase >= {rule.aminotransferase_uln} x ULN {hours}"
    if not high_bili:
        return f"no bilirubin > {rule.bilirubin_uln} x ULN {hours}"
    if not alps:
        return f"no ALP result {hours}"
    if cholestatic:
        return f"ALP > {rule.alp_uln} x ULN {hours} (cholestatic pattern)"
    return ""


def _part(r: RelatedResult) -> str:
    return f"{r.analyte} {r.value} = {r.value / r.uln:.1f} x ULN {r.uln}"


def _of(results: list[RelatedResult], names: tuple[str, ...]) -> list[RelatedResult]:
    """The results whose analyte is one of ``names`` (case and blanks ignored)."""
    wanted = _names(names)
    return [r for r in results if r.analyte.strip().upper() in wanted]


def _names(names: tuple[str, ...]) -> set[str]:
    return {n.strip().upper() for n in names}


def _comparable(a: datetime, b: datetime) -> bool:
    return (a.tzinfo is None) == (b.tzinfo is None)

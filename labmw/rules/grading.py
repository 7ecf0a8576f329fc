"""Severity by multiples of the applied upper limit, and decision thresholds beside the ranges.

Grading (CLINICAL.md §2.1 and item 6): the multiple of the upper reference limit that was applied
to *this* result (method, sex, age) and, when the method configures a scale, its grade: CTCAE v5.0
"Alanine aminotransferase increased" grades 1-4 start above 1, 3, 5 and 20 x ULN. The boundaries
are configuration (``[methods.NAME.grading] above_uln``), never constants here, and the scheme's
name (with its version: v3.0 used 2.5 x ULN) travels in the note.

Decision thresholds (CLINICAL.md item 5): ACG, Prati, Valenti, SAFETY limits are not reference
intervals; an enabled one adds a note when the value is above it, never a flag.

Pure: stdlib and ``labmw.model`` / ``labmw.errors`` / ``labmw.rules`` only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal

from labmw.errors import RuleError
from labmw.model import DecisionThreshold, Grading
from labmw.rules.age import AgeAt, describe_band, matches


@dataclass(frozen=True, slots=True, kw_only=True)
class Grade:
    """The multiple of the ULN and its grade (``grade`` 0: not above grade 1's boundary)."""

    multiple: Decimal
    grade: int
    above: Decimal | None  # the lower boundary (x ULN) of the grade, None for grade 0


def validate_grading(grading: Grading) -> None:
    """Raise :class:`~labmw.errors.RuleError` unless the boundaries are positive and increasing."""
    bounds = grading.above_uln
    if not bounds:
        raise RuleError(f"grading {grading.scheme}: expected at least one boundary in above_uln")
    if any(not b.is_finite() or b <= 0 for b in bounds):
        raise RuleError(
            f"grading {grading.scheme}: expected positive boundaries, got {_list(bounds)}"
        )
    if any(b >= c for b, c in itertools.pairwise(bounds)):
        raise RuleError(
            f"grading {grading.scheme}: expected increasing boundaries, got {_list(bounds)}"
        )


def grade(value: Decimal, uln: Decimal, grading: Grading) -> Grade:
    """Grade ``value`` against the applied upper limit ``uln``.

    Output: the exact multiple ``value / uln`` and the highest grade n with multiple >
    ``above_uln[n-1]`` (boundaries are exclusive: CTCAE grade 2 is "> 3.0 - 5.0 x ULN", so exactly
    3.0 x ULN is grade 1). Raises: :class:`~labmw.errors.RuleError` for ``uln <= 0`` or a bad scale.
    """
    validate_grading(grading)
    if uln <= 0:
        raise RuleError(f"grading needs a positive upper limit, got {uln}")
    multiple = value / uln
    level = sum(1 for bound in grading.above_uln if multiple > bound)
    return Grade(
        multiple=multiple, grade=level, above=grading.above_uln[level - 1] if level else None
    )


def uln_note(value: Decimal, uln: Decimal, grading: Grading | None) -> str:
    """The NTE text for a result above its upper limit.

    ``"1.4 x ULN 59"``; with a scale ``"3.0 x ULN 59: CTCAE v5.0 grade 2 (> 3 x ULN)"``, the
    boundary shown because the multiple is rounded to one place and could hide which side it is on.
    Raises: :class:`~labmw.errors.RuleError` as :func:`grade`.
    """
    text = f"{value / uln:.1f} x ULN {uln}"
    if grading is None:
        return text
    graded = grade(value, uln, grading)
    if graded.grade == 0:
        return f"{text}: {grading.scheme} not graded (not > {grading.above_uln[0]} x ULN)"
    return f"{text}: {grading.scheme} grade {graded.grade} (> {graded.above} x ULN)"


def threshold_applies(threshold: DecisionThreshold, sex: str | None, age: AgeAt | None) -> bool:
    """Whether a threshold's partition covers this patient; unknown data never matches a
    threshold that needs it (a decision limit is only quoted when it certainly applies)."""
    wanted = (threshold.sex or "").strip().upper()
    if wanted and wanted != sex:
        return False
    if threshold.age_min is None and threshold.age_max is None:
        return True
    return age is not None and matches(threshold, age)


def describe_threshold(threshold: DecisionThreshold) -> str:
    """``ACG 2017 33 (M 18y+)``: name, limit and partition, for notes and decisions."""
    sex = (threshold.sex or "").strip().upper() or "any sex"
    return f"{threshold.name} {threshold.value} ({sex} {describe_band(threshold)})"


def _list(values: tuple[Decimal, ...]) -> str:
    return ", ".join(str(v) for v in values) or "none"

"""Which held results need a second person to release them (a "four-eyes" release).

CLINICAL.md and PRODUCT.md name a second-person approval only for activating a rule set (item 21);
for held results they are silent, so the choice is the laboratory director's, made in ``[review]
second_person`` of the configuration. The names, and the shipped choice (config/labmw.toml,
labmw/data/review.toml, :data:`DEFAULT_SECOND_PERSON`):

- ``QC_FAILED`` (shipped): the result was held because its analyzer x method's last QC run was
  rejected: releasing it overrides the QC gate (CAP GEN.43878: autoverification blocked when QC is
  unacceptable), which a lab documents with two signatures;
- ``CRITICAL`` (opt-in): the result carries LL or HH (at or beyond a critical limit): a second reader
  catches a mis-identified specimen, but waiting for one delays a value a clinician must get at once
  (CLIA 493.1291(g)), so a lab adds it only with the staffing for it.

A name is either ``CRITICAL`` or one of the autoverification gates (:data:`labmw.rules.gates.GATE_NAMES`).

Pure: stdlib and other ``labmw.rules`` modules only.
"""

from __future__ import annotations

from collections.abc import Iterable

from labmw.rules.gates import GATE_NAMES

CRITICAL = "CRITICAL"
CRITICAL_FLAGS = frozenset({"LL", "HH"})
#: What ``[review] second_person`` may name.
SECOND_PERSON_NAMES: tuple[str, ...] = (CRITICAL, *GATE_NAMES)
#: Used when a configuration has no ``[review]`` section: the shipped choice (fail closed).
DEFAULT_SECOND_PERSON: tuple[str, ...] = ("QC_FAILED",)  # CRITICAL is opt-in: it delays a critical value


def second_person_reasons(policy: Iterable[str], *, gates: Iterable[str], flags: Iterable[str]) -> tuple[str, ...]:
    """The names of ``policy`` that apply to a held result with ``gates`` (the gates that held it) and
    ``flags`` (its OBX-8 flags); empty when one person may release it."""
    wanted = tuple(policy)
    held_by = set(gates)
    found = [name for name in wanted if name != CRITICAL and name in held_by]
    if CRITICAL in wanted and CRITICAL_FLAGS & set(flags):
        found.insert(0, CRITICAL)
    return tuple(found)

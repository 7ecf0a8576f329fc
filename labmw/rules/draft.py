"""The evaluation being built while one result is judged (shared by the engine and its follow-ups).

Pure: stdlib and ``labmw.model`` only.
"""

from __future__ import annotations

from labmw.model import Decision, Evaluation


class Draft:
    """Mutable scratch state of one :func:`~labmw.rules.engine.evaluate` call, never shared.

    ``range_flag`` is L, H, LL or HH; ``scale_flag`` < or >; ``delta_flag`` U or D (the first
    delta rule that fires sets it). ``notes`` become NTE segments, ``decisions`` audit entries.
    """

    __slots__ = (
        "decisions",
        "delta_flag",
        "flagged_gates",
        "gates",
        "hold",
        "method",
        "notes",
        "range_flag",
        "review_notes",
        "scale_flag",
    )

    def __init__(self, method: str | None) -> None:
        self.method = method
        self.range_flag = ""
        self.scale_flag = ""
        self.delta_flag = ""
        self.hold = False
        self.notes: list[str] = []
        self.decisions: list[Decision] = []
        # Autoverification gates (labmw.rules.gates): those that held, those set to flag, and the
        # reasons for the reviewer (never sent to the LIS).
        self.gates: list[str] = []
        self.flagged_gates: list[str] = []
        self.review_notes: list[str] = []

    def decide(self, rule: str, outcome: str, **inputs: str) -> None:
        """Record one rule's verdict with its inputs (strings; never patient name or birth date)."""
        self.decisions.append(Decision(rule=rule, outcome=outcome, inputs=dict(inputs)))

    def finish(self, applied_range: str = "", rules_version: str = "") -> Evaluation:
        """The finished :class:`~labmw.model.Evaluation`; ``applied_range`` is the OBX-7 text."""
        # Table 0078 order: reference/critical first, then measuring range, then delta.
        flags = tuple(f for f in (self.range_flag, self.scale_flag, self.delta_flag) if f)
        return Evaluation(
            method=self.method,
            flags=flags,
            applied_range=applied_range,
            notes=tuple(self.notes),
            hold=self.hold,
            decisions=tuple(self.decisions),
            gates=tuple(self.gates),
            flagged_gates=tuple(self.flagged_gates),
            review_notes=tuple(self.review_notes),
            rules_version=rules_version,
        )

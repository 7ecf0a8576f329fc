"""Rows of the benchmark report and their two renderings: a plain-text table and JSON."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any

COLUMNS = ("measurement", "value", "target", "ratio / verdict")


@dataclass
class Row:
    """One line of the report. ``data`` holds the raw numbers behind ``value`` for --json."""

    key: str
    measurement: str
    value: str = ""
    target: str = "-"
    verdict: str = "-"
    data: dict[str, Any] = field(default_factory=dict)

    def fail(self, error: BaseException | str) -> Row:
        """Mark the row as not measured, with the reason in the value column."""
        self.value = f"error: {error}"
        self.verdict = "-"
        self.data["error"] = str(error)
        return self


def verdict(ok: bool, quick: bool) -> str:
    """PASS/FAIL against a target; in --quick mode counts are too small to judge anything."""
    if quick:
        return "not judged (--quick)"
    return "PASS" if ok else "FAIL"


def rate(value: float, unit: str) -> str:
    """A rate as people read it: 1,234/s for large values, 12.3/s for small ones."""
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"


def render(rows: list[Row], header: list[str], notes: list[str]) -> str:
    """The report as text: header lines, the table, then notes."""
    cells = [COLUMNS] + [(r.measurement, r.value, r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = [*header, ""]
    for n, cell in enumerate(cells):
        lines.append(" | ".join(text.ljust(width) for text, width in zip(cell, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("-+-".join("-" * width for width in widths))
    if notes:
        lines.append("")
    for note in notes:
        lines += textwrap.wrap(note, width=120, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(lines)


def to_json(rows: list[Row], header: dict[str, Any], notes: list[str]) -> str:
    return json.dumps({"environment": header, "rows": [asdict(r) for r in rows], "notes": notes}, indent=2)

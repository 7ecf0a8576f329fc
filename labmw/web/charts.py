"""Small inline SVG charts drawn on the server (no JavaScript, no chart library to ship or fetch).

Pure: numbers in, SVG text out. Values are plotted as sent (Decimal parsed to float only for the
pixel position); the reference interval applied to the current result is drawn as a band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from html import escape


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    label: str  # shown on hover (<title>): when and which specimen
    value: Decimal
    current: bool = False


WIDTH, HEIGHT, PAD = 360, 120, 18


def parse_range(applied_range: str) -> tuple[Decimal, Decimal] | None:
    """``9-59`` → (9, 59); None for ``""`` or anything else."""
    low, sep, high = applied_range.partition("-")
    try:
        return (Decimal(low), Decimal(high)) if sep and low and high else None
    except InvalidOperation:
        return None


def history_svg(points: Sequence[Point], band: tuple[Decimal, Decimal] | None = None, *, units: str = "") -> str:
    """A line of the patient's results over time (evenly spaced, oldest left), the current one ringed."""
    if not points:
        return ""
    values = [p.value for p in points] + (list(band) if band else [])
    low, high = min(values), max(values)
    span = (high - low) or Decimal(1)

    def y(v: Decimal) -> float:
        return round(HEIGHT - PAD - float((v - low) / span) * (HEIGHT - 2 * PAD), 1)

    step = (WIDTH - 2 * PAD) / max(len(points) - 1, 1)
    xs = [round(PAD + i * step if len(points) > 1 else WIDTH / 2, 1) for i in range(len(points))]
    parts = [(f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
              f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="previous results">')]
    if band:
        top, bottom = y(band[1]), y(band[0])
        parts.append(f'<rect class="band" x="{PAD}" y="{top}" width="{WIDTH - 2 * PAD}" height="{bottom - top}">'
                     f'<title>reference interval {escape(str(band[0]))}-{escape(str(band[1]))} '
                     f'{escape(units)}</title></rect>')
    if len(points) > 1:
        path = " ".join(f"{x},{y(p.value)}" for x, p in zip(xs, points, strict=True))
        parts.append(f'<polyline class="line" points="{path}"/>')
    for x, p in zip(xs, points, strict=True):
        cls = "point current" if p.current else "point"
        parts.append(f'<circle class="{cls}" cx="{x}" cy="{y(p.value)}" r="{5 if p.current else 3}">'
                     f'<title>{escape(p.label)}: {escape(str(p.value))} {escape(units)}</title></circle>')
    parts.append(f'<text class="axis" x="2" y="{PAD - 6}">{escape(str(high))}</text>'
                 f'<text class="axis" x="2" y="{HEIGHT - 4}">{escape(str(low))}</text></svg>')
    return "".join(parts)

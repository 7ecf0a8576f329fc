"""The Levey-Jennings chart of one analyzer x method (one panel per control level), drawn with matplotlib.

Each panel plots the level's values in run order against the material's mean and its ±1, ±2 and
±3 SD lines; points of rejected runs are marked with a red cross, 1-2s warnings in orange. The Agg
backend draws without a display (a server has none); the file type follows the suffix (.png, .svg).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from labmw.errors import UsageError
from labmw.store.qc import QcRun

FORMATS = (".png", ".svg")


def draw(runs: Sequence[QcRun], *, analyzer: str, method: str, out: Path, level: int | None = None) -> int:
    """Write the chart of ``runs`` to ``out``; returns how many points it plots.

    Raises:
        UsageError: an unsupported file type, no QC results to plot, or the file cannot be written.
    """
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out: expected a file ending in {' or '.join(FORMATS)}, got {out.name!r}")
    try:
        with _LOCK:
            return _draw(runs, analyzer=analyzer, method=method, out=out, level=level)
    except OSError as exc:
        raise UsageError(f"--out: cannot write {out}: {exc.strerror}") from None


def render(runs: Sequence[QcRun], *, analyzer: str, method: str, level: int | None = None,
           fmt: str = "png") -> bytes:
    """The same chart as :func:`draw`, as the bytes of a ``png`` or ``svg`` file (the review workstation).

    Raises:
        UsageError: an unsupported format or no QC results to plot.
    """
    if f".{fmt}" not in FORMATS:
        raise UsageError(f"chart format: expected png or svg, got {fmt!r}")
    buffer = io.BytesIO()
    with _LOCK:
        _draw(runs, analyzer=analyzer, method=method, out=buffer, level=level, fmt=fmt)
    return buffer.getvalue()


# pyplot keeps global state: one chart at a time (the web renders on worker threads).
_LOCK = threading.Lock()


def _draw(runs: Sequence[QcRun], *, analyzer: str, method: str, out: Path | BinaryIO, level: int | None,
          fmt: str | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r.level for run in runs for r in run.results if r.value is not None
                     and (level is None or r.level == level)})
    if not levels:
        what = f"level {level} of " if level is not None else ""
        raise UsageError(f"no QC results of {what}{analyzer} {method} to chart")
    fig, axes = plt.subplots(len(levels), 1, figsize=(11, 4.6 * len(levels)), squeeze=False)
    points = 0
    for ax, lvl in zip(axes[:, 0], levels, strict=True):
        series = [(run, r) for run in runs for r in run.results if r.level == lvl and r.value is not None]
        points += len(series)
        # Target lines of the newest material of the level (a new lot brings new targets).
        mean, sd = float(series[-1][1].mean), float(series[-1][1].sd)
        xs = list(range(1, len(series) + 1))
        ys = [float(r.value) for _, r in series if r.value is not None]
        ax.plot(xs, ys, "-o", color="#1f4e79", markersize=5, linewidth=1, label="control value", zorder=3)
        ax.axhline(mean, color="green", linewidth=1.5, label=f"mean {mean:g}")
        ax.annotate(f"mean {mean:g}", (1.0, mean), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8, color="green")
        for k, style, colour in ((1, ":", "grey"), (2, "--", "orange"), (3, "-", "red")):
            for sign in (1, -1):
                limit = mean + sign * k * sd
                ax.axhline(limit, color=colour, linestyle=style, linewidth=1, label=f"±{k} SD" if sign == 1 else None)
                # The limit's name and value at the right edge, so the chart reads without the legend.
                ax.annotate(f"{'+' if sign > 0 else '-'}{k} SD {limit:g}", (1.0, limit), xycoords=("axes fraction", "data"),
                            xytext=(4, 0), textcoords="offset points", va="center", fontsize=8, color=colour)
        rejected = [(x, y) for x, y, (run, _) in zip(xs, ys, series, strict=True) if not run.accepted]
        warned = [(x, y) for x, y, (run, _) in zip(xs, ys, series, strict=True) if run.accepted and run.warnings]
        if rejected:
            ax.scatter(*zip(*rejected, strict=True), marker="X", s=140, color="red", zorder=4, label="rejected run")
            for (x, y), (run, _) in zip(rejected, [s for s in series if not s[0].accepted], strict=True):
                ax.annotate(",".join(run.violated), (x, y), textcoords="offset points", xytext=(6, 6),
                            fontsize=8, color="red")
        if warned:
            ax.scatter(*zip(*warned, strict=True), marker="o", s=90, facecolors="none", edgecolors="orange",
                       linewidths=2, zorder=4, label="1-2s warning")
        material = series[-1][1]
        ax.set_title(f"{analyzer} · {method} · level {lvl} · lot {material.lot} (mean {mean:g}, SD {sd:g})")
        ax.set_xlabel("QC run (id, received UTC)")
        ax.set_ylabel(material.units or "value")
        if all(abs(y - mean) <= 4 * sd for y in ys):
            ax.set_ylim(mean - 4 * sd, mean + 4 * sd)
        ax.set_xticks(xs, [f"#{run.id}\n{run.received_at[5:16].replace('T', ' ')}" for run, _ in series],
                      fontsize=7)
        ax.grid(True, alpha=0.25)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), fontsize=8, ncol=7, frameon=False)
    fig.suptitle(f"Levey-Jennings chart: {analyzer} {method}")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110, format=fmt)
    finally:
        plt.close(fig)
    return points

"""`labmw.qc.chart.render`: the Levey-Jennings chart of `qc chart` as bytes (the web's QC page)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from labmw.errors import UsageError
from labmw.qc.chart import render
from labmw.store.qc import QcResultRow, QcRun


def _run(run_id: int, value: str, *, status: str = "accepted", level: int = 1) -> QcRun:
    result = QcResultRow(material="ALT-L1", level=level, lot="L1", specimen="QC1", test_code="ALTL",
                         raw_value=value, value=Decimal(value), units="U/L", mean=Decimal(50), sd=Decimal(2),
                         z=(Decimal(value) - 50) / 2, completed_at="")
    return QcRun(id=run_id, message_id=run_id, analyzer="c501", method="ALT-T",
                 received_at=f"2026-11-25T08:{run_id:02d}:00+00:00", status=status,
                 violated=("1-3s",) if status == "rejected" else (), warnings=(), override_reason="",
                 override_actor="", overridden_at="", results=(result,))


def test_png_and_svg_bytes_and_clear_errors() -> None:
    runs = [_run(1, "50"), _run(2, "51"), _run(3, "58", status="rejected")]
    png = render(runs, analyzer="c501", method="ALT-T", level=1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    svg = render(runs, analyzer="c501", method="ALT-T", fmt="svg").decode()
    assert svg.count("<svg") == 1 and "1-3s" in svg, "the rejected run is marked with its rule"
    with pytest.raises(UsageError, match="no QC results of level 2 of c501 ALT-T"):
        render(runs, analyzer="c501", method="ALT-T", level=2)
    with pytest.raises(UsageError, match="expected png or svg"):
        render(runs, analyzer="c501", method="ALT-T", fmt="jpg")

"""The benchmark cannot rot: `python bench/run.py --quick` runs every measurement and prints every row.

It checks that the table is complete and that nothing failed to be measured, never a number: the
performance verdicts belong to a full run on a quiet machine, not to CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = [
    "e2e_1", "e2e_4", "e2e_16", "latency_p50", "latency_p99", "floor_sqlite", "floor_relay_1", "floor_relay_4",
    "floor_relay_16", "rss_idle", "rss_connected", "rss_big_frame", "decode_labmw", "decode_labmw_full",
    "decode_python_astm", "hl7_parse", "hl7_labmw", "wall_time",
]


def test_quick_benchmark_prints_every_row(tmp_path: Path) -> None:
    """`bench/run.py --quick --json FILE` exits 0, prints the table with every row, and writes the same rows."""
    report = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json", str(report)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"a measurement failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    rows = json.loads(report.read_text())["rows"]
    assert [row["key"] for row in rows] == ROWS
    lines = proc.stdout.splitlines()
    assert any(line.startswith("measurement") and "| value" in line and "| target" in line for line in lines)
    for row in rows:
        printed = [line for line in lines if line.startswith(row["measurement"] + " ")]
        assert printed, f"row {row['key']} ({row['measurement']!r}) missing from the table:\n{proc.stdout}"
        assert "error:" not in printed[0], printed[0]
        assert row["value"], f"row {row['key']} has no value"

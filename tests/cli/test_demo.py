"""`labmw demo` runs the real service with a simulated analyzer and LIS and shows the flags."""

from __future__ import annotations

import subprocess
from pathlib import Path

from peers import LABMW


def test_demo_shows_delta_and_alert_flags_and_keeps_its_trail(tmp_path: Path) -> None:
    """The demo prints what the LIS got (H~U delta, holds by gate) and, with --keep, leaves a verifiable trail."""
    out = subprocess.run([*LABMW, "demo", "--keep", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("DEMO-")}
    assert "N~H~U" in lines["DEMO-2"] and "OBX-7 0-41" in lines["DEMO-2"]
    assert "N~H" in lines["DEMO-4"]
    assert "held for review: DEMOG_INCOMPLETE" in lines["DEMO-6"]
    assert "held for review: NEEDS_DILUTION" in lines["DEMO-7"]
    assert "N~<" in lines["DEMO-5"]
    assert "delta U" in out.stdout and "grade 3" in out.stdout
    verify = subprocess.run([*LABMW, "--config", str(tmp_path / "demo.toml"), "audit", "verify"],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr

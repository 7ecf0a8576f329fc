"""Delta checks and review holds end to end: a flag-only delta reaches the LIS as U; a hold waits for
`labmw review release`, which forwards it and is audited with the OS user and the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from peers import MllpLis, alt_message, astm_send, configure, daemon, free_port, labmw, obx8, wait_until


def test_flag_delta_and_hold_then_release(tmp_path: Path) -> None:
    """U is appended after H for a flag delta; a hold delta keeps the result back until released."""
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    labmw(config, "delta", "set", "ALT-T", "--abs", "20", "--pct", "40", "--window-days", "7", "--action", "flag")
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=analyzer_port):
            astm_send(analyzer_port, [
                alt_message(specimen="D1", patient="PD", sex="M", birth="19800101", value="40",
                            collected="20261120080000"),
                alt_message(specimen="D2", patient="PD", sex="M", birth="19800101", value="75",
                            collected="20261122080000"),
            ])
            wait_until(lambda: len(lis.received) >= 2, what="both results at the LIS")
            got = lis.by_specimen()
            assert obx8(got["D1"]) == []
            assert obx8(got["D2"]) == ["H", "U"]
            notes = [str(seg[3]) for seg in got["D2"].segments("NTE")]
            assert any("40" in n for n in notes), f"the NTE names the earlier value: {notes}"

        labmw(config, "delta", "set", "ALT-T", "--abs", "20", "--action", "hold")
        with daemon(config, wait_port=analyzer_port):
            astm_send(analyzer_port, [alt_message(specimen="D3", patient="PD", sex="M", birth="19800101",
                                                  value="300", collected="20261123080000")])
            held = []
            wait_until(lambda: held.extend(json.loads(labmw(config, "review", "list", "--json").stdout)) or held,
                       what="the result to be held")
            assert held[0]["specimen"] == "D3" and held[0]["method"] == "ALT-T" and held[0]["value"] == "300"
            assert {"id", "specimen", "patient", "method", "value", "reason"} <= held[0].keys()
            assert len(lis.received) == 2, "a held result is not forwarded"
            labmw(config, "review", "release", str(held[0]["id"]), "--reason", "confirmed by repeat")
            wait_until(lambda: len(lis.received) >= 3, what="the released result at the LIS")
            assert lis.by_specimen()["D3"] is not None
            assert json.loads(labmw(config, "review", "list", "--json").stdout) == []
    finally:
        lis.stop()
    released = json.loads(labmw(config, "audit", "list", "--event", "result_released", "--json").stdout)
    assert released[0]["specimen"] == "D3" and released[0]["data"]["reason"] == "confirmed by repeat"
    assert released[0]["actor"]
    again = labmw(config, "review", "reject", str(held[0]["id"]), "--reason", "too late", check=False)
    assert again.returncode == 1 and "not held" in again.stderr
    assert labmw(config, "audit", "verify").returncode == 0

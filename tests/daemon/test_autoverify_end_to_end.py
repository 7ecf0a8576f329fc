"""End to end (#11): with the shipped configuration and defaults, everything the rules cannot judge is held
for a person, names its gate, and reaches the LIS only after `review release`; the kill switch works in the
running daemon; the report counts it all. A real ASTM analyzer over TCP, the real daemon, a real MLLP LIS.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from peers import MllpLis, astm_send, daemon, field, free_port, labmw, wait_until


def message(specimen: str, *, value: str, sex: str = "M", birth: str = "19800101", code: str = "ALTL",
            flag: str = "N", comment: str = "") -> list[bytes]:
    """A cobas-style H/P/O/R[/C]/L message with one ALT result (R-7 instrument flag, optional C record)."""
    records = [
        rb"H|\^&|||c501^1|||||host|RSUPL^REAL|P|1",
        f"P|1||PAT-{specimen}||DOE^JANE||{birth}|{sex}".encode(),
        f"O|1|{specimen}|0^5001^1^^S1^SC|^^^{code}|R||20261125080000||||N||||1||||||||||F".encode(),
        f"R|1|^^^{code}|{value}|U/L||{flag}||F||^System||20261125090000|P1".encode(),
    ]
    if comment:
        records.append(f"C|1|I|{comment}|G".encode())
    return [*records, b"L|1|N"]


# Each result the shipped rules cannot judge, and the gate that must hold it (CLINICAL.md 4.2).
HELD = [
    ("H-UNMAPPED", {"value": "30", "code": "XYZ"}, "METHOD_UNKNOWN"),
    ("H-DASHES", {"value": "-----"}, "ABSURD"),
    ("H-25000", {"value": "25000"}, "ABSURD"),
    ("H-ZERO", {"value": "0"}, "ABSURD"),
    ("H-GT700", {"value": ">700"}, "NEEDS_DILUTION"),
    ("H-NODOB", {"value": "30", "birth": ""}, "DEMOG_INCOMPLETE"),
    ("H-GAP", {"value": "20", "birth": "20110601"}, "NO_RANGE"),  # a 15-year-old boy, 13-<18 y range removed
    ("H-SAMPS", {"value": "30", "flag": "Samp.S", "comment": "sample short"}, "INSTRUMENT_FLAG"),
]


def _review(config: Path) -> dict[str, dict[str, object]]:
    return {h["specimen"]: h for h in json.loads(labmw(config, "review", "list", "--json").stdout)}


def _held(tmp_path: Path) -> set[str]:
    """Specimens held right now, read from the database (polling through the CLI would cost a process a try)."""
    db = sqlite3.connect(tmp_path / "data" / "labmw.sqlite3")
    try:
        return {row[0] for row in db.execute("SELECT specimen FROM results WHERE state = 'held'")}
    finally:
        db.close()


def test_what_the_rules_cannot_judge_waits_for_a_person(tmp_path: Path) -> None:
    lis_port, analyzer_port = free_port(), free_port()
    config = tmp_path / "lab.toml"
    labmw(config, "init", "--data-dir", str(tmp_path / "data"))
    labmw(config, "lis", "set", "--connect", f"127.0.0.1:{lis_port}")
    labmw(config, "analyzer", "add", "c501", "--protocol", "astm", "--transport", "tcp-server",
          "--listen", f"127.0.0.1:{analyzer_port}", "--map", "ALTL=ALT-NOP5P")
    version_before = labmw(config, "rules", "version").stdout.strip()
    ranges = json.loads(labmw(config, "range", "list", "ALT-NOP5P", "--json").stdout)
    (boys,) = [r["id"] for r in ranges if r["partition"] == "M 13y to <18y"]
    labmw(config, "range", "remove", "ALT-NOP5P", "--id", str(boys))  # an age gap, as a lab could make one
    assert "warning: ALT-NOP5P: no range for sex M aged 13y to <18y" in labmw(config, "config", "validate").stdout
    version_after = labmw(config, "rules", "version").stdout.strip()
    assert version_after != version_before
    changed = json.loads(labmw(config, "audit", "list", "--event", "rules_version_changed", "--json").stdout)
    assert changed[-1]["data"]["before"] != changed[-1]["data"]["after"] == version_after

    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=analyzer_port, log=tmp_path / "daemon.log"):
            messages = [message("OK-30", value="30")] + [message(s, **kw) for s, kw, _ in HELD]
            astm_send(analyzer_port, messages)
            wait_until(lambda: len(_held(tmp_path)) == len(HELD), what="every unjudgeable result held")
            wait_until(lambda: len(lis.received) >= 1, what="the judgeable result delivered at once")
            (ok,) = lis.received
            assert field(ok, "OBX", 5) == "30" and field(ok, "OBX", 8) == "N", "no range flag for 30 U/L"
            assert field(ok, "OBX", 7) == "0-41"

            held = _review(config)
            for specimen, _, gate in HELD:
                assert gate in held[specimen]["gates"], (specimen, held[specimen])
                assert gate in str(held[specimen]["reason"]), "the reason names the gate"
                assert held[specimen]["held_since"]
            shown = json.loads(labmw(config, "review", "show", str(held["H-SAMPS"]["id"]), "--json").stdout)
            assert "Samp.S" in shown["raw"] and "instrument comment: sample short" in shown["notes"]
            assert any(d["rule"] == "gate.INSTRUMENT_FLAG" and d["outcome"] == "hold" for d in shown["decisions"])
            assert shown["rules_version"] == version_after

            for specimen, _, _ in HELD:
                labmw(config, "review", "release", str(held[specimen]["id"]), "--reason", "checked by a person")
            wait_until(lambda: len(lis.received) == 1 + len(HELD), what="released results delivered")
            samps = next(m for m in lis.received if "Samp.S" in field(m, "OBX", 8))
            notes = [str(seg[3]) for seg in samps.segments("NTE")]
            assert any("sample short" in n for n in notes), "the instrument's comment is forwarded as NTE"
            for m in lis.received:
                text = str(m)
                assert "released by" not in text and "METHOD_UNKNOWN" not in text, "reviewer notes stay out"

            # The kill switch: the running daemon holds the very next result, and resume releases the one after.
            labmw(config, "autoverify", "suspend", "--reason", "reagent lot under investigation")
            astm_send(analyzer_port, [message("SUSP-1", value="30")])
            wait_until(lambda: "SUSP-1" in _held(tmp_path), what="the result after suspend held")
            assert _review(config)["SUSP-1"]["gates"] == ["AUTOVERIFY_SUSPENDED"]
            labmw(config, "autoverify", "resume", "--reason", "lot cleared")
            astm_send(analyzer_port, [message("RES-1", value="30")])
            wait_until(lambda: len(lis.received) == 2 + len(HELD), what="the result after resume delivered")
            assert "RES-1" not in _held(tmp_path)
    finally:
        lis.stop()

    report = json.loads(labmw(config, "report", "autoverification", "--json").stdout)
    by = {(r["method"], r["analyzer"]): r for r in report}
    nop5p, unmapped = by[("ALT-NOP5P", "c501")], by[("", "c501")]
    assert nop5p["results"] == 2 + len(HELD) - 1 + 1  # OK-30, 7 held on the method, SUSP-1, RES-1
    assert nop5p["autoverified"] == 2 and nop5p["held"] == len(HELD) - 1 + 1
    assert nop5p["released"] == len(HELD) - 1 and nop5p["waiting"] == 1
    assert nop5p["held_by_gate"]["ABSURD"] == 3 and nop5p["held_by_gate"]["AUTOVERIFY_SUSPENDED"] == 1
    assert unmapped["held_by_gate"] == {"METHOD_UNKNOWN": 1} and unmapped["released"] == 1
    assert nop5p["median_hold_seconds"] is not None
    kinds = [e["event"] for e in json.loads(labmw(config, "audit", "list", "--json").stdout)]
    assert "autoverify_suspended" in kinds and "autoverify_resumed" in kinds
    assert labmw(config, "audit", "verify").returncode == 0

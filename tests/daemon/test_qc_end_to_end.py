"""Quality control end to end (issue 12): the real daemon, a real ASTM analyzer over TCP, a real MLLP LIS
(python-hl7), the real `labmw` CLI; then real instrument QC captures (Horiba Yumizen H500 with H-12 Q,
PixCell HemoScreen with OBR-4 LQC) over real sockets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hl7.client import MLLPClient
from peers import ACK, MllpLis, alt_message, astm_send, configure, daemon, free_port, labmw, wait_until

from typer.testing import CliRunner

from labmw.cli import app
from labmw.wire.hl7_codec import parse_ack

QC_DATA = Path(__file__).resolve().parents[1] / "data" / "qc"


_RUNS = iter(range(10, 60))


def qc_message(value: str, *, specimen: str = "QC1") -> list[bytes]:
    """A control result as a cobas sends it: the control's specimen ID, no patient, its own run time
    (two runs with the same value are two runs, not a resend)."""
    return alt_message(specimen=specimen, patient="", sex="", birth="", value=value,
                       collected=f"202611250{next(_RUNS) % 10}{next(_RUNS):02d}00")


def patient(specimen: str, value: str = "44") -> list[bytes]:
    return alt_message(specimen=specimen, patient=f"P-{specimen}", sex="M", birth="19800101", value=value)


def held(config: Path) -> dict[str, dict[str, object]]:
    return {str(h["specimen"]): h for h in json.loads(labmw(config, "review", "list", "--json").stdout)}


def runs(config: Path) -> list[dict[str, object]]:
    return json.loads(labmw(config, "qc", "list", "--json").stdout)


def test_qc_results_are_judged_never_forwarded_and_gate_patient_results(tmp_path: Path) -> None:
    """The issue's "done when": 51 accepted, patients flow; 57 (1-3s) rejected, next patient held
    QC_FAILED until 50 is accepted; two +2.5 SD runs reject the second (2-2s); list, impact, accept, chart."""
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    labmw(config, "qc", "material", "add", "ALT-L1", "--method", "ALT-T", "--level", "1", "--lot", "L4711",
          "--mean", "50", "--sd", "2", "--specimen-id", "QC1", "--analyzer", "c501",
          "--source", "lab's own 20-run period")
    lis = MllpLis(lis_port).start()

    def send(message: list[bytes]) -> None:
        assert all(r == ACK for r in astm_send(analyzer_port, [message]))

    def arrived() -> set[str]:
        return set(lis.by_specimen())

    try:
        with daemon(config, wait_port=analyzer_port, log=tmp_path / "daemon.log"):
            send(qc_message("51"))
            send(patient("S1"))
            wait_until(lambda: "S1" in arrived(), what="S1 at the LIS after an accepted run")
            assert [r["status"] for r in runs(config)] == ["accepted"]

            send(qc_message("57"))  # z = +3.5: 1-3s
            send(patient("S2"))
            wait_until(lambda: "S2" in held(config), what="S2 held after the rejected run", interval=0.3)
            assert "QC_FAILED" in str(held(config)["S2"]["reason"])

            send(qc_message("50"))
            send(patient("S3"))
            wait_until(lambda: "S3" in arrived(), what="S3 at the LIS after QC was accepted again")

            send(qc_message("55"))  # +2.5 SD: 1-2s warning only
            send(qc_message("55"))  # +2.5 SD again: 2-2s across runs
            send(patient("S4"))
            wait_until(lambda: "S4" in held(config), what="S4 held after the 2-2s run", interval=0.3)

            listed = runs(config)
            assert [r["status"] for r in listed] == ["accepted", "rejected", "accepted", "accepted", "rejected"]
            assert [r["rules_violated"] for r in listed] == [[], ["1-3s"], [], [], ["2-2s"]]
            assert listed[3]["warnings"] == ["1-2s"] and listed[1]["warnings"] == ["1-2s"]
            assert [r["results"][0]["z"] for r in listed] == ["0.50", "3.50", "0.00", "2.50", "2.50"]

            impact = json.loads(labmw(config, "qc", "impact", str(listed[1]["id"]), "--json").stdout)
            assert [r["specimen"] for r in impact["results"]] == ["S1"], "released between run 1 and the failure"

            # The held result goes out through review, released by two people ([review] second_person
            # names QC_FAILED by default): the first release is a signed request, a second OS user's sends it.
            s2 = held(config)["S2"]["id"]
            first = labmw(config, "review", "release", str(s2), "--reason", "control re-run in range, result confirmed")
            assert "release requested" in first.stdout and "needs a second person (QC_FAILED)" in first.stdout
            assert "S2" in held(config)
            second = CliRunner().invoke(app, ["--config", str(config), "review", "release", str(s2), "--reason",
                                              "agreed"], env={"LOGNAME": "second-tech", "USER": "second-tech"})
            assert second.exit_code == 0 and "second signature" in second.output, second.output
            wait_until(lambda: "S2" in arrived(), what="S2 released through review")

            # A documented override opens the gate for new results.
            labmw(config, "qc", "accept", str(listed[4]["id"]), "--reason", "2-2s on a reconstituted vial; new vial ok")
            send(patient("S5"))
            wait_until(lambda: "S5" in arrived(), what="S5 after the override")
            status = json.loads(labmw(config, "status", "--json").stdout)
            assert status["qc"] == [{"analyzer": "c501", "method": "ALT-T", "state": "ok", "run_id": listed[4]["id"],
                                     "rules": [], "last_accepted_at": listed[4]["received_at"],
                                     "interval_hours": "24"}]
            human = labmw(config, "status").stdout
            assert "c501" in human and "QC" in human

            chart = tmp_path / "alt-l1.png"
            labmw(config, "qc", "chart", "--analyzer", "c501", "--method", "ALT-T", "--level", "1", "--out",
                  str(chart))
            assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    finally:
        lis.stop()
    assert "QC1" not in arrived(), "a control result never reaches the LIS"
    assert arrived() == {"S1", "S2", "S3", "S5"}
    events = json.loads(labmw(config, "audit", "list", "--json").stdout)
    names = [e["event"] for e in events]
    assert names.count("qc_run_judged") == 5 and names.count("qc_result_received") == 5
    override = [e for e in events if e["event"] == "qc_run_accepted"]
    assert len(override) == 1 and override[0]["data"]["reason"].startswith("2-2s on a reconstituted")
    assert override[0]["actor"] not in ("", "labmw"), "the override names the OS user"


def _records(path: Path) -> list[bytes]:
    """The capture's records, one per recorded frame (checksums verified). The capture's frame numbers
    restart at its M records (1, 1, 1, 4), which E1381 NAKs, so the records are sent renumbered."""
    texts = []
    for chunk in path.read_bytes().split(b"\x02")[1:]:
        match = re.fullmatch(rb"([0-7])(.*)([\x03\x17])([0-9A-F]{2})\r?\n?", chunk, re.DOTALL)
        assert match is not None
        fn, text, end, checksum = match.groups()
        assert sum(fn + text + end) % 256 == int(checksum, 16)
        texts.append(text.rstrip(b"\r"))
    return texts


def test_real_qc_captures_are_recognised_and_never_forwarded(tmp_path: Path) -> None:
    """Horiba Yumizen H500 QC (H-12 Q, lot PX440N) and PixCell HemoScreen QC (OBR-4 LQC, via an analyzer
    pattern) over real sockets: nothing reaches the LIS; a matching material judges, the rest is held."""
    lis_port, astm_port, hl7_port = free_port(), free_port(), free_port()
    config = tmp_path / "lab.toml"
    labmw(config, "init", "--data-dir", str(tmp_path / "data"))
    labmw(config, "method", "add", "WBC", "--analyte", "WBC", "--units", "10E3/uL")
    labmw(config, "method", "add", "HGB", "--analyte", "HGB", "--units", "g/dL")
    labmw(config, "lis", "set", "--connect", f"127.0.0.1:{lis_port}")
    labmw(config, "analyzer", "add", "h500", "--protocol", "astm", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{astm_port}", "--map", "WBC=WBC", "--map", "HGB=HGB")
    labmw(config, "analyzer", "add", "hemoscreen", "--protocol", "hl7", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{hl7_port}", "--lf-segments", "--map", "WBC=WBC")
    # ABX Difftrol medium, lot PX440N (the capture's O-3): targets as the instrument's own range centre.
    labmw(config, "qc", "material", "add", "DIFFTROL-N-WBC", "--method", "WBC", "--level", "2", "--lot", "PX440N",
          "--mean", "8.3", "--sd", "0.5", "--analyzer", "h500", "--source", "assay sheet of the capture (7.30-9.30)")
    with config.open("a", encoding="utf-8") as fh:
        fh.write('\n[qc.analyzers.hemoscreen]\npatterns = ["order_code=^[LNH]QC$"]  # HemoScreen marks QC in OBR-4\n')
    labmw(config, "config", "validate")
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=astm_port, log=tmp_path / "daemon.log"):
            records = _records(QC_DATA / "horiba_yumizen_h500_qc_1.astm")
            assert all(r == ACK for r in astm_send(astm_port, [records]))
            payload = (QC_DATA / "pixcell_hemoscreen_qc_1.hl7").read_bytes()
            with MLLPClient("127.0.0.1", hl7_port) as client:
                client.socket.settimeout(10)
                ack = parse_ack(client.send_message(payload).strip(b"\x0b\x1c\r") + b"\r")
                assert ack.code == "AA"
            wait_until(lambda: len(runs(config)) == 1, what="the Yumizen run judged", interval=0.3)
            holds = json.loads(labmw(config, "review", "list", "--json").stdout)
    finally:
        lis.stop()
    run = runs(config)[0]
    assert (run["analyzer"], run["method"], run["status"]) == ("h500", "WBC", "accepted")
    assert run["results"][0]["value"] == "8.30" and run["results"][0]["z"] == "0.00"
    by_analyzer = {(h["analyzer"], h["test_code"]) for h in holds}
    # The Yumizen HGB has a method but no material; the HemoScreen WBC has no material at all.
    assert ("h500", "HGB") in by_analyzer and ("hemoscreen", "WBC") in by_analyzer
    assert all("QC_UNKNOWN_MATERIAL" in h["reason"] for h in holds)
    assert len([h for h in holds if h["analyzer"] == "h500"]) == 20, "every other Yumizen QC result is held"
    assert len([h for h in holds if h["analyzer"] == "hemoscreen"]) == 20
    assert lis.received == [], "no QC result ever reaches the LIS"
    hgb = next(h for h in holds if h["test_code"] == "HGB")
    refused = labmw(config, "review", "release", str(hgb["id"]), "--reason", "try", check=False)
    assert refused.returncode == 1 and "QC result" in refused.stderr

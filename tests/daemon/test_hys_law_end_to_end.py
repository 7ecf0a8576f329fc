"""The Hy's-law candidate note end to end: the daemon finds the patient's bilirubin and ALP of the same
day in its store and the ALT result's NTE says so (a note for the LIS, never a flag)."""

from __future__ import annotations

from pathlib import Path

from peers import MllpLis, astm_send, configure, daemon, free_port, labmw, obx8, wait_until


def _message(specimen: str, code: str, value: str, units: str, collected: str) -> list[bytes]:
    return [
        rb"H|\^&|||c501^1|||||host|RSUPL^REAL|P|1",
        b"P|1||PHY||DOE^JANE||19700101|F",
        f"O|1|{specimen}||^^^{code}|R||{collected}||||N||||1||||||||||F".encode(),
        f"R|1|^^^{code}|{value}|{units}||N||F||^System||{collected}|P1".encode(),
        b"L|1|N",
    ]


def test_hys_law_candidate_note_uses_the_patients_other_results(tmp_path: Path) -> None:
    """ALT >= 3 x ULN with bilirubin > 2 x ULN and ALP <= 2 x ULN within 24 h: the ALT's NTE names a candidate."""
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    for name, analyte, units, low, high in (("TBIL-T", "TBIL", "mg/dL", "0.1", "1.2"),
                                            ("ALP-T", "ALP", "U/L", "40", "129")):
        labmw(config, "method", "add", name, "--analyte", analyte, "--units", units)
        labmw(config, "range", "add", name, "--low", low, "--high", high)
    labmw(config, "analyzer", "remove", "c501")
    labmw(config, "analyzer", "add", "c501", "--protocol", "astm", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{analyzer_port}", "--map", "ALTL=ALT-P5P", "--map", "TBIL=TBIL-T", "--map", "ALP=ALP-T")
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=analyzer_port):
            astm_send(analyzer_port, [
                _message("HY-B", "TBIL", "3.1", "mg/dL", "20261125070000"),
                _message("HY-P", "ALP", "110", "U/L", "20261125070000"),
                _message("HY-A", "ALTL", "250", "U/L", "20261125080000"),
            ])
            wait_until(lambda: len(lis.received) >= 3, what="three results at the LIS")
    finally:
        lis.stop()
    alt = lis.by_specimen()["HY-A"]
    assert obx8(alt) == ["H"], "Hy's law adds no flag"
    notes = " ".join(str(seg[3]) for seg in alt if str(seg[0]) == "NTE")
    assert "Hy's-law candidate" in notes, notes
    assert "TBIL 3.1" in notes and "ALP 110" in notes, "the note names the results it used"

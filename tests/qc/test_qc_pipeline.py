"""QC through the real pipeline and a real SQLite store (a clock double for the interval), the [qc]
configuration's errors, recognition by every route, and the chart."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inline_runner import make_intake, receive

from labmw.config import Settings, parse
from labmw.errors import ConfigError, StoreError, UsageError
from labmw.mapping.hl7_inbound import map_hl7
from labmw.model import Result
from labmw.qc.chart import draw
from labmw.qc.recognize import recognise
from labmw.store import Store

START = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def config(tmp_path: Path, **qc: Any) -> Settings:
    material = {"method": "ALT-T", "level": 1, "lot": "L4711", "mean": 50, "sd": 2, "specimen_ids": ["QC1"]}
    doc: dict[str, Any] = {
        "service": {"data_dir": str(tmp_path)},
        "methods": {"ALT-T": {"analyte": "ALT", "units": "U/L", "ranges": [{"low": 9, "high": 59}]}},
        "analyzers": {"c501": {"protocol": "astm", "transport": "tcp-server", "listen": "127.0.0.1:5001",
                               "map": {"ALTL": "ALT-T"}}},
        "qc": {"materials": {"ALT-L1": material}, **qc},
    }
    return parse(doc, tmp_path / "lab.toml")


class Rig:
    def __init__(self, tmp_path: Path, settings: Settings) -> None:
        self.now = START
        self.store = Store.open(tmp_path / "labmw.sqlite3")
        self.settings = settings
        self.intake = make_intake(settings, self.store, settings.analyzers["c501"], clock=lambda: self.now)
        self.count = 0

    def astm(self, specimen: str, value: str, *, patient: str = "", action: str = "N", processing: str = "P",
             code: str = "ALTL") -> None:
        self.count += 1
        self.now += timedelta(minutes=10)
        text = "\r".join([
            rf"H|\^&|||c501^1|||||host||{processing}|1|2026112509{self.count:04d}",
            f"P|1||{patient}",
            f"O|1|{specimen}||^^^{code}|R||20261125080000||||{action}||||||||||||||F",
            f"R|1|^^^{code}|{value}|U/L||N||F||||2026112509{self.count:04d}",
            "L|1|N", ""]).encode()
        outcome = receive(self.intake, text, "test")
        assert outcome.stored and not outcome.rejected_reason, outcome.rejected_reason

    def held_reasons(self) -> dict[str, str]:
        return {h.specimen: h.reason for h in self.store.held_results()}

    def queued(self) -> list[str]:
        return [e.specimen for e in self.store.outbox(states=("pending",))]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    rig = Rig(tmp_path, config(tmp_path))
    yield rig
    rig.store.close()


def test_without_an_accepted_run_patients_are_held_expired_and_the_interval_counts(rig: Rig) -> None:
    rig.astm("S1", "40", patient="P1")
    assert "QC_EXPIRED" in rig.held_reasons()["S1"] and "no accepted run yet" in rig.held_reasons()["S1"]
    rig.astm("QC1", "50")
    rig.astm("S2", "40", patient="P2")
    assert rig.queued() == ["S2"]
    rig.now += timedelta(hours=24, minutes=1)
    rig.astm("S3", "40", patient="P3")
    assert "QC_EXPIRED" in rig.held_reasons()["S3"] and "within 24 h" in rig.held_reasons()["S3"]
    assert "QC1" not in rig.queued() and "QC1" not in rig.held_reasons(), "the control is neither sent nor held"


def test_failed_run_holds_until_accepted_and_impact_lists_released_results(rig: Rig) -> None:
    rig.astm("QC1", "51")
    rig.astm("S1", "40", patient="P1")
    rig.astm("S2", "41", patient="P2")
    rig.astm("QC1", "43")  # z = -3.5
    rig.astm("S3", "42", patient="P3")
    failed = rig.store.qc.runs()[-1]
    assert (failed.status, failed.violated) == ("rejected", ("1-3s",))
    assert "QC_FAILED" in rig.held_reasons()["S3"] and "1-3s" in rig.held_reasons()["S3"]
    assert [r["specimen"] for r in rig.store.qc.impact(failed.id)] == ["S1", "S2"]
    with pytest.raises(StoreError, match="no QC run"):
        rig.store.qc.impact(999)
    rig.store.qc.accept(failed.id, reason="vial mix-up", actor="tech1", now=rig.now)
    with pytest.raises(StoreError, match="already accepted"):
        rig.store.qc.accept(failed.id, reason="again", actor="tech1", now=rig.now)
    rig.astm("S4", "42", patient="P4")
    assert rig.queued() == ["S1", "S2", "S4"]
    event = rig.store.audit_events(event="qc_run_accepted")[0]
    assert event.actor == "tech1" and event.data["reason"] == "vial mix-up"


def test_instrument_marks_and_lot_numbers_recognise_controls(rig: Rig) -> None:
    rig.astm("L4711", "50", action="Q")  # O-12 Q, specimen = the lot number
    rig.astm("L4711", "50.5", processing="Q")  # H-12 Q
    runs = rig.store.qc.runs()
    assert [(r.status, r.results[0].material) for r in runs] == [("accepted", "ALT-L1"), ("accepted", "ALT-L1")]
    rig.astm("CTRL-X", "12", action="Q")  # marked, but no material lists it
    assert "QC_UNKNOWN_MATERIAL" in rig.held_reasons()["CTRL-X"]
    held = next(h for h in rig.store.held_results() if h.specimen == "CTRL-X")
    with pytest.raises(StoreError, match="is a QC result"):
        rig.store.decide_held(held.id, decision="release", reason="x", actor="t", now=rig.now, control_id="c",
                              payload=b"x")
    rig.store.decide_held(held.id, decision="reject", reason="not ours", actor="t", now=rig.now)
    assert rig.queued() == []


def test_unjudgeable_or_expired_controls_reject_the_run(tmp_path: Path) -> None:
    settings = config(tmp_path)
    rig = Rig(tmp_path, settings)
    try:
        rig.astm("QC1", "-----")
        assert rig.store.qc.runs()[-1].violated == ("not-numeric",)
    finally:
        rig.store.close()
    doc_rig = Rig(tmp_path / "b", parse({
        "service": {"data_dir": str(tmp_path / "b")},
        "methods": {"ALT-T": {"analyte": "ALT", "units": "U/L"}},
        "analyzers": {"c501": {"protocol": "astm", "transport": "tcp-server", "listen": "127.0.0.1:1",
                               "map": {"ALTL": "ALT-T"}}},
        "qc": {"methods": {"ALT-T": {"rules": ["1-3s"]}},
               "materials": {"OLD": {"method": "ALT-T", "level": 1, "lot": "A", "mean": 50, "sd": 2,
                                     "expires": "2026-01-31", "specimen_ids": ["QC1"]}}},
    }, tmp_path / "b" / "lab.toml"))
    try:
        doc_rig.astm("QC1", "55")  # +2.5 SD with 1-3s alone: no warning rule configured
        run = doc_rig.store.qc.runs()[-1]
        assert (run.violated, run.warnings) == (("lot-expired",), ())
    finally:
        doc_rig.store.close()


@pytest.mark.parametrize(("qc", "key", "fragment"), [
    ({"rules": ["1-3s", "7x"]}, "qc.rules", "unknown rule(s) 7x"),
    ({"interval_hours": 0}, "qc.interval_hours", "above 0"),
    ({"analyzers": {"c501": {"patterns": ["colour=QC"]}}}, "qc.analyzers.c501.patterns[0]", "FIELD=REGEX"),
    ({"analyzers": {"c501": {"patterns": ["specimen=(["]}}}, "qc.analyzers.c501.patterns[0]", "regular expression"),
    ({"analyzers": {"nope": {"patterns": []}}}, "qc.analyzers.nope", "configured analyzer"),
    ({"methods": {"ALT-X": {"rules": ["1-3s"]}}}, "qc.methods.ALT-X", "configured method"),
    ({"materials": {"M": {"method": "ALT-T", "level": 1, "lot": "A", "mean": 5}}}, "qc.materials.M.sd", "required"),
    ({"materials": {"M": {"method": "ALT-T", "level": 1, "lot": "A", "mean": 5, "sd": 0}}}, "qc.materials.M.sd",
     "above 0"),
    ({"materials": {"M": {"method": "GGT", "level": 1, "lot": "A", "mean": 5, "sd": 1}}}, "qc.materials.M.method",
     "configured method"),
    ({"colour": 1}, "qc.colour", "unknown key"),
])
def test_bad_qc_configuration_names_the_key(tmp_path: Path, qc: dict[str, Any], key: str, fragment: str) -> None:
    doc: dict[str, Any] = {
        "service": {"data_dir": str(tmp_path)},
        "methods": {"ALT-T": {"analyte": "ALT", "units": "U/L"}},
        "analyzers": {"c501": {"protocol": "astm", "transport": "tcp-server", "listen": "127.0.0.1:1"}},
        "qc": qc,
    }
    with pytest.raises(ConfigError) as info:
        parse(doc, tmp_path / "lab.toml")
    assert info.value.key == key and fragment in info.value.problem


def test_hl7_specimen_role_and_analyzer_patterns(tmp_path: Path) -> None:
    payload = (b"MSH|^~\\&|MX|LAB|||20261125090000||ORU^R01^ORU_R01|Q-1|P|2.5.1\r"
               b"PID|||\rOBR|1||F-1|ALT^ALT^L|||20261125080000\r"
               b"OBX|1|NM|ALT||50|U/L|||||F\rSPM|1|CTL-9||SER|||||||Q\r")
    mapped = map_hl7(payload, analyzer="mx", encoding="utf-8", specimen_field="SPM-2", lf_segments=False)
    assert [(r.specimen_id, r.specimen_role, r.order_code) for r in mapped.results] == [("CTL-9", "Q", "ALT")]
    settings = config(tmp_path, analyzers={"c501": {"patterns": ["order_code=^[LNH]QC$"]}})
    marked = Result(analyzer="c501", test_code="ALTL", raw_value="50", order_code="LQC")
    assert recognise(marked, "ALT-T", settings.qc) is not None
    other = Result(analyzer="c501", test_code="ALTL", raw_value="50", order_code="ALT")
    assert recognise(other, "ALT-T", settings.qc) is None, "a patient result stays a patient result"


def test_chart_is_drawn_and_refuses_what_it_cannot_draw(rig: Rig, tmp_path: Path) -> None:
    for value in ("50", "51.5", "48", "57", "50.5", "55", "55", "49", "46.5", "52"):
        rig.astm("QC1", value)
    runs = rig.store.qc.runs(analyzer="c501", method="ALT-T", level=1)
    out = Path(os.environ.get("LABMW_QC_CHART_OUT", tmp_path / "lj.png"))
    assert draw(runs, analyzer="c501", method="ALT-T", out=out, level=1) == 10
    assert out.read_bytes()[:4] == b"\x89PNG"
    svg = tmp_path / "lj.svg"
    draw(runs, analyzer="c501", method="ALT-T", out=svg)
    text = svg.read_text()
    assert "<svg" in text and "Levey-Jennings" in text
    with pytest.raises(UsageError, match=".png or .svg"):
        draw(runs, analyzer="c501", method="ALT-T", out=tmp_path / "lj.pdf")
    with pytest.raises(UsageError, match="no QC results of level 3"):
        draw(runs, analyzer="c501", method="ALT-T", out=out, level=3)

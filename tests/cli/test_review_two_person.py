"""`labmw review release` with the second-person gates of [review] (CliRunner; the OS user is the
actor, so two people are two LOGNAMEs), and `qc impact` listing the results a failed run holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from inline_runner import make_intake, receive
from typer.testing import CliRunner

from labmw.cli import app
from labmw.config import load
from labmw.store import Store

runner = CliRunner()


def invoke(config: Path, *args: str, user: str = "alice"):
    return runner.invoke(app, ["--config", str(config), *args], env={"LOGNAME": user, "USER": user})


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    """A lab whose last QC run failed, then two patient results: S1 (45 U/L) and C1 (1500 U/L, HH)."""
    path = tmp_path / "lab.toml"
    for args in (["init", "--data-dir", str(tmp_path / "data")],
                 ["analyzer", "add", "c501", "--protocol", "astm", "--transport", "tcp-server", "--listen",
                  "127.0.0.1:5001", "--map", "ALTL=ALT-P5P"],
                 ["qc", "material", "add", "ALT-L1", "--method", "ALT-P5P", "--level", "1", "--lot", "L4711",
                  "--mean", "50", "--sd", "2.5", "--specimen-id", "QC1", "--source", "insert (test)"]):
        result = invoke(path, *args)
        assert result.exit_code == 0, result.output
    # This lab also asks two people for critical values (off in the shipped default).
    path.write_text(path.read_text().replace('second_person = ["QC_FAILED"]', 'second_person = ["CRITICAL", "QC_FAILED"]'))
    settings = load(path)
    store = Store.open(settings.db_path)
    try:
        intake = make_intake(settings, store, settings.analyzers["c501"],
                             clock=lambda: datetime(2026, 11, 25, 9, tzinfo=UTC))
        for n, (specimen, value) in enumerate((("QC1", "51"), ("QC1", "60"), ("S1", "45"), ("C1", "1500"))):
            patient = "" if specimen.startswith("QC") else f"P{n}||||19800101|M"
            text = (rf"H|\^&|||c501|||||||P|1|2026112509000{n}" "\r"
                    f"P|1||{patient}\rO|1|{specimen}||^^^ALTL|||20261125080000\r"
                    f"R|1|^^^ALTL|{value}|U/L||N||F\rL|1|N\r").encode()
            assert receive(intake, text, "t").stored
    finally:
        store.close()
    return path


def _held(config: Path) -> dict[str, dict[str, object]]:
    return {h["specimen"]: h for h in json.loads(invoke(config, "review", "list", "--json").output)}


def test_two_people_release_a_qc_failed_and_critical_result(config: Path) -> None:
    held = _held(config)
    assert sorted(held) == ["C1", "S1"] and held["S1"]["release_requested_by"] is None
    s1 = str(held["S1"]["id"])
    first = invoke(config, "review", "release", s1, "--reason", "QC re-run in range")
    assert first.exit_code == 0, first.output
    assert first.output.strip() == (f"result {s1} release requested by alice; it needs a second person "
                                    "(QC_FAILED): the result stays held until another user releases it")
    assert _held(config)["S1"]["release_requested_by"] == "alice"
    assert "AWAITING A SECOND PERSON (release requested by alice)" in invoke(config, "review", "list").output

    again = invoke(config, "review", "release", s1, "--reason", "still me")
    assert again.exit_code == 1
    assert "needs a second person to release it (QC_FAILED): you (alice) signed the first" in again.output
    assert "Traceback" not in again.output

    second = invoke(config, "review", "release", s1, "--reason", "agree", user="bob")
    assert second.exit_code == 0, second.output
    assert "released (second signature; first by alice); queued for the LIS as" in second.output
    assert "S1" not in _held(config)
    audit = {e["event"]: e for e in json.loads(invoke(config, "audit", "list", "--specimen", "S1", "--json").output)}
    assert audit["release_requested"]["actor"] == "alice" and audit["release_requested"]["data"]["needs"] == [
        "QC_FAILED"]
    assert audit["result_released"]["actor"] == "bob"
    assert audit["result_released"]["data"]["first_signature"]["actor"] == "alice"

    c1 = str(_held(config)["C1"]["id"])
    critical = invoke(config, "review", "release", c1, "--reason", "called the ward", user="bob")
    assert critical.exit_code == 0 and "(CRITICAL, QC_FAILED)" in critical.output
    rejected = invoke(config, "review", "reject", c1, "--reason", "rerun instead", user="alice")
    assert rejected.exit_code == 0 and rejected.output.strip() == f"result {c1} rejected"
    assert _held(config) == {}


def test_an_empty_second_person_list_lets_one_person_release(config: Path) -> None:
    config.write_text(config.read_text().replace('second_person = ["CRITICAL", "QC_FAILED"]', "second_person = []"))
    s1 = str(_held(config)["S1"]["id"])
    one = invoke(config, "review", "release", s1, "--reason", "checked")
    assert one.exit_code == 0 and one.output.startswith(f"result {s1} released; queued for the LIS as ")
    bad = config.read_text().replace("second_person = []", 'second_person = ["NOPE"]')
    config.write_text(bad)
    refused = invoke(config, "review", "list")
    assert refused.exit_code != 0 and "review.second_person" in refused.output and "unknown name 'NOPE'" in refused.output


def test_qc_impact_lists_the_results_the_failed_run_holds(config: Path) -> None:
    runs = json.loads(invoke(config, "qc", "list", "--json").output)
    failed = runs[-1]
    assert failed["status"] == "rejected"
    impact = json.loads(invoke(config, "qc", "impact", str(failed["id"]), "--json").output)
    assert impact["results"] == [] and [r["specimen"] for r in impact["held"]] == ["S1", "C1"]
    text = invoke(config, "qc", "impact", str(failed["id"])).output
    assert "0 patient result(s) released since the last accepted run, 2 held by this run" in text and "C1" in text
    assert json.loads(invoke(config, "qc", "impact", str(runs[0]["id"]), "--json").output)["held"] == []

"""The QC page and the second-person release in a real browser (Debian's chromium via Playwright),
against the real daemon serving ``[web]``, a real ASTM analyzer connection and a real MLLP LIS.

The lab: two control levels of ALT-T on c501 with accepted runs, a patient result released, then a
rejected level-1 run (1-3s) that holds the next patient results (QC_FAILED, one of them critical):
both need two people to release ([review] second_person, the shipped default).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_kit import audit, cli, login, shot, workstation
from peers import MllpLis, alt_message, astm_send, field, wait_until

PASSWORDS = {"rita": "rita-reviews-alt", "dora": "dora-directs-qc", "audrey": "audrey-reads-only"}
ROLES = {"rita": "reviewer", "dora": "director", "audrey": "auditor"}


@dataclass
class QcLab:
    config: Path
    url: str
    lis: MllpLis
    shots: Path
    held: dict[str, int]  # specimen -> held result id
    failed_run: int


def _control(specimen: str, value: str) -> list[bytes]:
    return alt_message(specimen=specimen, patient="", sex="", birth="", value=value)


def _materials(config: Path) -> None:
    for name, level, mean, sd in (("ALT-L1", "1", "50", "2"), ("ALT-L2", "2", "150", "5")):
        cli(config, "qc", "material", "add", name, "--method", "ALT-T", "--level", level, "--lot", f"LOT{level}",
            "--mean", mean, "--sd", sd, "--specimen-id", f"QC{level}", "--source", "manufacturer insert (test)")


@pytest.fixture(scope="module", name="lab")
def _lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QcLab]:
    users = {name: (ROLES[name], password) for name, password in PASSWORDS.items()}
    with workstation(tmp_path_factory.mktemp("webqc"), users, setup=_materials) as station:
        astm_send(station.analyzer_port, [
            _control("QC1", "50"), _control("QC2", "151"), _control("QC1", "51"), _control("QC2", "148"),
            _control("QC1", "49"), _control("QC2", "150"),
            alt_message(specimen="P1", patient="PA", sex="M", birth="19800101", value="40"),
            _control("QC1", "58"),  # z = +4: 1-3s, the run is rejected
            alt_message(specimen="Q1", patient="PQ", sex="M", birth="19800101", value="45"),
            alt_message(specimen="C1", patient="PC", sex="F", birth="19700101", value="1500"),
        ])
        wait_until(lambda: "P1" in station.lis.by_specimen(), what="P1 at the LIS after accepted QC")
        held = json.loads(cli(station.config, "review", "list", "--json"))
        assert sorted(h["specimen"] for h in held) == ["C1", "Q1"], held
        runs = json.loads(cli(station.config, "qc", "list", "--json"))
        assert [r["status"] for r in runs][-1] == "rejected" and len(runs) == 7
        yield QcLab(config=station.config, url=station.url, lis=station.lis, shots=station.shots,
                    held={h["specimen"]: h["id"] for h in held}, failed_run=runs[-1]["id"])


def _login(page: object, lab: QcLab, name: str) -> None:
    login(page, lab.url, name, PASSWORDS[name])
    page.wait_for_selector("#held-count")  # type: ignore[attr-defined]


def _logout(page: object) -> None:
    page.click("form.whoami button")  # type: ignore[attr-defined]
    page.wait_for_selector("#login")  # type: ignore[attr-defined]


def _shot(page: object, lab: QcLab, name: str) -> None:
    shot(page, lab.shots, name)


def _audit(lab: QcLab, *args: str) -> list[dict[str, object]]:
    return audit(lab.config, *args)


def test_the_qc_page_charts_each_level_lists_the_rejected_run_and_its_impact(page: object, lab: QcLab) -> None:
    """The director sees the failed gate, a drawn Levey-Jennings chart per level (PNG from the server),
    the rejected run with its impact (P1 released before it, C1 held by it), and overrides the run; the
    auditor reads the same pages but has no override button."""
    _login(page, lab, "audrey")
    assert "QC_FAILED" in page.inner_text("#qc-state") and "c501" in page.inner_text("#qc-state")  # type: ignore[attr-defined]
    page.click("header >> text=QC")  # type: ignore[attr-defined]
    states = page.inner_text("#qc-states")  # type: ignore[attr-defined]
    assert "c501" in states and "ALT-T" in states and "failed" in states.lower()
    assert f"#{lab.failed_run}" in page.inner_text("#qc-rejected") and "1-3s" in page.inner_text("#qc-rejected")  # type: ignore[attr-defined]
    page.wait_for_load_state("load")  # type: ignore[attr-defined] # the chart images are part of "load"
    charts = page.locator("img.lj")  # type: ignore[attr-defined]
    assert charts.count() == 2, "one chart per control level"
    for i in range(2):
        width = charts.nth(i).evaluate("img => img.complete ? img.naturalWidth : 0")
        assert width > 600, "the chart image was drawn and loaded"
    _shot(page, lab, "qc")
    chart = page.request.get(f"{lab.url}/qc/chart.png?analyzer=c501&method=ALT-T&level=1")  # type: ignore[attr-defined]
    assert chart.status == 200 and chart.headers["content-type"] == "image/png"
    assert chart.body()[:8] == b"\x89PNG\r\n\x1a\n" and len(chart.body()) > 10_000
    none = page.request.get(f"{lab.url}/qc/chart.png?analyzer=c501&method=ALT-T&level=3")  # type: ignore[attr-defined]
    assert none.status == 404 and "no QC results of level 3" in none.text()

    page.click(f"#qc-rejected a[href='/qc/runs/{lab.failed_run}']")  # type: ignore[attr-defined]
    assert "rejected" in page.inner_text("#run-status") and page.inner_text("#run-rules") == "1-3s"  # type: ignore[attr-defined]
    assert "C1" in page.inner_text("#impact-held") and "PC" in page.inner_text("#impact-held")  # type: ignore[attr-defined]
    assert "P1" in page.inner_text("#impact-released")  # type: ignore[attr-defined]
    assert page.locator("#accept").count() == 0 and page.locator("#read-only").count() == 1  # type: ignore[attr-defined]
    _shot(page, lab, "qc-run-auditor")
    views = _audit(lab, "--event", "page_viewed", "--patient", "PC")
    assert any(e["actor"] == "web:audrey" and e["data"]["path"] == f"/qc/runs/{lab.failed_run}" for e in views)
    csrf = page.get_attribute("header input[name=csrf]", "value")  # type: ignore[attr-defined]
    refused = page.request.post(f"{lab.url}/qc/runs/{lab.failed_run}/accept",  # type: ignore[attr-defined]
                                form={"csrf": csrf, "reason": "auditor tries"})
    assert refused.status == 403 and "may not" in refused.text()
    _logout(page)

    _login(page, lab, "dora")
    page.goto(f"{lab.url}/qc/runs/{lab.failed_run}")  # type: ignore[attr-defined]
    page.click("#accept")  # type: ignore[attr-defined]
    assert "reason is required" in page.inner_text("#problem")  # type: ignore[attr-defined]
    page.fill("#accept-reason", "control vial left open; fresh vial in range")  # type: ignore[attr-defined]
    page.click("#accept")  # type: ignore[attr-defined]
    assert page.inner_text("#done") == "Run accepted by override."  # type: ignore[attr-defined]
    assert "web:dora" in page.inner_text("#override")  # type: ignore[attr-defined]
    _shot(page, lab, "qc-run-override")
    (accepted,) = _audit(lab, "--event", "qc_run_accepted")
    assert accepted["actor"] == "web:dora" and accepted["data"]["reason"] == "control vial left open; fresh vial in range"
    listed = json.loads(cli(lab.config, "qc", "list", "--json"))
    assert listed[-1]["status"] == "accepted", "the web's override is the CLI's `qc accept`"


def test_a_qc_failed_result_needs_a_second_person_and_then_reaches_the_lis(page: object, lab: QcLab) -> None:
    """Rita's release of Q1 (held by the failed QC run) is a signed request: still held, nothing at the
    LIS; her second try is refused; Dora's release completes it and the LIS receives Q1."""
    result_id = lab.held["Q1"]
    _login(page, lab, "rita")
    page.goto(f"{lab.url}/results/{result_id}")  # type: ignore[attr-defined]
    assert page.inner_text("#state") == "held" and "QC_FAILED" in page.inner_text("#gates")  # type: ignore[attr-defined]
    assert "required (QC_FAILED)" in page.inner_text("#second-person")  # type: ignore[attr-defined]
    assert "first of two" in page.inner_text("#release")  # type: ignore[attr-defined]
    page.fill("#release-reason", "QC re-run in range after a fresh vial")  # type: ignore[attr-defined]
    page.click("#release")  # type: ignore[attr-defined]
    assert page.inner_text("#done") == "Release requested: a second person must release this result."  # type: ignore[attr-defined]
    assert page.inner_text("#state") == "held" and page.inner_text("#first-signer") == "web:rita"  # type: ignore[attr-defined]
    assert page.locator("#you-signed").count() == 1  # type: ignore[attr-defined]
    _shot(page, lab, "result-awaiting-second")
    page.fill("#release-reason", "me again")  # type: ignore[attr-defined]
    page.click("#release")  # type: ignore[attr-defined]
    assert "you (web:rita) signed the first release request" in page.inner_text("#problem")  # type: ignore[attr-defined]
    assert "Q1" not in lab.lis.by_specimen()
    page.goto(f"{lab.url}/held")  # type: ignore[attr-defined]
    row = page.inner_text(f"#held tr:has(a[href='/results/{result_id}'])")  # type: ignore[attr-defined]
    assert "Awaiting a second person (release requested by web:rita)" in row
    _logout(page)

    _login(page, lab, "dora")
    page.goto(f"{lab.url}/results/{result_id}")  # type: ignore[attr-defined]
    assert "awaiting a second person" in page.inner_text("#second-person")  # type: ignore[attr-defined]
    assert "second signature" in page.inner_text("#release")  # type: ignore[attr-defined]
    page.fill("#release-reason", "agree: patient result consistent")  # type: ignore[attr-defined]
    page.click("#release")  # type: ignore[attr-defined]
    assert page.inner_text("#done") == "Result released."  # type: ignore[attr-defined]
    wait_until(lambda: "Q1" in lab.lis.by_specimen(), what="Q1 at the LIS after the second signature")
    oru = lab.lis.by_specimen()["Q1"]
    assert field(oru, "OBX", 5) == "45" and field(oru, "PID", 3) == "PQ"
    page.reload()  # type: ignore[attr-defined]
    text = page.inner_text("#second-person")  # type: ignore[attr-defined]
    assert "two-person released" in text and "web:rita" in text and "web:dora" in text
    _shot(page, lab, "result-two-person-released")

    (requested,) = _audit(lab, "--event", "release_requested", "--specimen", "Q1")
    assert requested["actor"] == "web:rita" and requested["data"]["needs"] == ["QC_FAILED"]
    (released,) = _audit(lab, "--event", "result_released", "--specimen", "Q1")
    assert released["actor"] == "web:dora" and released["data"]["first_signature"]["actor"] == "web:rita"
    wait_until(lambda: _audit(lab, "--event", "result_delivered", "--specimen", "Q1"), what="delivery audited")

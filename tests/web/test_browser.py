"""The review workstation in a real browser: Debian's chromium driven by Playwright, against the real
daemon (serving ``[web]``), a real ASTM analyzer connection and a real MLLP LIS (python-hl7).

One daemon and one browser for the module; each test has its own browser context (its own cookies).
Screenshots of every page go to the module's tmp dir and are checked to have rendered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_kit import audit, cli, login, shot, workstation
from peers import (
    MllpLis,
    alt_message,
    astm_send,
    field,
    wait_until,
)

PASSWORDS = {"rita": "rita-reviews-alt", "audrey": "audrey-reads-only", "adam": "adam-admin-pass"}
ROLES = {"rita": "reviewer", "audrey": "auditor", "adam": "admin"}

@dataclass
class Lab:
    config: Path
    url: str
    lis: MllpLis
    shots: Path
    held: dict[str, int]  # specimen -> held result id


@pytest.fixture(scope="module", name="lab")
def _lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    users = {name: (ROLES[name], password) for name, password in PASSWORDS.items()}
    with workstation(tmp_path_factory.mktemp("web"), users, web="max_login_failures = 2\n",
                     setup=lambda config: cli(config, "delta", "set", "ALT-T", "--abs", "20", "--action", "hold"),
                     ) as station:
        astm_send(station.analyzer_port, [
            alt_message(specimen="W1", patient="PW", sex="M", birth="19800101", value="40",
                        collected="20261120080000"),
            alt_message(specimen="W2", patient="PW", sex="M", birth="19800101", value="300",
                        collected="20261122080000"),
            alt_message(specimen="V1", patient="PV", sex="F", birth="19700101", value="30",
                        collected="20261120080000"),
            alt_message(specimen="V2", patient="PV", sex="F", birth="19700101", value="250",
                        collected="20261122080000"),
        ])
        wait_until(lambda: len(station.lis.received) >= 2, what="the two unremarkable results at the LIS")
        held = json.loads(cli(station.config, "review", "list", "--json"))
        assert sorted(h["specimen"] for h in held) == ["V2", "W2"], held
        yield Lab(config=station.config, url=station.url, lis=station.lis, shots=station.shots,
                  held={h["specimen"]: h["id"] for h in held})


def _login(page: object, lab: Lab, name: str, password: str | None = None) -> None:
    login(page, lab.url, name, password if password is not None else PASSWORDS[name])


def _shot(page: object, lab: Lab, name: str) -> Path:
    return shot(page, lab.shots, name)


def _audit(lab: Lab, *args: str) -> list[dict[str, object]]:
    return audit(lab.config, *args)


def test_reviewer_releases_a_held_alt_result_and_the_lis_receives_it(page: object, lab: Lab) -> None:
    """Log in, find the held ALT, try without a reason (refused), release with one: the LIS gets it,
    the trail names the reviewer and the reason, and every page of patient data was an audit event."""
    _login(page, lab, "rita")
    page.wait_for_selector("#held-count")  # type: ignore[attr-defined]
    assert page.inner_text("#whoami") == "rita (reviewer)"  # type: ignore[attr-defined]
    assert page.inner_text("#held-count") == "2" and page.inner_text("#lis-state") == "up"  # type: ignore[attr-defined]
    assert "c501" in page.inner_text("#analyzers")  # type: ignore[attr-defined]
    assert "delta" in page.inner_text("#held-by-gate")  # type: ignore[attr-defined]
    _shot(page, lab, "dashboard")

    page.click("text=Held results")  # type: ignore[attr-defined]
    page.select_option("select[name=analyzer]", "c501")  # type: ignore[attr-defined]
    page.click("text=Filter")  # type: ignore[attr-defined]
    assert "W2" in page.inner_text("#held") and "V2" in page.inner_text("#held")  # type: ignore[attr-defined]
    _shot(page, lab, "held")

    result_id = lab.held["W2"]
    page.click(f"#held a[href='/results/{result_id}']")  # type: ignore[attr-defined]
    assert page.inner_text("#state") == "held" and "delta" in page.inner_text("#gates")  # type: ignore[attr-defined]
    assert page.locator("#history-chart svg circle").count() == 2, "both of the patient's ALT results plotted"  # type: ignore[attr-defined]
    decisions = page.inner_text("#decisions")  # type: ignore[attr-defined]
    assert "reference_range" in decisions and "hold" in decisions
    assert "<STX>" in page.inner_text("#raw") and "R|1|^^^ALTL|300|U/L" in page.inner_text("#raw")  # type: ignore[attr-defined]
    _shot(page, lab, "result")

    page.click("#release")  # type: ignore[attr-defined]
    assert "reason is required" in page.inner_text("#problem")  # type: ignore[attr-defined]
    assert page.inner_text("#state") == "held"  # type: ignore[attr-defined]

    page.fill("#release-reason", "repeat on fresh sample agrees")  # type: ignore[attr-defined]
    page.click("#release")  # type: ignore[attr-defined]
    assert page.inner_text("#done") == "Result released."  # type: ignore[attr-defined]
    wait_until(lambda: "W2" in lab.lis.by_specimen(), what="the released result at the LIS")
    oru = lab.lis.by_specimen()["W2"]
    assert field(oru, "OBX", 5) == "300" and field(oru, "PID", 3) == "PW"
    released = _audit(lab, "--event", "result_released", "--specimen", "W2")
    assert [(e["actor"], e["data"]["reason"]) for e in released] == [("web:rita", "repeat on fresh sample agrees")]
    queued = _audit(lab, "--event", "result_queued", "--specimen", "W2")
    assert [(e["actor"], e["ref"]) for e in queued] == [("web:rita", field(oru, "MSH", 10))]
    wait_until(lambda: _audit(lab, "--event", "result_delivered", "--specimen", "W2"), what="delivery audited")

    page.goto(f"{lab.url}/audit?specimen=W2")  # type: ignore[attr-defined]
    path = page.inner_text("#path")  # type: ignore[attr-defined]
    for step in ("message_received", "result_held", "result_released", "result_queued", "result_delivered"):
        assert step in path, step
    assert "repeat on fresh sample agrees" in path and "ACK AA" in path
    _shot(page, lab, "audit")
    page.click("#verify")  # type: ignore[attr-defined]
    assert "intact" in page.inner_text("#verification")  # type: ignore[attr-defined]

    page.goto(f"{lab.url}/messages")  # type: ignore[attr-defined]
    _shot(page, lab, "messages")
    message_id = _audit(lab, "--event", "result_received", "--specimen", "W2")[0]["data"]["message_id"]
    page.click(f"#messages a[href='/messages/{message_id}']")  # type: ignore[attr-defined]
    assert "<ENQ>" not in page.inner_text("#raw") and "<CR>" in page.inner_text("#raw")  # type: ignore[attr-defined]
    assert "ORU^R01" in page.inner_text("pre.oru") and page.inner_text("strong.ack") == "AA"  # type: ignore[attr-defined]
    _shot(page, lab, "message")

    views = [e for e in _audit(lab, "--event", "page_viewed", "--patient", "PW") if e["actor"] == "web:rita"]
    viewed = {str(e["data"]["path"]).split("?")[0] for e in views}
    assert {"/held", f"/results/{result_id}", "/audit", f"/messages/{message_id}"} <= viewed, viewed


def test_a_failed_login_is_refused_audited_and_then_throttled(page: object, lab: Lab) -> None:
    """A wrong password gets a neutral answer and a login_failed event; past the limit the login is
    refused unread (login_throttled), even with the right password."""
    _login(page, lab, "rita", "not-the-password")
    assert page.inner_text("#problem") == "name or password not accepted"  # type: ignore[attr-defined]
    _shot(page, lab, "login-failed")
    failed = _audit(lab, "--event", "login_failed")
    assert [(e["actor"], e["data"]["reason"]) for e in failed] == [("rita", "wrong password")]
    assert failed[0]["data"]["peer"] == "127.0.0.1"
    assert "not-the-password" not in json.dumps(_audit(lab)), "no password in the trail"

    _login(page, lab, "rita", "still-not-it")
    _login(page, lab, "rita")  # the right password, but the name is locked out for now
    assert "too many failed logins" in page.inner_text("#problem")  # type: ignore[attr-defined]
    assert page.locator("#whoami").count() == 0  # type: ignore[attr-defined]
    throttled = _audit(lab, "--event", "login_throttled")
    assert throttled and throttled[-1]["actor"] == "rita"


def test_an_auditor_reads_every_page_but_is_refused_a_release(page: object, lab: Lab) -> None:
    """The auditor sees the held result read-only; a release posted anyway is refused (403, audited) and
    the result stays held; the view itself is an audit event naming the auditor and the patient."""
    _login(page, lab, "audrey")
    page.wait_for_selector("#held-count")  # type: ignore[attr-defined]
    result_id = lab.held["V2"]
    page.goto(f"{lab.url}/results/{result_id}")  # type: ignore[attr-defined]
    assert page.inner_text("#state") == "held"  # type: ignore[attr-defined]
    assert page.locator("#release").count() == 0 and page.locator("#read-only").count() == 1  # type: ignore[attr-defined]
    _shot(page, lab, "result-auditor")

    csrf = page.get_attribute("header input[name=csrf]", "value")  # type: ignore[attr-defined]
    reply = page.request.post(f"{lab.url}/results/{result_id}/release",  # type: ignore[attr-defined]
                              form={"csrf": csrf, "reason": "auditor tries"})
    assert reply.status == 403 and "may not" in reply.text()
    # Still held (W2 may or may not have been released by the reviewer's test: the order is not fixed).
    assert "V2" in [h["specimen"] for h in json.loads(cli(lab.config, "review", "list", "--json"))]
    denied = _audit(lab, "--event", "access_denied")
    assert denied[-1]["actor"] == "web:audrey" and denied[-1]["data"]["needed"] == "review"
    assert not _audit(lab, "--event", "result_released", "--specimen", "V2")
    views = _audit(lab, "--event", "page_viewed", "--patient", "PV")
    assert any(e["actor"] == "web:audrey" and e["data"]["path"] == f"/results/{result_id}"
               and e["data"]["role"] == "auditor" for e in views)

    bad = page.request.post(f"{lab.url}/results/{result_id}/release",  # type: ignore[attr-defined]
                            form={"csrf": "forged", "reason": "x"})
    assert bad.status == 403 and _audit(lab, "--event", "csrf_refused")[-1]["actor"] == "web:audrey"


def test_the_admin_manages_users_and_sees_no_patient_data(page: object, lab: Lab) -> None:
    """The admin adds and disables an account in the browser; the patient pages refuse the admin."""
    _login(page, lab, "adam")
    page.wait_for_selector("#held-count")  # type: ignore[attr-defined]
    page.click("text=Users")  # type: ignore[attr-defined]
    page.fill("form.filters input[name=name]", "dora")  # type: ignore[attr-defined]
    page.select_option("form.filters select[name=role]", "director")  # type: ignore[attr-defined]
    page.fill("form.filters input[name=password]", "dora-directs-qc")  # type: ignore[attr-defined]
    page.click("form.filters button")  # type: ignore[attr-defined]
    assert "dora" in page.inner_text("#users")  # type: ignore[attr-defined]
    _shot(page, lab, "users")
    page.click("#users tr:has-text('dora') button")  # type: ignore[attr-defined]
    users = {u["name"]: u for u in json.loads(cli(lab.config, "user", "list", "--json"))}
    assert users["dora"]["role"] == "director" and users["dora"]["enabled"] is False
    assert [e["actor"] for e in _audit(lab, "--event", "user_disabled")] == ["web:adam"]
    page.goto(f"{lab.url}/held")  # type: ignore[attr-defined]
    assert page.locator(".error-page").count() == 1 and "may not" in page.inner_text("#error-message")  # type: ignore[attr-defined]

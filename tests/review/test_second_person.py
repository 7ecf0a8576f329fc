"""Second-person release (issue 15) in the shared review logic, on a real SQLite store fed by the real
intake: which holds need two people, the first signature, the second user's release, the refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from inline_runner import make_intake, receive

from labmw.config import Settings, parse
from labmw.daemon import review
from labmw.errors import ConfigError, StoreError, UsageError
from labmw.rules.second_person import second_person_reasons
from labmw.store import Store

START = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def settings(tmp_path: Path, **review_tbl: Any) -> Settings:
    doc: dict[str, Any] = {
        "service": {"data_dir": str(tmp_path)},
        "methods": {"ALT-T": {"analyte": "ALT", "units": "U/L", "critical_high": 1000,
                              "ranges": [{"low": 9, "high": 59}]}},
        "analyzers": {"c501": {"protocol": "astm", "transport": "tcp-server", "listen": "127.0.0.1:5001",
                               "map": {"ALTL": "ALT-T"}}},
        "qc": {"materials": {"ALT-L1": {"method": "ALT-T", "level": 1, "lot": "L1", "mean": 50, "sd": 2,
                                        "specimen_ids": ["QC1"]}}},
    }
    if review_tbl:
        doc["review"] = review_tbl
    return parse(doc, tmp_path / "lab.toml")


class Rig:
    def __init__(self, tmp_path: Path, cfg: Settings) -> None:
        self.now = START
        self.settings = cfg
        self.store = Store.open(tmp_path / "labmw.sqlite3")
        self.intake = make_intake(cfg, self.store, cfg.analyzers["c501"], clock=lambda: self.now)
        self.count = 0

    def astm(self, specimen: str, value: str, patient: str = "", flag: str = "N") -> None:
        self.count += 1
        self.now += timedelta(minutes=10)
        text = "\r".join([
            rf"H|\^&|||c501^1|||||host||P|1|2026112509{self.count:04d}", f"P|1||{patient}",
            f"O|1|{specimen}||^^^ALTL|R||20261125080000||||N||||||||||||||F",
            f"R|1|^^^ALTL|{value}|U/L||{flag}||F||||2026112509{self.count:04d}", "L|1|N", ""]).encode()
        assert receive(self.intake, text, "test").stored

    def held(self) -> dict[str, int]:
        return {h.specimen: h.id for h in self.store.held_results()}

    def decide(self, specimen_or_id: str | int, actor: str, decision: str = "release",
               reason: str = "checked") -> review.Decided:
        rid = specimen_or_id if isinstance(specimen_or_id, int) else self.held()[specimen_or_id]
        return review.decide(self.settings, self.store, rid, decision=decision, reason=reason, actor=actor,
                             now=self.now)

    def queued(self) -> list[str]:
        return [e.specimen for e in self.store.outbox(states=("pending",))]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    rig = Rig(tmp_path, settings(tmp_path))
    rig.astm("QC1", "50")  # an accepted run: patient results may flow
    yield rig
    rig.store.close()


def test_the_policy_names_critical_values_and_gates() -> None:
    policy = ("CRITICAL", "QC_FAILED")
    assert second_person_reasons(policy, gates=("QC_FAILED",), flags=("H",)) == ("QC_FAILED",)
    assert second_person_reasons(policy, gates=("ABSURD",), flags=("HH",)) == ("CRITICAL",)
    assert second_person_reasons(policy, gates=("QC_FAILED",), flags=("LL",)) == ("CRITICAL", "QC_FAILED")
    assert second_person_reasons(policy, gates=("NO_RANGE",), flags=("H",)) == ()
    assert second_person_reasons((), gates=("QC_FAILED",), flags=("HH",)) == ()


def test_config_default_shipped_and_refused_names(tmp_path: Path) -> None:
    assert settings(tmp_path).review.second_person == ("QC_FAILED",), "no [review]: the QC override needs two"
    assert settings(tmp_path, second_person=[]).review.second_person == ()
    assert settings(tmp_path, second_person=["ABSURD"]).review.second_person == ("ABSURD",)
    with pytest.raises(ConfigError, match=r"review\.second_person.*unknown name 'DELTAS'"):
        settings(tmp_path, second_person=["DELTAS"])
    with pytest.raises(ConfigError, match=r"review\.second_person"):
        settings(tmp_path, second_person="CRITICAL")
    with pytest.raises(ConfigError, match=r"review\.second_peson"):
        settings(tmp_path, second_peson=["CRITICAL"])
    shipped = Path(__file__).resolve().parents[2] / "config" / "labmw.toml"
    from labmw.config import load

    assert load(shipped).review.second_person == ("QC_FAILED",)


def test_a_qc_failed_hold_needs_two_different_people(rig: Rig) -> None:
    rig.astm("QC1", "58")  # z = +4: 1-3s, the run is rejected
    rig.astm("S1", "40", patient="P1")
    rid = rig.held()["S1"]
    first = rig.decide("S1", "alice", reason="control vial was mixed up")
    assert (first.state, first.needs, first.first_actor) == ("release_requested", ("QC_FAILED",), "alice")
    assert "needs a second person (QC_FAILED)" in first.message
    assert rig.held() == {"S1": rid} and rig.queued() == [], "still held after the first signature"
    requested = rig.store.audit_events(event="release_requested")
    assert [(e.actor, e.specimen, e.data["needs"], e.data["reason"]) for e in requested] == [
        ("alice", "S1", ["QC_FAILED"], "control vial was mixed up")]

    with pytest.raises(UsageError, match=r"needs a second person.*you \(alice\) signed the first"):
        rig.decide(rid, "alice", reason="really")
    assert rig.queued() == []

    second = rig.decide(rid, "bob", reason="agree: repeat in range")
    assert second.state == "released" and second.first_actor == "alice" and second.control_id
    assert "second signature; first by alice" in second.message
    assert rig.queued() == ["S1"] and rig.held() == {}
    (released,) = rig.store.audit_events(event="result_released")
    assert released.actor == "bob" and released.data["reason"] == "agree: repeat in range"
    assert released.data["first_signature"]["actor"] == "alice"
    signature = rig.store.release_signature(rid)
    assert signature is not None and (signature.outcome, signature.second_actor) == ("released", "bob")


def test_a_critical_value_needs_two_people_and_one_person_suffices_otherwise(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings(tmp_path, second_person=["CRITICAL", "QC_FAILED"]))  # a lab that opted in
    rig.astm("QC1", "50")
    rig.astm("QC1", "58")
    rig.astm("C1", "1500", patient="P2")  # HH and QC_FAILED
    rig.astm("QC1", "50")  # accepted again
    rig.astm("H1", "1500", patient="P3", flag="Samp.S")  # INSTRUMENT_FLAG and HH: critical
    rig.astm("N1", "-----", patient="P4")  # ABSURD, not critical
    assert rig.decide("C1", "alice").needs == ("CRITICAL", "QC_FAILED")
    assert rig.decide("H1", "alice").needs == ("CRITICAL",)
    one = rig.decide("N1", "alice")
    assert one.state == "released" and one.first_actor == "" and rig.queued() == ["N1"]
    assert sorted(rig.held()) == ["C1", "H1"]


def test_a_reject_ends_a_pending_request_and_a_race_is_refused_by_the_store(rig: Rig) -> None:
    rig.astm("QC1", "58")
    rig.astm("S1", "40", patient="P1")
    rig.astm("S2", "41", patient="P1")
    s1, s2 = rig.held()["S1"], rig.held()["S2"]
    rig.decide(s1, "alice")
    assert rig.decide(s1, "carol", decision="reject", reason="rerun instead").state == "rejected"
    signature = rig.store.release_signature(s1)
    assert signature is not None and (signature.outcome, signature.second_actor) == ("rejected", "carol")
    (rejected,) = rig.store.audit_events(event="result_rejected")
    assert rejected.data["first_signature"]["actor"] == "alice"
    with pytest.raises(StoreError, match="not held"):
        rig.decide(s1, "bob")
    # The store itself refuses a release that skips the first signature (another process, a race).
    with pytest.raises(StoreError, match="no first signature"):
        rig.store.decide_held(s2, decision="release", reason="x", actor="bob", now=rig.now, control_id="c",
                              payload=b"x", second_person=("QC_FAILED",))
    rig.decide(s2, "alice")
    with pytest.raises(StoreError, match="already has a release request by alice"):
        rig.store.sign_release(s2, needs=("QC_FAILED",), reason="again", actor="dave", now=rig.now)
    with pytest.raises(UsageError, match="reason is required"):
        rig.decide(s2, "bob", reason="  ")


def test_without_second_person_gates_one_release_sends_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings(tmp_path, second_person=[]))
    try:
        rig.astm("QC1", "50")
        rig.astm("QC1", "58")
        rig.astm("S1", "1500", patient="P1")
        assert rig.decide("S1", "alice").state == "released" and rig.queued() == ["S1"]
    finally:
        rig.store.close()

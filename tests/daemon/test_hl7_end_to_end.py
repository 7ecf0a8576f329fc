"""HL7 analyzers end to end: the real daemon with python-hl7 / hl7apy / mllp_send as analyzers and a
python-hl7 LIS; then the intake against a real store for what a live peer cannot easily provoke
(acknowledgement modes, counter resets, the duplicate window, a failing disk).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hl7.client import MLLPClient
from hl7apy.core import Message
import peers
from peers import MllpLis, daemon, free_port, labmw, wait_until

from labmw.config import AnalyzerSettings, Settings
from inline_runner import make_intake, receive

from labmw.daemon.hl7_adapter import ack_code
from labmw.mapping.hl7_inbound import Hl7Header
from labmw.model import Method, RangeRule
from labmw.store import Store
from labmw.wire.hl7_codec import parse_ack

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7"
MLLP_SEND = str(Path(sys.executable).with_name("mllp_send"))


def configure(tmp_path: Path, lis_port: int, analyzer_port: int) -> Path:
    """The README's commands, with an HL7 analyzer instead of the ASTM one.

    The IHE LAW sample's test 10020 is mapped to no method: this analyzer forwards such codes
    (``--unmapped forward``) instead of holding them, the default (#11).
    """
    return peers.configure(tmp_path, lis_port, analyzer_port, protocol="hl7", analyzer="mx", code="ALT",
                           unmapped="forward")


def hl7apy_oru(control_id: str, *, specimen: str, value: str, sex: str = "M") -> bytes:
    """An ORU^R01 v2.5.1 built by hl7apy (an independent implementation), SPM-2 carrying the specimen."""
    msg = Message("ORU_R01", version="2.5.1")
    msg.msh.msh_3, msg.msh.msh_4 = "MX", "LAB"
    msg.msh.msh_9, msg.msh.msh_10, msg.msh.msh_11 = "ORU^R01^ORU_R01", control_id, "P"
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_3, pid.pid_5, pid.pid_7, pid.pid_8 = "PT-1", "DOE^JOHN", "19800101", sex
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1, order.obr.obr_3, order.obr.obr_4, order.obr.obr_7 = "1", "F-1", "ALT^ALT^L", "20261125080000"
    obx = order.add_group("ORU_R01_OBSERVATION").obx
    obx.obx_1, obx.obx_2, obx.obx_3, obx.obx_5, obx.obx_6, obx.obx_11 = "1", "NM", "ALT^ALT^L", value, "U/L", "F"
    spm = order.add_group("ORU_R01_SPECIMEN").spm
    spm.spm_1, spm.spm_2, spm.spm_4 = "1", f"{specimen}&BARCODE", "SER^Serum^HL70487"
    msg.validate()
    return msg.to_er7().encode("utf-8") + b"\r"


def field(message: object, segment: str, number: int) -> str:
    """A whole field of a python-hl7 message as sent."""
    return str(message.segment(segment)[number])  # type: ignore[attr-defined]


def audit(config: Path, event: str) -> list[dict[str, object]]:
    """The audit events of one kind, through the CLI."""
    return json.loads(labmw(config, "audit", "list", "--event", event, "--json").stdout)


def test_hl7_analyzer_results_reach_the_lis_once_and_bad_messages_are_answered(tmp_path: Path) -> None:
    """ALT 85 (male adult) arrives at the LIS with OBX-8 H; a resend is ACKed but forwarded once;
    ADT^A01 gets AR and garbage AE on the same connection, which keeps serving; LAW via mllp_send gets AA.
    """
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=analyzer_port, log=tmp_path / "daemon.log"):
            first = hl7apy_oru("HA-1", specimen="E2E-1", value="85")
            with MLLPClient("127.0.0.1", analyzer_port) as client:
                client.socket.settimeout(10)
                ack = parse_ack(client.send_message(first).strip(b"\x0b\x1c\r") + b"\r")
                assert (ack.code, ack.control_id, ack.message_type) == ("AA", "HA-1", "ACK^R01^ACK")
                again = parse_ack(client.send_message(first).strip(b"\x0b\x1c\r") + b"\r")
                assert (again.code, again.control_id) == ("AA", "HA-1"), "an identical resend is ACKed again"
                adt = b"MSH|^~\\&|MX|LAB|||20261125090000||ADT^A01|ADT-1|P|2.5.1\rPID|||PT-1\r"
                rejected = parse_ack(client.send_message(adt).strip(b"\x0b\x1c\r") + b"\r")
                assert (rejected.code, rejected.control_id) == ("AR", "ADT-1")
                assert "Unsupported message type" in rejected.text
                garbage = b"MSH|^~\\&|MX|LAB|||x||ORU^R01|BAD-1|P|2.5.1\rPID|||PT-1\rOBR|1\r1|broken\r"
                error = parse_ack(client.send_message(garbage).strip(b"\x0b\x1c\r") + b"\r")
                assert (error.code, error.control_id) == ("AE", "BAD-1")
                assert "invalid segment ID" in error.text
                second = hl7apy_oru("HA-2", specimen="E2E-2", value="45", sex="F")
                last = parse_ack(client.send_message(second).strip(b"\x0b\x1c\r") + b"\r")
                assert (last.code, last.control_id) == ("AA", "HA-2"), "the connection kept serving"

            framed = tmp_path / "law.mllp"
            framed.write_bytes(b"\x0b" + (DATA / "medplum_2.hl7").read_bytes() + b"\x1c\r")
            sent = subprocess.run([MLLP_SEND, "--port", str(analyzer_port), "--file", str(framed), "127.0.0.1"],
                                  capture_output=True, timeout=30, check=True)
            assert b"MSA|AA|2019" in sent.stdout, "IHE LAW NE|AL gets its application ACK at once"

            wait_until(lambda: len(lis.received) >= 3, what="three results at the LIS")
            wait_until(lambda: len(audit(config, "result_delivered")) >= 3, what="deliveries audited")
    finally:
        lis.stop()

    got = lis.by_specimen()
    assert sorted(got) == ["140799", "E2E-1", "E2E-2"]
    assert len(lis.received) == 3, "the resend was not forwarded a second time"
    assert (field(got["E2E-1"], "OBX", 5), field(got["E2E-1"], "OBX", 8)) == ("85", "H")
    assert field(got["E2E-1"], "OBX", 7) == "9-59" and field(got["E2E-1"], "PID", 3) == "PT-1"
    assert (field(got["E2E-2"], "OBX", 8), field(got["E2E-2"], "OBX", 7)) == ("H", "8-41")
    duplicates = audit(config, "duplicate_message")
    assert len(duplicates) == 1 and duplicates[0]["data"]["control_id"] == "HA-1"  # type: ignore[index]
    reasons = sorted(str(e["data"]["reason"])[:6] for e in audit(config, "message_rejected"))  # type: ignore[index]
    assert reasons == ["AE 100", "AR 200"]
    assert labmw(config, "audit", "verify").returncode == 0
    log_text = (tmp_path / "daemon.log").read_text()
    assert "DOE" not in log_text and "19800101" not in log_text, "no patient data in operational logs"
    assert "hl7_duplicate_acknowledged" in log_text


# --- the intake against a real store -----------------------------------------------------------------

ANALYZER = AnalyzerSettings(name="mx", protocol="hl7", transport="tcp-server", map={"ALT": "ALT-T"},
                            encoding="utf-8")
ALT = Method(name="ALT-T", analyte="ALT", units="U/L",
             ranges=(RangeRule(low=Decimal(9), high=Decimal(59), sex="M"),))
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


class Rig:
    """A Store in tmp_path, a Pipeline with a settable clock, and the analyzer's intake."""

    def __init__(self, tmp_path: Path, analyzer: AnalyzerSettings = ANALYZER) -> None:
        self.now = T0
        self.path = tmp_path / "db.sqlite3"
        self.store = Store.open(self.path)
        settings = Settings(path=tmp_path / "lab.toml", data_dir=tmp_path, methods={"ALT-T": ALT},
                            analyzers={analyzer.name: analyzer})
        self.intake = make_intake(settings, self.store, analyzer, clock=lambda: self.now)
        self.analyzer = analyzer

    def send(self, payload: bytes) -> bytes:
        """The ACK the intake returns for ``payload``."""
        return receive(self.intake, payload).answer

    def count(self, table: str) -> int:
        """Rows in ``table``, read through a separate connection (what is committed)."""
        with sqlite3.connect(self.path) as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - test tables

    def events(self, event: str) -> list[object]:
        """Audit events of one kind."""
        return [e for e in self.store.audit_events() if e.event == event]


@pytest.fixture(name="rig")
def _rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.store.close()


def oru(control_id: str = "C1", *, value: str = "85", acks: str = "", msh7: str = "20261125085900") -> bytes:
    """A v2.5.1 ORU^R01 with one ALT result; ``acks`` is MSH-15|MSH-16 (``"NE|AL"``) or empty."""
    tail = f"|||{acks}" if acks else ""
    return (f"MSH|^~\\&|MX|LAB|LIS||{msh7}||ORU^R01^ORU_R01|{control_id}|P|2.5.1{tail}\r"
            "PID|||PT-1||DOE^JOHN||19800101|M\rOBR|1||S-1|ALT|||20261125080000\r"
            f"OBX|1|NM|ALT||{value}|U/L|||||F\r").encode()


@pytest.mark.parametrize(("acks", "expected"), [
    ("", "AA"), ("AL|AL", "CA"), ("AL|NE", "CA"), ("NE|AL", "AA"), ("ER|AL", "AA"), ("SU|NE", "CA"),
    ("NE|NE", None), ("ER|NE", None), ("|0", "AA"), ("|2", "AA"),
])
def test_acknowledgement_modes(rig: Rig, acks: str, expected: str | None) -> None:
    """Original mode AA; enhanced mode CA when MSH-15 asks, else the application ACK; Mindray MSH-16 is ignored."""
    reply = rig.send(oru(acks=acks))
    if expected is None:
        assert reply == b""
    else:
        assert parse_ack(reply).code == expected
    assert rig.count("results") == 1, "stored whatever the sender asked to hear"


def test_ack_code_for_negative_outcomes() -> None:
    """ER asks for an accept ACK only on errors; original mode answers AE/AR as such."""
    def header(accept: str, application: str) -> Hl7Header:
        return Hl7Header(sending_application="MX", sending_facility="", control_id="1", message_type="ORU",
                         trigger="R01", structure="", processing_id="P", version="2.5.1", accept_ack=accept,
                         application_ack=application)

    assert ack_code(header("ER", "AL"), "E") == "CE"
    assert ack_code(header("ER", "AL"), "R") == "CR"
    assert ack_code(header("NE", "ER"), "R") == "AR"
    assert ack_code(header("NE", "SU"), "E") is None
    assert ack_code(None, "E") == "AE"


def test_true_duplicate_is_acked_but_not_processed(rig: Rig) -> None:
    """Same sender, MSH-10 and content (MSH-7 aside) within 7 days: AA again, nothing stored twice."""
    assert parse_ack(rig.send(oru())).code == "AA"
    rig.now = T0 + timedelta(days=6)
    resend = rig.send(oru(msh7="20261201000000"))
    assert (parse_ack(resend).code, parse_ack(resend).control_id) == ("AA", "C1")
    assert (rig.count("messages"), rig.count("results"), rig.count("outbox")) == (1, 1, 1)
    assert len(rig.events("duplicate_message")) == 1


def test_duplicate_window_is_seven_days(rig: Rig) -> None:
    """After the window the same message is processed again."""
    rig.send(oru())
    rig.now = T0 + timedelta(days=8)
    rig.send(oru())
    assert rig.count("results") == 2 and rig.events("duplicate_message") == []


def test_counter_reset_is_processed_with_a_warning(rig: Rig) -> None:
    """Same MSH-10 with other content (Mindray MSH-10=1) is a new message, audited control_id_reused."""
    rig.send(oru("1", value="85"))
    assert parse_ack(rig.send(oru("1", value="90"))).code == "AA"
    assert rig.count("results") == 2
    (reused,) = rig.events("control_id_reused")
    assert reused.data["control_id"] == "1"  # type: ignore[attr-defined]


def test_storage_failure_answers_ae_207_and_commits_nothing(rig: Rig) -> None:
    """A failing disk never yields AA: AE with ERR-3 207, no rows; the resend later is stored once."""
    with sqlite3.connect(rig.path) as db:
        db.execute("CREATE TRIGGER fail BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    reply = rig.send(oru())
    ack = parse_ack(reply)
    assert (ack.code, ack.control_id) == ("AE", "C1") and b"ERR|||207^" in reply
    assert (rig.count("messages"), rig.count("results"), rig.count("outbox"), rig.count("inbound_keys")) == (0, 0, 0, 0)
    with sqlite3.connect(rig.path) as db:
        db.execute("DROP TRIGGER fail")
    assert parse_ack(rig.send(oru())).code == "AA"
    assert rig.count("results") == 1 and rig.events("duplicate_message") == []


def test_rejections_keep_the_raw_bytes_and_the_reason(rig: Rig) -> None:
    """AR for an unsupported version, AE for a missing OBX-11 and for undecodable input; raw kept each time."""
    old = oru().replace(b"|2.5.1", b"|2.2")
    no_status = oru().replace(b"|||||F\r", b"\r")
    answers = [parse_ack(rig.send(p)) for p in (old, no_status, b"\x00\x01binary")]
    assert [(a.code, a.control_id) for a in answers] == [("AR", "C1"), ("AE", "C1"), ("AE", "")]
    with sqlite3.connect(rig.path) as db:
        rows = db.execute("SELECT raw, outcome FROM messages ORDER BY id").fetchall()
    assert rows == [(old, "rejected"), (no_status, "rejected"), (b"\x00\x01binary", "rejected")]
    reasons = [e.data["reason"] for e in rig.events("message_rejected")]  # type: ignore[attr-defined]
    assert reasons[0].startswith("AR 203") and "OBX-11" in reasons[1] and reasons[2].startswith("AE 100")


def test_an_ack_is_never_acked(rig: Rig) -> None:
    """A message of type ACK is dropped: no reply, nothing stored."""
    assert rig.send(b"MSH|^~\\&|LIS||MX||x||ACK^R01^ACK|9|P|2.5.1\rMSA|AA|C1\r") == b""
    assert rig.count("messages") == 0


def test_lf_analyzer_and_law_sample(tmp_path: Path) -> None:
    """An analyzer configured with lf_segments gets AA for the LF-separated cobas pro LAW message."""
    analyzer = AnalyzerSettings(name="pro", protocol="hl7", transport="tcp-server", lf_segments=True,
                                encoding="utf-8")
    rig = Rig(tmp_path, analyzer)
    try:
        ack = parse_ack(rig.send((DATA / "medplum_1.hl7").read_bytes()))
        assert (ack.code, ack.control_id, ack.message_type) == ("AA", "97", "ACK^R22^ACK")
        assert rig.count("results") == 1
    finally:
        rig.store.close()


def test_results_keep_patient_data_for_the_rules(rig: Rig) -> None:
    """The stored result carries PID data and the evaluation used it (male adult range 9-59)."""
    rig.send(oru(value="85"))
    with sqlite3.connect(rig.path) as db:
        row = db.execute("SELECT patient_id, birth_date, sex, flags, applied_range FROM results").fetchone()
    assert row == ("PT-1", date(1980, 1, 1).isoformat(), "M", '["H"]', "9-59")


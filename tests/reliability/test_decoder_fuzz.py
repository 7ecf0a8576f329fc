"""Hostile bytes through the whole intake, not just one decoder: mutated real captures, cut at random
points, go through the ASTM link engine and the pipeline (decode, map, rules, ORU, a real SQLite
store), through the HL7 intake, and - as the LIS's answers - through the MLLP framer and ACK parser.
Nothing but labmw's typed errors may escape, and the real daemon must outlive a barrage of them.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import hl7
from fault_tools import Daemon, MakeLab, crashed_connections, fast_lis, mutate, poll, send_session, tune
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lis_peers import ScriptedLis
from peers import ENQ, EOT, alt_message, astm_frame, free_port, labmw

from inline_runner import make_intake, receive

from labmw.config import load
from labmw.errors import CodecError, WireError
from labmw.store import Store
from labmw.wire.astm_events import MessageReceived
from labmw.wire.astm_link import AstmLink
from labmw.wire.hl7_codec import parse_ack
from labmw.wire.mllp import BlockReceived, MllpFramer

DATA = Path(__file__).resolve().parents[1] / "data"
ASTM_CAPTURES = [p.read_bytes() for p in sorted((DATA / "astm").glob("*.astm"))]
HL7_CAPTURES = [p.read_bytes() for p in sorted((DATA / "hl7").glob("*.hl7"))]
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
VALUES = ["85", "<5", ">7000", "1E+999999", "-0", "NaN", "sNaN", "Infinity", "1e-999999", "\u0663\u0663",
          "85.00000000000000000000000000001", "", "   ", "-----", "1,5", "9" * 300, "0", "-85"]
SEXES = ["M", "F", "U", "", "X"]
BIRTHS = ["19800101", "20991231", "19000229", "2024", "", "00000000", "20261125"]


def _session(records: list[bytes]) -> bytes:
    return ENQ + b"".join(astm_frame(fn, r + b"\r") for fn, r in enumerate(records, start=1)) + EOT


@st.composite
def astm_streams(draw: st.DrawFn) -> list[bytes]:
    """A capture or an ALT message with odd values, mutated, then cut into reads at random points."""
    if draw(st.booleans()):
        base = draw(st.sampled_from(ASTM_CAPTURES))
    else:
        base = _session(alt_message(specimen=draw(st.sampled_from(["S1", "S2", "", "S^1"])), patient="PF",
                                    sex=draw(st.sampled_from(SEXES)), birth=draw(st.sampled_from(BIRTHS)),
                                    value=draw(st.sampled_from(VALUES)),
                                    status=draw(st.sampled_from(["F", "C", "P", ""]))))
    data = mutate(random.Random(draw(st.integers(0, 2**32))), base, draw(st.integers(0, 6)))
    cuts = sorted({draw(st.integers(0, len(data))) for _ in range(draw(st.integers(0, 6)))} | {0, len(data)})
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


def _fuzz_config(config: Path) -> Path:
    """The lab config plus a delta rule that holds, so the fuzz also reaches the delta and hold paths."""
    tune(config, "methods.ALT-T", delta={"abs": 20, "pct": 50, "window_days": 7, "action": "hold"})
    tune(config, "analyzers.c501", map={"ALTL": "ALT-T", "ALT": "ALT-T", "GLU": "ALT-NOP5P", "WBC": "ALT-P5P"})
    return config


def test_mutated_astm_captures_through_link_and_pipeline_raise_nothing_untyped(tmp_path: Path, lab: MakeLab) -> None:
    """Link engine + intake with a real store: the link raises only WireError, the intake nothing; every
    message is stored (accepted or rejected) and none needs the intake's last-resort ``intake_failed``."""
    settings_ = load(_fuzz_config(lab(free_port(), free_port())))
    store = Store.open(tmp_path / "fuzz.sqlite3")
    analyzer = settings_.analyzers["c501"]
    intake = make_intake(settings_, store, analyzer)

    @FUZZ
    @given(chunks=astm_streams(), policy=st.sampled_from(["strict", "warn", "ignore"]))
    def run(chunks: list[bytes], policy: str) -> None:
        link = AstmLink(checksum_policy=policy)
        now = 0.0
        for chunk in chunks:
            now += 1.0
            try:
                link.receive_data(chunk, now)
            except WireError:
                return  # typed: the pump logs it and closes the connection
            while (event := link.next_event()) is not None:
                if isinstance(event, MessageReceived):
                    outcome = receive(intake, event.raw, "127.0.0.1:1", text=event.text)
                    assert outcome.stored and outcome.message_id > 0
                    link.message_committed()
            link.data_to_send()

    try:
        run()
        assert [e.data for e in store.audit_events() if e.event == "intake_failed"] == []
    finally:
        store.close()


@st.composite
def hl7_payloads(draw: st.DrawFn) -> bytes:
    """A real HL7 capture or an ORU with odd values, mutated, maybe cut short."""
    if draw(st.booleans()):
        base = draw(st.sampled_from(HL7_CAPTURES))
    else:
        value = draw(st.sampled_from(VALUES))
        base = ("MSH|^~\\&|MX|LAB|||20261125090000||ORU^R01^ORU_R01|F-1|P|2.5.1\r"
                f"PID|||PT-1||DOE^JOHN||{draw(st.sampled_from(BIRTHS))}|{draw(st.sampled_from(SEXES))}\r"
                "OBR|1||F-1|ALT^ALT^L|||20261125080000\r"
                f"OBX|1|NM|ALT^ALT^L||{value}|U/L|||||F\rSPM|1|F-1&BARCODE\r").encode()
    data = mutate(random.Random(draw(st.integers(0, 2**32))), base, draw(st.integers(0, 6)))
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


def _sane_delimiters(payload: bytes) -> bool:
    """MSH-1/MSH-2 are five distinct punctuation characters (HL7 v2.5.1 2.5.4); with anything else (a
    letter as escape character, say) no ACK written in the sender's declared delimiters can be read."""
    head = payload[3:8]
    return (payload.startswith(b"MSH") and len(head) == 5 and len(set(head)) == 5
            and all(33 <= c < 127 and not chr(c).isalnum() for c in head))


def test_mutated_hl7_messages_through_the_intake_always_get_an_answer(tmp_path: Path, lab: MakeLab) -> None:
    """HL7 intake with a real store: never raises, and answers with a readable ACK (or nothing, for an ACK);
    readable as long as the sender's own MSH-1/MSH-2 delimiters are well-formed."""
    config = _fuzz_config(lab(free_port(), free_port()))
    tune(config, "analyzers.c501", protocol="hl7")
    settings_ = load(config)
    store = Store.open(tmp_path / "fuzz.sqlite3")
    analyzer = settings_.analyzers["c501"]
    intake = make_intake(settings_, store, analyzer)

    @FUZZ
    @given(payload=hl7_payloads())
    def run(payload: bytes) -> None:
        outcome = receive(intake, payload, "127.0.0.1:1")
        assert outcome.stored
        ack = outcome.answer
        if ack and _sane_delimiters(payload):
            # Read as latin-1: the ACK may echo the sender's own bytes (MSH-3/4 into MSH-5/6); what
            # matters is that the sender can read MSA-1.
            assert parse_ack(ack, "latin-1").code in ("AA", "AE", "AR", "CA", "CE", "CR")

    try:
        run()
        assert [e.data for e in store.audit_events() if e.event == "intake_failed"] == []
    finally:
        store.close()


ORU = hl7.parse("MSH|^~\\&|LABMW||LIS||20261125090000||ORU^R01^ORU_R01|abc-1|P|2.5.1\rPID|1||P1\r")


@st.composite
def lis_answers(draw: st.DrawFn) -> list[bytes]:
    """ACKs a LIS might send (codes, ERR segments), mutated, MLLP-framed, cut into reads."""
    ack = ORU.create_ack(draw(st.sampled_from(["AA", "AE", "AR", "CA", "CE", "CR", "", "ZZ"])), message_id="L1")
    text = str(ack)
    if draw(st.booleans()):
        text += "\rERR|^^^207&Application internal error&HL70357|||E|||disk\r"
    body = mutate(random.Random(draw(st.integers(0, 2**32))), text.encode(), draw(st.integers(0, 6)))
    data = b"\x0b" + body + b"\x1c\r"
    if draw(st.booleans()):
        data = mutate(random.Random(draw(st.integers(0, 2**32))), data, draw(st.integers(1, 3)))
    cuts = sorted({draw(st.integers(0, len(data))) for _ in range(draw(st.integers(0, 4)))} | {0, len(data)})
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


@FUZZ
@given(chunks=lis_answers())
def test_mutated_lis_answers_raise_only_codec_errors(chunks: list[bytes]) -> None:
    """What the LIS sends back goes through the MLLP framer and the ACK parser: CodecError or an Ack, nothing else."""
    framer = MllpFramer(max_size=1024 * 1024)
    for chunk in chunks:
        for event in framer.feed(chunk):
            if isinstance(event, BlockReceived):
                try:
                    ack = parse_ack(event.payload)
                except CodecError:
                    continue
                assert ack.code


def _barrage(port: int, streams: list[bytes]) -> None:
    """Send each stream on a fresh connection in small reads, then close; ignore what comes back."""
    for data in streams:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                for at in range(0, len(data), 97):
                    sock.sendall(data[at : at + 97])
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
        except OSError:
            pass  # cut off by the daemon: allowed


def test_a_barrage_of_mutated_captures_never_stops_the_daemon(tmp_path: Path, lab: MakeLab) -> None:
    """Hundreds of mutated ASTM and HL7 captures over TCP: the daemon stays up, nothing untyped escapes,
    and good data still flows afterwards."""
    lis_port, astm_port, hl7_port = free_port(), free_port(), free_port()
    config = _fuzz_config(lab(lis_port, astm_port))
    fast_lis(config)
    tune(config, "analyzers", mx={"protocol": "hl7", "transport": "tcp-server", "listen": f"127.0.0.1:{hl7_port}",
                                  "map": {"ALT": "ALT-T"}})
    rng = random.Random(7)
    astm = [mutate(rng, rng.choice(ASTM_CAPTURES), rng.randint(1, 8)) for _ in range(150)]
    hl7_blocks = [b"\x0b" + mutate(rng, rng.choice(HL7_CAPTURES), rng.randint(1, 8)) + b"\x1c\r" for _ in range(150)]
    work: list[Callable[[], None]] = [
        *(lambda part=astm[i::3]: _barrage(astm_port, part) for i in range(3)),
        *(lambda part=hl7_blocks[i::3]: _barrage(hl7_port, part) for i in range(3)),
    ]
    with ScriptedLis(lis_port) as lis:
        daemon = Daemon(config, astm_port, tmp_path / "daemon.log").start()
        try:
            threads = [threading.Thread(target=w, daemon=True) for w in work]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert daemon.alive(), "no input makes the daemon exit"
            send_session(astm_port, [alt_message(specimen="AFTERFUZZ", patient="PA", sex="M", birth="19800101",
                                                 value="40")])
            poll(lambda: "AFTERFUZZ" in {d.specimen for d in lis.deliveries()}, 30, "a good result after the barrage")
            crashed = crashed_connections(daemon)
            handle_failed = [e for e in daemon.log_events() if e.get("event") == "hl7_handle_failed"]
        finally:
            daemon.stop()
    assert crashed == [], crashed[:3]
    assert handle_failed == [], handle_failed[:3]
    assert labmw(config, "audit", "verify").returncode == 0

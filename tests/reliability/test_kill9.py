"""kill -9 of the daemon at chosen moments: mid-receipt, after the commit but before the analyzer saw
the ACK, while the LIS holds an ORU unacknowledged, and at random moments under traffic.

What must hold after a restart (PRODUCT.md guarantees 1 and 2): every result whose transfer the
analyzer saw completed reaches the LIS; no result reaches the LIS under two different MSH-10s; a
transfer cut before its final frame is not forwarded (and, when the daemon lives to see the cut,
is audited as incomplete).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from fault_tools import (
    AstmPeer,
    Daemon,
    MakeLab,
    Relay,
    audit_events,
    db_rows,
    fast_lis,
    outbox,
    poll,
    running,
    send_session,
)
from lis_peers import Ack, Delivery, ScriptedLis, Silent
from peers import ACK, alt_message, free_port, labmw


def _msg(specimen: str) -> list[bytes]:
    return alt_message(specimen=specimen, patient="P" + specimen, sex="F", birth="19750615", value="45")


def _settled(db: Path, lis: ScriptedLis) -> bool:
    """Nothing pending, and the LIS has seen every delivered entry."""
    entries = outbox(db)
    delivered = {e["control_id"] for e in entries if e["state"] == "delivered"}
    return bool(entries) and all(e["state"] == "delivered" for e in entries) and delivered <= {
        d.control_id for d in lis.deliveries()}


def _results(db: Path, specimen: str) -> int:
    return len(db_rows(db, "SELECT id FROM results WHERE specimen = ?", specimen))


def test_kill_mid_transfer_keeps_the_completed_message_and_drops_the_partial_one(tmp_path: Path, lab: MakeLab) -> None:
    """Killed in the middle of a session: the message ACKed before reaches the LIS; the cut one only once resent."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config)
    db = tmp_path / "data" / "labmw.sqlite3"
    with ScriptedLis(lis_port) as lis:
        daemon = Daemon(config, port, tmp_path / "daemon.log").start()
        try:
            peer = AstmPeer(port)
            assert peer.enq() == ACK
            assert set(peer.message(_msg("MID1"))) == {ACK}, "MID1 complete: the analyzer saw its final ACK"
            second = _msg("MID2")
            assert set(peer.message(second[:3])) == {ACK}
            peer.frame(second[3], wait=False)  # the R record is on the wire when the daemon dies
            daemon.kill9()
            peer.close()
            assert _results(db, "MID2") == 0, "nothing of the cut transfer was stored"

            daemon.start()
            send_session(port, [second])  # the analyzer sends the failed message again, whole
            poll(lambda: _settled(db, lis) and len(outbox(db)) == 2, 20, "both results delivered")
        finally:
            daemon.stop()
    ids = lis.control_ids_by_specimen()
    assert set(ids) == {"MID1", "MID2"} and all(len(v) == 1 for v in ids.values()), ids
    assert _results(db, "MID2") == 1


def test_transfer_cut_before_its_final_frame_is_audited_and_never_forwarded(tmp_path: Path, lab: MakeLab) -> None:
    """The analyzer drops the link before the final frame (after ETX records, or inside an ETB-split record)."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config)
    db = tmp_path / "data" / "labmw.sqlite3"
    with ScriptedLis(lis_port) as lis, running(config, port, tmp_path / "daemon.log"):
        cut_after_r = AstmPeer(port)
        assert cut_after_r.enq() == ACK
        assert set(cut_after_r.message(_msg("CUT1")[:4])) == {ACK}  # H P O R, never L
        cut_after_r.close()

        cut_in_etb = AstmPeer(port)
        records = _msg("CUT2")
        assert cut_in_etb.enq() == ACK
        assert set(cut_in_etb.message(records[:3])) == {ACK}
        r_record = records[3] + b"\r" + records[4]  # R and L in one record stream, split mid-R
        assert cut_in_etb.frame(r_record[:20], final=False) == ACK  # an intermediate (ETB) frame
        cut_in_etb.close()

        send_session(port, [_msg("AFTER1")])
        poll(lambda: _settled(db, lis), 15, "the complete message after the cut ones delivered")
        poll(lambda: len(audit_events(db, "transfer_incomplete")) >= 2, 10, "both cuts audited")
    incomplete = audit_events(db, "transfer_incomplete")
    assert len(incomplete) == 2 and all(e["data"]["bytes"] > 0 and e["data"]["reason"] for e in incomplete)
    assert [d.specimen for d in lis.deliveries()] == ["AFTER1"], "a cut transfer is never forwarded"
    assert _results(db, "CUT1") == 0 and _results(db, "CUT2") == 0


def test_kill_after_commit_before_the_analyzer_saw_the_ack_gives_one_msh10(tmp_path: Path, lab: MakeLab) -> None:
    """Committed, ACK still on the way, kill -9: the analyzer resends after restart; the LIS sees one MSH-10."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config)
    db = tmp_path / "data" / "labmw.sqlite3"
    with ScriptedLis(lis_port) as lis:
        daemon = Daemon(config, port, tmp_path / "daemon.log").start()
        try:
            relay = Relay(port)
            peer = AstmPeer(relay.port)
            records = _msg("DUP1")
            assert peer.enq() == ACK
            assert set(peer.message(records[:-1])) == {ACK}
            relay.hold.set()
            peer.frame(records[-1], wait=False)
            poll(lambda: bytes(relay.held) == ACK, 10, "the daemon's ACK of the final frame (sent after commit)")
            assert _results(db, "DUP1") == 1, "committed before the ACK"
            daemon.kill9()
            relay.cut()
            assert peer.reply(timeout=5) == b"", "the analyzer never saw the ACK"
            peer.close()

            daemon.start()
            send_session(port, [records])  # E1381: no reply to the final frame, so the message is sent again
            poll(lambda: _settled(db, lis), 20, "the queue drained")
        finally:
            daemon.stop()
    ids = lis.control_ids_by_specimen()["DUP1"]
    assert len(ids) == 1, f"DUP1 reached the LIS under {len(ids)} different MSH-10s: {sorted(ids)}"


def test_kill_while_the_lis_holds_an_unacknowledged_oru_resends_the_same_msh10(tmp_path: Path, lab: MakeLab) -> None:
    """The LIS has the ORU but has not ACKed when the daemon dies: after restart the same bytes and MSH-10
    come again."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config, ack_timeout=30.0)

    def script(d: Delivery) -> Ack | Silent:
        return Silent() if d.attempt == 1 else Ack("AA")

    db = tmp_path / "data" / "labmw.sqlite3"
    with ScriptedLis(lis_port, script) as lis:
        daemon = Daemon(config, port, tmp_path / "daemon.log").start()
        try:
            send_session(port, [_msg("HELD1")])
            poll(lambda: lis.deliveries(), 10, "the ORU at the LIS")
            daemon.kill9()
            assert [e["state"] for e in outbox(db)] == ["pending"], "not delivered without an ACK"
            daemon.start()
            poll(lambda: _settled(db, lis), 20, "delivery after restart")
        finally:
            daemon.stop()
    got = lis.deliveries()
    assert len(got) == 2 and got[0].control_id == got[1].control_id and got[0].payload == got[1].payload
    assert len(audit_events(db, "result_delivered")) == 1


def test_kill9_at_random_moments_under_traffic_loses_no_acknowledged_result(tmp_path: Path, lab: MakeLab) -> None:
    """Four kill -9s while an analyzer keeps sending and the forwarder forwarding: every ACKed result arrives,
    one MSH-10 each, nothing whose final frame was never sent, and the audit chain still verifies."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config, retry_initial=0.1, retry_max=0.3)
    db = tmp_path / "data" / "labmw.sqlite3"
    acknowledged: list[str] = []
    final_sent: set[str] = set()
    stop, done = threading.Event(), threading.Event()

    def analyzer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            specimen = f"RND{i}"
            records = _msg(specimen)
            try:
                peer = AstmPeer(port, timeout=5)
            except OSError:
                time.sleep(0.05)  # the daemon is restarting; this message is never begun
                continue
            try:
                if peer.enq() != ACK or set(peer.message(records[:-1])) != {ACK}:
                    continue
                final_sent.add(specimen)
                if peer.frame(records[-1]) == ACK:
                    acknowledged.append(specimen)
                    peer.eot()
            except OSError:
                pass
            finally:
                peer.close()
        done.set()

    rng = random.Random(9)
    with ScriptedLis(lis_port) as lis:
        daemon = Daemon(config, port, tmp_path / "daemon.log").start()
        try:
            thread = threading.Thread(target=analyzer, daemon=True)
            thread.start()
            for _ in range(4):  # the analyzer sends without pause until told to stop: each kill lands in traffic
                time.sleep(rng.uniform(0.2, 0.8))
                before = len(acknowledged)
                daemon.kill9()
                daemon.start()
                poll(lambda before=before: len(acknowledged) > before, 10, "traffic again after the restart")
            stop.set()
            thread.join(30)
            assert done.is_set(), "the analyzer finished its run"
            poll(lambda: _settled(db, lis), 30, "every stored result delivered")
        finally:
            daemon.stop()
    ids = lis.control_ids_by_specimen()
    assert len(acknowledged) >= 20, "enough traffic around the kills to mean something"
    missing = [s for s in acknowledged if s not in ids]
    assert not missing, f"ACKed by labmw but never reached the LIS: {missing}"
    assert all(len(v) == 1 for v in ids.values()), {s: v for s, v in ids.items() if len(v) > 1}
    assert set(ids) <= final_sent, "only transfers whose final frame was sent can be forwarded"
    assert labmw(config, "audit", "verify").returncode == 0, "the hash chain survives kill -9"

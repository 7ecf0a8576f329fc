"""Storage faults for real: the data directory on a small tmpfs that the test fills until ENOSPC, and
a data directory that is read-only — each in a private mount namespace of the daemon's own (the
rest of the machine sees nothing). PRODUCT.md guarantee 1: storage failure means NAK, never a
false ACK; the daemon recovers by itself when space returns.

A data directory cannot be made read-only under the running daemon: as root chmod does not stop
us, and the kernel refuses to remount a bind mount read-only (EBUSY) while the daemon holds the
database open for writing. So the read-only case is the daemon started on a read-only directory.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from fault_tools import (
    AstmPeer,
    Daemon,
    MakeLab,
    add_hl7_analyzer,
    audit_events,
    db_rows,
    fast_lis,
    hl7_exchange,
    hl7_oru,
    outbox,
    poll,
)
from lis_peers import ScriptedLis
from mount_faults import NamespacedDb, PrivateMount
from peers import ACK, LABMW, alt_message, free_port

NAK = b"\x15"


def _msg(specimen: str) -> list[bytes]:
    return alt_message(specimen=specimen, patient="P" + specimen, sex="M", birth="19800101", value="66")


def test_disk_full_naks_the_final_frame_and_recovers_when_space_returns(tmp_path: Path, lab: MakeLab) -> None:
    """ENOSPC: the ASTM final frame is NAKed and an HL7 message gets AE (never an ACK/AA), and why is logged;
    after space returns the resends are accepted and everything, including what was queued during the
    outage, reaches the LIS once - without a restart."""
    lis_port, port, hl7_port = free_port(), free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config, retry_initial=0.2, retry_max=0.5)
    add_hl7_analyzer(config, hl7_port)
    data = tmp_path / "data"
    with PrivateMount(data, size="8m") as disk:
        db = NamespacedDb(data / "labmw.sqlite3", disk.prefix)
        lis = ScriptedLis(lis_port).start()
        daemon = Daemon(config, port, tmp_path / "daemon.log", prefix=disk.prefix).start()
        try:
            send = AstmPeer(port)
            assert send.enq() == ACK and set(send.message(_msg("FULL0"))) == {ACK}
            send.eot()
            send.close()
            poll(lambda: [e for e in outbox(db) if e["state"] == "delivered"], 10, "FULL0 delivered")

            lis.stop()  # the LIS goes down: the forwarder keeps retrying (and writing) during the fault
            send = AstmPeer(port)
            assert send.enq() == ACK and set(send.message(_msg("FULL1"))) == {ACK}
            send.eot()
            send.close()
            poll(lambda: audit_events(db, "delivery_failed"), 10, "FULL1 failing while the LIS is down")

            disk.fill()
            peer = AstmPeer(port, timeout=20)
            records = _msg("FULL2")
            assert peer.enq() == ACK and set(peer.message(records[:-1])) == {ACK}
            answers_while_full = []
            for _ in range(3):  # E1381: the sender retransmits a NAKed frame (up to 6 times)
                begun = time.monotonic()
                answers_while_full.append((peer.frame(records[-1]), time.monotonic() - begun))
                peer.fn -= 1
                time.sleep(0.5)
            assert [a for a, _ in answers_while_full] == [NAK] * 3, "nothing is ACKed while it cannot be stored"
            assert all(took < 10 for _, took in answers_while_full), "the refusal comes within the analyzer's timer"
            assert daemon.alive(), "a full disk does not stop the daemon"
            not_stored = [e for e in daemon.log_events() if e.get("event") == "astm_message_not_stored"]
            assert len(not_stored) == 3 and "full" in not_stored[0]["error"], "why it was refused is logged"
            hl7 = socket.create_connection(("127.0.0.1", hl7_port), timeout=20)
            assert hl7_exchange(hl7, hl7_oru("DF-1", "FULLH")) == "AE", "HL7: AE, never AA, while nothing can be stored"

            disk.free()
            assert peer.frame(records[-1]) == ACK, "the retransmission is accepted once space returns, no restart"
            peer.eot()
            peer.close()
            assert hl7_exchange(hl7, hl7_oru("DF-1", "FULLH")) == "AA", "HL7: the resend is accepted"
            hl7.close()
            lis_back = ScriptedLis(lis_port).start()
            try:
                poll(lambda: len(outbox(db)) == 4 and all(e["state"] == "delivered" for e in outbox(db)), 15,
                     "everything delivered once the disk has space and the LIS is back")
            finally:
                lis_back.stop()
            stored_full2 = len(db_rows(db, "SELECT id FROM results WHERE specimen = 'FULL2'"))
            refusals = audit_events(db, "storage_refusals")
            verify = subprocess.run([*disk.prefix, *LABMW, "--config", str(config), "audit", "verify"],
                                    capture_output=True, text=True, timeout=60)
        finally:
            daemon.stop()
            lis.stop()
    assert stored_full2 == 1
    # 3 ASTM NAKs and 1 HL7 AE: refusals of both protocols are counted (issue 17) and audited once space returns.
    assert len(refusals) == 1 and refusals[0]["data"]["refusals"] == 4, "the refusals are audited once space returns"
    assert "full" in refusals[0]["data"]["first_error"]
    ids = {**lis.control_ids_by_specimen(), **lis_back.control_ids_by_specimen()}
    assert set(ids) == {"FULL0", "FULL1", "FULL2", "FULLH"} and all(len(v) == 1 for v in ids.values()), ids
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_read_only_data_dir_is_refused_at_start_and_nothing_is_acknowledged(tmp_path: Path, lab: MakeLab) -> None:
    """On a read-only data directory the daemon exits non-zero with a clear reason and never takes a message."""
    port = free_port()
    config = lab(free_port(), port)
    with PrivateMount(tmp_path / "data", read_only=True) as ro:
        daemon = Daemon(config, None, tmp_path / "daemon.log", prefix=ro.prefix).start()
        accepted = False
        deadline = time.monotonic() + 15
        while daemon.alive() and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                accepted = True
            except OSError:
                time.sleep(0.05)
        still_running = daemon.alive()
        code = daemon.stop()
    text = (tmp_path / "daemon.log").read_text()
    assert not still_running and code not in (0, None), "the daemon refuses to run without a writable store"
    assert not accepted, "no analyzer connection is taken that could not be stored"
    assert "Read-only" in text or "read-only" in text, f"the reason is given: {text[-800:]}"
    assert "Traceback" not in text, "one clear line, not a traceback"

"""Integrity and back-pressure, for real (issue #17, and #10 items 5 and 7): a writer of the database
file, a LIS that says "unavailable" or stops reading, a row labmw did not write, a full disk.

Each tampering is done as someone holding the file would do it: plain sqlite3 on the file while the
daemon is stopped, triggers dropped where they stand in the way, hashes recomputed with the published
algorithm (sha256(prev_hash || canonical JSON)). The daemon is a real process, the LIS a real MLLP
server, the analyzer a real ASTM sender.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fault_tools import (
    Daemon,
    MakeLab,
    at_least,
    audit_events,
    cli_json,
    db_rows,
    fast_lis,
    outbox,
    poll,
    running,
    send_session,
    tune,
)
from lis_peers import Ack, ScriptedLis, Silent
from mount_faults import NamespacedDb, PrivateMount
from peers import LABMW, alt_message, free_port, labmw
from typer.testing import CliRunner

from labmw.cli import app
from labmw.model import Evaluation, Result
from labmw.store import Store
from labmw.store.audit import make_row


def _msg(specimen: str, value: str = "70") -> list[bytes]:
    return alt_message(specimen=specimen, patient="P" + specimen, sex="M", birth="19800101", value=value)


def _db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "labmw.sqlite3"


def _queued(tmp_path: Path, config: Path, port: int, messages: list[list[bytes]]) -> None:
    """Send ``messages`` while the LIS is down, wait until each is queued, stop the daemon."""
    with running(config, port, tmp_path / "first.log"):
        send_session(port, messages)
        poll(lambda: len(outbox(_db(tmp_path))) == len(messages), 15, "every result queued")


def _delivered(tmp_path: Path, config: Path, port: int, lis_port: int, messages: list[list[bytes]], *,
               total: int | None = None) -> str:
    """Send ``messages`` with the LIS up, wait until ``total`` (default: that many) entries are
    delivered, stop; returns the head the daemon logged at stop (the anchor an operator keeps from
    the journal)."""
    log = tmp_path / f"run-{time.monotonic_ns()}.log"
    expected = total if total is not None else len(messages)
    with ScriptedLis(lis_port), running(config, port, log) as daemon:
        send_session(port, messages)
        poll(lambda: len(outbox(_db(tmp_path))) == expected
             and all(e["state"] == "delivered" for e in outbox(_db(tmp_path))), 15, "every result delivered")
    return _logged_head(daemon)


def _logged_head(daemon: Daemon) -> str:
    heads = [e for e in daemon.log_events() if e.get("event") == "audit_head" and e.get("reason") == "stop"]
    assert heads, "the daemon logs the audit head when it stops"
    return str(heads[-1]["head"])


def _sql(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


DROP_TRIGGERS = ("DROP TRIGGER IF EXISTS audit_no_update", "DROP TRIGGER IF EXISTS audit_no_delete",
                 "DROP TRIGGER IF EXISTS audit_append_only")


def _rechain(db: Path) -> None:
    """Recompute every event's link and hash, as an attacker who knows the algorithm would."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        for statement in DROP_TRIGGERS:
            conn.execute(statement)
        prev = "0" * 64
        for row in conn.execute("SELECT * FROM audit ORDER BY seq").fetchall():
            body = {name: row[name] for name in ("ts", "event", "actor", "analyzer", "specimen", "patient", "ref",
                                                 "data")} | {"seq": row["seq"]}
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            digest = hashlib.sha256(prev.encode() + canonical).hexdigest()
            conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, row["seq"]))
            prev = digest
    finally:
        conn.close()


def _verify(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`labmw audit verify ARGS`, in process (the daemon is stopped; a subprocess each time is slow here)."""
    result = CliRunner().invoke(app, ["--config", str(config), "audit", "verify", *args])
    return subprocess.CompletedProcess(["labmw", "audit", "verify", *args], result.exit_code,
                                       result.stdout, result.stderr)


# --- stored data bound to the trail ------------------------------------------------------------------
def test_an_edited_queued_payload_is_refused_never_sent_and_named_by_verify(tmp_path: Path, lab: MakeLab) -> None:
    """ALT 110 edited to 11 in the queued ORU while the daemon is stopped: `audit verify` names the
    entry; at restart it is refused (dead letter, audited, one alert) and never reaches the LIS, while
    the entry behind it is delivered."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config)
    db = _db(tmp_path)
    _queued(tmp_path, config, port, [_msg("TAMP1", "110"), _msg("TAMP2", "70")])
    _sql(db, "UPDATE outbox SET payload = CAST(replace(CAST(payload AS TEXT), '|110|', '|11|') AS BLOB)"
             " WHERE id = (SELECT min(id) FROM outbox)")
    assert b"|11|" in bytes(db_rows(db, "SELECT payload FROM outbox ORDER BY id LIMIT 1")[0][0])
    verdict = _verify(config)

    with ScriptedLis(lis_port) as lis, running(config, port, tmp_path / "daemon.log"):
        poll(lambda: {e["state"] for e in outbox(db)} == {"dead", "delivered"}, 15, "one refused, one delivered")
        time.sleep(0.5)  # would a refused entry be retried? (it must not)
        got = lis.deliveries()
        queue = cli_json(config, "queue", "list")

    assert verdict.returncode == 1 and "outbox row 1" in verdict.stderr and "does not match" in verdict.stderr
    assert [d.specimen for d in got] == ["TAMP2"], "the edited payload is never sent"
    assert [(e["specimen"], e["state"]) for e in queue] == [("TAMP1", "dead")]
    assert "refused" in queue[0]["last_error"] and "hash recorded in audit event" in queue[0]["last_error"]
    (refused,) = audit_events(db, "delivery_refused")
    assert refused["specimen"] == "TAMP1" and "does not match" in refused["data"]["reason"]
    alerts = [a for a in audit_events(db, "alert_raised") if a["data"]["alert"] == "outbox_entry_refused"]
    assert len(alerts) == 1


def test_edited_result_and_message_rows_are_named_by_verify(tmp_path: Path, lab: MakeLab) -> None:
    """results.raw_value and messages.raw edited after delivery: `audit verify` fails naming each row."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    db = _db(tmp_path)
    _delivered(tmp_path, config, port, lis_port, [_msg("EDIT1", "110")])
    assert _verify(config).returncode == 0
    backup = tmp_path / "clean.sqlite3"
    shutil.copy2(db, backup)

    _sql(db, "UPDATE results SET raw_value = '11', value = '11'")
    edited_result = _verify(config)
    shutil.copy2(backup, db)
    _sql(db, "UPDATE messages SET raw = CAST(replace(CAST(raw AS TEXT), '|110|', '|11|') AS BLOB)")
    assert b"|11|" in bytes(db_rows(db, "SELECT raw FROM messages")[0][0])
    edited_message = _verify(config)

    assert edited_result.returncode == 1 and "results row 1" in edited_result.stderr, edited_result.stderr
    assert edited_message.returncode == 1 and "messages row 1" in edited_message.stderr, edited_message.stderr


def test_a_recomputed_chain_is_caught_by_the_seals_or_the_anchor(tmp_path: Path, lab: MakeLab) -> None:
    """An edit, then every hash recomputed: the seal no longer matches the row. An attacker who also
    rewrites the seal gets a chain that is consistent in itself, which only the anchor kept outside
    the file (the journal's audit_head) can tell from the real one."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    db = _db(tmp_path)
    head = _delivered(tmp_path, config, port, lis_port, [_msg("CHAIN1", "110")])
    assert _verify(config, "--expect-head", head).returncode == 0
    backup = tmp_path / "clean.sqlite3"
    shutil.copy2(db, backup)

    _sql(db, *DROP_TRIGGERS, "UPDATE results SET raw_value = '11', value = '11'")
    _rechain(db)
    rows_only = _verify(config)

    shutil.copy2(backup, db)
    _sql(db, *DROP_TRIGGERS, "UPDATE results SET raw_value = '11', value = '11'")
    conn = sqlite3.connect(db, isolation_level=None)
    from labmw.store.seals import SEALED, row_hash

    (row,) = conn.execute(f"SELECT {', '.join(SEALED['results'])} FROM results").fetchall()
    seq, data = conn.execute("SELECT seq, data FROM audit WHERE event = 'result_received'").fetchone()
    record = json.loads(data)
    record["stored"][0]["sha256"] = row_hash("results", row)
    conn.execute("UPDATE audit SET data = ? WHERE seq = ?",
                 (json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False), seq))
    conn.close()
    _rechain(db)
    without_anchor = _verify(config)
    with_anchor = _verify(config, "--expect-head", head)

    assert rows_only.returncode == 1 and "results row 1" in rows_only.stderr, rows_only.stderr
    assert without_anchor.returncode == 0, "a fully rewritten chain is consistent in itself..."
    assert with_anchor.returncode == 1 and "differs from the anchor" in with_anchor.stderr, with_anchor.stderr


def test_a_rebuilt_short_chain_is_refused_at_start_and_by_verify_with_the_anchor(tmp_path: Path,
                                                                                 lab: MakeLab) -> None:
    """The whole trail replaced by two fresh, valid events: `audit verify --expect-head` fails, and the
    daemon will not start on it (its checkpoint is gone) unless told to, which is audited."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    db = _db(tmp_path)
    head = _delivered(tmp_path, config, port, lis_port, [_msg("SHORT1")])
    _sql(db, *DROP_TRIGGERS, "DELETE FROM audit")
    conn = sqlite3.connect(db, isolation_level=None)
    row = make_row((0, "0" * 64), "service_started", ts=datetime.now(UTC), actor="labmw")
    conn.execute("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
    conn.execute("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                 make_row((row[0], row[-1]), "service_stopped", ts=datetime.now(UTC), actor="labmw"))
    conn.close()
    anchored = _verify(config, "--expect-head", head)
    refused = subprocess.run([*LABMW, "--config", str(config), "run"], capture_output=True, text=True, timeout=30,
                             check=False)
    with ScriptedLis(lis_port), (tmp_path / "accepted.log").open("wb") as out:
        proc = subprocess.Popen([*LABMW, "--config", str(config), "run", "--accept-broken-trail"],
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            poll(lambda: audit_events(db, "audit_trail_broken_accepted"), 15, "the override audited")
        finally:
            proc.terminate()
            proc.wait(15)

    assert anchored.returncode == 1 and "missing" in anchored.stderr, anchored.stderr
    assert refused.returncode == 1 and "audit trail BROKEN" in refused.stderr, refused.stderr + refused.stdout
    assert "--accept-broken-trail" in refused.stderr
    (accepted,) = audit_events(db, "audit_trail_broken_accepted")
    assert "checkpoint" in accepted["data"]["reason"]


def test_an_older_copy_of_the_file_and_a_truncated_tail_fail_verify_with_the_anchor(tmp_path: Path,
                                                                                   lab: MakeLab) -> None:
    """A copy of the file from before the last delivery put back, or the newest events deleted: each is
    a valid chain, and `audit verify --expect-head` with the head from the journal says it is not the
    trail that was (#10 item 7: truncation, older copy)."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    db = _db(tmp_path)
    _delivered(tmp_path, config, port, lis_port, [_msg("OLD1")])
    older = tmp_path / "older"
    shutil.copytree(db.parent, older)
    head = _delivered(tmp_path, config, port, lis_port, [_msg("OLD2")], total=2)
    current = tmp_path / "current"
    shutil.copytree(db.parent, current)

    shutil.rmtree(db.parent)
    shutil.copytree(older, db.parent)
    older_plain, older_anchored = _verify(config), _verify(config, "--expect-head", head)

    shutil.rmtree(db.parent)
    shutil.copytree(current, db.parent)
    seq = int(head.split(":")[0])
    _sql(db, *DROP_TRIGGERS, f"DELETE FROM audit WHERE seq > {seq - 2}")  # the stop and the last delivery
    truncated_plain, truncated_anchored = _verify(config), _verify(config, "--expect-head", head)

    assert older_plain.returncode == 0 and truncated_plain.returncode == 0, "each is a valid chain by itself"
    assert older_anchored.returncode == 1 and f"anchored event {seq} is missing" in older_anchored.stderr
    assert truncated_anchored.returncode == 1 and f"anchored event {seq} is missing" in truncated_anchored.stderr
    head_now = labmw(config, "audit", "head", "--json")
    assert json.loads(head_now.stdout)["seq"] == seq - 2


# --- back-pressure and isolation ---------------------------------------------------------------------
def test_a_poisoned_outbox_row_is_dead_lettered_and_the_rest_delivered(tmp_path: Path, lab: MakeLab) -> None:
    """A payload stored as TEXT: the entry is dead-lettered with the reason, every other entry is
    delivered, and `queue list` shows it (no "internal error")."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config)
    db = _db(tmp_path)
    _queued(tmp_path, config, port, [_msg(s) for s in ("POIS1", "POIS2", "POIS3")])
    _sql(db, "UPDATE outbox SET payload = CAST(payload AS TEXT) WHERE id = (SELECT min(id) FROM outbox)")
    listed = labmw(config, "queue", "list", check=False)

    with ScriptedLis(lis_port) as lis, running(config, port, tmp_path / "daemon.log"):
        poll(lambda: sorted(e["state"] for e in outbox(db)) == ["dead", "delivered", "delivered"], 15,
             "the poisoned entry dead-lettered, the rest delivered")
        got = lis.deliveries()
        table = labmw(config, "queue", "list", check=False)

    assert listed.returncode == 0 and "internal error" not in listed.stdout + listed.stderr
    assert [d.specimen for d in got] == ["POIS2", "POIS3"]
    assert table.returncode == 0 and "payload stored as str" in table.stdout, table.stdout + table.stderr
    (refused,) = audit_events(db, "delivery_refused")
    assert refused["specimen"] == "POIS1"


def test_ar_and_cr_are_retried_with_backoff_and_codes_are_case_insensitive(tmp_path: Path, lab: MakeLab) -> None:
    """AR/CR ("application unavailable") are retried with the same MSH-10 after a backoff, not
    dead-lettered; a lower-case `aa` is an acceptance (#10 item 5)."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config, retry_initial=0.2, retry_max=0.4)
    db = _db(tmp_path)
    answers = iter([Ack("AR"), Ack("CR"), Ack("ar")])
    with ScriptedLis(lis_port, lambda _d: next(answers, Ack("aa"))) as lis, \
            running(config, port, tmp_path / "daemon.log"):
        send_session(port, [_msg("UNAV1"), _msg("UNAV2")])
        poll(lambda: [e["state"] for e in outbox(db)] == ["delivered", "delivered"], 15, "both delivered")
        got = lis.deliveries()

    assert [d.specimen for d in got] == ["UNAV1"] * 4 + ["UNAV2"]
    assert len({d.control_id for d in got[:4]}) == 1, "the same MSH-10 each time"
    failures = audit_events(db, "delivery_failed")
    assert [f["data"]["error"][:15] for f in failures] == ["LIS answered AR", "LIS answered CR", "LIS answered AR"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(got[:4])]
    assert all(gap >= 0.15 for gap in gaps), f"each retry waits for the backoff, gaps {gaps}"
    assert audit_events(db, "delivery_dead_lettered") == []


def test_an_unacknowledged_head_alerts_once_shows_in_status_and_retry_now_skips_the_backoff(
        tmp_path: Path, lab: MakeLab) -> None:
    """A LIS that never answers: after `head_alert_attempts` attempts one alert and `status` names the
    stuck head; with a long backoff, `queue retry --now` brings the next attempt at once."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config, retry_initial=0.1, retry_max=0.1, ack_timeout=0.3)
    tune(config, "lis", head_alert_attempts=3)
    db = _db(tmp_path)
    with ScriptedLis(lis_port, lambda _d: Silent()) as lis, running(config, port, tmp_path / "daemon.log"):
        send_session(port, [_msg("STUCK1")])
        poll(lambda: len(audit_events(db, "delivery_failed")) >= 6, 20, "six unanswered attempts")
        status = cli_json(config, "status")
        alerts = [a for a in audit_events(db, "alert_raised") if a["data"]["alert"] == "lis_head_unacknowledged"]
        lis.script = lambda _d: Ack("AA")
        poll(lambda: outbox(db)[0]["state"] == "delivered", 10, "delivered once the LIS answers")

    assert len(alerts) == 1 and alerts[0]["data"]["attempts"] == 3
    assert "unacknowledged after" in status["lis"]["last_error"], status["lis"]

    # --now: a 30 s backoff after an outage is skipped on request.
    config2_port, lis2_port = free_port(), free_port()
    tune(config, "lis", connect=f"127.0.0.1:{lis2_port}", retry_initial=30.0, retry_max=60.0)
    tune(config, "analyzers.c501", listen=f"127.0.0.1:{config2_port}")
    with running(config, config2_port, tmp_path / "daemon2.log"):
        send_session(config2_port, [_msg("NOW1")])
        poll(lambda: [f for f in audit_events(db, "delivery_failed") if f["specimen"] == "NOW1"], 10,
             "the first attempt fails (LIS down), a 30 s backoff starts")
        with ScriptedLis(lis2_port) as lis2:
            asked = time.monotonic()
            labmw(config, "queue", "retry", "--now")
            poll(lambda: [e for e in outbox(db) if e["specimen"] == "NOW1" and e["state"] == "delivered"], 10,
                 "delivered well before the backoff ends")
            waited = time.monotonic() - asked
            assert [d.specimen for d in lis2.deliveries()] == ["NOW1"]
    assert waited < 5, f"delivered {waited:.1f} s after --now (the backoff was 30 s)"
    assert audit_events(db, "queue_retry_now")[0]["actor"], "who asked is audited"


class DeafLis:
    """Accepts MLLP connections and never reads a byte: a LIS that stops reading."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen()
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a plain close would not)
        self.sock.close()
        self._thread.join(5)


def _enqueue_big(db: Path, megabytes: int) -> None:
    """A real, sealed queue entry with a payload of ``megabytes`` MiB, written with labmw's own store."""
    store = Store.open(db)
    now = datetime.now(UTC)
    result = Result(analyzer="c501", test_code="ALTL", raw_value="70", value=Decimal(70), units="U/L",
                    specimen_id="BIG1", patient_id="PBIG", collected_at=now)
    note = b"x" * (megabytes * 1024 * 1024)
    payload = (b"MSH|^~\\&|LABMW||LIS||20261125080000||ORU^R01|BIG-1|P|2.5.1\rOBR|1||BIG1\rNTE|1||" + note + b"\r")
    with store.transaction(now) as tx:
        mid = tx.add_message(analyzer="c501", protocol="astm", peer="test", raw=b"H", sha256="0" * 64,
                             outcome="accepted")
        rid = tx.add_result(message_id=mid, result=result, evaluation=Evaluation(method="ALT-T"), state="queued")
        tx.enqueue(result_id=rid, control_id="BIG-1", payload=payload)
    store.close()


def test_a_lis_that_stops_reading_is_given_up_on_after_the_deadline(tmp_path: Path, lab: MakeLab) -> None:
    """A 6 MiB ORU to a LIS that never reads: the attempt ends at the deadline (the write is inside
    it), `status` says why, the next attempt waits for the backoff; a LIS that reads gets everything."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config, ack_timeout=2.5, retry_initial=0.5, retry_max=0.5)
    db = _db(tmp_path)
    Store.open(db).close()
    _enqueue_big(db, 6)
    deaf = DeafLis(lis_port)
    try:
        with running(config, port, tmp_path / "daemon.log") as daemon:
            send_session(port, [_msg("AFTER1")])
            failures = poll(lambda: at_least(2, audit_events(db, "delivery_failed")), 20,
                            "two attempts given up at the deadline")
            status = cli_json(config, "status")
            deaf.close()
            with ScriptedLis(lis_port) as lis:
                try:
                    poll(lambda: {e["state"] for e in outbox(db)} == {"delivered"}, 30, "both delivered")
                except AssertionError:
                    print((tmp_path / "daemon.log").read_text()[-4000:])
                    raise
                got = lis.deliveries()
            assert daemon.alive()
    finally:
        deaf.close()

    assert {f["ref"] for f in failures} == {"BIG-1"}, "the head is retried; nothing jumps ahead"
    assert all("not reading" in f["data"]["error"] for f in failures[:2]), failures[0]["data"]
    gap = (datetime.fromisoformat(failures[1]["ts"]) - datetime.fromisoformat(failures[0]["ts"])).total_seconds()
    assert 2.5 + 0.5 - 0.2 <= gap <= 2.5 + 0.5 + 1.5, f"the deadline, then the backoff, per attempt: {gap} s"
    assert status["lis"]["state"] == "down" and "not reading" in status["lis"]["last_error"], status["lis"]
    # (A slow reader may take the 6 MiB longer than the deadline: then it gets it again, same MSH-10.)
    assert {d.control_id for d in got[:-1]} == {"BIG-1"} and got[-1].specimen == "AFTER1", "order kept"


def test_a_full_disk_with_a_backlog_sends_no_duplicate(tmp_path: Path, lab: MakeLab) -> None:
    """A backlog, then the disk fills, then the LIS comes up: deliveries cannot be recorded, so sending
    stops (backoff, one alert) instead of resending; once space returns everything is recorded and
    each result has reached the LIS exactly once."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config, retry_initial=0.2, retry_max=0.5)
    data = tmp_path / "data"
    specimens = [f"FULL{i}" for i in range(40)]
    with PrivateMount(data, size="8m") as disk:
        db: Any = NamespacedDb(data / "labmw.sqlite3", disk.prefix)
        daemon = Daemon(config, port, tmp_path / "daemon.log", prefix=disk.prefix).start()
        try:
            send_session(port, [_msg(s) for s in specimens])
            poll(lambda: len(outbox(db)) == len(specimens), 20, "the backlog queued")
            disk.fill()
            with ScriptedLis(lis_port) as lis:
                poll(lambda: [e for e in daemon.log_events() if e.get("event") == "delivery_not_recorded"], 20,
                     "deliveries the full disk cannot record")
                time.sleep(3)  # today's code resends the backlog over and over here
                during = lis.deliveries()
                disk.free()
                poll(lambda: {e["state"] for e in outbox(db)} == {"delivered"}, 30, "everything recorded")
                got = lis.deliveries()
            logged = daemon.log_events()
        finally:
            daemon.stop()

    counts = {cid: [d.control_id for d in got].count(cid) for cid in {d.control_id for d in got}}
    assert len(during) < len(specimens) + 5 and len(during) == len({d.control_id for d in during}), \
        f"{len(during)} sent while the disk was full, {len(during) - len({d.control_id for d in during})} repeats"
    assert sorted(d.specimen for d in got) == sorted(specimens) and set(counts.values()) == {1}, \
        "each result reached the LIS exactly once"
    alerts = [e for e in logged if e.get("event") == "alert_raised" and e.get("alert") == "deliveries_not_recorded"]
    assert len(alerts) == 1, "one alert for the episode"

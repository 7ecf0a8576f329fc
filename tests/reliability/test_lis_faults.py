"""The LIS misbehaves, for real: down for a while, rejecting (AE/CE), silent, trickling, answering
for the wrong message, hanging up after every ACK. The daemon is a real process, the LIS a real
MLLP server on a real socket, the analyzer a real ASTM sender (PRODUCT.md guarantee 2).

Timers are shortened in the config file (``[lis] retry_initial``, ``retry_max``, ``ack_timeout``) so
that minutes of outage become seconds with the same shape: doubling from ``retry_initial`` to a cap.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from fault_tools import MakeLab, at_least, audit_events, cli_json, fast_lis, outbox, poll, running, send_session
from lis_peers import Ack, Delivery, Hangup, ScriptedLis, Silent, always
from peers import alt_message, free_port, labmw

from labmw.config import load


def _msg(specimen: str, value: str = "70") -> list[bytes]:
    return alt_message(specimen=specimen, patient="P" + specimen, sex="M", birth="19800101", value=value)


def _db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "labmw.sqlite3"


def _all_delivered(db: Path, count: int) -> bool:
    entries = outbox(db)
    return len(entries) == count and all(e["state"] == "delivered" for e in entries)


def test_lis_down_queues_durably_backs_off_and_delivers_in_order(tmp_path: Path, lab: MakeLab) -> None:
    """LIS down: results wait in order, retries double up to the cap, and all arrive in order once it is up."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    shipped = load(config).lis
    assert shipped is not None and (shipped.retry_initial, shipped.retry_max) == (1.0, 300.0), \
        "shipped backoff: 1 s doubling to 5 min"
    fast_lis(config, retry_initial=0.2, retry_max=1.6)
    db = _db(tmp_path)
    specimens = [f"DOWN{i}" for i in range(5)]
    with running(config, port, tmp_path / "daemon.log"):
        send_session(port, [_msg(s) for s in specimens])
        failures = poll(lambda: at_least(6, audit_events(db, "delivery_failed")), 30,
                        "six failed attempts while the LIS is down")
        queue = cli_json(config, "queue", "list")
        lis = ScriptedLis(lis_port).start()
        try:
            poll(lambda: _all_delivered(db, 5), 15, "every queued result delivered after the LIS came back")
        finally:
            lis.stop()

    assert [e["specimen"] for e in queue] == specimens and {e["state"] for e in queue} == {"pending"}
    head = queue[0]
    assert head["attempts"] >= 6 and all(e["attempts"] == 0 for e in queue[1:]), \
        "only the head is retried; nothing behind it jumps ahead"
    assert {f["ref"] for f in failures} == {head["control_id"]}
    delays = [f["data"]["retry_in_s"] for f in failures[:6]]
    assert delays == [0.2, 0.4, 0.8, 1.6, 1.6, 1.6], f"backoff must double up to retry_max, got {delays}"
    stamps = [datetime.fromisoformat(f["ts"]) for f in failures[:6]]
    for before, after, delay in zip(stamps, stamps[1:], delays, strict=False):
        gap = (after - before).total_seconds()
        assert delay - 0.05 <= gap <= delay + 1.0, f"retry after {gap:.2f} s, announced {delay} s"

    got = lis.deliveries()
    assert [d.specimen for d in got] == specimens, "in the order they arrived, each exactly once"
    assert [d.control_id for d in got] == [e["control_id"] for e in queue], "the MSH-10 queued is the one sent"


def _rejecting(lis: ScriptedLis, code: str) -> None:
    lis.script = always(Ack(code))


def test_rejections_dead_letter_with_one_alert_per_episode_and_retry_works(tmp_path: Path, lab: MakeLab) -> None:
    """AE/CE: dead letter at once (no automatic retry), one alert per episode, `queue retry` resends the same MSH-10.

    (AR/CR mean "application unavailable" and are retried with backoff: test_integrity.py.)"""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config)
    db = _db(tmp_path)
    with ScriptedLis(lis_port, always(Ack("AE"))) as lis, running(config, port, tmp_path / "daemon.log"):
        send_session(port, [_msg(s) for s in ("REJ1", "REJ2", "REJ3")])
        poll(lambda: at_least(3, [e for e in outbox(db) if e["state"] == "dead"]), 15, "three dead letters")
        dead = cli_json(config, "queue", "list")
        table = labmw(config, "queue", "list").stdout
        first_round = lis.deliveries()
        alerts_first_episode = len(audit_events(db, "alert_raised"))

        # The LIS accepts again: retry one by ID, then the rest with --all.
        lis.script = always(Ack("AA"))
        labmw(config, "queue", "retry", str(dead[0]["id"]))
        poll(lambda: [e for e in outbox(db) if e["state"] == "delivered"], 15, "the retried dead letter delivered")
        labmw(config, "queue", "retry", "--all")
        poll(lambda: _all_delivered(db, 3), 15, "every dead letter delivered after --all")

        # A second episode: CE twice, and a retry of both while the LIS still rejects.
        _rejecting(lis, "CE")
        send_session(port, [_msg(s) for s in ("REJ4", "REJ5")])
        poll(lambda: len([e for e in outbox(db) if e["state"] == "dead"]) == 2, 15, "two new dead letters")
        labmw(config, "queue", "retry", "--all")
        poll(lambda: len(audit_events(db, "delivery_dead_lettered")) == 7, 15, "the retried pair rejected again")
        final_queue = cli_json(config, "queue", "list")

    assert [e["specimen"] for e in dead] == ["REJ1", "REJ2", "REJ3"] and {e["state"] for e in dead} == {"dead"}
    assert all("AE" in e["last_error"] for e in dead), "the reason is visible in `queue list --json`"
    assert table.count("dead") == 3 and "LIS answered AE" in table, "and in the table people read"
    assert [d.control_id for d in first_round] == [e["control_id"] for e in dead], \
        "a rejected message is not retried by itself"
    assert alerts_first_episode == 1, "one alert for the episode, not one per rejected message"
    got = lis.deliveries()
    by_specimen = lis.control_ids_by_specimen()
    assert all(len(by_specimen[s]) == 1 for s in ("REJ1", "REJ2", "REJ3")), "a retry reuses the MSH-10"
    assert [d.specimen for d in got[3:6]] == ["REJ1", "REJ2", "REJ3"], "retried in queue order"
    assert len(audit_events(db, "delivery_requeued")) == 5
    assert all(e["actor"] for e in audit_events(db, "delivery_requeued")), "who retried is audited"
    assert len(audit_events(db, "result_delivered")) == 3
    assert len(audit_events(db, "alert_raised")) == 2, "exactly one more alert for the second episode"
    assert [e["specimen"] for e in final_queue] == ["REJ4", "REJ5"]
    assert all("CE" in e["last_error"] and e["attempts"] == 2 for e in final_queue)


@pytest.mark.parametrize("stall", [Silent(), Ack("AA", byte_delay=0.1)], ids=["silent", "trickling"])
def test_a_lis_that_does_not_answer_in_time_gets_the_same_msh10_again(tmp_path: Path, lab: MakeLab,
                                                                      stall: object) -> None:
    """No complete ACK before ack_timeout (silence, or an ACK trickled byte by byte): retry, same bytes, in order."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config, ack_timeout=0.5, retry_initial=0.2, retry_max=0.4)
    db = _db(tmp_path)

    def script(d: Delivery) -> Ack | Silent:
        return stall if d.attempt <= 2 else Ack("AA")  # type: ignore[return-value]

    with ScriptedLis(lis_port, script) as lis, running(config, port, tmp_path / "daemon.log"):
        send_session(port, [_msg("STALL1"), _msg("STALL2")])
        poll(lambda: _all_delivered(db, 2), 30, "both results delivered after two stalled attempts each")
    got = lis.deliveries()
    assert [d.specimen for d in got] == ["STALL1"] * 3 + ["STALL2"] * 3, "retried in order, nothing overtakes"
    for specimen in ("STALL1", "STALL2"):
        attempts = [d for d in got if d.specimen == specimen]
        assert len({d.control_id for d in attempts}) == 1 and len({d.payload for d in attempts}) == 1, \
            "every attempt carries the same MSH-10 and the same bytes"
    first, second = got[0].at, got[1].at
    assert 0.5 <= second - first <= 0.5 + 0.4 + 1.5, "the ACK deadline is ack_timeout, not an idle timer"
    failed = audit_events(db, "delivery_failed")
    assert len(failed) == 4 and all("no ACK" in f["data"]["error"] for f in failed)
    delivered = audit_events(db, "result_delivered")
    assert [e["data"]["attempt"] for e in delivered] == [3, 3]


def test_an_ack_for_another_message_is_not_taken_as_delivery(tmp_path: Path, lab: MakeLab) -> None:
    """AA with a wrong MSA-2 does not mark the result delivered: it is re-sent (same MSH-10) until properly ACKed."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config, ack_timeout=0.5, retry_initial=0.2, retry_max=0.4)
    db = _db(tmp_path)

    def script(d: Delivery) -> Ack:
        return Ack("AA", msa2=("WRONG-1", d.control_id + "0")[d.attempt - 1]) if d.attempt <= 2 else Ack("AA")

    with ScriptedLis(lis_port, script) as lis, running(config, port, tmp_path / "daemon.log") as daemon:
        send_session(port, [_msg("MSA1")])
        poll(lambda: _all_delivered(db, 1), 20, "delivery after two wrongly addressed ACKs")
        log = daemon.log_events()
    got = lis.deliveries()
    assert len(got) == 3 and len({d.control_id for d in got}) == 1 and len({d.payload for d in got}) == 1
    assert len(audit_events(db, "delivery_failed")) == 2
    assert [e["data"]["attempt"] for e in audit_events(db, "result_delivered")] == [3]
    assert sum(e.get("event") == "lis_ack_mismatched" for e in log) == 2, "each wrong MSA-2 is logged"


def test_a_lis_that_hangs_up_after_every_ack_gets_each_result_once(tmp_path: Path, lab: MakeLab) -> None:
    """The LIS closes the connection after each ACK: each result still arrives exactly once, in order, no failures."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config)
    db = _db(tmp_path)
    specimens = [f"HUP{i}" for i in range(6)]
    with ScriptedLis(lis_port, always(Ack("AA", close=True))) as lis, running(config, port, tmp_path / "d.log"):
        send_session(port, [_msg(s) for s in specimens[:3]])
        poll(lambda: _all_delivered(db, 3), 15, "the first three delivered")
        send_session(port, [_msg(s) for s in specimens[3:]])  # now on a connection the LIS has since closed
        poll(lambda: _all_delivered(db, 6), 15, "all six delivered")
    got = lis.deliveries()
    assert [d.specimen for d in got] == specimens, "each exactly once, in order"
    assert lis.connections >= 6, "the LIS really did close after every ACK"
    assert audit_events(db, "delivery_failed") == [], "a closed idle connection is reopened, not a failure"


def test_a_lis_that_hangs_up_without_answering_is_retried_with_the_same_msh10(tmp_path: Path, lab: MakeLab) -> None:
    """The LIS closes without an ACK twice: the result is retried with backoff, same MSH-10, then delivered once."""
    lis_port, port = free_port(), free_port()
    config = lab(lis_port, port)
    fast_lis(config)
    db = _db(tmp_path)
    with ScriptedLis(lis_port, lambda d: Hangup() if d.attempt <= 2 else Ack("AA")) as lis, \
            running(config, port, tmp_path / "d.log"):
        send_session(port, [_msg("HANG1")])
        poll(lambda: _all_delivered(db, 1), 15, "delivery after two hang-ups")
    got = lis.deliveries()
    assert len(got) == 3 and len({d.control_id for d in got}) == 1
    assert len(audit_events(db, "delivery_failed")) == 2
    assert len(audit_events(db, "result_delivered")) == 1

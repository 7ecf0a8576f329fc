"""What each engine must guarantee beyond the shared store tests: group commit, durability settings,
the append-only trail enforced by the database itself, one chain under concurrent writers, sites."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from engine_kit import Engine

from labmw.errors import StoreError
from labmw.model import Evaluation, Result
from labmw.store import Store
from labmw.store.engines import open_store
from labmw.store.postgres import PgStore, redact

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@pytest.fixture(name="store")
def _store(engine: Engine) -> Iterator[Store]:
    store = engine.open(site="north")
    yield store
    store.close()


def _alt(value: str, collected: datetime, *, patient: str = "P1", specimen: str = "S1") -> Result:
    return Result(analyzer="c501", test_code="ALTL", raw_value=value, value=Decimal(value), units="U/L",
                  specimen_id=specimen, patient_id=patient, collected_at=collected)


def _keep(store: Store, result: Result) -> int:
    with store.transaction(T0) as tx:
        mid = tx.add_message(analyzer="c501", protocol="astm", peer="x", raw=b"raw", sha256="0" * 64,
                             outcome="accepted")
        rid = tx.add_result(message_id=mid, result=result, evaluation=Evaluation(method="ALT-T"), state="queued")
        tx.enqueue(result_id=rid, control_id=f"{store.install_id}-{rid}", payload=b"MSH|x")
        tx.audit("result_received", specimen=result.specimen_id, patient=result.patient_id, ref=str(rid))
    return rid


def test_group_commit_keeps_the_good_and_undoes_the_failed(store: Store) -> None:
    """Inside a group each transaction is a savepoint: a failed one is undone alone, the rest commit."""
    with store.group():
        _keep(store, _alt("40", T0, specimen="G1"))
        with pytest.raises(RuntimeError), store.transaction(T0) as tx:
            tx.audit("doomed")
            raise RuntimeError("this message's work fails")
        _keep(store, _alt("50", T0, specimen="G2"))
    assert [e.specimen for e in store.outbox(states=("pending",))] == ["G1", "G2"]
    assert "doomed" not in [e.event for e in store.audit_events()]
    assert store.verify_audit().ok


def test_results_and_events_carry_the_site(store: Store) -> None:
    """The site is stored with the result and in every event's data; `audit list --site` filters on it."""
    _keep(store, _alt("40", T0))
    store.append_audit("config_changed", now=T0, actor="alice", data={"key": "x"})
    events = store.audit_events(site="north")
    assert [e.event for e in events] == ["result_received", "config_changed"]
    assert store.audit_events(site="south") == []
    assert store.audit_events(site="north", limit=1)[0].event == "result_received"
    assert store.verify_audit().ok


def test_sites_share_history_but_keep_their_own_queue(pg_engine: Engine) -> None:
    """South's delta check sees north's earlier result; each site sends and reviews only its own."""
    north, south = pg_engine.open(site="north"), pg_engine.open(site="south")
    try:
        _keep(north, _alt("200", T0 - timedelta(hours=6), specimen="N1"))
        with south.transaction(T0) as tx:
            prev = tx.previous_result(patient_id="P1", method="ALT-T", before=T0, not_before=T0 - timedelta(days=7))
        assert prev is not None and prev.value == Decimal(200) and prev.specimen_id == "N1"
        _keep(south, _alt("40", T0, specimen="S1"))
        assert [e.specimen for e in north.pending_after(0, 10)] == ["N1"]
        assert [e.specimen for e in south.pending_after(0, 10)] == ["S1"]
        assert north.counts()["pending"] == 1 and south.counts()["pending"] == 1
        assert north.verify_audit().ok and north.verify_audit().count == 2
    finally:
        north.close()
        south.close()


def test_concurrent_writers_keep_one_unbroken_chain(pg_engine: Engine) -> None:
    """Four sites writing at once (four connections) interleave into one chain without gaps."""
    stores = [pg_engine.open(site=f"site{i}") for i in range(4)]
    errors: list[BaseException] = []

    def write(store: Store, i: int) -> None:
        try:
            for n in range(15):
                _keep(store, _alt(str(30 + n), T0, patient=f"P{i}", specimen=f"S{i}-{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        check = stores[0].verify_audit()
        assert check.ok and check.count == 60
    finally:
        for s in stores:
            s.close()


# --- PostgreSQL only (the SQLite twins are in test_store.py) -----------------------------------------
def test_commit_waits_for_the_wal_even_when_the_server_says_otherwise(pg_engine: Engine) -> None:
    """synchronous_commit is on in the store's sessions whatever the database default."""
    assert pg_engine.cluster is not None
    with pg_engine.cluster.admin() as admin:
        admin.execute(f"ALTER DATABASE {pg_engine.dbname} SET synchronous_commit = off")
    store = pg_engine.open()
    try:
        assert isinstance(store, PgStore)
        assert store._pg.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    finally:
        store.close()


def test_the_service_role_cannot_change_the_trail_even_without_triggers(pg_engine: Engine) -> None:
    """Privileges, not only triggers: with the triggers off, the service's role still may only append."""
    store = pg_engine.open()
    try:
        store.append_audit("x", now=T0, actor="a")
        with pytest.raises(StoreError, match="owner|permission"):
            store._conn.execute("ALTER TABLE audit DISABLE TRIGGER USER")
        assert pg_engine.cluster is not None
        with pg_engine.cluster.admin(pg_engine.dbname) as admin:
            admin.execute("ALTER TABLE audit DISABLE TRIGGER USER")
        for sql in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", "TRUNCATE audit"):
            with pytest.raises(StoreError, match="permission denied"):
                store._conn.execute(sql)
        assert store.verify_audit().ok and store.verify_audit().count == 1
    finally:
        store.close()


def test_the_owner_is_stopped_by_the_triggers(pg_engine: Engine) -> None:
    """Even the schema's owner (who holds every privilege) cannot edit events while the triggers stand."""
    owner = psycopg.connect(pg_engine.owner_url(), autocommit=True)
    store = pg_engine.open()
    try:
        store.append_audit("x", now=T0, actor="a")
        for sql in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", "TRUNCATE audit"):
            with pytest.raises(psycopg.Error, match="append-only"):
                owner.execute(sql)  # type: ignore[arg-type]
    finally:
        owner.close()
        store.close()


def test_an_unreachable_database_is_a_store_error_without_the_password() -> None:
    """No server: StoreError naming the database, password hidden."""
    import pg_cluster

    url = f"postgresql://labmw_service:secret@127.0.0.1:{pg_cluster.free_port()}/labmw"
    with pytest.raises(StoreError) as info:
        PgStore.open_url(url)
    assert "secret" not in str(info.value) and "127.0.0.1" in str(info.value)
    assert redact(url) == url.replace(":secret@", ":***@")


def test_a_read_only_session_refuses_writes_as_store_error(pg_engine: Engine) -> None:
    """A database that takes no writes (a read-only replica) raises StoreError, so nothing is ACKed."""
    store = pg_engine.open()
    try:
        assert isinstance(store, PgStore)
        store._pg.execute("SET default_transaction_read_only = on")
        with pytest.raises(StoreError, match="read-only"):
            store.append_audit("x", now=T0, actor="a")
        store._pg.execute("SET default_transaction_read_only = off")
        store.append_audit("x", now=T0, actor="a")
        assert store.verify_audit().count == 1
    finally:
        store.close()


def test_the_same_mrn_from_another_registry_is_another_patient(store: Store) -> None:
    """History is keyed on PID-3 with its assigning authority: NORTH's P1 is not SOUTH's P1."""
    from dataclasses import replace

    _keep(store, replace(_alt("200", T0 - timedelta(hours=6), specimen="A1"), patient_authority="NORTH"))
    with store.transaction(T0) as tx:
        same = tx.previous_result(patient_id="P1", patient_authority="NORTH", method="ALT-T", before=T0,
                                  not_before=T0 - timedelta(days=7))
        other = tx.previous_result(patient_id="P1", patient_authority="SOUTH", method="ALT-T", before=T0,
                                   not_before=T0 - timedelta(days=7))
        bare = tx.previous_result(patient_id="P1", method="ALT-T", before=T0, not_before=T0 - timedelta(days=7))
    assert same is not None and same.value == Decimal("200")
    assert other is None and bare is None


def test_a_lost_connection_fails_one_write_and_the_next_reconnects(pg_engine: Engine) -> None:
    """The server drops the session (restart, failover of the database): the write in hand is a
    StoreError (so not ACKed) and the store takes a fresh connection from its pool for the next one."""
    store = pg_engine.open()
    try:
        assert isinstance(store, PgStore)
        store.append_audit("before", now=T0, actor="a")
        backend = store._pg.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pg_engine.cluster is not None
        with pg_engine.cluster.admin() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        with pytest.raises(StoreError):
            store.append_audit("lost", now=T0, actor="a")
        store.append_audit("after", now=T0, actor="a")
        assert [e.event for e in store.audit_events()] == ["before", "after"]
        assert store.verify_audit().ok
    finally:
        store.close()


def test_retention_purge_and_health_probe_work_on_both_engines(store: Store) -> None:
    """The operations calls (F's) run on either engine: the purge removes finished results only, audited."""
    rid = _keep(store, _alt("40", T0 - timedelta(days=4000), specimen="OLD"))
    _keep(store, _alt("41", T0, specimen="NEW"))
    (entry,) = [e for e in store.pending_after(0, 10) if e.result_id == rid]
    store.mark_delivered(entry, now=T0, ack_code="AA", ack_text="")
    store.probe_writable()
    summary = store.purge_older_than(T0 + timedelta(days=1), now=T0, actor="labmw")
    assert summary["results"] == 1 and summary["kept_unfinished"] == 1
    assert [e.specimen for e in store.outbox(states=("pending",))] == ["NEW"]
    assert "retention_purged" in [e.event for e in store.audit_events()] and store.verify_audit().ok


def test_accounts_qc_autoverification_and_the_browser_on_both_engines(store: Store) -> None:
    """The store's later modules speak both engines' SQL: web accounts and sessions, QC runs and their
    override, suspensions and critical notifications, rule-set version, message browser, ORU members
    and their retention, and the chain with its seals verifies afterwards."""
    users = store.users
    users.add(name="ann", role="reviewer", password_hash="h", actor="root", now=T0)
    ann = users.get("ann")
    assert ann is not None and ann.enabled
    users.start_session(token_sha256="t" * 64, user=ann, csrf_token="c", peer="127.0.0.1", now=T0,
                        expires_at=T0 + timedelta(hours=1))
    assert users.session("t" * 64, now=T0) is not None
    users.record_failure(name="bob", peer="10.0.0.9", reason="bad password", now=T0, throttled=False)
    assert users.failures_since(name="bob", peer="10.0.0.9", since=T0 - timedelta(minutes=1))[0] == 1
    users.set_enabled("ann", enabled=False, actor="root", now=T0)
    assert users.session("t" * 64, now=T0) is None and not users.get("ann").enabled  # type: ignore[union-attr]

    rid = _keep(store, _alt("40", T0, specimen="Q1"))
    other = _keep(store, _alt("41", T0, specimen="Q1"))
    with store.transaction(T0) as tx:
        mid = tx.add_message(analyzer="c501", protocol="astm", peer="x", raw=b"qc", sha256="1" * 64,
                             outcome="accepted")
        run_id = tx.qc.add_run(message_id=mid, analyzer="c501", method="ALT-T", violated=("1-3s",), warnings=())
        tx.qc.add_result(run_id=run_id, material="N1", level=1, lot="L1", specimen="QC1", test_code="ALTL",
                         raw_value="99", value=Decimal("99"), units="U/L", mean=Decimal("40"), sd=Decimal("3"),
                         z=Decimal("19.7"), completed_at=T0)
        tx.add_critical(rid, "HH")
        tx.add_critical(rid, "HH")  # once per result (OR IGNORE / ON CONFLICT DO NOTHING)
        entry = store.outbox(states=("pending",))[0]
        tx.add_outbox_members(entry.id, [other])
    assert store.qc.accept(run_id, reason="lot change", actor="root", now=T0).accepted
    (critical,) = store.criticals()
    store.notify_critical(critical["id"], to="Dr X", readback=True, actor="root", now=T0)
    assert store.criticals()[0]["readback"] is True
    sid = store.suspend_autoverify(analyzer="c501", method="ALT-T", reason="drift", actor="root", now=T0)
    assert sid and [s.method for s in store.active_suspensions()] == ["ALT-T"]
    assert store.resume_autoverify(analyzer="c501", method="ALT-T", reason="fixed", actor="root", now=T0) == [sid]
    with store.transaction(T0) as tx:
        assert tx.note_rules_version("v1", actor="root", how="test")
    messages = store.browse_messages(specimen="Q1")
    assert [m["specimens"] for m in messages] == [["Q1"], ["Q1"]]
    assert store.message_detail(messages[0]["id"])["results"]
    store.request_retry_now(now=T0, actor="root")
    assert store.retry_now_requested()

    store.mark_delivered(entry, now=T0, ack_code="AA", ack_text="")
    assert store.load_result(other)[2] == "delivered", "an ORU member is delivered with its entry"

    held = _keep(store, _alt("1500", T0, specimen="C1"))
    with store.transaction(T0) as tx:
        tx.hold_result(held, notes=("critical",))
    store.sign_release(held, needs=("CRITICAL",), reason="called", actor="ann", now=T0)
    with pytest.raises(StoreError, match="second person"):
        store.decide_held(held, decision="release", reason="me again", actor="ann", now=T0, control_id="c-x",
                          payload=b"MSH|x", second_person=("CRITICAL",))
    store.decide_held(held, decision="release", reason="read back", actor="bob", now=T0, control_id="c-x",
                      payload=b"MSH|x", second_person=("CRITICAL",))
    signature = store.release_signature(held)
    assert signature is not None and (signature.first_actor, signature.second_actor, signature.outcome) == (
        "ann", "bob", "released")
    assert store.verify_audit().ok and store.verify_audit_since_checkpoint().ok


def test_the_same_work_gives_the_same_trail_on_both_engines(tmp_path: Path, pg_engine: Engine) -> None:
    """`audit verify` is one algorithm over the same bytes: the same writes at the same times give the
    same chain head, the same seals, and the same verdict on both engines."""
    heads = []
    for target in (tmp_path / "data" / "labmw.sqlite3", pg_engine.target):
        store = open_store(target, site="north")
        try:
            for n, value in enumerate(("200", "40")):
                with store.transaction(T0 + timedelta(hours=6 * n)) as tx:
                    result = _alt(value, T0 + timedelta(hours=6 * n), specimen=f"S{n}")
                    mid = tx.add_message(analyzer="c501", protocol="astm", peer="x", raw=b"H|\\^&\rR|" + value.encode(),
                                         sha256="0" * 64, outcome="accepted")
                    tx.audit("message_received", analyzer="c501", ref=str(mid))
                    rid = tx.add_result(message_id=mid, result=result, evaluation=Evaluation(method="ALT-T"),
                                        state="queued")
                    tx.audit("result_received", specimen=f"S{n}", ref=str(rid))
                    tx.enqueue(result_id=rid, control_id=f"fixed-{rid}", payload=b"MSH|x|" + value.encode())
                    tx.audit("result_queued", specimen=f"S{n}", ref=f"fixed-{rid}")
            verdict = store.verify_audit()
            assert verdict.ok and verdict.rows == 6, verdict
            heads.append((store.audit_head(), [e.data.get("stored") for e in store.audit_events()]))
        finally:
            store.close()
    assert heads[0] == heads[1]


def test_each_site_keeps_its_own_rules_version(pg_engine: Engine) -> None:
    """Two sites' daemons with their own rule sets writing in turn: no rules_version_changed per message."""
    north, south = pg_engine.open(site="north"), pg_engine.open(site="south")
    try:
        for _ in range(3):
            for store, version in ((north, "vn"), (south, "vs")):
                with store.transaction(T0) as tx:
                    tx.note_rules_version(version, actor="labmw", how="configuration loaded by the daemon")
        changes = [e.data["site"] for e in north.audit_events(event="rules_version_changed")]
        assert changes == ["north", "south"]
    finally:
        north.close()
        south.close()


def test_the_history_reader_sees_the_last_commit_from_another_thread(store: Store) -> None:
    """The intake judges off the store thread on the read-only history connection (then checks again
    in the writing transaction): on PostgreSQL it is a pooled connection of its own."""
    _keep(store, _alt("200", T0, specimen="H1"))
    found: list[object] = []
    reader = store.history_reader()
    thread = threading.Thread(target=lambda: found.append(reader.previous_result(
        patient_id="P1", method="ALT-T", before=T0 + timedelta(hours=6), not_before=T0 - timedelta(days=7))))
    thread.start()
    thread.join(10)
    (previous,) = found
    assert previous is not None and previous.value == Decimal("200") and previous.specimen_id == "H1"  # type: ignore[attr-defined]
    assert store.history_reader() is reader


@pytest.mark.parametrize("statement", [
    "UPDATE results SET raw_value = '11'",
    "UPDATE results SET value = '11', collected_at = 'x'",
    "UPDATE outbox SET payload = 'MSH|forged'::bytea",
    "UPDATE outbox SET control_id = 'other'",
    "UPDATE messages SET raw = 'forged'::bytea",
    "UPDATE inbound_keys SET control_id = 'other'",
    "DELETE FROM audit",
    "UPDATE audit SET data = '{}'",
], ids=["result-value", "result-columns", "payload", "msh10", "message", "dedupe-key", "audit-delete",
        "audit-update"])
def test_the_service_role_cannot_rewrite_what_a_seal_covers(pg_engine: Engine, statement: str) -> None:
    """Privileges: the service's role may move a row's bookkeeping on (state, attempts, seal pointer)
    but not change a sealed column, and never touch the trail, whatever the triggers say."""
    store = pg_engine.open(site="north")
    try:
        _keep(store, _alt("110", T0))
        assert pg_engine.cluster is not None
        with pg_engine.cluster.admin(pg_engine.dbname) as admin:
            admin.execute("ALTER TABLE audit DISABLE TRIGGER USER")  # privileges alone
        with pytest.raises(StoreError, match="permission denied"):
            store._conn.execute(statement)
        store.mark_delivered(store.outbox(states=("pending",))[0], now=T0, ack_code="AA", ack_text="")
        assert store.counts()["pending"] == 0, "the bookkeeping columns still move on"
        assert store.verify_audit().ok
    finally:
        store.close()


def test_each_site_lists_and_alerts_its_own_critical_values(pg_engine: Engine) -> None:
    """North's daemon alerts north's overdue critical value, never south's (its staff could not act on it,
    and marking it alerted would silence south's own alert)."""
    north, south = pg_engine.open(site="north"), pg_engine.open(site="south")
    try:
        for store, specimen in ((north, "N1"), (south, "S1")):
            rid = _keep(store, _alt("1500", T0, specimen=specimen))
            with store.transaction(T0) as tx:
                tx.add_critical(rid, "HH")
        later = T0 + timedelta(hours=1)
        assert [c["specimen"] for c in north.criticals()] == ["N1"]
        assert [c["specimen"] for c in north.alert_overdue_criticals(before=later, now=later)] == ["N1"]
        assert [c["specimen"] for c in south.alert_overdue_criticals(before=later, now=later)] == ["S1"]
        alerted = [(e.data["site"], e.specimen) for e in north.audit_events(event="critical_overdue")]
        assert alerted == [("north", "N1"), ("south", "S1")]
    finally:
        north.close()
        south.close()


def test_a_suspension_holds_only_the_site_that_made_it(engine: Engine) -> None:
    """North's director suspending all autoverification holds north's results, not south's; on SQLite
    (one site) it is the suspension it always was."""
    north = engine.open(site="north")
    south = engine.open(site="south") if engine.cluster is not None else None
    try:
        sid = north.suspend_autoverify(analyzer="", method="", reason="drift", actor="dir", now=T0)
        assert [s.id for s in north.active_suspensions()] == [sid]
        with north.transaction(T0) as tx:
            assert [s.id for s in tx.active_suspensions()] == [sid]
        if south is not None:
            assert south.active_suspensions() == ()
            with pytest.raises(StoreError, match="no active suspension"):
                south.resume_autoverify(analyzer="", method="", reason="not ours", actor="dir", now=T0)
        assert north.resume_autoverify(analyzer="", method="", reason="fixed", actor="dir", now=T0) == [sid]
        assert north.active_suspensions() == ()
    finally:
        north.close()
        if south is not None:
            south.close()


def test_the_shim_speaks_the_sqlite_idioms_the_store_uses() -> None:
    """The store's SQL is written once (SQLite's); these few idioms get PostgreSQL's words."""
    from labmw.store.postgres import translate

    assert translate("BEGIN IMMEDIATE") == "BEGIN"
    assert translate("INSERT OR REPLACE INTO meta VALUES (?, ?)") == (
        "INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
    assert translate("INSERT OR IGNORE INTO critical_notifications (result_id) VALUES (?)") == (
        "INSERT INTO critical_notifications (result_id) VALUES (%s) ON CONFLICT DO NOTHING")
    assert translate("SELECT group_concat(DISTINCT r.specimen) FROM results r", placeholders=False) == (
        "SELECT string_agg(DISTINCT r.specimen, ',') FROM results r")
    assert translate("SELECT 1 WHERE flags LIKE '%\"HH\"%' AND id = ?") == "SELECT 1 WHERE flags LIKE '%%\"HH\"%%' AND id = %s"


def test_retention_purges_qc_runs_and_logged_criticals_and_keeps_an_unlogged_critical(store: Store) -> None:
    """A QC-only message and a delivered critical whose notification was logged go with their age; a
    delivered critical nobody logged as notified stays (it still waits for a person). No foreign key stops it."""
    with store.transaction(T0) as tx:
        mid = tx.add_message(analyzer="c501", protocol="astm", peer="x", raw=b"qc", sha256="1" * 64,
                             outcome="accepted")
        run = tx.qc.add_run(message_id=mid, analyzer="c501", method="ALT-T", violated=(), warnings=())
        tx.qc.add_result(run_id=run, material="ALT-L1", level=1, lot="L1", specimen="QC1", test_code="ALTL",
                         raw_value="50", value=Decimal(50), units="U/L", mean=Decimal(50), sd=Decimal(2),
                         z=Decimal(0), completed_at=T0)
        tx.audit("qc_run_judged", ref=str(run))
    logged, unlogged = (_keep(store, _alt("1500", T0, specimen=s)) for s in ("CRIT-LOGGED", "CRIT-OPEN"))
    with store.transaction(T0) as tx:
        tx.add_critical(logged, "HH")
        tx.add_critical(unlogged, "HH")
    for entry in store.pending_after(0, 10):
        store.mark_delivered(entry, now=T0, ack_code="AA", ack_text="")
    (critical,) = [c for c in store.criticals() if c["result_id"] == logged]
    store.notify_critical(critical["id"], to="Dr Ward", readback=True, actor="alice", now=T0)

    summary = store.purge_older_than(T0 + timedelta(days=1), now=T0, actor="labmw")
    assert summary["results"] == 1 and summary["qc_runs"] == 1 and summary["kept_open_criticals"] == 1
    assert [c["result_id"] for c in store.criticals()] == [unlogged]
    assert store.qc.runs() == []
    assert store.verify_audit().ok

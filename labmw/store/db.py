"""SQLite connection and schema: WAL, full fsync on commit, migrations keyed on PRAGMA user_version.

This package is the only one that imports sqlite3. Files are created 0600 inside a 0700 data
directory whatever the umask, because they hold patient data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from labmw.errors import StoreError

# Each entry upgrades the schema from version i to i+1; never edit a released entry, append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        analyzer TEXT NOT NULL,
        protocol TEXT NOT NULL,
        peer TEXT NOT NULL,
        received_at TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        raw BLOB NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        analyzer TEXT NOT NULL,
        specimen TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        patient_name TEXT NOT NULL,
        birth_date TEXT,
        sex TEXT NOT NULL,
        test_code TEXT NOT NULL,
        method TEXT,
        raw_value TEXT NOT NULL,
        value TEXT,
        comparator TEXT,
        units TEXT NOT NULL,
        instrument_flags TEXT NOT NULL,
        status TEXT NOT NULL,
        collected_at TEXT,
        completed_at TEXT,
        flags TEXT NOT NULL,
        applied_range TEXT NOT NULL,
        notes TEXT NOT NULL,
        state TEXT NOT NULL
    );
    CREATE INDEX results_history ON results (patient_id, method, collected_at);
    CREATE INDEX results_specimen ON results (specimen);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        result_id INTEGER NOT NULL REFERENCES results(id),
        control_id TEXT NOT NULL UNIQUE,
        payload BLOB NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        last_error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX outbox_pending ON outbox (state, id);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        event TEXT NOT NULL,
        actor TEXT NOT NULL,
        analyzer TEXT NOT NULL,
        specimen TEXT NOT NULL,
        patient TEXT NOT NULL,
        ref TEXT NOT NULL,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_specimen ON audit (specimen);
    CREATE INDEX audit_patient ON audit (patient);
    -- The trail is append-only: corrections are new events, never edits (21 CFR 11.10(e)).
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit trail is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit trail is append-only'); END;
    """,
    # 2: HL7 inbound duplicate keys (HL7.md 1.4): sender + MSH-10 + content hash without MSH-7,
    # written in the same transaction as the message they identify.
    """
    CREATE TABLE inbound_keys (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        analyzer TEXT NOT NULL,
        sending_application TEXT NOT NULL,
        sending_facility TEXT NOT NULL,
        control_id TEXT NOT NULL,
        content_sha256 TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    CREATE INDEX inbound_keys_lookup ON inbound_keys
        (analyzer, sending_application, sending_facility, control_id, received_at);
    """,
    # 3: corrections (status C) replace the earlier result of the same specimen and test instead of
    # standing beside it (ASTM.md 2.6 R-9; CLIA 493.1291(k) keeps both, so the earlier row stays).
    """
    ALTER TABLE results ADD COLUMN superseded_by INTEGER;
    CREATE INDEX results_correction ON results (analyzer, specimen, test_code);
    """,
    # 4: ASTM resends are recognised by content (an analyzer resends a whole message whose final ACK
    # it never saw; ASTM.md 5.4), so the same key table is searched by content too.
    """
    CREATE INDEX inbound_keys_content ON inbound_keys (analyzer, content_sha256, received_at);
    """,
    # 5: times compared as instants (issue #10 item 6). collected_at/completed_at keep the time as
    # the instrument sent it (its offset, for display); the _utc twins hold the same instant in UTC
    # as fixed-width text, which history queries compare. Rows from before are converted by
    # SQLite's strftime (which applies an offset; naive times are local time, as in Python). The last key of
    # an analyzer is found by (analyzer, id) for ASTM resend detection.
    """
    ALTER TABLE results ADD COLUMN collected_utc TEXT;
    ALTER TABLE results ADD COLUMN completed_utc TEXT;
    UPDATE results SET collected_utc = CASE WHEN substr(collected_at, 20) GLOB '*[-+Z]*'
        THEN strftime('%Y-%m-%dT%H:%M:%S', collected_at) ELSE strftime('%Y-%m-%dT%H:%M:%S', collected_at, 'utc') END
        WHERE collected_at IS NOT NULL;
    UPDATE results SET completed_utc = CASE WHEN substr(completed_at, 20) GLOB '*[-+Z]*'
        THEN strftime('%Y-%m-%dT%H:%M:%S', completed_at) ELSE strftime('%Y-%m-%dT%H:%M:%S', completed_at, 'utc') END
        WHERE completed_at IS NOT NULL;
    CREATE INDEX results_history_utc ON results (patient_id, method, collected_utc);
    CREATE INDEX inbound_keys_last ON inbound_keys (analyzer);
    """,
    # 6 (integrity, issue #17): stored rows are bound to the trail (store/seals.py). An outbox entry
    # points at the event holding its seal; rows stored before this upgrade are not sealed, and
    # the meta keys say up to which id. The append-only triggers cover every way to write the
    # table: an INSERT must extend the chain (next seq, linked to the last hash), so INSERT OR
    # REPLACE, UPSERT or a re-insert of a deleted event are refused too.
    """
    ALTER TABLE outbox ADD COLUMN seal_seq INTEGER;
    INSERT OR REPLACE INTO meta VALUES ('sealed_messages_after', (SELECT coalesce(max(id), 0) FROM messages));
    INSERT OR REPLACE INTO meta VALUES ('sealed_results_after', (SELECT coalesce(max(id), 0) FROM results));
    INSERT OR REPLACE INTO meta VALUES ('sealed_outbox_after', (SELECT coalesce(max(id), 0) FROM outbox));
    CREATE TRIGGER audit_append_only BEFORE INSERT ON audit
        WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM audit)
          OR NEW.prev_hash IS NOT coalesce((SELECT hash FROM audit WHERE seq = NEW.seq - 1),
                                           '0000000000000000000000000000000000000000000000000000000000000000')
        BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: an event must extend the chain'); END;
    """,
    # 7: autoverification (#11): the gates that held a result, notes only the reviewer sees, the
    # rule-set version it was judged under and since when it is held; the kill switch (read at
    # judgement time, so a suspension made by the CLI holds the daemon's next result); the
    # critical-value notification log (CLIA 493.1291(g): who notified whom, when, read back).
    """
    ALTER TABLE results ADD COLUMN gates TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE results ADD COLUMN review_notes TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE results ADD COLUMN rules_version TEXT NOT NULL DEFAULT '';
    ALTER TABLE results ADD COLUMN held_at TEXT;
    CREATE TABLE autoverify_suspensions (
        id INTEGER PRIMARY KEY,
        analyzer TEXT NOT NULL,
        method TEXT NOT NULL,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL,
        suspended_at TEXT NOT NULL,
        resumed_at TEXT,
        resumed_by TEXT,
        resume_reason TEXT
    );
    CREATE TABLE critical_notifications (
        id INTEGER PRIMARY KEY,
        result_id INTEGER NOT NULL UNIQUE REFERENCES results(id),
        flag TEXT NOT NULL,
        detected_at TEXT NOT NULL,
        notified_at TEXT,
        notified_by TEXT,
        notified_to TEXT,
        readback INTEGER NOT NULL DEFAULT 0,
        alerted_at TEXT
    );
    """,
    # 8: quality control (issue 12): control runs and their results, judged by Westgard rules, kept
    # apart from patient results (never forwarded); a control result that matches no material is
    # held in results with role 'qc', so review can never release it to the LIS.
    """
    CREATE TABLE qc_runs (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        analyzer TEXT NOT NULL,
        method TEXT NOT NULL,
        received_at TEXT NOT NULL,
        status TEXT NOT NULL,
        violated TEXT NOT NULL,
        warnings TEXT NOT NULL,
        override_reason TEXT NOT NULL DEFAULT '',
        override_actor TEXT NOT NULL DEFAULT '',
        overridden_at TEXT
    );
    CREATE INDEX qc_runs_lookup ON qc_runs (analyzer, method, id);
    CREATE TABLE qc_results (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES qc_runs(id),
        material TEXT NOT NULL,
        level INTEGER NOT NULL,
        lot TEXT NOT NULL,
        specimen TEXT NOT NULL,
        test_code TEXT NOT NULL,
        raw_value TEXT NOT NULL,
        value TEXT,
        units TEXT NOT NULL,
        mean TEXT NOT NULL,
        sd TEXT NOT NULL,
        z TEXT,
        completed_at TEXT
    );
    CREATE INDEX qc_results_run ON qc_results (run_id);
    ALTER TABLE results ADD COLUMN role TEXT NOT NULL DEFAULT '';
    """,
    # 9 (issue 13): what the instrument sent beyond the mapped columns (full test identifier, value
    # and unit components, named gates) as JSON; one ORU may carry several results (grouping by
    # specimen); and the indexes the message browser searches by (specimen already has one).
    """
    ALTER TABLE results ADD COLUMN wire TEXT NOT NULL DEFAULT '';
    CREATE INDEX results_message ON results (message_id);
    CREATE INDEX messages_received ON messages (received_at);
    CREATE INDEX messages_analyzer ON messages (analyzer, received_at);
    CREATE INDEX outbox_result ON outbox (result_id);
    CREATE TABLE outbox_members (
        outbox_id INTEGER NOT NULL REFERENCES outbox(id),
        result_id INTEGER NOT NULL REFERENCES results(id),
        PRIMARY KEY (outbox_id, result_id)
    );
    CREATE INDEX outbox_members_result ON outbox_members (result_id);
    """,
    # 10: review-workstation accounts (labmw web). Passwords only as memory-hard hashes; sessions only
    # as the SHA-256 of their cookie token, so a copy of the database opens no session.
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE sessions (
        token_sha256 TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name),
        csrf_token TEXT NOT NULL,
        peer TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE INDEX sessions_user ON sessions (user_name);
    CREATE TABLE login_failures (
        id INTEGER PRIMARY KEY,
        user_name TEXT NOT NULL,
        peer TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX login_failures_user ON login_failures (user_name, at);
    CREATE INDEX login_failures_peer ON login_failures (peer, at);
    """,
    # 11 (issue 15): second-person release. The first user's signed request to release a held result
    # that needs two people ([review] second_person); the second user's release completes it. No
    # foreign key: the retention purge deletes the row with its result.
    """
    CREATE TABLE release_signatures (
        result_id INTEGER PRIMARY KEY,
        needs TEXT NOT NULL,
        first_actor TEXT NOT NULL,
        first_reason TEXT NOT NULL,
        first_at TEXT NOT NULL,
        second_actor TEXT NOT NULL DEFAULT '',
        second_reason TEXT NOT NULL DEFAULT '',
        completed_at TEXT,
        outcome TEXT NOT NULL DEFAULT 'pending'
    );
    """,
    # 12 (issue 16): several sites may share one history (PostgreSQL); each result names the site that measured it,
    # each autoverification suspension the site that made it.
    """
    ALTER TABLE results ADD COLUMN site TEXT NOT NULL DEFAULT '';
    ALTER TABLE results ADD COLUMN patient_authority TEXT NOT NULL DEFAULT '';
    ALTER TABLE autoverify_suspensions ADD COLUMN site TEXT NOT NULL DEFAULT '';
    """,
)


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700, whatever the umask."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise StoreError(f"cannot create data directory {path}: {exc.strerror}") from None


def _give_to_directory_owner(path: Path) -> None:
    """As root in the service's data directory (a CLI edit, `audit verify`), leave its files the service's.

    Otherwise a -wal or -shm file root created while the daemon was stopped would be root's 0600,
    and the service (user labmw, see systemd/labmw.sysusers) could no longer open its own database.
    """
    if os.geteuid() != 0:
        return
    owner = path.parent.stat()
    if owner.st_uid == 0:
        return
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        side = path.with_name(name)
        if side.exists() and side.stat().st_uid != owner.st_uid:
            os.chown(side, owner.st_uid, owner.st_gid)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` and bring its schema up to date.

    Raises:
        StoreError: the file cannot be created, opened or migrated.
    """
    ensure_private_dir(path.parent)
    try:
        # Create the file 0600 ourselves so sqlite never creates it with the umask's bits. Only when
        # it is missing: closing a descriptor of a database this process already has open through
        # sqlite drops that connection's POSIX locks, and another process could then checkpoint and
        # delete the WAL under it (sqlite.org/howtocorrupt.html §2.2) — the daemon serving [web] has two.
        if not path.exists():
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        os.chmod(path, 0o600)
        # 5 s: long enough for a CLI edit holding the write lock, short of the analyzer's 15 s reply timer.
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            # A new database: freed pages can go back to the file system after a retention purge
            # (must be set before the first table exists; older files are converted at their first purge).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so "committed" means "on disk" before we ACK.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        _give_to_directory_owner(path)
        return conn
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        with transaction(conn):
            for statement in _statements(script):
                conn.execute(statement)
            if number == 1:
                conn.execute("INSERT INTO meta VALUES ('install_id', ?)", (secrets.token_hex(4),))
            conn.execute(f"PRAGMA user_version={number}")


def _statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    out: list[str] = []
    current = ""
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        current += line + "\n"
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection,
                quiet: tuple[type[BaseException], ...] = ()) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE .. COMMIT (ROLLBACK on any error).

    IMMEDIATE takes the write lock up front, so the audit chain's "read last hash, append" is
    serialised across processes (the daemon and a CLI editing the config at the same time).
    ``quiet``: errors of a ROLLBACK that are dropped so that the error that caused it is raised
    (PostgreSQL's shim: a lost connection fails the ROLLBACK too).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(*quiet):
                conn.execute("ROLLBACK")
        raise
    else:
        try:
            conn.execute("COMMIT")
        except BaseException:
            # A COMMIT that fails (disk full, I/O error, deferred constraint) can leave the
            # transaction open; roll it back so no later COMMIT stores what was refused here.
            if conn.in_transaction:
                with contextlib.suppress(*quiet):
                    conn.execute("ROLLBACK")
            raise

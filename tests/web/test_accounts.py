"""Accounts, sessions and failed logins on a real SQLite file (no browser): hashing, expiry, throttling."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from labmw.config import WebSettings
from labmw.errors import StoreError, UsageError
from labmw.store import Store
from labmw.web.accounts import LoginRefused, add_user, current_session, log_in, may
from labmw.web.charts import Point, history_svg, parse_range
from labmw.web.render import show_bytes

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
WEB = WebSettings(session_minutes=15, max_login_failures=3, max_address_failures=5, lockout_minutes=10)


@pytest.fixture(name="store")
def _store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "data" / "labmw.sqlite3")
    add_user(store, name="rita", role="reviewer", password="rita-reviews-alt", actor="root", now=T0)
    yield store
    store.close()


def test_passwords_are_kept_only_as_argon2id_hashes(store: Store) -> None:
    """The stored hash is Argon2id (memory-hard) and the password itself appears nowhere in the file."""
    user = store.users.get("rita")
    assert user is not None and user.password_hash.startswith("$argon2id$") and "m=65536" in user.password_hash
    assert b"rita-reviews-alt" not in store.path.read_bytes()
    assert "password_hash" not in user.as_dict()
    added = store.audit_events(event="user_added")
    assert [(e.actor, e.data["role"]) for e in added] == [("root", "reviewer")]


def test_bad_accounts_are_refused(store: Store) -> None:
    """Short passwords, unknown roles, odd names and a second account of one name are refused."""
    for kwargs, text in (({"name": "x", "role": "reviewer", "password": "short"}, "at least 10"),
                         ({"name": "x", "role": "king", "password": "long enough pw"}, "--role"),
                         ({"name": "a b", "role": "auditor", "password": "long enough pw"}, "user name")):
        with pytest.raises(UsageError, match=text):
            add_user(store, actor="root", now=T0, **kwargs)
    with pytest.raises(StoreError, match="already exists"):
        add_user(store, name="rita", role="auditor", password="another password", actor="root", now=T0)


def test_a_session_opens_on_login_and_ends_when_idle(store: Store) -> None:
    """Login gives a session whose cookie token is not stored; it lapses after session_minutes idle."""
    new = log_in(store, WEB, name="rita", password="rita-reviews-alt", peer="10.0.0.5", now=T0)
    assert new.token.encode() not in store.path.read_bytes()
    session = current_session(store, WEB, new.token, now=T0 + timedelta(minutes=14))
    assert session is not None and session.user.name == "rita" and session.csrf_token == new.csrf_token
    # That view pushed the expiry to 14 + 15 minutes; past it the session is gone.
    assert current_session(store, WEB, new.token, now=T0 + timedelta(minutes=28)) is not None
    assert current_session(store, WEB, new.token, now=T0 + timedelta(minutes=44)) is None
    assert current_session(store, WEB, "forged", now=T0) is None
    assert store.audit_events(event="login_succeeded")[0].data["peer"] == "10.0.0.5"


def test_failed_logins_are_audited_then_throttled(store: Store) -> None:
    """Each failure is an audit event with its reason; past the limit even the right password is refused."""
    for attempt in range(3):
        with pytest.raises(LoginRefused, match="not accepted"):
            log_in(store, WEB, name="rita", password=f"guess {attempt}", peer="10.0.0.9", now=T0)
    with pytest.raises(LoginRefused, match="too many"):
        log_in(store, WEB, name="rita", password="rita-reviews-alt", peer="10.0.0.9", now=T0)
    assert [e.data["reason"] for e in store.audit_events(event="login_failed")] == ["wrong password"] * 3
    assert store.audit_events(event="login_throttled")[0].actor == "rita"
    # After the lockout window the right password works again.
    assert log_in(store, WEB, name="rita", password="rita-reviews-alt", peer="10.0.0.9",
                  now=T0 + timedelta(minutes=11)).user.name == "rita"


def test_one_address_guessing_many_names_is_throttled(store: Store) -> None:
    """Unknown names count against the address too, so spraying names from one host stops."""
    for i in range(5):
        with pytest.raises(LoginRefused, match="not accepted"):
            log_in(store, WEB, name=f"nobody{i}", password="whatever pw", peer="10.0.0.66", now=T0)
    with pytest.raises(LoginRefused, match="too many"):
        log_in(store, WEB, name="rita", password="rita-reviews-alt", peer="10.0.0.66", now=T0)
    assert {e.data["reason"] for e in store.audit_events(event="login_failed")} == {"unknown user"}


def test_disabling_a_user_ends_its_sessions_and_refuses_its_logins(store: Store) -> None:
    """`user disable`: the open session stops working at once and the next login is refused."""
    new = log_in(store, WEB, name="rita", password="rita-reviews-alt", peer="p", now=T0)
    store.users.set_enabled("rita", enabled=False, actor="root", now=T0)
    assert current_session(store, WEB, new.token, now=T0) is None
    with pytest.raises(LoginRefused):
        log_in(store, WEB, name="rita", password="rita-reviews-alt", peer="p", now=T0)
    assert store.audit_events(event="login_failed")[0].data["reason"] == "account disabled"
    assert store.audit_events(event="user_disabled")[0].data["sessions_ended"] == 1
    with pytest.raises(StoreError, match="no user"):
        store.users.set_enabled("ghost", enabled=False, actor="root", now=T0)


def test_roles_grant_what_the_issue_says() -> None:
    """Reviewer releases; director also overrides; auditor only reads; admin manages users, no patient data."""
    from labmw.store.users import User

    def user(role: str) -> User:
        return User(name="u", role=role, password_hash="", enabled=True, created_at="", updated_at="")

    assert may(user("reviewer"), "review") and not may(user("reviewer"), "override")
    assert may(user("director"), "review") and may(user("director"), "override")
    assert may(user("auditor"), "read") and not may(user("auditor"), "review")
    assert may(user("admin"), "users") and not may(user("admin"), "read")
    assert not may(user("unknown"), "dashboard")


def test_a_second_connection_in_one_process_keeps_the_wal_safe(tmp_path: Path) -> None:
    """Opening the store twice in one process (the daemon serving [web]) must not drop the first
    connection's locks: another process closing its connection then deleted the WAL under it."""
    path = tmp_path / "data" / "labmw.sqlite3"
    first = Store.open(path)
    second = Store.open(path)
    first.append_audit("probe", now=T0, actor="t")
    script = f"from labmw.store import Store; from pathlib import Path; Store.open(Path({str(path)!r})).close()"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert path.with_name(path.name + "-wal").exists(), "the WAL of a live connection was deleted"
    first.append_audit("probe", now=T0, actor="t")
    first.close()
    second.close()
    reopened = Store.open(path)
    assert [e.event for e in reopened.audit_events(event="probe")] == ["probe", "probe"]
    reopened.close()


def test_the_history_chart_is_svg_with_the_range_band() -> None:
    """Points, a line and the reference band; the current result is marked; text is escaped."""
    svg = history_svg([Point(label="a<b", value=Decimal(40)), Point(label="now", value=Decimal(300), current=True)],
                      parse_range("9-59"), units="U/L")
    assert svg.startswith("<svg") and svg.count("<circle") == 2 and 'class="band"' in svg
    assert "point current" in svg and "a&lt;b" in svg and "<polyline" in svg
    assert parse_range("") is None and parse_range("x-y") is None and history_svg([]) == ""


def test_raw_bytes_show_their_control_characters() -> None:
    """Framing bytes are named, text decoded in runs (multi-byte characters survive); a line per frame."""
    assert show_bytes(b"\x021H|M\xc3\xbcller\r\x0317\r\n\x1f") == "<STX>1H|Müller<CR><ETX>17<CR><LF>\n<0x1F>"
    # Frames sent without CR LF still get a line each; HL7 segments a line each.
    assert show_bytes(b"\x021H\r\x0318\x022L|1\r\x0309") == "<STX>1H<CR><ETX>18\n<STX>2L|1<CR><ETX>09"
    assert show_bytes(b"\x0bMSH|^~\\&\rPID|1\r\x1c\r") == "<VT>MSH|^~\\&<CR>\nPID|1<CR>\n<FS><CR>\n"
    assert show_bytes(b"M\xfcller", "latin-1") == "Müller"


def test_login_redirects_only_to_local_paths() -> None:
    """`next` after login never leads to another site."""
    from labmw.web.account_pages import _safe_next

    assert _safe_next("/held?gate=delta") == "/held?gate=delta"
    for target in ("//evil.example/", "/\\evil.example", "https://evil.example/", "held"):
        assert _safe_next(target) == "/"

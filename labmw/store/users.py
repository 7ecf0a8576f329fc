"""Review-workstation accounts, sessions and failed logins (tables of migration 5).

Reached as ``store.users`` (:class:`Users`). The store keeps what it is handed: a password arrives
already hashed (``labmw.web.accounts`` hashes it) and a session is known only by the SHA-256 of its
cookie token. Every change of an account and every login, logout and failed login is an audit event
written in the same transaction as the change (21 CFR 11.10(e); HIPAA 164.312(b)).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from labmw.errors import StoreError

if TYPE_CHECKING:
    from labmw.store.sqlite import Tx

TransactionFactory = Callable[[datetime], AbstractContextManager["Tx"]]


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    name: str
    role: str
    password_hash: str
    enabled: bool
    created_at: str
    updated_at: str

    def as_dict(self) -> dict[str, Any]:
        """The account without its password hash (for `labmw user list --json`)."""
        return {"name": self.name, "role": self.role, "enabled": self.enabled, "created_at": self.created_at,
                "updated_at": self.updated_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    user: User
    csrf_token: str
    peer: str
    created_at: str
    last_seen_at: str
    expires_at: str


class Users:
    """Accounts and sessions on one connection; writes go through the store's transactions."""

    def __init__(self, conn: sqlite3.Connection, transaction: TransactionFactory) -> None:
        self._conn = conn
        self._transaction = transaction

    # --- accounts ----------------------------------------------------------------------------------
    def get(self, name: str) -> User | None:
        row = self._conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return _user(row) if row is not None else None

    def all(self) -> list[User]:
        return [_user(row) for row in self._conn.execute("SELECT * FROM users ORDER BY name")]

    def add(self, *, name: str, role: str, password_hash: str, actor: str, now: datetime) -> None:
        """Create an enabled account; raises StoreError if the name is taken."""
        with self._transaction(now) as tx:
            if self.get(name) is not None:
                raise StoreError(f"user {name!r} already exists")
            self._conn.execute("INSERT INTO users VALUES (?,?,?,1,?,?)",
                               (name, role, password_hash, now.isoformat(), now.isoformat()))
            tx.audit("user_added", actor=actor, ref=name, data={"user": name, "role": role})

    def set_enabled(self, name: str, *, enabled: bool, actor: str, now: datetime) -> None:
        """Enable or disable an account; disabling also ends its open sessions. StoreError if unknown."""
        with self._transaction(now) as tx:
            user = self.get(name)
            if user is None:
                raise StoreError(f"no user {name!r}")
            self._conn.execute("UPDATE users SET enabled = ?, updated_at = ? WHERE name = ?",
                               (int(enabled), now.isoformat(), name))
            ended = 0
            if not enabled:
                ended = self._conn.execute("DELETE FROM sessions WHERE user_name = ?", (name,)).rowcount
            tx.audit("user_enabled" if enabled else "user_disabled", actor=actor, ref=name,
                     data={"user": name, "role": user.role, "was_enabled": user.enabled, "sessions_ended": ended})

    # --- sessions ----------------------------------------------------------------------------------
    def start_session(self, *, token_sha256: str, user: User, csrf_token: str, peer: str, now: datetime,
                      expires_at: datetime) -> None:
        """Record a successful login and its session (audited as ``login_succeeded``)."""
        with self._transaction(now) as tx:
            self._conn.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?,?)",
                               (token_sha256, user.name, csrf_token, peer, now.isoformat(), now.isoformat(),
                                expires_at.isoformat()))
            tx.audit("login_succeeded", actor=user.name, ref=user.name,
                     data={"user": user.name, "role": user.role, "peer": peer,
                           "expires_at": expires_at.isoformat()})

    def session(self, token_sha256: str, *, now: datetime) -> Session | None:
        """The live session with this token hash, or None (unknown, expired, or its user disabled)."""
        row = self._conn.execute(
            "SELECT s.csrf_token, s.peer, s.created_at AS s_created, s.last_seen_at, s.expires_at, u.*"
            " FROM sessions s JOIN users u ON u.name = s.user_name WHERE s.token_sha256 = ?",
            (token_sha256,)).fetchone()
        if row is None or not row["enabled"] or datetime.fromisoformat(row["expires_at"]) <= now:
            return None
        return Session(user=_user(row), csrf_token=row["csrf_token"], peer=row["peer"], created_at=row["s_created"],
                       last_seen_at=row["last_seen_at"], expires_at=row["expires_at"])

    def touch_session(self, token_sha256: str, *, now: datetime, expires_at: datetime) -> None:
        """Push an active session's idle expiry forward (no audit event: activity is audited per page)."""
        with self._transaction(now):
            self._conn.execute("UPDATE sessions SET last_seen_at = ?, expires_at = ? WHERE token_sha256 = ?",
                               (now.isoformat(), expires_at.isoformat(), token_sha256))

    def end_session(self, token_sha256: str, *, now: datetime, reason: str) -> None:
        """Forget a session (logout or expiry), audited as ``logout`` with the reason."""
        with self._transaction(now) as tx:
            row = self._conn.execute("SELECT user_name, peer FROM sessions WHERE token_sha256 = ?",
                                     (token_sha256,)).fetchone()
            if row is None:
                return
            self._conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (token_sha256,))
            tx.audit("logout", actor=row["user_name"], ref=row["user_name"],
                     data={"user": row["user_name"], "peer": row["peer"], "reason": reason})

    # --- failed logins -----------------------------------------------------------------------------
    def failures_since(self, *, name: str, peer: str, since: datetime) -> tuple[int, int]:
        """(failed logins for ``name``, failed logins from ``peer``) at or after ``since``."""
        when = since.isoformat()
        by_name = self._conn.execute("SELECT count(*) FROM login_failures WHERE user_name = ? AND at >= ?",
                                     (name, when)).fetchone()[0]
        by_peer = self._conn.execute("SELECT count(*) FROM login_failures WHERE peer = ? AND at >= ?",
                                     (peer, when)).fetchone()[0]
        return int(by_name), int(by_peer)

    def record_failure(self, *, name: str, peer: str, reason: str, now: datetime, throttled: bool) -> None:
        """Count one failed login and audit it (``login_failed``, or ``login_throttled`` when refused unread)."""
        with self._transaction(now) as tx:
            self._conn.execute("INSERT INTO login_failures (user_name, peer, at) VALUES (?,?,?)",
                               (name, peer, now.isoformat()))
            tx.audit("login_throttled" if throttled else "login_failed", actor=name or "-", ref=name,
                     data={"user": name, "peer": peer, "reason": reason})


def _user(row: sqlite3.Row) -> User:
    return User(name=row["name"], role=row["role"], password_hash=row["password_hash"], enabled=bool(row["enabled"]),
                created_at=row["created_at"], updated_at=row["updated_at"])

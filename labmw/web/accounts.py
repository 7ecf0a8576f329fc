"""Accounts of the review workstation: roles, what each may do, password hashing, logins and sessions.

Passwords are hashed with Argon2id (argon2-cffi's defaults: 64 MiB, 3 passes, RFC 9106's second
recommended option), a memory-hard hash, so a stolen database does not give the passwords away.
Sessions are random 256-bit tokens in an HttpOnly cookie; the store keeps only their SHA-256.
Failed logins are counted per name and per address; past ``max_login_failures`` (per name) or
``max_address_failures`` (per address) within ``lockout_minutes`` a login is refused without checking
the password, so guessing gains nothing; each failure and each refusal is audited.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from labmw.config import WebSettings
from labmw.errors import UsageError
from labmw.store import Store
from labmw.store.users import Session, User

ROLES = ("reviewer", "director", "auditor", "admin")

# What each role may do. "read" covers every page showing patient data (each view is audited);
# "review" is releasing and rejecting held results; "override" rule and QC overrides; "users" accounts;
# "verify" re-checking the audit chain (shows no patient data).
PERMISSIONS: dict[str, frozenset[str]] = {
    "reviewer": frozenset({"dashboard", "read", "review", "verify"}),
    "director": frozenset({"dashboard", "read", "review", "override", "verify"}),
    "auditor": frozenset({"dashboard", "read", "verify"}),
    "admin": frozenset({"dashboard", "users", "verify"}),
}

MIN_PASSWORD = 10  # characters; NIST SP 800-63B 5.1.1.2 asks at least 8 for a chosen secret
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the name is unknown, so an unknown name costs as long as a wrong password."""
    return _hasher.hash(secrets.token_hex(16))


class LoginRefused(UsageError):
    """A login that did not succeed; the message is safe to show (it never says which part was wrong)."""


def hash_password(password: str) -> str:
    """Argon2id hash of ``password``; raises UsageError when it is too short."""
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"password: expected at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UsageError(f"--role: expected one of {', '.join(ROLES)}, got {role!r}")
    return role


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
        raise UsageError(f"user name: expected 1-64 letters, digits, '.', '_' or '-', got {name!r}")
    return name


def add_user(store: Store, *, name: str, role: str, password: str, actor: str, now: datetime) -> None:
    """Create an account (audited as ``user_added`` with ``actor``). Raises UsageError, StoreError."""
    store.users.add(name=check_name(name), role=check_role(role), password_hash=hash_password(password),
                    actor=actor, now=now)


def may(user: User, permission: str) -> bool:
    return permission in PERMISSIONS.get(user.role, frozenset())


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSession:
    token: str  # goes in the cookie, never stored
    csrf_token: str
    user: User


def log_in(store: Store, web: WebSettings, *, name: str, password: str, peer: str, now: datetime) -> NewSession:
    """Check a login and open a session; raises LoginRefused (already audited and counted).

    Runs on the store's thread (the Argon2 check takes some 50 ms of it).
    """
    by_name, by_peer = store.users.failures_since(name=name, peer=peer,
                                                  since=now - timedelta(minutes=web.lockout_minutes))
    if by_name >= web.max_login_failures or by_peer >= web.max_address_failures:
        which = (f"{by_name} failed logins for this name" if by_name >= web.max_login_failures
                 else f"{by_peer} failed logins from this address")
        store.users.record_failure(name=name, peer=peer, now=now, throttled=True,
                                   reason=f"{which} in {web.lockout_minutes} min")
        raise LoginRefused(f"too many failed logins; try again in {web.lockout_minutes} minutes")
    user = store.users.get(name)
    reason = _password_problem(user, password)
    if user is None or reason:
        store.users.record_failure(name=name, peer=peer, reason=reason or "unknown user", now=now, throttled=False)
        raise LoginRefused("name or password not accepted")
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    store.users.start_session(token_sha256=token_digest(token), user=user, csrf_token=csrf, peer=peer, now=now,
                              expires_at=now + timedelta(minutes=web.session_minutes))
    return NewSession(token=token, csrf_token=csrf, user=user)


def _password_problem(user: User | None, password: str) -> str:
    try:
        _hasher.verify(user.password_hash if user is not None else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return "wrong password" if user is not None else "unknown user"
    if user is None:
        return "unknown user"
    return "" if user.enabled else "account disabled"


def current_session(store: Store, web: WebSettings, token: str, *, now: datetime) -> Session | None:
    """The live session for a cookie token (its idle expiry pushed forward), or None."""
    digest = token_digest(token)
    session = store.users.session(digest, now=now)
    if session is None:
        return None
    # Touch at most once a minute: a page view is a write of its own already (its audit event).
    if now - datetime.fromisoformat(session.last_seen_at) >= timedelta(minutes=1):
        store.users.touch_session(digest, now=now, expires_at=now + timedelta(minutes=web.session_minutes))
    return session

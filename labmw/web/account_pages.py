"""Login, logout, and the administrator's account page.

The login form is protected against cross-site submission by a double-submit token (a cookie and a
hidden field that must match); every form after login carries the session's own CSRF token.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from labmw.errors import StoreError, UsageError
from labmw.store.users import Session
from labmw.web.accounts import ROLES, LoginRefused, add_user, log_in
from labmw.web.context import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    ctx_of,
    guarded,
    peer_of,
    session_of,
)


def _safe_next(target: str) -> str:
    """Only a local path (no open redirect: browsers read ``//host`` and ``/\\host`` as another site)."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


async def login_form(request: Request) -> Response:
    if await session_of(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next", "/")), status_code=303)
    return _login_page(request, problem="", status_code=200)


def _login_page(request: Request, *, problem: str, status_code: int) -> Response:
    ctx = ctx_of(request)
    token = secrets.token_urlsafe(32)
    response = ctx.render(request, "login.html", None, status_code=status_code, login_csrf=token, problem=problem,
                          next=_safe_next(request.query_params.get("next", "/")))
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=ctx.secure, path="/login")
    return response


async def login_submit(request: Request) -> Response:
    ctx = ctx_of(request)
    form = await request.form()
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, str(form.get("csrf", ""))):
        return _login_page(request, problem="The login form expired; please try again.", status_code=403)
    name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
    try:
        new = await ctx.call(log_in, ctx.store, ctx.web, name=name, password=password, peer=peer_of(request),
                             now=ctx.clock())
    except LoginRefused as exc:
        return _login_page(request, problem=str(exc), status_code=401)
    response = RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)
    response.set_cookie(SESSION_COOKIE, new.token, httponly=True, samesite="strict", secure=ctx.secure, path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@guarded("dashboard")
async def logout(request: Request, session: Session) -> Response:
    from labmw.web.accounts import token_digest

    ctx = ctx_of(request)
    await ctx.call(ctx.store.users.end_session, token_digest(request.cookies.get(SESSION_COOKIE, "")),
                   now=ctx.clock(), reason="logout")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@guarded("users")
async def users_page(request: Request, session: Session) -> Response:
    return await _users(request, session, problem="")


async def _users(request: Request, session: Session, *, problem: str, status_code: int = 200) -> Response:
    ctx = ctx_of(request)
    users = await ctx.call(ctx.store.users.all)
    return ctx.render(request, "users.html", session, users=users, roles=ROLES, problem=problem,
                      status_code=status_code)


@guarded("users")
async def users_add(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    form = await request.form()
    try:
        await ctx.call(add_user, ctx.store, name=str(form.get("name", "")).strip(), role=str(form.get("role", "")),
                       password=str(form.get("password", "")), actor=f"web:{session.user.name}", now=ctx.clock())
    except (UsageError, StoreError) as exc:
        return await _users(request, session, problem=str(exc), status_code=400)
    return RedirectResponse("/users", status_code=303)


@guarded("users")
async def users_disable(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    try:
        await ctx.call(ctx.store.users.set_enabled, request.path_params["name"], enabled=False,
                       actor=f"web:{session.user.name}", now=ctx.clock())
    except StoreError as exc:
        return await _users(request, session, problem=str(exc), status_code=404)
    return RedirectResponse("/users", status_code=303)

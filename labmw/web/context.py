"""What every page handler needs: the store thread, the settings, the daemon's status, the clock, and
the guard that checks the session, the role and the CSRF token before a handler runs.

Store calls go to a :class:`~labmw.daemon.runner.StoreRunner` thread of the web's own (never the
event loop, never the daemon's store thread), the same way the daemon keeps its loop free.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from labmw.config import Settings, WebSettings
from labmw.daemon.runner import StoreRunner
from labmw.store import Store
from labmw.store.users import Session
from labmw.web.accounts import PERMISSIONS, current_session, may

P = ParamSpec("P")
T = TypeVar("T")

SESSION_COOKIE = "labmw_session"
LOGIN_CSRF_COOKIE = "labmw_login_csrf"
Handler = Callable[[Request, Session], Awaitable[Response]]


@dataclass(kw_only=True)
class WebContext:
    """Built once by :func:`labmw.web.app.build_app`'s caller and kept in ``app.state.ctx``."""

    runner: StoreRunner
    web: WebSettings
    settings: Callable[[], Settings]  # the configuration as it is now (reloads apply)
    status: Callable[[], Awaitable[dict[str, Any]]]  # the daemon's status dict (raises ControlError)
    clock: Callable[[], datetime]
    secure: bool  # cookies marked Secure (HTTPS)
    env: Environment = field(default_factory=lambda: Environment(
        loader=PackageLoader("labmw.web", "templates"), autoescape=select_autoescape(["html"])))

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a store function on the web's store thread."""
        return await self.runner.call(fn, *args, **kwargs)

    @property
    def store(self) -> Store:
        return self.runner.store

    def render(self, request: Request, template: str, session: Session | None, *, status_code: int = 200,
               **values: Any) -> HTMLResponse:
        user = session.user if session is not None else None
        html = self.env.get_template(template).render(
            request=request, user=user, csrf=session.csrf_token if session else "",
            perms=PERMISSIONS.get(user.role, frozenset()) if user else frozenset(), path=request.url.path,
            **values)
        response = HTMLResponse(html, status_code=status_code)
        response.headers["Cache-Control"] = "no-store"  # pages carry patient data: never cached on disk
        return response

    def error(self, request: Request, session: Session | None, status_code: int, title: str,
              message: str) -> HTMLResponse:
        return self.render(request, "error.html", session, status_code=status_code, title=title, message=message)

    async def audit(self, event: str, request: Request, session: Session | None, *, specimen: str = "",
                    patient: str = "", **data: Any) -> None:
        """One audit event by the session's user (or "-"), with the page, the role and the address."""
        actor = session.user.name if session else "-"
        await self.call(self.store.append_audit, event, now=self.clock(), actor=f"web:{actor}", specimen=specimen,
                        patient=patient, ref=request.url.path,
                        data={"path": _path(request), "role": session.user.role if session else "",
                              "peer": peer_of(request), **data})

    async def audit_view(self, request: Request, session: Session, *, patients: Iterable[str] = (),
                         specimens: Iterable[str] = ()) -> None:
        """Audit a page view showing patient data (HIPAA 164.312(b)): who saw which patients, when.

        ``data.patients`` and ``data.specimens`` list what the page showed, so `audit list --patient P`
        finds every view of P's data.
        """
        pats = sorted({p for p in patients if p})
        specs = sorted({s for s in specimens if s})
        await self.audit("page_viewed", request, session, patient=pats[0] if len(pats) == 1 else "",
                         specimen=specs[0] if len(specs) == 1 else "", patients=pats, specimens=specs)


def peer_of(request: Request) -> str:
    return request.client.host if request.client else "-"


def _path(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def ctx_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


async def session_of(request: Request) -> Session | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    ctx = ctx_of(request)
    return await ctx.call(current_session, ctx.store, ctx.web, token, now=ctx.clock())


def guarded(permission: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler: a live session (else the login page), the permission (else 403, audited), and on
    POST the session's CSRF token in the form (else 403, audited)."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @wraps(handler)
        async def endpoint(request: Request) -> Response:
            ctx = ctx_of(request)
            session = await session_of(request)
            if session is None:
                if request.method == "GET":
                    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
                return ctx.error(request, None, 401, "Not logged in", "Your session has ended; log in again.")
            if request.method == "POST":
                form = await request.form()
                if not secrets.compare_digest(str(form.get("csrf", "")), session.csrf_token):
                    await ctx.audit("csrf_refused", request, session)
                    return ctx.error(request, session, 403, "Refused",
                                     "The form's security token does not match your session; reload the page.")
            if not may(session.user, permission):
                await ctx.audit("access_denied", request, session, needed=permission)
                return ctx.error(request, session, 403, "Refused",
                                 f"Your role ({session.user.role}) may not do this ({permission}).")
            return await handler(request, session)

        return endpoint

    return wrap

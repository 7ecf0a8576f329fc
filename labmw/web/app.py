"""The review workstation's ASGI application: routes, security headers, error pages.

Server-rendered HTML (Jinja2) with one stylesheet shipped in the package: nothing to build, nothing
fetched from the internet, and it works with scripts disabled.
"""

from __future__ import annotations

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labmw.web import account_pages, qc_pages, review_pages, trail_pages
from labmw.web.context import WebContext, ctx_of, session_of

log = structlog.get_logger(__name__)

# No inline scripts, nothing from elsewhere, no framing (clickjacking), no referrer leaking URLs
# that carry patient or specimen IDs.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` (and HSTS over HTTPS) to every response."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.headers = SECURITY_HEADERS + ([(b"strict-transport-security", b"max-age=31536000")] if https else [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, with_headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    ctx = ctx_of(request)
    code = exc.status_code if isinstance(exc, HTTPException) else 500
    titles = {404: "Not found", 405: "Not allowed"}
    return ctx.error(request, await _quiet_session(request), code, titles.get(code, "Error"),
                     exc.detail if isinstance(exc, HTTPException) else "")


async def _server_error(request: Request, exc: Exception) -> Response:
    # The per-request boundary: log the bug (no patient data: the path and the error type only).
    log.error("web_request_failed", path=request.url.path, error=type(exc).__name__, exc_info=exc)
    return ctx_of(request).error(request, None, 500, "Error",
                                 f"labmw could not show this page ({type(exc).__name__}); this is a bug")


async def _quiet_session(request: Request):  # type: ignore[no-untyped-def]
    try:
        return await session_of(request)
    except Exception:  # noqa: BLE001 - an error page must render even when the store does not answer
        return None


def build_app(ctx: WebContext) -> Starlette:
    """The application for ``ctx``."""
    routes = [
        Route("/login", account_pages.login_form, methods=["GET"]),
        Route("/login", account_pages.login_submit, methods=["POST"]),
        Route("/logout", account_pages.logout, methods=["POST"]),
        Route("/", review_pages.dashboard, methods=["GET"]),
        Route("/held", review_pages.held_list, methods=["GET"]),
        Route("/results/{result_id:int}", review_pages.result_page, methods=["GET"]),
        Route("/results/{result_id:int}/release", review_pages.release, methods=["POST"]),
        Route("/results/{result_id:int}/reject", review_pages.reject, methods=["POST"]),
        Route("/qc", qc_pages.qc_page, methods=["GET"]),
        Route("/qc/chart.png", qc_pages.qc_chart, methods=["GET"]),
        Route("/qc/runs/{run_id:int}", qc_pages.qc_run_page, methods=["GET"]),
        Route("/qc/runs/{run_id:int}/accept", qc_pages.qc_accept, methods=["POST"]),
        Route("/audit", trail_pages.audit_page, methods=["GET"]),
        Route("/audit/verify", trail_pages.audit_verify, methods=["GET"]),
        Route("/messages", trail_pages.messages_page, methods=["GET"]),
        Route("/messages/{message_id:int}", trail_pages.message_page, methods=["GET"]),
        Route("/users", account_pages.users_page, methods=["GET"]),
        Route("/users", account_pages.users_add, methods=["POST"]),
        Route("/users/{name}/disable", account_pages.users_disable, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("labmw.web", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.ctx = ctx
    app.add_middleware(SecurityHeaders, https=ctx.secure)
    return app

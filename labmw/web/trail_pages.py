"""The audit trail (search, a specimen's path, chain verification) and the message browser.

The search is :meth:`Store.audit_events` and the check :meth:`Store.verify_audit`: the very calls of
`labmw audit list` and `labmw audit verify`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from labmw.errors import LabmwError, StoreError, UsageError
from labmw.store.audit import Verification
from labmw.store.users import Session
from labmw.web.accounts import may
from labmw.web.context import ctx_of, guarded
from labmw.web.render import parse_form_time, show_bytes

AUDIT_LIMIT = 500  # events on one page; narrow the search for more
# A specimen's path from the analyzer's bytes to the LIS's ACK (PRODUCT.md "Reading it at 3 a.m.").
PATH_EVENTS = ("message_received", "result_received", "result_evaluated", "result_held", "result_released",
               "result_rejected", "result_queued", "delivery_failed", "result_delivered")


@guarded("read")
async def audit_page(request: Request, session: Session) -> Response:
    return await _audit(request, session, None)


@guarded("verify")
async def audit_verify(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    verification: Verification = await ctx.call(ctx.store.verify_audit)
    await ctx.audit("audit_verified", request, session, ok=verification.ok, count=verification.count,
                    first_broken=verification.first_broken, reason=verification.reason)
    if not may(session.user, "read"):
        return ctx.render(request, "audit.html", session, events=None, want={}, verification=verification,
                          problem="", path_events=PATH_EVENTS)
    return await _audit(request, session, verification)


async def _audit(request: Request, session: Session, verification: Verification | None) -> Response:
    ctx = ctx_of(request)
    q = request.query_params
    want = {k: q.get(k, "").strip() for k in ("specimen", "patient", "event", "since", "until")}
    events: list[Any] = []
    problem = ""
    try:
        filters = {k: want[k] or None for k in ("specimen", "patient", "event")}
        events = await ctx.call(ctx.store.audit_events, **filters, since=parse_form_time(want["since"], "since"),
                                until=parse_form_time(want["until"], "until"), limit=AUDIT_LIMIT)
    except UsageError as exc:
        problem = str(exc)
    except StoreError as exc:
        return ctx.error(request, session, 500, "Trail unreadable", str(exc))
    await ctx.audit_view(request, session, patients=[e.patient for e in events],
                         specimens=[e.specimen for e in events])
    return ctx.render(request, "audit.html", session, events=events, want=want, verification=verification,
                      problem=problem, path_events=PATH_EVENTS, limit=AUDIT_LIMIT)


@guarded("read")
async def messages_page(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    analyzer = request.query_params.get("analyzer", "").strip() or None
    rows = await ctx.call(ctx.store.browse.messages, analyzer=analyzer)
    # The list shows analyzers, peers and sizes only (no patient data), but it is a read of the trail.
    await ctx.audit_view(request, session)
    return ctx.render(request, "messages.html", session, rows=rows, analyzer=analyzer or "")


@guarded("read")
async def message_page(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    message_id = int(request.path_params["message_id"])

    def load() -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, Any]]:
        browse = ctx.store.browse
        message, results = browse.message(message_id)
        return message, results, {r["id"]: browse.deliveries(r["id"], r["specimen"]) for r in results}

    try:
        message, results, deliveries = await ctx.call(load)
    except StoreError as exc:
        return ctx.error(request, session, 404, "Not found", str(exc))
    try:
        analyzer = ctx.settings().analyzers.get(message["analyzer"])
    except LabmwError:
        analyzer = None
    encoding = analyzer.encoding if analyzer is not None else ("latin-1" if message["protocol"] == "astm" else "utf-8")
    await ctx.audit_view(request, session, patients=[r["patient_id"] for r in results],
                         specimens=[r["specimen"] for r in results])
    return ctx.render(request, "message.html", session, m=message, raw=show_bytes(message["raw"], encoding),
                      results=results, deliveries=deliveries, show_bytes=show_bytes)

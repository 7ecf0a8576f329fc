"""Dashboard, held results, one result's page, and the release/reject decisions.

Decisions call :func:`labmw.daemon.review.decide`, exactly what `labmw review release|reject` calls:
the same ORU, the same audit events, the same "is it still held" check in one transaction.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from labmw.daemon import review
from labmw.daemon.control import ControlError
from labmw.errors import LabmwError, StoreError, UsageError
from labmw.store import ops_stats
from labmw.store.sqlite import HeldResult
from labmw.store.users import Session
from labmw.web.accounts import may
from labmw.web.charts import Point, history_svg, parse_range
from labmw.web.context import WebContext, ctx_of, guarded
from labmw.web.render import show_bytes

# What the page says after a decision (the redirect's ?done=, see labmw.daemon.review.Decided.state).
DONE = {review.RELEASED: "Result released.", review.REJECTED: "Result rejected.",
        review.REQUESTED: "Release requested: a second person must release this result."}
REFRESH_SECONDS = 15  # the dashboard reloads itself (a meta refresh: no script needed)


def hold_gates(evaluation: dict[str, Any] | None) -> list[str]:
    """The rules that held a result (the same naming as the metrics' held-by-gate figures)."""
    return ops_stats.hold_gates((evaluation or {}).get("decisions"))


async def _held_with_gates(ctx: WebContext) -> list[tuple[HeldResult, list[str]]]:
    def load() -> list[tuple[HeldResult, list[str]]]:
        return [(h, hold_gates(ctx.store.browse.evaluation(h.id, h.specimen))) for h in ctx.store.held_results()]

    return await ctx.call(load)


@guarded("dashboard")
async def dashboard(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    try:
        status: dict[str, Any] | None = await ctx.status()
        status_error = ""
    except ControlError as exc:
        status, status_error = None, str(exc)
    counts = await ctx.call(ctx.store.counts)
    by_gate: dict[str, int] = {}
    for _, gates in await _held_with_gates(ctx):
        for gate in gates:
            by_gate[gate] = by_gate.get(gate, 0) + 1
    alerts = await ctx.call(ctx.store.audit_events, event="alert_raised", since=ctx.clock() - timedelta(hours=24))
    return ctx.render(request, "dashboard.html", session, status=status, status_error=status_error, counts=counts,
                      by_gate=sorted(by_gate.items()), alerts=list(reversed(alerts))[:20], refresh=REFRESH_SECONDS,
                      now=ctx.clock())


@guarded("read")
async def held_list(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    q = request.query_params
    want = {k: q.get(k, "") for k in ("gate", "analyzer", "method")}
    rows = await _held_with_gates(ctx)
    choices = {"gate": sorted({g for _, gates in rows for g in gates}),
               "analyzer": sorted({h.analyzer for h, _ in rows}), "method": sorted({h.method for h, _ in rows})}
    shown = [(h, gates) for h, gates in rows
             if (not want["gate"] or want["gate"] in gates) and (not want["analyzer"] or h.analyzer == want["analyzer"])
             and (not want["method"] or h.method == want["method"])]
    await ctx.audit_view(request, session, patients=[h.patient for h, _ in shown],
                         specimens=[h.specimen for h, _ in shown])

    def awaiting() -> dict[int, str]:
        """Who asked for each two-person release still waiting for its second signature."""
        return {h.id: s.first_actor for h, _ in shown
                if (s := ctx.store.release_signature(h.id)) is not None and s.outcome == "pending"}

    return ctx.render(request, "held.html", session, rows=shown, want=want, choices=choices,
                      awaiting=await ctx.call(awaiting))


@guarded("read")
async def result_page(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    result_id = int(request.path_params["result_id"])
    return await _result_response(request, session, ctx, result_id)


async def _result_response(request: Request, session: Session, ctx: WebContext, result_id: int, *,
                           problem: str = "", status_code: int = 200) -> Response:
    def load() -> dict[str, Any]:
        browse = ctx.store.browse
        row = browse.result(result_id)
        message, _ = browse.message(row["message_id"])
        return {"row": row, "message": message, "evaluation": browse.evaluation(result_id, row["specimen"]),
                "history": browse.history(patient_id=row["patient_id"], method=row["method"] or ""),
                "deliveries": browse.deliveries(result_id, row["specimen"]),
                "signature": ctx.store.release_signature(result_id),
                "needs": _needs(ctx, result_id) if row["state"] == "held" else ()}

    try:
        data = await ctx.call(load)
    except StoreError as exc:
        return ctx.error(request, session, 404, "Not found", str(exc))
    row = data["row"]
    await ctx.audit_view(request, session, patients=[row["patient_id"]], specimens=[row["specimen"]])
    points = []
    for h in data["history"]:
        try:
            points.append(Point(label=f"{h.collected_at[:16]} {h.specimen}", value=Decimal(h.value),
                                current=h.result_id == result_id))
        except InvalidOperation:
            continue
    chart = history_svg(points, parse_range(row["applied_range"]), units=row["units"])
    return ctx.render(request, "result.html", session, status_code=status_code, r=row, message=data["message"],
                      raw=show_bytes(data["message"]["raw"]), evaluation=data["evaluation"],
                      gates=hold_gates(data["evaluation"]) if row["state"] == "held" else [],
                      history=data["history"], chart=chart, deliveries=data["deliveries"],
                      show_bytes=show_bytes, can_review=may(session.user, "review"), problem=problem,
                      done=DONE.get(request.query_params.get("done", ""), ""), signature=data["signature"],
                      needs=data["needs"], me=f"web:{session.user.name}")


def _needs(ctx: WebContext, result_id: int) -> tuple[str, ...]:
    """Why a release needs two people; when the configuration cannot be read the release will say so."""
    try:
        return review.second_person_needed(ctx.settings(), ctx.store, result_id)
    except LabmwError:
        return ()


async def _decide(request: Request, session: Session, decision: str) -> Response:
    ctx = ctx_of(request)
    result_id = int(request.path_params["result_id"])
    form = await request.form()
    reason = str(form.get("reason", ""))
    try:
        decided = await ctx.call(review.decide, ctx.settings(), ctx.store, result_id, decision=decision,
                                 reason=reason, actor=f"web:{session.user.name}", now=ctx.clock())
    except UsageError as exc:
        return await _result_response(request, session, ctx, result_id, problem=str(exc), status_code=400)
    except StoreError as exc:
        return await _result_response(request, session, ctx, result_id, problem=str(exc), status_code=409)
    except LabmwError as exc:  # e.g. the configuration cannot be read right now
        return ctx.error(request, session, 500, "Not done", str(exc))
    return RedirectResponse(f"/results/{result_id}?done={decided.state}", status_code=303)


@guarded("review")
async def release(request: Request, session: Session) -> Response:
    return await _decide(request, session, "release")


@guarded("review")
async def reject(request: Request, session: Session) -> Response:
    return await _decide(request, session, "reject")

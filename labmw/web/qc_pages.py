"""The QC page: each analyzer x method's state, Levey-Jennings charts per level, rejected runs, and a
run's impact (patient results released before it, held by it); a director's documented override.

Every number comes from the functions `labmw qc ...` calls: :meth:`QcStore.runs` (`qc list`),
:func:`labmw.qc.status.qc_states` (`status`), :func:`labmw.qc.impact.run_impact` (`qc impact`),
:func:`labmw.qc.override.accept_run` (`qc accept`) and :func:`labmw.qc.chart.render`, the drawing of
`qc chart`, served as a PNG drawn on the server.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from labmw.errors import LabmwError, StoreError, UsageError
from labmw.qc.chart import render
from labmw.qc.impact import Impact, run_impact
from labmw.qc.override import accept_run
from labmw.qc.status import qc_states
from labmw.store.qc import QcRun
from labmw.store.users import Session
from labmw.web.accounts import may
from labmw.web.context import WebContext, ctx_of, guarded

LAST_RUNS = 60  # runs per chart (a month at two runs a day); `labmw qc chart` draws them all


def _levels(runs: list[QcRun]) -> list[int]:
    return sorted({r.level for run in runs for r in run.results if r.value is not None})


@guarded("read")
async def qc_page(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)

    def load() -> tuple[list[dict[str, Any]], dict[tuple[str, str], list[QcRun]]]:
        states = qc_states(ctx.settings(), ctx.store, ctx.clock())
        return states, {(s["analyzer"], s["method"]): ctx.store.qc.runs(analyzer=s["analyzer"], method=s["method"])
                        for s in states}

    try:
        states, runs = await ctx.call(load)
    except LabmwError as exc:
        return ctx.error(request, session, 500, "QC unreadable", str(exc))
    charts = [(a, m, level) for (a, m), pair_runs in runs.items() for level in _levels(pair_runs[-LAST_RUNS:])]
    rejected = [run for pair_runs in runs.values() for run in pair_runs if not run.accepted or run.override_actor]
    rejected.sort(key=lambda run: run.id, reverse=True)
    # No patient data on this page, but it is a read of the QC record: audited like the message list.
    await ctx.audit_view(request, session)
    return ctx.render(request, "qc.html", session, states=states, charts=charts, rejected=rejected,
                      last_runs=LAST_RUNS)


@guarded("read")
async def qc_chart(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    q = request.query_params
    analyzer, method = q.get("analyzer", ""), q.get("method", "")
    try:
        level = int(q["level"]) if q.get("level") else None
    except ValueError:
        return ctx.error(request, session, 400, "Bad request", f"level: expected a number, got {q['level']!r}")
    runs = await ctx.call(ctx.store.qc.runs, analyzer=analyzer, method=method, level=level)
    try:
        png = await run_in_threadpool(render, runs[-LAST_RUNS:], analyzer=analyzer, method=method, level=level)
    except UsageError as exc:
        return ctx.error(request, session, 404, "No chart", str(exc))
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@guarded("read")
async def qc_run_page(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    return await _run_response(request, session, ctx, int(request.path_params["run_id"]))


async def _run_response(request: Request, session: Session, ctx: WebContext, run_id: int, *, problem: str = "",
                        status_code: int = 200) -> Response:
    try:
        impact: Impact = await ctx.call(run_impact, ctx.store, run_id)
    except StoreError as exc:
        return ctx.error(request, session, 404, "Not found", str(exc))
    rows = impact.released + impact.held
    await ctx.audit_view(request, session, patients=[r["patient"] for r in rows],
                         specimens=[r["specimen"] for r in rows])
    return ctx.render(request, "qc_run.html", session, status_code=status_code, run=impact.run,
                      released=impact.released, held=impact.held, problem=problem,
                      can_override=may(session.user, "override"), done=request.query_params.get("done", ""))


@guarded("override")
async def qc_accept(request: Request, session: Session) -> Response:
    ctx = ctx_of(request)
    run_id = int(request.path_params["run_id"])
    form = await request.form()
    try:
        await ctx.call(accept_run, ctx.store, run_id, reason=str(form.get("reason", "")),
                       actor=f"web:{session.user.name}", now=ctx.clock())
    except UsageError as exc:
        return await _run_response(request, session, ctx, run_id, problem=str(exc), status_code=400)
    except StoreError as exc:
        return await _run_response(request, session, ctx, run_id, problem=str(exc), status_code=409)
    return RedirectResponse(f"/qc/runs/{run_id}?done=accepted", status_code=303)

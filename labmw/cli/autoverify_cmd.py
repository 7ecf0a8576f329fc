"""Autoverification commands: the kill switch, the flag table, rule-set version, critical calls, the report.

``labmw autoverify suspend|resume|list``, ``labmw analyzer flag set|list``, ``labmw rules version``,
``labmw critical list|notify``, ``labmw report autoverification``, ``labmw range list|remove|approve``,
``labmw review show``. The kill switch lives in the store (read by the daemon at judgement time), so
it takes effect with the next result, without a reload.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import tomlkit
import typer
from tomlkit.toml_document import TOMLDocument

from labmw import config_edit
from labmw.cli.common import config_file, open_store, parse_time, print_json, print_table, settings
from labmw.cli.config_cmd import range_entry
from labmw.config_edit import os_user
from labmw.daemon.autoverify import rules_version
from labmw.errors import UsageError
from labmw.rules.gates import FLAG_ACTIONS
from labmw.rules.ranges import describe_partition

autoverify_app = typer.Typer(no_args_is_help=True, help="The autoverification kill switch (CAP GEN.43893).")
flag_app = typer.Typer(no_args_is_help=True, help="What an analyzer's instrument flags do.")
critical_app = typer.Typer(no_args_is_help=True, help="Critical-value notification log (CLIA 493.1291(g)).")
report_app = typer.Typer(no_args_is_help=True, help="Reports.")
Json = Annotated[bool, typer.Option("--json", help="JSON output.")]


def register(app: typer.Typer, *, rules_app: typer.Typer, analyzer_app: typer.Typer, range_app: typer.Typer,
             review_app: typer.Typer, method_app: typer.Typer) -> None:
    app.add_typer(autoverify_app, name="autoverify")
    app.add_typer(critical_app, name="critical")
    app.add_typer(report_app, name="report")
    analyzer_app.add_typer(flag_app, name="flag")
    rules_app.command("version")(rules_version_cmd)
    range_app.command("list")(range_list)
    range_app.command("remove")(range_remove)
    range_app.command("approve")(range_approve)
    range_app.command("set")(range_set)
    method_app.command("approve")(method_approve)
    review_app.command("show")(review_show)


def _now() -> datetime:
    return datetime.now(UTC)


# --- kill switch ---------------------------------------------------------------------------------
@autoverify_app.command("suspend")
def suspend(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why (recorded with your OS user).")],
    analyzer: Annotated[str, typer.Option(help="Only this analyzer (default: all).")] = "",
    method: Annotated[str, typer.Option(help="Only this method (default: all).")] = "",
) -> None:
    """Hold every matching result for review from the next one on (the running daemon sees it at once)."""
    cfg = settings(ctx)
    if not reason.strip():
        raise UsageError("--reason: a reason is required")
    if analyzer and analyzer not in cfg.analyzers:
        raise UsageError(f"--analyzer: no analyzer {analyzer!r} in {cfg.path}")
    if method and method not in cfg.methods:
        raise UsageError(f"--method: no method {method!r} in {cfg.path}")
    store = open_store(ctx, cfg)
    try:
        sid = store.suspend_autoverify(analyzer=analyzer, method=method, reason=reason, actor=os_user(), now=_now())
    finally:
        store.close()
    typer.echo(f"autoverification suspended (suspension {sid}): matching results are held for review")


@autoverify_app.command("resume")
def resume(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why (recorded with your OS user).")] = "resumed",
    analyzer: Annotated[str, typer.Option(help="The analyzer named when suspending.")] = "",
    method: Annotated[str, typer.Option(help="The method named when suspending.")] = "",
) -> None:
    """End the suspension of exactly this scope; the next result is judged normally."""
    store = open_store(ctx)
    try:
        ids = store.resume_autoverify(analyzer=analyzer, method=method, reason=reason, actor=os_user(), now=_now())
    finally:
        store.close()
    typer.echo(f"autoverification resumed (suspension {', '.join(map(str, ids))} ended)")


@autoverify_app.command("list")
def suspension_list(ctx: typer.Context, json_: Json = False) -> None:
    """Active suspensions."""
    store = open_store(ctx)
    try:
        active = store.active_suspensions()
    finally:
        store.close()
    rows = [{"id": s.id, "analyzer": s.analyzer or "*", "method": s.method or "*", "reason": s.reason,
             "by": s.actor, "since": s.since} for s in active]
    if json_:
        print_json(rows)
        return
    print_table(("ID", "ANALYZER", "METHOD", "SINCE", "BY", "REASON"),
                [(r["id"], r["analyzer"], r["method"], r["since"], r["by"], r["reason"]) for r in rows])


# --- instrument flag table -----------------------------------------------------------------------
@flag_app.command("set")
def flag_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The analyzer.")],
    flag: Annotated[str, typer.Argument(help="The instrument flag as sent (e.g. Samp.S, E).")],
    action: Annotated[str, typer.Option(help="hold, flag (release with an NTE) or ignore.")],
    comment: Annotated[str, typer.Option(help="Why (kept in the configuration).")] = "",
) -> None:
    """Say what an instrument flag does; a flag outside HL7 table 0078 that the table does not name holds."""
    if action not in FLAG_ACTIONS:
        raise UsageError(f"--action: expected one of {', '.join(FLAG_ACTIONS)}, got {action!r}")
    if name not in settings(ctx).analyzers:
        raise UsageError(f"no analyzer {name!r} in the configuration")

    def change(doc: TOMLDocument) -> None:
        table = config_edit.table_at(doc, "analyzers", name, "flags")
        row = tomlkit.inline_table()
        row["action"] = action
        if comment:
            row["comment"] = comment
        table[flag] = row

    config_edit.edit(config_file(ctx), "analyzer flag set", f"analyzers.{name}.flags", change)
    typer.echo(f"{name}: instrument flag {flag} -> {action}")


@flag_app.command("list")
def flag_list(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The analyzer.")], json_: Json = False) -> None:
    """The analyzer's instrument-flag table."""
    cfg = settings(ctx)
    if name not in cfg.analyzers:
        raise UsageError(f"no analyzer {name!r} in {cfg.path}")
    rows = [{"flag": f, "action": r.action, "comment": r.comment} for f, r in cfg.analyzers[name].flags.items()]
    if json_:
        print_json(rows)
        return
    print_table(("FLAG", "ACTION", "COMMENT"), [(r["flag"], r["action"], r["comment"]) for r in rows])


# --- rule-set version ----------------------------------------------------------------------------
def rules_version_cmd(ctx: typer.Context) -> None:
    """The content hash of the rules in force (methods, ranges, gates, flag tables, deltas)."""
    typer.echo(rules_version(settings(ctx)))


# --- critical values -----------------------------------------------------------------------------
@critical_app.command("list")
def critical_list(ctx: typer.Context, json_: Json = False,
                  open_only: Annotated[bool, typer.Option("--open", help="Only not yet notified.")] = False) -> None:
    """Critical values (HH/LL) and who was notified, when, with read-back."""
    cfg = settings(ctx)
    store = open_store(ctx, cfg)
    try:
        now = _now()
        store.alert_overdue_criticals(before=now - timedelta(minutes=cfg.autoverify.critical_notify_minutes),
                                      now=now)
        rows = store.criticals(only_open=open_only)
    finally:
        store.close()
    if json_:
        print_json(rows)
        return
    print_table(("ID", "RESULT", "FLAG", "SPECIMEN", "METHOD", "VALUE", "DETECTED", "NOTIFIED", "TO", "READBACK"),
                [(r["id"], r["result_id"], r["flag"], r["specimen"], r["method"], r["value"], r["detected_at"],
                  r["notified_at"] or "-", r["notified_to"] or "-", "yes" if r["readback"] else "no") for r in rows])


@critical_app.command("notify")
def critical_notify(
    ctx: typer.Context,
    critical_id: Annotated[int, typer.Argument(metavar="ID")],
    to: Annotated[str, typer.Option(help="Whom you notified (name, role).")],
    readback: Annotated[bool, typer.Option("--readback", help="The recipient read the value back.")] = False,
) -> None:
    """Log that you notified someone of critical value ID (who: your OS user; when: now)."""
    if not to.strip():
        raise UsageError("--to: name the person notified")
    if not readback:
        raise UsageError("--readback: a critical value is logged only after the recipient read it back")
    store = open_store(ctx)
    try:
        store.notify_critical(critical_id, to=to, readback=readback, actor=os_user(), now=_now())
    finally:
        store.close()
    typer.echo(f"critical value {critical_id}: notified {to}, read back")


# --- effectiveness report ------------------------------------------------------------------------
@report_app.command("autoverification")
def report_autoverification(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="From this time (ISO).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (ISO).")] = None,
    json_: Json = False,
) -> None:
    """Per method and analyzer: results, autoverified %, held by gate, released/rejected, median time on hold."""
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    store = open_store(ctx)
    try:
        rows = store.autoverification_report(since=start.isoformat() if start else None,
                                             until=end.isoformat() if end else None)
    finally:
        store.close()
    if json_:
        print_json(rows)
        return
    print_table(("METHOD", "ANALYZER", "RESULTS", "AUTOVERIFIED", "HELD", "RELEASED", "REJECTED", "WAITING",
                 "MEDIAN HOLD", "HELD BY GATE"),
                [(r["method"] or "(none)", r["analyzer"], r["results"], f"{r['autoverified_pct']}%", r["held"],
                  r["released"], r["rejected"], r["waiting"],
                  "-" if r["median_hold_seconds"] is None else f"{r['median_hold_seconds']:.0f}s",
                  ", ".join(f"{g}={n}" for g, n in sorted(r["held_by_gate"].items())) or "-") for r in rows])


# --- ranges --------------------------------------------------------------------------------------
def _method(ctx: typer.Context, method: str) -> Any:
    cfg = settings(ctx)
    if method not in cfg.methods:
        raise UsageError(f"no method {method!r} in {cfg.path}")
    return cfg.methods[method]


def range_list(ctx: typer.Context, method: Annotated[str, typer.Argument(help="The method.")],
               json_: Json = False) -> None:
    """A method's reference ranges with their ids (for remove/approve), status and source."""
    m = _method(ctx, method)
    rows = [{"id": i, "partition": describe_partition(r), "sex": r.sex, "age_min": str(r.age_min or "") or None,
             "age_max": str(r.age_max or "") or None, "low": str(r.low), "high": str(r.high), "status": r.status,
             "source": r.source} for i, r in enumerate(m.ranges)]
    if json_:
        print_json(rows)
        return
    print_table(("ID", "PARTITION", "LOW", "HIGH", "STATUS", "SOURCE"),
                [(r["id"], r["partition"], r["low"], r["high"], r["status"], r["source"]) for r in rows])


def _range_edit(ctx: typer.Context, method: str, range_id: int, command: str, action: Any) -> None:
    m = _method(ctx, method)
    if not 0 <= range_id < len(m.ranges):
        raise UsageError(f"--id: {method} has ranges 0-{len(m.ranges) - 1}, got {range_id}")

    def change(doc: TOMLDocument) -> None:
        action(config_edit.table_at(doc, "methods", method, create=False)["ranges"], range_id)

    config_edit.edit(config_file(ctx), command, f"methods.{method}.ranges", change)


def range_remove(ctx: typer.Context, method: Annotated[str, typer.Argument(help="The method.")],
                 range_id: Annotated[int, typer.Option("--id", help="The range's id (range list).")]) -> None:
    """Remove one reference range."""
    _range_edit(ctx, method, range_id, "range remove", lambda ranges, i: ranges.__delitem__(i))
    typer.echo(f"range {range_id} removed from {method}")


def range_set(
    ctx: typer.Context,
    method: Annotated[str, typer.Argument(help="The method.")],
    range_id: Annotated[int, typer.Option("--id", help="The range's id (range list).")],
    low: Annotated[str, typer.Option(help="Lower reference limit.")],
    high: Annotated[str, typer.Option(help="Upper reference limit.")],
    sex: Annotated[str | None, typer.Option(help="M or F; omit for both.")] = None,
    age_min: Annotated[str | None, typer.Option(help="From this age: 30d, 6m, 18y.")] = None,
    age_max: Annotated[str | None, typer.Option(help="Below this age: 30d, 6m, 18y.")] = None,
    source: Annotated[str | None, typer.Option(help="Where the numbers come from.")] = None,
) -> None:
    """Replace one reference range (same checks as range add: ambiguity, age order; numbers kept as typed)."""
    entry = range_entry(low=low, high=high, sex=sex, age_min=age_min, age_max=age_max, source=source)

    def replace_row(ranges: Any, i: int) -> None:
        ranges[i] = tomlkit.item(entry)

    _range_edit(ctx, method, range_id, "range set", replace_row)
    typer.echo(f"range {range_id} of {method} set to {low}-{high}")


def range_approve(ctx: typer.Context, method: Annotated[str, typer.Argument(help="The method.")],
                  range_id: Annotated[int, typer.Option("--id", help="The range's id (range list).")]) -> None:
    """Sign off a range pending review: it becomes active (who and when are kept and audited)."""
    actor, when = os_user(), _now().isoformat(timespec="seconds")

    def approve(ranges: Any, i: int) -> None:
        row = ranges[i]
        if row.get("status", "active") != "pending review":
            raise UsageError(f"range {i} of {method} is {row.get('status', 'active')}, not pending review")
        row["status"] = "active"
        row["approved_by"] = actor
        row["approved_at"] = when

    _range_edit(ctx, method, range_id, "range approve", approve)
    typer.echo(f"range {range_id} of {method} approved by {actor}")


def method_approve(ctx: typer.Context, method: Annotated[str, typer.Argument(help="The method.")]) -> None:
    """Sign off a method pending review (its ranges are approved one by one with range approve)."""
    if _method(ctx, method).status != "pending review":
        raise UsageError(f"method {method} is not pending review")
    actor, when = os_user(), _now().isoformat(timespec="seconds")

    def change(doc: TOMLDocument) -> None:
        table = config_edit.table_at(doc, "methods", method, create=False)
        table["status"] = "active"
        table["approved_by"] = actor
        table["approved_at"] = when

    config_edit.edit(config_file(ctx), "method approve", f"methods.{method}", change)
    typer.echo(f"method {method} approved by {actor}")


# --- review show ---------------------------------------------------------------------------------
def review_show(ctx: typer.Context, result_id: Annotated[int, typer.Argument(metavar="ID")], json_: Json = False) -> None:
    """One held result: the raw record, every rule outcome, and the patient's previous results."""
    store = open_store(ctx)
    try:
        shown = store.review_detail(result_id)
    finally:
        store.close()
    if json_:
        print_json(shown)
        return
    typer.echo(f"result {result_id}: {shown['method'] or 'no method'} {shown['value']} {shown['units']} "
               f"({shown['state']})")
    typer.echo(f"gates: {', '.join(shown['gates']) or 'none'}   held since: {shown['held_at'] or '-'}   "
               f"rules version: {shown['rules_version'] or '-'}"
               + ("   CORRECTION of a delivered result" if shown["correction_of_delivered"] else ""))
    typer.echo("for the reviewer:")
    for note in shown["review_notes"]:
        typer.echo(f"  {note}")
    typer.echo("sent to the LIS as NTE:")
    for note in shown["notes"]:
        typer.echo(f"  {note}")
    typer.echo("rule outcomes:")
    for d in shown["decisions"]:
        inputs = ", ".join(f"{k}={v}" for k, v in d["inputs"].items() if v != "")
        typer.echo(f"  {d['rule']}: {d['outcome']}" + (f" ({inputs})" if inputs else ""))
    typer.echo("raw message:")
    typer.echo("  " + shown["raw"].replace("\r", "\n  "))
    typer.echo("previous results of this patient and method:")
    for p in shown["previous"] or [{"collected_at": "none", "value": "", "units": "", "flags": []}]:
        typer.echo(f"  {p['collected_at']}  {p['value']} {p['units']}  {' '.join(p['flags'])}")

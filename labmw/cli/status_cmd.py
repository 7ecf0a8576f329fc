"""`labmw status [--json]`: what the running daemon is doing, asked over its control socket."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from labmw.cli.common import open_store, print_json, print_table, settings
from labmw.daemon.control import DaemonNotRunning, query_status


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Per analyzer its transport, peers, counts and last message; the LIS link; queue depth; held results."""
    cfg = settings(ctx)
    try:
        reply = query_status(cfg.control_socket, config=cfg.path)
    except DaemonNotRunning as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    reply = {**reply, "autoverify": autoverify_status(ctx, cfg)}
    if json_:
        print_json(reply)
    else:
        render(reply)


def autoverify_status(ctx: typer.Context, cfg: Any) -> dict[str, Any]:
    """The kill switches in force and the critical values past their notification deadline (from the store).

    An overdue critical not alerted before raises a ``critical_overdue`` audit event here.
    """
    store = open_store(ctx, cfg)
    try:
        now = datetime.now(UTC)
        overdue = store.alert_overdue_criticals(
            before=now - timedelta(minutes=cfg.autoverify.critical_notify_minutes), now=now)
        suspensions = [{"id": s.id, "analyzer": s.analyzer, "method": s.method, "reason": s.reason, "by": s.actor,
                        "since": s.since} for s in store.active_suspensions()]
    finally:
        store.close()
    return {"suspensions": suspensions, "overdue_criticals": overdue}


def render(status: Mapping[str, Any]) -> None:
    """Print the daemon's status dict for people: a header, the LIS/queue/held lines, one row per analyzer."""
    typer.echo(f"labmw daemon pid {_text(status.get('pid'))}, running since {_text(status.get('started_at'))}")
    typer.echo(f"config   {_text(status.get('config'))}")
    lis = status.get("lis") or {}
    line = f"LIS      {_text(lis.get('endpoint'))}  {_text(lis.get('state'))}"
    if lis.get("last_error"):
        line += f"  (last error: {lis['last_error']})"
    typer.echo(line)
    queue = status.get("queue") or {}
    typer.echo(f"queue    {_text(queue.get('pending'))} pending, {_text(queue.get('dead'))} dead")
    typer.echo(f"held     {_text(status.get('held'))} result(s)")
    av = status.get("autoverify") or {}
    for s in av.get("suspensions") or ():
        typer.echo(f"SUSPENDED autoverification for {s['analyzer'] or 'all analyzers'} / {s['method'] or 'all methods'}"
                   f" since {s['since']} by {s['by']}: {s['reason']}")
    for c in av.get("overdue_criticals") or ():
        typer.echo(f"CRITICAL {c['flag']} result {c['result_id']} ({c['specimen']}) detected {c['detected_at']} "
                   f"not yet notified (labmw critical notify {c['id']} --to NAME --readback)")
    analyzers = status.get("analyzers") or []
    typer.echo("")
    if not analyzers:
        typer.echo("no analyzers configured")
        return
    print_table(("ANALYZER", "PROTOCOL", "TRANSPORT", "ENDPOINT", "CONN", "PEERS", "MESSAGES", "RESULTS",
                 "LAST MESSAGE"),
                [(a.get("name"), a.get("protocol"), a.get("transport"), a.get("endpoint"), a.get("connections"),
                  ", ".join(a.get("peers") or ()) or "-", a.get("messages"), a.get("results"),
                  a.get("last_message_at") or "never") for a in analyzers])


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)

"""`labmw status [--json]`: what the running daemon is doing, asked over its control socket."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from labmw.cli.common import print_json, print_table, settings
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
    if json_:
        print_json(reply)
    else:
        render(reply)


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
    line = f"held     {_text(status.get('held'))} result(s)"
    if status.get("held_test_code_missing"):
        line += f", {status['held_test_code_missing']} without a test code (check test_code_component)"
    typer.echo(line)
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
    for a in analyzers:
        if a.get("error"):
            typer.echo(f"FAILED   {a.get('name')}: {a['error']}")


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)

"""`labmw status [--json]`: what the running daemon is doing, asked over its control socket."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from labmw.cli.common import config_file, open_store, print_json, print_table
from labmw.cli.reload_hint import drift, file_digest
from labmw.config import load
from labmw.daemon.control import ControlError, DaemonNotRunning, query_status
from labmw.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Per analyzer its transport, peers, counts and last message; the LIS link; queue depth; held results."""
    path = config_file(ctx)
    config_error = None
    try:
        sock = load(path).control_socket
    except ConfigError as exc:
        # A broken file must not hide what the daemon runs (it keeps its last good settings).
        config_error, sock = str(exc), _socket_of_broken_file(path)
    try:
        reply = query_status(sock, config=path)
    except ControlError as exc:  # not running, stale socket, no permission, no answer
        if json_:  # a program asked: it gets JSON whatever happened
            print_json({"running": False, "error": str(exc), "config_error": config_error})
            raise typer.Exit(1) from None
        if not isinstance(exc, DaemonNotRunning):
            raise
        for line in (config_error, str(exc)):
            if line:
                typer.echo(line, err=True)
        raise typer.Exit(1) from None
    note = drift(reply, file_digest(path))
    if config_error is None:
        reply = {**reply, "autoverify": autoverify_status(ctx, load(path))}
    if json_:
        print_json({**reply, "running": True, "config_error": config_error, "config_drift": note})
        return
    render(reply)
    for line in (config_error, note):
        if line:
            typer.echo(f"\nnote: {line}")


_DATA_DIR = re.compile(r"""^\s*data_dir\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.MULTILINE)


def _socket_of_broken_file(path: Path) -> Path:
    """The control socket when the file does not parse: its data_dir line if there is one, else the default."""
    try:
        match = _DATA_DIR.search(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        match = None
    text = (match.group(1) if match.group(1) is not None else match.group(2)) if match else "data"
    data_dir = Path(text) if Path(text).is_absolute() else (path.parent / text).resolve()
    return data_dir / "labmw.sock"


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
    if status.get("site"):
        typer.echo(f"role     {_text(status.get('role'))} (site {status['site']})")
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
    for a in analyzers:
        if a.get("error"):
            typer.echo(f"FAILED   {a.get('name')}: {a['error']}")
    _render_qc(status.get("qc") or [])


def _render_qc(states: Any) -> None:
    """Each analyzer x method's QC state (labmw.qc.status); nothing when no QC is configured."""
    if not states:
        return
    typer.echo("")
    print_table(("QC ANALYZER", "METHOD", "STATE", "RUN", "RULES", "LAST ACCEPTED"),
                [(q.get("analyzer"), q.get("method"), q.get("state"), q.get("run_id") or "-",
                  ",".join(q.get("rules") or ()) or "-", q.get("last_accepted_at") or "never") for q in states])


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)

"""`labmw queue list|retry`: outbound messages not yet acknowledged by the LIS, and dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from labmw.cli.common import open_store, print_json, print_table
from labmw.config_edit import os_user
from labmw.errors import UsageError

queue_app = typer.Typer(no_args_is_help=True, help="The outbound queue to the LIS.")


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")


@queue_app.command("list")
def queue_list(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Pending and dead-lettered outbound messages, oldest first."""
    store = open_store(ctx)
    try:
        entries = store.outbox()
        next_at = _next_attempts(store, entries)
    finally:
        store.close()
    if json_:
        print_json([{**e.as_dict(), "queued_at": e.created_at, "next_attempt": next_at[e.id]} for e in entries])
        return
    print_table(("ID", "STATE", "CONTROL ID", "ANALYZER", "SPECIMEN", "TEST", "QUEUED AT", "ATTEMPTS", "NEXT ATTEMPT",
                 "LAST ERROR"),
                [(e.id, e.state, e.control_id, e.analyzer, e.specimen, e.test_code, e.created_at, e.attempts,
                  next_at[e.id], e.last_error) for e in entries])


def _next_attempts(store: Any, entries: list[Any]) -> dict[int, str]:
    """When each entry goes next. One message is in flight, in order: the first pending one goes now, or
    after the backoff its last failure announced (the delivery_failed audit event); the others follow it;
    a dead letter waits for `labmw queue retry`."""
    out: dict[int, str] = {}
    head = None
    for e in entries:
        if e.state == "dead":
            out[e.id] = "after queue retry"
        elif head is None:
            head = e
            out[e.id] = "now"
        else:
            out[e.id] = f"after {head.id}"
    if head is not None and head.attempts:
        since = datetime.fromisoformat(head.updated_at)
        failures = [ev for ev in store.audit_events(event="delivery_failed", since=since) if ev.ref == head.control_id]
        if failures and "retry_in_s" in failures[-1].data:
            at = datetime.fromisoformat(failures[-1].ts) + timedelta(seconds=float(failures[-1].data["retry_in_s"]))
            # Shown to the second, rounded up: the attempt is never before the time printed.
            if at.microsecond:
                at = at.replace(microsecond=0) + timedelta(seconds=1)
            out[head.id] = at.isoformat(timespec="seconds")
    return out


@queue_app.command("retry")
def queue_retry(ctx: typer.Context,
                ids: Annotated[list[int] | None, typer.Argument(help="Dead-letter IDs to send again.")] = None,
                all_: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
                now: Annotated[bool, typer.Option(
                    "--now", help="Tell the running daemon to skip its backoff and try the LIS at once"
                                  " (after an outage).")] = False) -> None:
    """Put dead letters back in the queue (same MSH-10, so the LIS can recognise a repeat)."""
    if not ids and not all_ and not now:
        raise UsageError("give dead-letter IDs, --all or --now")
    store = open_store(ctx)
    try:
        if ids:
            dead = sorted(e.id for e in store.outbox(states=("dead",)))
            missing = [i for i in ids if i not in dead]
            if missing:
                raise UsageError(f"no dead letter with ID {', '.join(map(str, missing))} (dead letters: "
                                 f"{', '.join(map(str, dead)) or 'none'}; see `labmw queue list`)")
        if ids or all_:
            count = store.retry(None if all_ else list(ids or []), now=datetime.now(UTC), actor=os_user())
            typer.echo(f"{count} message(s) queued again")
        if now:
            store.request_retry_now(now=datetime.now(UTC), actor=os_user())
            typer.echo("the daemon tries the LIS again within a second (backoff skipped)")
    finally:
        store.close()

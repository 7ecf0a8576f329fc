"""`labmw queue list|retry`: outbound messages not yet acknowledged by the LIS, and dead letters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

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
    finally:
        store.close()
    if json_:
        print_json([e.as_dict() for e in entries])
        return
    print_table(("ID", "STATE", "CONTROL ID", "ANALYZER", "SPECIMEN", "TEST", "ATTEMPTS", "LAST ERROR"),
                [(e.id, e.state, e.control_id, e.analyzer, e.specimen, e.test_code, e.attempts, e.last_error)
                 for e in entries])


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
        if ids or all_:
            count = store.retry(None if all_ else list(ids or []), now=datetime.now(UTC), actor=os_user())
            typer.echo(f"{count} message(s) queued again")
        if now:
            store.request_retry_now(now=datetime.now(UTC), actor=os_user())
            typer.echo("the daemon tries the LIS again within a second (backoff skipped)")
    finally:
        store.close()

"""`labmw retention run [--dry-run]`: remove results and raw messages older than service.retention_years."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from labmw.cli.common import open_store, print_json, settings
from labmw.config_edit import os_user
from labmw.daemon.retention_loop import cutoff

retention_app = typer.Typer(no_args_is_help=True, help="Retention of results and raw messages.")


def register(app: typer.Typer) -> None:
    app.add_typer(retention_app, name="retention")
    retention_app.command("run")(retention_run)


def _now() -> datetime:
    return datetime.now(UTC)


def retention_run(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be removed.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Remove finished results and raw messages older than service.retention_years (the daemon does it daily).

    Results still queued, held or dead-lettered stay; the audit trail stays whole and records the purge.
    """
    cfg = settings(ctx)
    now = _now()
    before = cutoff(now, cfg.retention_years)
    store = open_store(ctx, cfg)
    try:
        summary = (store.retention_plan(before) if dry_run
                   else store.purge_older_than(before, now=now, actor=os_user()))
    finally:
        store.close()
    if json_:
        print_json({**summary, "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {summary['results']} result(s), {summary['messages']} message(s) and "
               f"{summary['inbound_keys']} duplicate key(s) received before {summary['cutoff']} "
               f"(retention {cfg.retention_years} years); {summary['kept_unfinished']} older result(s) kept "
               f"because they are not finished")

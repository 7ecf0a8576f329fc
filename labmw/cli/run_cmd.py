"""`labmw run`: the daemon in the foreground (what systemd starts)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from labmw.cli.common import settings


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(ctx: typer.Context,
        accept_broken_trail: Annotated[bool, typer.Option(
            "--accept-broken-trail",
            help="Run even though the audit trail fails verification at start (audited; for the time"
                 " it takes to investigate, never as a habit).")] = False) -> None:
    """Run the daemon in the foreground; SIGTERM stops it cleanly."""
    from labmw import log
    from labmw.daemon.app import serve

    cfg = settings(ctx)
    log.configure(level=log.level_named(cfg.log_level))
    raise typer.Exit(asyncio.run(serve(cfg, accept_broken_trail=accept_broken_trail)))

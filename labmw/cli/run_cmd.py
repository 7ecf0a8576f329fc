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
    """Run the daemon in the foreground (and the review workstation when [web] is configured); SIGTERM stops it."""
    from labmw import log
    from labmw.daemon.app import serve

    cfg = settings(ctx)
    log.configure(level=log.level_named(cfg.log_level))
    if cfg.web is None:
        raise typer.Exit(asyncio.run(serve(cfg, accept_broken_trail=accept_broken_trail)))
    # [web] present: the daemon serves the review workstation too (labmw.web is imported by the CLI only).
    from labmw.web.server import DaemonWeb

    raise typer.Exit(asyncio.run(serve(cfg, accept_broken_trail=accept_broken_trail, companions=[DaemonWeb])))

"""`labmw run`: the daemon in the foreground (what systemd starts)."""

from __future__ import annotations

import asyncio

import typer

from labmw.cli.common import settings


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(ctx: typer.Context) -> None:
    """Run the daemon in the foreground (and the review workstation when [web] is configured); SIGTERM stops it."""
    from labmw import log
    from labmw.daemon.app import serve

    cfg = settings(ctx)
    log.configure(level=log.level_named(cfg.log_level))
    if cfg.web is None:
        raise typer.Exit(asyncio.run(serve(cfg)))
    # [web] present: the daemon serves the review workstation too (labmw.web is imported by the CLI only).
    from labmw.web.server import DaemonWeb

    raise typer.Exit(asyncio.run(serve(cfg, companions=[DaemonWeb])))

"""`labmw run`: the daemon in the foreground (what systemd starts)."""

from __future__ import annotations

import asyncio

import typer

from labmw.cli.common import settings


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(ctx: typer.Context) -> None:
    """Run the daemon in the foreground; SIGTERM stops it cleanly."""
    from labmw import log
    from labmw.daemon.app import serve

    cfg = settings(ctx)
    log.configure(level=log.level_named(cfg.log_level))
    raise typer.Exit(asyncio.run(serve(cfg)))

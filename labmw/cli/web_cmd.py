"""`labmw web`: the review workstation in the browser, served on its own (the daemon serves it with [web])."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from labmw.cli.common import settings
from labmw.config import parse_endpoint
from labmw.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("web")(web)


def web(
    ctx: typer.Context,
    listen: Annotated[str | None, typer.Option(
        help="HOST:PORT to serve on. Default: [web] listen, else 127.0.0.1:8080 (loopback only).")] = None,
) -> None:
    """Serve the review workstation: dashboard, held results, audit trail, messages (HTTPS with [web.tls])."""
    from labmw import log
    from labmw.web.server import serve_web

    cfg = settings(ctx)
    try:
        endpoint = parse_endpoint(listen) if listen is not None else None
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    log.configure()
    raise typer.Exit(asyncio.run(serve_web(cfg, listen=endpoint)))

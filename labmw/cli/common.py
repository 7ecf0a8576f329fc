"""Small helpers shared by the CLI command modules."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer

from labmw.config import Settings, load
from labmw.errors import UsageError
from labmw.store import Store
from labmw.store.engines import open_store as open_engine


def config_file(ctx: typer.Context) -> Path:
    path = ctx.obj
    if not isinstance(path, Path):
        raise UsageError("no configuration path")
    return path


def settings(ctx: typer.Context) -> Settings:
    return load(config_file(ctx))


def open_store(ctx: typer.Context, cfg: Settings | None = None) -> Store:
    """The existing database of the configured data directory (never creates one)."""
    cfg = cfg or settings(ctx)
    if not cfg.store_url and not cfg.db_path.exists():
        raise UsageError(f"no database at {cfg.db_path} (run `labmw init` or start the daemon once)")
    return open_engine(cfg.store_target, site=cfg.site)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Plain aligned columns for people; ``--json`` is the form for programs."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def parse_time(text: str | None, option: str) -> datetime | None:
    """ISO date or date-time for --since/--until; naive input is taken as UTC."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: expected an ISO date or date-time such as 2026-11-25 or "
                         f"2026-11-25T08:00, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)

"""`labmw demo`: daemon, simulated analyzer and simulated LIS on loopback, showing flagged results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(keep: Annotated[Path | None, typer.Option(help="Keep the demo's config, database and audit trail here.")]
         = None) -> None:
    """Play a handful of ALT results (a delta, an alert value, ...) through labmw and show what the LIS got."""
    from labmw import log
    from labmw.daemon.demo import demo as run

    log.configure(json=False, level=logging.WARNING)
    rows = run(keep)
    typer.echo("What the simulated LIS received (OBX-8: instrument flag first, then labmw's; OBX-7: range applied)\n")
    for row in rows:
        c = row.case
        who = f"{c.sex or '?'} born {c.birth or '?'}"
        typer.echo(f"{c.specimen}  ALT {c.value:>5} U/L  {who:<20} OBX-8 {row.flags:<8} OBX-7 {row.applied_range:<6}"
                   f"  ({c.story})")
        for note in row.notes:
            typer.echo(f"{'':12}- {note}")
    if keep is not None:
        typer.echo(f"\nconfig, database and audit trail kept in {keep} (try: labmw --config {keep / 'demo.toml'} "
                   "audit list --specimen DEMO-2)")

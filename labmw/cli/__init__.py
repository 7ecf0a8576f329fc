"""The ``labmw`` command line: a root Typer app, a global ``--config``, one module per command group.

Commands are thin: they parse options, call one function in config_edit, daemon or store, and
print. Any :class:`LabmwError` becomes one line on stderr and exit code 1 (see :class:`_Group`),
never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any


import typer
from typer.core import TyperGroup

from labmw.errors import LabmwError


class _Group(TyperGroup):
    """Root group whose invoke turns labmw's own errors into a clear one-line message."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LabmwError as exc:
            typer.echo(f"labmw: error: {exc}", err=True)
            raise typer.Exit(1) from None
        except Exception as exc:
            # Typer/click's own exits and usage errors pass through; anything else is a labmw bug:
            # one line for the person at the console, the traceback only when asked for.
            if type(exc).__module__.startswith(("typer", "click")) or os.environ.get("LABMW_DEBUG"):
                raise
            typer.echo(f"labmw: internal error: {type(exc).__name__}: {exc} (this is a bug; set LABMW_DEBUG=1 "
                       "for the traceback)", err=True)
            raise typer.Exit(70) from None


app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="labmw: lab-instrument middleware between analyzers (ASTM, HL7) and the LIS.")


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", envvar="LABMW_CONFIG",
        help="Configuration file (TOML). Default: $LABMW_CONFIG, else /etc/labmw/labmw.toml.")] = None,
) -> None:
    from labmw.config import config_path

    ctx.obj = config_path(config)


def register() -> None:
    from labmw.cli import (
        audit_cmd,
        config_cmd,
        demo_cmd,
        queue_cmd,
        review_cmd,
        rules_cmd,
        run_cmd,
        simulate_cmd,
        status_cmd,
        user_cmd,
        web_cmd,
    )

    config_cmd.register(app)
    run_cmd.register(app)
    status_cmd.register(app)
    review_cmd.register(app)
    rules_cmd.register(app)
    audit_cmd.register(app)
    queue_cmd.register(app)
    demo_cmd.register(app)
    simulate_cmd.register(app)
    user_cmd.register(app)
    web_cmd.register(app)


register()


def main() -> None:
    """Console-script entry point."""
    app()

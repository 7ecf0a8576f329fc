"""The ``labmw`` command line: a root Typer app, a global ``--config``, one module per command group.

Commands are thin: they parse options, call one function in config_edit, daemon or store, and
print. Any :class:`LabmwError` becomes one line on stderr and exit code 1 (see :class:`_Group`),
never a traceback. A command that changed the configuration file is followed by one line saying
whether the running daemon needs `systemctl reload labmw` (:mod:`labmw.cli.reload_hint`).
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from labmw.errors import LabmwError

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a program whose reader went away


class _Group(TyperGroup):
    """Root group whose invoke turns labmw's own errors into a clear one-line message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self)

    def invoke(self, ctx: Any) -> Any:
        from labmw.cli.reload_hint import advice_after_edit, file_digest
        from labmw.config import config_path

        path = config_path(ctx.params.get("config"))
        before = file_digest(path)
        try:
            result = super().invoke(ctx)
            advice = advice_after_edit(path, before)
            if advice:  # on stderr: a command's stdout stays what it prints (JSON included)
                typer.echo(advice, err=True)
            return result
        except BrokenPipeError:
            # `labmw audit list | head -1`: the reader has all it wanted. Point stdout at /dev/null so
            # the interpreter's final flush does not complain either.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # stdout is not a file (a test runner's buffer)
                pass
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
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


def _name_values(command: Any) -> None:
    """Name every option's value after the option (``--listen LISTEN``), never after its Python type.

    Typer would print ``<str>``, ``<list[str]>``; the help text says what is expected.
    """
    for param in command.params:
        if param.metavar is None and not getattr(param, "is_flag", False) and param.name:
            param.metavar = param.name.upper().removesuffix("_")
        if param.param_type_name == "argument":
            # An argument's help line shows its type beside its name ("NAME <str>"): just the name.
            param.display_type_rich = _no_type
    for sub in (getattr(command, "commands", None) or {}).values():  # a group's commands
        _name_values(sub)


def _no_type(ctx: Any) -> None:
    return None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"labmw {metadata.version('labmw')}")
        raise typer.Exit(0)


# Plain help (no Rich boxes): Rich markup would eat "[[cases]]" and the like from help texts.
app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None,
                  help="labmw: lab-instrument middleware between analyzers (ASTM, HL7) and the LIS.")


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", envvar="LABMW_CONFIG",
        help="Configuration file (TOML). Default: $LABMW_CONFIG, else /etc/labmw/labmw.toml.")] = None,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_version, help="Print labmw's version and exit.")] = False,
) -> None:
    from labmw.config import config_path

    ctx.obj = config_path(config)


def register() -> None:
    from labmw.cli import (
        audit_cmd,
        config_cmd,
        demo_cmd,
        edit_cmd,
        message_cmd,
        qc_cmd,
        queue_cmd,
        retention_cmd,
        review_cmd,
        rules_cmd,
        run_cmd,
        simulate_cmd,
        status_cmd,
        user_cmd,
        web_cmd,
    )

    config_cmd.register(app)
    edit_cmd.register(app)
    run_cmd.register(app)
    status_cmd.register(app)
    review_cmd.register(app)
    rules_cmd.register(app)
    audit_cmd.register(app)
    queue_cmd.register(app)
    retention_cmd.register(app)
    demo_cmd.register(app)
    simulate_cmd.register(app)
    from labmw.cli import autoverify_cmd

    autoverify_cmd.register(app, rules_app=rules_cmd.rules_app, analyzer_app=config_cmd.analyzer_app,
                            range_app=config_cmd.range_app, review_app=review_cmd.review_app,
                            method_app=config_cmd.method_app)
    qc_cmd.register(app)
    message_cmd.register(app)
    user_cmd.register(app)
    web_cmd.register(app)


register()


def main() -> None:
    """Console-script entry point."""
    app()

"""`labmw rules test` (what would labmw flag or hold, and why) and `labmw rules check CASES.toml`."""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from labmw.cli.common import print_json, settings
from labmw.daemon.autoverify import policy_for, rules_version
from labmw.errors import RuleError, UsageError
from labmw.rules.cases import check_cases, load_cases
from labmw.rules.scenario import Scenario, as_json, describe, run_scenario

rules_app = typer.Typer(no_args_is_help=True, help="Try the configured rules on a made-up result; run rule cases.")


def register(app: typer.Typer) -> None:
    """Add the `rules` command group to the root app."""
    app.add_typer(rules_app, name="rules")


def _now() -> datetime:
    # Local wall-clock time without a zone, like the collection times ASTM analyzers send.
    return datetime.now().replace(microsecond=0)  # noqa: DTZ005 (local, as analyzers send it)


@rules_app.command("test")
def rules_test(
    ctx: typer.Context,
    method: Annotated[str, typer.Option(help="The method, e.g. ALT-P5P.")],
    value: Annotated[str, typer.Option(help="The value as the analyzer prints it: 61, <5, >700, -----.")],
    sex: Annotated[str, typer.Option(help="M, F or U; omit for 'not sent'.")] = "",
    age: Annotated[str, typer.Option(help="Age at collection: 45y, 6m, 12d; omit for 'no birth date'.")] = "",
    units: Annotated[str, typer.Option(help="Units as reported (default: the method's), e.g. ukat/L.")] = "",
    status: Annotated[str, typer.Option(help="Result status: F, C (corrected), P, ...")] = "F",
    previous: Annotated[str, typer.Option(help="Previous result VALUE[ UNITS]@TIME, TIME as 72h, 3d or ISO.")] = "",
    related: Annotated[list[str] | None, typer.Option(
        help="Another analyte's result ANALYTE=VALUE/ULN[@TIME] (Hy's law), repeatable.")] = None,
    at: Annotated[str | None, typer.Option(help="Collection time (ISO); default now.")] = None,
    flag: Annotated[list[str] | None, typer.Option(help="An instrument flag sent with the result, repeatable.")] = None,
    analyzer: Annotated[str, typer.Option(help="Judge with this analyzer's gate settings and flag table.")] = "",
    json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Print the flags, the hold decision and every reason labmw would give; nothing is sent."""
    try:
        when = datetime.fromisoformat(at) if at else _now()
    except ValueError:
        raise UsageError(f"--at: expected an ISO date-time such as 2026-11-25T08:00, got {at!r}") from None
    scenario = Scenario(method=method, value=value, at=when, sex=sex, age=age, units=units, status=status,
                        previous=previous, related=tuple(related or ()), instrument_flags=tuple(flag or ()),
                        analyzer=analyzer)
    cfg = settings(ctx)
    if analyzer and analyzer not in cfg.analyzers:
        raise UsageError(f"--analyzer: no analyzer {analyzer!r} in {cfg.path}")
    policy = policy_for(cfg, cfg.analyzers.get(analyzer), None)
    evaluation = run_scenario(cfg.methods, scenario, policy=policy, rules_version=rules_version(cfg))
    if json_:
        print_json(as_json(evaluation))
        return
    for line in describe(evaluation):
        typer.echo(line)


@rules_app.command("check")
def rules_check(
    ctx: typer.Context,
    cases: Annotated[Path, typer.Argument(help="A TOML file of [[cases]] with expected flags and holds.")],
    require_coverage: Annotated[bool, typer.Option(
        help="Also fail unless every rule of the methods used has a positive and a negative case.")] = False,
) -> None:
    """Run a file of expected outcomes against the current configuration; non-zero exit on any mismatch."""
    try:
        doc = tomllib.loads(cases.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{cases}: cannot read the cases file: {exc}") from None
    try:
        cfg = settings(ctx)
        report = check_cases(cfg.methods, load_cases(doc, now=_now()),
                             policies={name: policy_for(cfg, a, None) for name, a in cfg.analyzers.items()},
                             default_policy=policy_for(cfg, None, None))
    except RuleError as exc:
        raise RuleError(f"{cases}: {exc}") from None
    for line in report.lines():
        typer.echo(line)
    if not report.ok(require_coverage=require_coverage):
        raise typer.Exit(1)

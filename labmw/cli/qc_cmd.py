"""`labmw qc ...`: control materials, QC runs and their Westgard judgement, overrides, impact, charts."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import tomlkit
import typer
from tomlkit.items import Table
from tomlkit.toml_document import TOMLDocument

from labmw import config_edit
from labmw.cli.common import config_file, open_store, parse_time, print_json, print_table, settings
from labmw.config import Settings, parse_decimal
from labmw.errors import UsageError
from labmw.qc.impact import run_impact
from labmw.qc.override import accept_run
from labmw.qc.settings import ControlMaterial
from labmw.store import Store

qc_app = typer.Typer(no_args_is_help=True, help="Quality control: materials, runs, Westgard rules, the patient gate.")
material_app = typer.Typer(no_args_is_help=True, help="Control materials (one level of one lot) and their targets.")
qc_app.add_typer(material_app, name="material")
Json = Annotated[bool, typer.Option("--json", help="JSON output.")]


def register(app: typer.Typer) -> None:
    app.add_typer(qc_app, name="qc")


# --- materials --------------------------------------------------------------------------------------
def material_json(m: ControlMaterial) -> dict[str, Any]:
    return {"name": m.name, "method": m.method, "level": m.level, "lot": m.lot, "mean": str(m.mean), "sd": str(m.sd),
            "expires": m.expires.isoformat() if m.expires else None, "analyzers": list(m.analyzers),
            "specimen_ids": list(m.specimen_ids), "source": m.source}


def _toml_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)


def _qc_table(doc: TOMLDocument, *parts: str) -> Table:
    """[qc] (a real table: it may hold interval_hours) and below it super-tables such as [qc.materials]."""
    if "qc" not in doc:
        doc.add("qc", tomlkit.table())
    node: Any = doc["qc"]
    for part in parts:
        if part not in node:
            node.add(part, tomlkit.table(is_super_table=True))
        node = node[part]
    return node  # type: ignore[no-any-return]


@material_app.command("add")
def material_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A short name, e.g. ALT-L1-LOT4711.")],
    method: Annotated[str, typer.Option(help="The method the targets are for, e.g. ALT-T.")],
    level: Annotated[int, typer.Option(help="Control level (1, 2, 3).")],
    lot: Annotated[str, typer.Option(help="Lot number of the control material.")],
    mean: Annotated[str, typer.Option(help="Target mean, in the method's units.")],
    sd: Annotated[str, typer.Option(help="Target SD, in the method's units.")],
    expires: Annotated[str | None, typer.Option(help="Lot expiry date YYYY-MM-DD (runs after it are rejected).")]
    = None,
    analyzer: Annotated[list[str] | None, typer.Option(help="Only on this analyzer; repeatable (default: all).")]
    = None,
    specimen_id: Annotated[list[str] | None, typer.Option(
        help="Specimen ID the analyzer sends for this control; repeatable.")] = None,
    source: Annotated[str | None, typer.Option(
        help="Where the targets come from: the manufacturer's insert, or the lab's own 20-run period.")] = None,
) -> None:
    """Add a control material; its targets are written with their source as a comment."""
    cfg = settings(ctx)
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise UsageError(f"material name: expected letters, digits, '-' or '_', got {name!r}")
    if name in cfg.qc.materials:
        raise UsageError(f"control material {name!r} already exists (remove it first with "
                         f"`labmw qc material remove {name}`)")
    if method not in cfg.methods:
        raise UsageError(f"--method: unknown method {method!r} (configured: {', '.join(sorted(cfg.methods))})")
    if not 1 <= level <= 9:
        raise UsageError(f"--level: expected a control level 1-9, got {level}")
    try:
        mean_d, sd_d = parse_decimal(mean), parse_decimal(sd)
    except ValueError as exc:
        raise UsageError(f"--mean/--sd: {exc}") from None
    if sd_d <= 0:
        raise UsageError(f"--sd: expected an SD above 0, got {sd_d}")
    if expires is not None:
        try:
            date.fromisoformat(expires)
        except ValueError:
            raise UsageError(f"--expires: expected a date YYYY-MM-DD, got {expires!r}") from None
    for a in analyzer or []:
        if a not in cfg.analyzers:
            raise UsageError(f"--analyzer: unknown analyzer {a!r} (configured: {', '.join(sorted(cfg.analyzers))})")
    said = source.strip() if source else ""
    origin = (f"source: {said}" if said else
              "source: not given - record the manufacturer's insert or the lab's own 20-run period")

    def change(doc: TOMLDocument) -> None:
        table = tomlkit.table()
        table.add("method", method)
        table.add("level", level)
        table.add("lot", lot)
        table.add("mean", _toml_number(mean_d))
        table["mean"].comment(origin)
        table.add("sd", _toml_number(sd_d))
        table["sd"].comment(origin)
        if expires is not None:
            table.add("expires", expires)
        if analyzer:
            table.add("analyzers", list(analyzer))
        if specimen_id:
            table.add("specimen_ids", list(specimen_id))
        if said:
            table.add("source", said)
        _qc_table(doc, "materials")[name] = table

    config_edit.edit(config_file(ctx), "qc material add", f"qc.materials.{name}", change)
    typer.echo(f"control material {name} added ({method} level {level}, lot {lot}, mean {mean_d}, SD {sd_d})")


@material_app.command("list")
def material_list(ctx: typer.Context, json_: Json = False) -> None:
    """List control materials with their targets."""
    materials = list(settings(ctx).qc.materials.values())
    if json_:
        print_json([material_json(m) for m in materials])
        return
    print_table(("NAME", "METHOD", "LEVEL", "LOT", "MEAN", "SD", "EXPIRES", "ANALYZERS", "SPECIMEN IDS"),
                [(m.name, m.method, m.level, m.lot, m.mean, m.sd, m.expires or "", ",".join(m.analyzers) or "all",
                  ",".join(m.specimen_ids)) for m in materials])


@material_app.command("remove")
def material_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The material's name.")]) -> None:
    """Remove a control material (its stored runs stay in the database)."""
    if name not in settings(ctx).qc.materials:
        raise UsageError(f"no control material named {name!r}")

    def change(doc: TOMLDocument) -> None:
        del _qc_table(doc, "materials")[name]

    config_edit.edit(config_file(ctx), "qc material remove", f"qc.materials.{name}", change)
    typer.echo(f"control material {name} removed")


# --- runs ---------------------------------------------------------------------------------------------
def _with_store(ctx: typer.Context) -> tuple[Settings, Store]:
    cfg = settings(ctx)
    return cfg, open_store(ctx, cfg)


@qc_app.command("list")
def qc_list(
    ctx: typer.Context,
    analyzer: Annotated[str | None, typer.Option(help="Only this analyzer.")] = None,
    method: Annotated[str | None, typer.Option(help="Only this method.")] = None,
    since: Annotated[str | None, typer.Option(help="Only runs received from this ISO date/time on.")] = None,
    json_: Json = False,
) -> None:
    """QC runs, oldest first: values, z-scores, the rules violated, accepted or rejected."""
    when = parse_time(since, "--since")
    _, store = _with_store(ctx)
    try:
        runs = store.qc.runs(analyzer=analyzer, method=method, since=when)
    finally:
        store.close()
    if json_:
        print_json([run.as_dict() for run in runs])
        return
    print_table(("RUN", "RECEIVED", "ANALYZER", "METHOD", "STATUS", "VALUES (LEVEL: VALUE z)", "RULES", "WARNINGS"),
                [(run.id, run.received_at[:19], run.analyzer, run.method,
                  run.status + (" (override)" if run.override_actor else ""),
                  "; ".join(f"L{r.level}: {r.raw_value} z={r.z if r.z is not None else '-'}" for r in run.results),
                  ",".join(run.violated) or "-", ",".join(run.warnings) or "-") for run in runs])


@qc_app.command("accept")
def qc_accept(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="The rejected run's id (see `qc list`).")],
    reason: Annotated[str, typer.Option(help="Why the run is acceptable (recorded with your OS user).")],
) -> None:
    """Accept a rejected run as a documented override: patient results of its analyzer x method flow again."""
    _, store = _with_store(ctx)
    try:
        run = accept_run(store, run_id, reason=reason, actor=config_edit.os_user(), now=datetime.now(UTC))
    finally:
        store.close()
    typer.echo(f"QC run {run.id} ({run.analyzer} {run.method}) accepted by override; rules it violated: "
               f"{', '.join(run.violated) or 'none'}")


@qc_app.command("impact")
def qc_impact(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="The failed run's id (see `qc list`).")],
    json_: Json = False,
) -> None:
    """Patient results released between the last accepted run and this one (the ones to re-run), and
    those held because this run was rejected."""
    _, store = _with_store(ctx)
    try:
        impact = run_impact(store, run_id)
    finally:
        store.close()
    if json_:
        print_json(impact.as_dict())
        return
    run, rows = impact.run, impact.released + impact.held
    typer.echo(f"QC run {run.id} {run.analyzer} {run.method} {run.status} ({', '.join(run.violated) or 'no rules'}):"
               f" {len(impact.released)} patient result(s) released since the last accepted run,"
               f" {len(impact.held)} held by this run")
    print_table(("RESULT", "RECEIVED", "SPECIMEN", "PATIENT", "TEST", "VALUE", "STATE"),
                [(r["result_id"], r["received_at"][:19], r["specimen"], r["patient"], r["test_code"],
                  f"{r['value']} {r['units']}".strip(), r["state"]) for r in rows])


@qc_app.command("chart")
def qc_chart(
    ctx: typer.Context,
    analyzer: Annotated[str, typer.Option(help="The analyzer.")],
    method: Annotated[str, typer.Option(help="The method.")],
    out: Annotated[Path, typer.Option(help="The file to write: .png or .svg.")],
    level: Annotated[int | None, typer.Option(help="Only this control level (default: one panel per level).")]
    = None,
) -> None:
    """Draw the Levey-Jennings chart: values, mean, ±1/2/3 SD lines, rejected runs marked."""
    from labmw.qc.chart import draw

    _, store = _with_store(ctx)
    try:
        runs = store.qc.runs(analyzer=analyzer, method=method, level=level)
    finally:
        store.close()
    points = draw(runs, analyzer=analyzer, method=method, out=out, level=level)
    typer.echo(f"wrote {out} ({points} point(s) from {len(runs)} run(s))")

"""Edit commands for what a laboratory changes after set-up: `analyzer set`, `method remove`,
`delta show|remove`, `lis show`.

Each edit goes through :func:`labmw.config_edit.edit` (comments kept, the whole file validated, the
change audited with before and after); the root command group then says whether the running daemon
needs `systemctl reload labmw`. Values are checked by the configuration parser itself, so a command
accepts exactly what a hand edit would, and refuses it with the same file/key/expectation message.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from tomlkit.toml_document import TOMLDocument

from labmw import config_edit
from labmw.cli.common import config_file, print_json, print_table, settings
from labmw.cli.config_cmd import analyzer_app, delta_app, lis_app, method_app
from labmw.config import Settings
from labmw.errors import UsageError


def register(app: typer.Typer) -> None:
    """Add the edit commands to the analyzer, method, delta and lis groups of config_cmd."""
    analyzer_app.command("set")(analyzer_set)
    method_app.command("remove")(method_remove)
    delta_app.command("show")(delta_show)
    delta_app.command("remove")(delta_remove)
    lis_app.command("show")(lis_show)


def _known(kind: str, name: str, names: Any) -> None:
    if name not in names:
        raise UsageError(f"no {kind} named {name!r} (configured: {', '.join(sorted(names)) or 'none'})")


# --- analyzer set ---------------------------------------------------------------------------------
Text = str | None
Int = int | None


def analyzer_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The analyzer to change.")],
    protocol: Annotated[Text, typer.Option(help="astm or hl7.")] = None,
    transport: Annotated[Text, typer.Option(help="tcp-server, tcp-client or serial.")] = None,
    listen: Annotated[Text, typer.Option(help="HOST:PORT to listen on (tcp-server).")] = None,
    connect: Annotated[Text, typer.Option(help="HOST:PORT to connect to (tcp-client).")] = None,
    device: Annotated[Text, typer.Option(help="Serial device path (serial).")] = None,
    baud: Annotated[Int, typer.Option(help="Serial speed.")] = None,
    parity: Annotated[Text, typer.Option(help="Serial parity: N, E, O, M or S.")] = None,
    bytesize: Annotated[Int, typer.Option(help="Serial data bits (5-8).")] = None,
    stopbits: Annotated[Int, typer.Option(help="Serial stop bits (1 or 2).")] = None,
    encoding: Annotated[Text, typer.Option(help="Character encoding, e.g. latin-1 or utf-8.")] = None,
    test_code_component: Annotated[Int, typer.Option(help="R-3 component holding the test code.")] = None,
    specimen_component: Annotated[Int, typer.Option(help="O-3 component holding the specimen ID.")] = None,
    checksum_policy: Annotated[Text, typer.Option(help="strict, warn or ignore.")] = None,
    max_frame_text: Annotated[Int, typer.Option(help="ASTM: text bytes per frame labmw sends (16-63993).")] = None,
    query_mode: Annotated[Text, typer.Option(help="ASTM host queries: no-order or ignore.")] = None,
    frame_timeout: Annotated[float | None, typer.Option(help="ASTM: seconds to wait for the next frame.")] = None,
    max_connections: Annotated[Int, typer.Option(help="tcp-server: simultaneous connections.")] = None,
    specimen_field: Annotated[Text, typer.Option(help="HL7: SPM-2, OBR-3 or OBR-2.")] = None,
    lf_segments: Annotated[bool | None, typer.Option(
        "--lf-segments/--no-lf-segments", help="HL7: accept LF-separated segments (only when no CR).")] = None,
    allow: Annotated[list[str] | None, typer.Option(
        help="Only accept this peer address; repeatable; replaces the list.")] = None,
    allow_any: Annotated[bool, typer.Option("--allow-any", help="Clear the allow list (any peer).")] = False,
    map_: Annotated[list[str] | None, typer.Option("--map", help="CODE=METHOD to add or change; repeatable.")] = None,
    unmap: Annotated[list[str] | None, typer.Option(help="CODE to remove from the map; repeatable.")] = None,
    silent_after_minutes: Annotated[float | None, typer.Option(
        help="Alert when no message arrived for this many minutes ([alerts] must be set).")] = None,
) -> None:
    """Change one or more settings of an analyzer; the rest stay as they are."""
    cfg = settings(ctx)
    _known("analyzer", name, cfg.analyzers)
    changes: dict[str, Any] = {key: value for key, value in (
        ("protocol", protocol), ("transport", transport), ("listen", listen), ("connect", connect),
        ("device", device), ("baud", baud), ("parity", parity), ("bytesize", bytesize), ("stopbits", stopbits),
        ("encoding", encoding), ("test_code_component", test_code_component),
        ("specimen_component", specimen_component), ("checksum_policy", checksum_policy),
        ("max_frame_text", max_frame_text), ("query_mode", query_mode), ("frame_timeout", frame_timeout),
        ("max_connections", max_connections), ("specimen_field", specimen_field), ("lf_segments", lf_segments),
        ("silent_after_minutes", silent_after_minutes),
    ) if value is not None}
    if allow and allow_any:
        raise UsageError("--allow and --allow-any contradict each other")
    if allow:
        changes["allow"] = list(allow)
    mapped = _map_items(map_ or [])
    if not (changes or allow_any or mapped or unmap):
        raise UsageError("nothing to change: give at least one option (see `labmw analyzer set --help`)")
    for code in unmap or []:
        if code not in cfg.analyzers[name].map:
            raise UsageError(f"--unmap {code}: {name} maps no such code (mapped: "
                             f"{', '.join(sorted(cfg.analyzers[name].map)) or 'none'})")

    def change(doc: TOMLDocument) -> None:
        tbl = config_edit.table_at(doc, "analyzers", name, create=False)
        for key, value in changes.items():
            tbl[key] = value
        if allow_any and "allow" in tbl:
            del tbl["allow"]
        if mapped or unmap:
            codes = config_edit.table_at(doc, "analyzers", name, "map")
            for code, method in mapped.items():
                codes[code] = method
            for code in unmap or []:
                del codes[code]

    config_edit.edit(config_file(ctx), "analyzer set", f"analyzers.{name}", change)
    typer.echo(f"analyzer {name} changed")


def _map_items(items: list[str]) -> dict[str, str]:
    mapped: dict[str, str] = {}
    for item in items:
        code, sep, method = item.partition("=")
        if not sep or not code or not method:
            raise UsageError(f"--map: expected CODE=METHOD, got {item!r}")
        mapped[code] = method
    return mapped


# --- method remove ----------------------------------------------------------------------------------
def method_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The method to remove.")]) -> None:
    """Remove a method; refused while an analyzer's map still sends results to it."""
    cfg = settings(ctx)
    _known("method", name, cfg.methods)
    users = sorted(f"{a.name} ({code})" for a in cfg.analyzers.values() for code, m in a.map.items() if m == name)
    if users:
        raise UsageError(f"method {name} is still mapped by {', '.join(users)}: change those first "
                         f"(`labmw analyzer set ANALYZER --unmap CODE` or --map CODE=OTHER)")

    def change(doc: TOMLDocument) -> None:
        del config_edit.table_at(doc, "methods", create=False)[name]

    config_edit.edit(config_file(ctx), "method remove", f"methods.{name}", change)
    typer.echo(f"method {name} removed")


# --- delta show / remove ------------------------------------------------------------------------------
def _delta_json(cfg: Settings, method: str) -> dict[str, Any]:
    delta = cfg.methods[method].delta
    if delta is None:
        return {"method": method, "delta": None}
    return {"method": method, "delta": {
        "abs": None if delta.abs_change is None else str(delta.abs_change),
        "pct": None if delta.pct_change is None else str(delta.pct_change),
        "window_days": str(delta.window_days), "action": delta.action}}


def delta_show(
    ctx: typer.Context,
    method: Annotated[str | None, typer.Argument(help="One method (default: every method).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Show the simple delta rule of one method or of every method."""
    cfg = settings(ctx)
    if method is not None:
        _known("method", method, cfg.methods)
    rows = [_delta_json(cfg, m) for m in ([method] if method else list(cfg.methods))]
    if json_:
        print_json(rows if method is None else rows[0])
        return
    print_table(("METHOD", "ABS", "PCT", "WINDOW DAYS", "ACTION"),
                [(r["method"], *((r["delta"][k] or "-" for k in ("abs", "pct", "window_days", "action"))
                                 if r["delta"] else ("-", "-", "-", "none")))
                 for r in rows])


def delta_remove(ctx: typer.Context, method: Annotated[str, typer.Argument(help="The method.")]) -> None:
    """Remove a method's simple delta rule (its ALT delta tiers, if any, stay)."""
    cfg = settings(ctx)
    _known("method", method, cfg.methods)
    if cfg.methods[method].delta is None:
        raise UsageError(f"method {method} has no delta rule")

    def change(doc: TOMLDocument) -> None:
        del config_edit.table_at(doc, "methods", method, create=False)["delta"]

    config_edit.edit(config_file(ctx), "delta remove", f"methods.{method}.delta", change)
    typer.echo(f"delta check removed from {method}")


# --- lis show ---------------------------------------------------------------------------------------
def lis_show(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Show where results are delivered and how (timeouts, retry, MSH names, TLS)."""
    lis = settings(ctx).lis
    if lis is None:
        if json_:
            print_json(None)
        else:
            typer.echo("no LIS configured (labmw lis set --connect HOST:PORT)")
        return
    out: dict[str, Any] = {name: getattr(lis, name) for name in lis.__slots__}
    out["connect"] = str(lis.connect)
    out["tls"] = None if lis.tls is None else {name: getattr(lis.tls, name) for name in lis.tls.__slots__}
    if json_:
        print_json(out)
        return
    for key, value in out.items():
        if key == "tls":
            value = "off" if value is None else ", ".join(f"{k}={v}" for k, v in value.items() if v) or "on"
        typer.echo(f"{key:22} {value}")


"""`labmw init`, `config validate|show`, `lis set`, `analyzer ...`, `method ...`, `range add`, `delta set`."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import tomlkit
import typer
from tomlkit.toml_document import TOMLDocument

from labmw import config_edit
from labmw.cli.common import config_file, print_json, print_table, settings
from labmw.config import (
    CHECKSUM_POLICIES,
    DELTA_ACTIONS,
    LIS_GROUPS,
    PROTOCOLS,
    TRANSPORTS,
    AnalyzerSettings,
    parse_decimal,
    parse_endpoint,
    parse_interval,
)
from labmw.errors import RuleError, UsageError
from labmw.mapping.astm_query import QUERY_MODES
from labmw.model import Method
from labmw.rules.age import parse_age
from labmw.rules.gates import UNMAPPED_ACTIONS
from labmw.rules.range_checks import age_order_problem, coverage_gaps

config_app = typer.Typer(no_args_is_help=True, help="Check or print the configuration.")
analyzer_app = typer.Typer(no_args_is_help=True, help="Analyzers: how they connect and which codes map to which methods.")
lis_app = typer.Typer(no_args_is_help=True, help="Where results go (HL7 v2.5.1 ORU^R01 over MLLP).")
method_app = typer.Typer(no_args_is_help=True, help="Assay methods and their limits.")
range_app = typer.Typer(no_args_is_help=True, help="Reference ranges by sex and age.")
delta_app = typer.Typer(no_args_is_help=True, help="Delta checks against the patient's earlier result.")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.add_typer(config_app, name="config")
    app.add_typer(analyzer_app, name="analyzer")
    app.add_typer(lis_app, name="lis")
    app.add_typer(method_app, name="method")
    app.add_typer(range_app, name="range")
    app.add_typer(delta_app, name="delta")


def _endpoint(option: str, text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return str(parse_endpoint(text))
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _number(option: str, text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return parse_decimal(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _toml_number(value: Decimal) -> Any:
    # TOML has no decimal type; integers stay integers, others are written exactly as typed
    # ("0.50" stays 0.50, read back as Decimal("0.50"), so OBX-7 shows what the lab typed).
    if value == value.to_integral_value() and "." not in str(value) and "E" not in str(value).upper():
        return int(value)
    return tomlkit.items.Float(float(value), tomlkit.items.Trivia(), str(value))


# --- init / config --------------------------------------------------------------------------------
def init(
    ctx: typer.Context,
    data_dir: Annotated[str, typer.Option(help="Data directory (database, audit trail).")] = "data",
    force: Annotated[bool, typer.Option(help="Overwrite an existing configuration file.")] = False,
    store_url: Annotated[str, typer.Option(help="PostgreSQL URL of the store (default: SQLite in the data "
                                                "directory), e.g. postgresql://labmw_service@db/labmw.")] = "",
    store_admin_url: Annotated[str, typer.Option(help="PostgreSQL URL of the schema owner, used once here to "
                                                      "create the schema (default: --store-url).")] = "",
    site: Annotated[str, typer.Option(help="This site's name, when several sites share one database.")] = "",
) -> None:
    """Write a new configuration file with the shipped method library, no analyzers, no LIS."""
    path = config_file(ctx)
    if not os.path.isabs(data_dir):
        # Stored relative to the config file, so the daemon finds it whatever its working directory.
        data_dir = os.path.relpath(Path(data_dir).resolve(), path.resolve().parent)
    cfg = config_edit.init_config(path, data_dir=data_dir, force=force, store_url=store_url, site=site,
                                  store_admin_url=store_admin_url)
    typer.echo(f"wrote {path} ({len(cfg.methods)} methods); data directory {cfg.data_dir}")


@config_app.command("validate")
def config_validate(ctx: typer.Context) -> None:
    """Check the configuration file; errors name the file, the key and what is expected."""
    cfg = settings(ctx)
    typer.echo(f"{cfg.path}: ok ({len(cfg.analyzers)} analyzers, {len(cfg.methods)} methods, "
               f"LIS {cfg.lis.connect if cfg.lis else 'not set'})")
    # Every sex x age stretch from birth to 120 y with no range: such results are held (NO_RANGE).
    for method in cfg.methods.values():
        for gap in coverage_gaps(method):
            typer.echo(f"warning: {gap}")


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration (defaults filled in, paths resolved) as JSON."""
    cfg = settings(ctx)
    print_json({
        "path": str(cfg.path), "data_dir": str(cfg.data_dir), "retention_years": cfg.retention_years,
        "lis": None if cfg.lis is None else {**_plain(cfg.lis), "connect": str(cfg.lis.connect)},
        "analyzers": [_analyzer_json(a) for a in cfg.analyzers.values()],
        "methods": [method_json(m) for m in cfg.methods.values()],
    })


def _plain(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


# --- lis --------------------------------------------------------------------------------------------
@lis_app.command("set")
def lis_set(
    ctx: typer.Context,
    connect: Annotated[str, typer.Option(help="LIS MLLP listener, HOST:PORT.")],
    ack_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the LIS's ACK.")] = None,
    tls_ca_file: Annotated[str | None, typer.Option(help="TLS: CA file that verifies the LIS (turns TLS on).")] = None,
    tls_cert_file: Annotated[str | None, typer.Option(help="TLS: client certificate, if the LIS asks.")] = None,
    tls_key_file: Annotated[str | None, typer.Option(help="TLS: the client certificate's key.")] = None,
    tls_server_name: Annotated[str | None, typer.Option(help="TLS: name to verify (default: the host).")] = None,
    group: Annotated[str | None, typer.Option(
        help="specimen (one ORU^R01 per specimen, the default) or result (one per result).")] = None,
) -> None:
    """Set where results are delivered (optionally over TLS) and how they are grouped."""
    if group is not None and group not in LIS_GROUPS:
        raise UsageError(f"--group: expected one of {', '.join(LIS_GROUPS)}, got {group!r}")
    endpoint = _endpoint("--connect", connect)
    tls = {k: v for k, v in (("ca_file", tls_ca_file), ("cert_file", tls_cert_file), ("key_file", tls_key_file),
                             ("server_name", tls_server_name)) if v is not None}

    def change(doc: TOMLDocument) -> None:
        lis = config_edit.table_at(doc, "lis")
        lis["connect"] = endpoint
        if ack_timeout is not None:
            lis["ack_timeout"] = ack_timeout
        if group is not None:
            lis["group"] = group
        if tls:
            lis["tls"] = tomlkit.item({k: str(Path(v).resolve()) if k != "server_name" else v
                                       for k, v in tls.items()})

    config_edit.edit(config_file(ctx), "lis set", "lis", change)
    typer.echo(f"LIS set to {endpoint}")


# --- analyzers --------------------------------------------------------------------------------------
def _analyzer_json(a: AnalyzerSettings) -> dict[str, Any]:
    out = _plain(a)
    out["listen"] = str(a.listen) if a.listen else None
    out["connect"] = str(a.connect) if a.connect else None
    out["map"] = dict(a.map)
    out["allow"] = list(a.allow)
    out["gates"] = dict(a.gates)
    out["flags"] = {flag: {"action": r.action, "comment": r.comment} for flag, r in a.flags.items()}
    return out


@analyzer_app.command("add")
def analyzer_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A short name for the analyzer, e.g. c501.")],
    protocol: Annotated[str, typer.Option(help="astm or hl7.")],
    transport: Annotated[str, typer.Option(help="tcp-server, tcp-client or serial.")],
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to listen on (tcp-server).")] = None,
    connect: Annotated[str | None, typer.Option(help="HOST:PORT to connect to (tcp-client).")] = None,
    device: Annotated[str | None, typer.Option(help="Serial device path (serial).")] = None,
    baud: Annotated[int | None, typer.Option(help="Serial speed.")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help=(
        "CODE=METHOD, repeatable; CODE may be the full multi-component identifier, e.g. 'rpoB1^Ct'."))] = None,
    encoding: Annotated[str | None, typer.Option(help="Character encoding (default latin-1).")] = None,
    test_code_component: Annotated[int | None, typer.Option(help="R-3 component holding the test code.")] = None,
    specimen_component: Annotated[int | None, typer.Option(
        help="Component of the specimen field holding the specimen ID (ASTM).")] = None,
    checksum_policy: Annotated[str | None, typer.Option(help="strict, warn or ignore.")] = None,
    parity: Annotated[str | None, typer.Option(help="Serial parity: N, E, O, M or S.")] = None,
    bytesize: Annotated[int | None, typer.Option(help="Serial data bits (5-8).")] = None,
    stopbits: Annotated[int | None, typer.Option(help="Serial stop bits (1 or 2).")] = None,
    allow: Annotated[list[str] | None, typer.Option(help="Only accept this peer address; repeatable.")] = None,
    max_connections: Annotated[int | None, typer.Option(help="tcp-server: simultaneous connections (64).")] = None,
    specimen_field: Annotated[str | None, typer.Option(
        help="Where the specimen ID is: ASTM an O field (O-3 default, O-4 on Sysmex); HL7 SPM-2, OBR-3 or OBR-2.")]
    = None,
    lf_segments: Annotated[bool, typer.Option(help="HL7: accept LF-separated segments (only when no CR).")] = False,
    tls_cert_file: Annotated[str | None, typer.Option(help="TLS listener: certificate (with --tls-key-file).")]
    = None,
    tls_key_file: Annotated[str | None, typer.Option(help="TLS listener: private key.")] = None,
    tls_ca_file: Annotated[str | None, typer.Option(help="TLS listener: require client certificates of this CA.")]
    = None,
    max_frame_text: Annotated[int | None, typer.Option(
        help="ASTM: text bytes per frame labmw sends (240 by default, up to 63993).")] = None,
    query_mode: Annotated[str | None, typer.Option(
        help="ASTM host queries: no-order (answer at once, the default) or ignore.")] = None,
    frame_timeout: Annotated[float | None, typer.Option(
        help="ASTM: seconds to wait for the analyzer's next frame (default 30).")] = None,
    unmapped: Annotated[str | None, typer.Option(
        help="Test codes mapped to no method: hold (the default) or forward (tests labmw is not meant to judge).")]
    = None,
) -> None:
    """Add an analyzer; --map ties its test code to a method."""
    cfg = settings(ctx)
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise UsageError(f"analyzer name: expected letters, digits, '-' or '_', got {name!r}")
    if name in cfg.analyzers:
        raise UsageError(f"analyzer {name!r} already exists (remove it first with `labmw analyzer remove {name}`)")
    for option, value, choices in (("--protocol", protocol, PROTOCOLS), ("--transport", transport, TRANSPORTS),
                                   ("--checksum-policy", checksum_policy, CHECKSUM_POLICIES),
                                   ("--query-mode", query_mode, QUERY_MODES),
                                   ("--unmapped", unmapped, UNMAPPED_ACTIONS)):
        if value is not None and value not in choices:
            raise UsageError(f"{option}: expected one of {', '.join(choices)}, got {value!r}")
    if max_frame_text is not None and not 16 <= max_frame_text <= 63_993:
        raise UsageError(f"--max-frame-text: expected 16 to 63993 bytes, got {max_frame_text}")
    if frame_timeout is not None and not frame_timeout > 0:
        raise UsageError(f"--frame-timeout: expected a positive number of seconds, got {frame_timeout}")
    mapping: dict[str, str] = {}
    for item in map_ or []:
        code, sep, method = item.partition("=")
        if not sep or not code or not method:
            raise UsageError(f"--map: expected CODE=METHOD, got {item!r}")
        if method not in cfg.methods:
            raise UsageError(f"--map {item}: unknown method {method!r} (configured: {', '.join(sorted(cfg.methods))})")
        mapping[code] = method
    table: dict[str, Any] = {"protocol": protocol, "transport": transport}
    options: tuple[tuple[str, object], ...] = (
        ("listen", _endpoint("--listen", listen)), ("connect", _endpoint("--connect", connect)),
        ("device", device), ("baud", baud), ("encoding", encoding),
        ("test_code_component", test_code_component), ("specimen_component", specimen_component),
        ("checksum_policy", checksum_policy), ("parity", parity), ("bytesize", bytesize),
        ("stopbits", stopbits), ("specimen_field", specimen_field),
        ("max_frame_text", max_frame_text), ("query_mode", query_mode),
        ("frame_timeout", frame_timeout), ("max_connections", max_connections), ("unmapped", unmapped))
    for key, setting in options:
        if setting is not None:
            table[key] = setting
    if allow:
        table["allow"] = list(allow)
    if lf_segments:
        table["lf_segments"] = True
    tls = {k: str(Path(v).resolve()) for k, v in (("cert_file", tls_cert_file), ("key_file", tls_key_file),
                                                  ("ca_file", tls_ca_file)) if v is not None}
    if tls:
        table["tls"] = tls

    def change(doc: TOMLDocument) -> None:
        config_edit.table_at(doc, "analyzers")[name] = config_edit.new_table({**table, "map": mapping})

    config_edit.edit(config_file(ctx), "analyzer add", f"analyzers.{name}", change)
    typer.echo(f"analyzer {name} added")


@analyzer_app.command("list")
def analyzer_list(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """List configured analyzers."""
    analyzers = list(settings(ctx).analyzers.values())
    if json_:
        print_json([_analyzer_json(a) for a in analyzers])
        return
    print_table(("NAME", "PROTOCOL", "TRANSPORT", "ENDPOINT", "MAP"),
                [(a.name, a.protocol, a.transport, a.listen or a.connect or a.device,
                  " ".join(f"{k}={v}" for k, v in a.map.items())) for a in analyzers])


@analyzer_app.command("show")
def analyzer_show(ctx: typer.Context, name: str) -> None:
    """Show one analyzer's settings as JSON."""
    cfg = settings(ctx)
    if name not in cfg.analyzers:
        raise UsageError(f"no analyzer named {name!r} (configured: {', '.join(sorted(cfg.analyzers)) or 'none'})")
    print_json(_analyzer_json(cfg.analyzers[name]))


@analyzer_app.command("remove")
def analyzer_remove(ctx: typer.Context, name: str) -> None:
    """Remove an analyzer."""
    if name not in settings(ctx).analyzers:
        raise UsageError(f"no analyzer named {name!r}")

    def change(doc: TOMLDocument) -> None:
        del config_edit.table_at(doc, "analyzers", create=False)[name]

    config_edit.edit(config_file(ctx), "analyzer remove", f"analyzers.{name}", change)
    typer.echo(f"analyzer {name} removed")


# --- methods, ranges, deltas --------------------------------------------------------------------------
def method_json(m: Method) -> dict[str, Any]:
    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    def age(bound: Any) -> str | None:
        return str(bound) if bound else None

    def fields(obj: Any) -> dict[str, Any] | None:
        # A rule dataclass as JSON: numbers as their configured text, tuples as lists.
        if obj is None:
            return None
        values = {name: getattr(obj, name) for name in obj.__slots__}
        return {k: str(v) if isinstance(v, Decimal) else list(v) if isinstance(v, tuple) else v
                for k, v in values.items()}

    window = m.delta_window_days
    return {
        "name": m.name, "analyte": m.analyte, "loinc": m.loinc, "units": m.units,
        "measuring_range": None if m.measuring_low is None else f"{m.measuring_low}-{m.measuring_high}",
        "critical_low": text(m.critical_low), "critical_high": text(m.critical_high),
        "status": m.status, "source": m.source,
        "ranges": [{"sex": r.sex, "age_min": age(r.age_min), "age_max": age(r.age_max), "low": str(r.low),
                    "high": str(r.high), "status": r.status, "source": r.source} for r in m.ranges],
        "delta": None if m.delta is None else {"abs": text(m.delta.abs_change), "pct": text(m.delta.pct_change),
                                               "window_days": str(m.delta.window_days), "action": m.delta.action},
        "delta_window_days": text(window),
        "alt_delta": None if m.alt_delta is None else {
            "window_days": str(m.alt_delta.window_days),
            "skip_when_both_within_uln": m.alt_delta.skip_when_both_within_uln, "source": m.alt_delta.source,
            "significant_change": fields(m.alt_delta.significant_change),
            "implausible_fall": fields(m.alt_delta.implausible_fall), "abrupt_rise": fields(m.alt_delta.abrupt_rise)},
        "conversions": [{"units": c.units, "factor": str(c.factor), "decimals": c.decimals, "source": c.source}
                        for c in m.conversions],
        "thresholds": [{"name": t.name, "sex": t.sex, "age_min": age(t.age_min), "age_max": age(t.age_max),
                        "value": str(t.value), "enabled": t.enabled, "source": t.source} for t in m.thresholds],
        "grading": None if m.grading is None else {"scheme": m.grading.scheme, "source": m.grading.source,
                                                   "above_uln": [str(b) for b in m.grading.above_uln]},
        "hys_law": fields(m.hys_law),
        "absurd_low": text(m.absurd_low), "absurd_high": text(m.absurd_high), "alert_high": text(m.alert_high),
        "gates": dict(m.gates),
    }


@method_app.command("add")
def method_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Method name, e.g. ALT-T.")],
    analyte: Annotated[str, typer.Option(help="Analyte, e.g. ALT.")],
    units: Annotated[str, typer.Option(help="Units, e.g. U/L.")],
    loinc: Annotated[str | None, typer.Option(help="LOINC code, e.g. 1743-4.")] = None,
    measuring_range: Annotated[str | None, typer.Option(help="LOW-HIGH the method can measure.")] = None,
    critical_low: Annotated[str | None, typer.Option(help="Critical (panic) low limit.")] = None,
    critical_high: Annotated[str | None, typer.Option(help="Critical (panic) high limit.")] = None,
    source: Annotated[str | None, typer.Option(help="Where the numbers come from.")] = None,
) -> None:
    """Add a method."""
    cfg = settings(ctx)
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise UsageError(f"method name: expected letters, digits, '-' or '_', got {name!r}")
    if name in cfg.methods:
        raise UsageError(f"method {name!r} already exists")
    table: dict[str, Any] = {"analyte": analyte, "units": units}
    if loinc:
        table["loinc"] = loinc
    if measuring_range is not None:
        try:
            low, high = parse_interval(measuring_range)
        except ValueError as exc:
            raise UsageError(f"--measuring-range: {exc}") from None
        table["measuring_range"] = f"{low}-{high}"
    crit_low, crit_high = _number("--critical-low", critical_low), _number("--critical-high", critical_high)
    if crit_low is not None and crit_high is not None and crit_low >= crit_high:
        raise UsageError(f"--critical-low {crit_low} must be below --critical-high {crit_high}")
    for key, value in (("critical_low", crit_low), ("critical_high", crit_high)):
        if value is not None:
            table[key] = _toml_number(value)
    if source:
        table["source"] = source

    def change(doc: TOMLDocument) -> None:
        config_edit.table_at(doc, "methods")[name] = config_edit.new_table(table)

    config_edit.edit(config_file(ctx), "method add", f"methods.{name}", change)
    typer.echo(f"method {name} added")


@method_app.command("list")
def method_list(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """List methods with their limits and ranges."""
    methods = list(settings(ctx).methods.values())
    if json_:
        print_json([method_json(m) for m in methods])
        return
    print_table(("NAME", "ANALYTE", "UNITS", "LOINC", "MEASURING", "CRITICAL", "RANGES", "STATUS"),
                [(m.name, m.analyte, m.units, m.loinc,
                  f"{m.measuring_low}-{m.measuring_high}" if m.measuring_low is not None else "",
                  f"{m.critical_low or ''}/{m.critical_high or ''}", len(m.ranges), m.status) for m in methods])


@method_app.command("show")
def method_show(ctx: typer.Context, name: str) -> None:
    """Show one method as JSON."""
    cfg = settings(ctx)
    if name not in cfg.methods:
        raise UsageError(f"no method named {name!r} (configured: {', '.join(sorted(cfg.methods))})")
    print_json(method_json(cfg.methods[name]))


def _require_method(ctx: typer.Context, method: str) -> None:
    cfg = settings(ctx)
    if method not in cfg.methods:
        raise UsageError(f"unknown method {method!r} (configured: {', '.join(sorted(cfg.methods)) or 'none'})")


def range_entry(*, low: str, high: str, sex: str | None, age_min: str | None, age_max: str | None,
                source: str | None) -> dict[str, Any]:
    """The TOML row of ``range add`` / ``range set`` (checked; numbers written as typed)."""
    low_d, high_d = _number("--low", low), _number("--high", high)
    assert low_d is not None and high_d is not None
    if low_d >= high_d:
        raise UsageError(f"--low {low_d} must be below --high {high_d}")
    if sex is not None and sex not in ("M", "F"):
        raise UsageError(f"--sex: expected M or F (omit for both), got {sex!r}")
    entry: dict[str, Any] = {}
    if sex:
        entry["sex"] = sex
    for option, value, key in (("--age-min", age_min, "age_min"), ("--age-max", age_max, "age_max")):
        if value is not None:
            try:
                entry[key] = str(parse_age(value))
            except RuleError as exc:
                raise UsageError(f"{option}: {exc}") from None
    if age_min is not None and age_max is not None:
        problem = age_order_problem(parse_age(age_min), parse_age(age_max))
        if problem:
            raise UsageError(f"--age-min/--age-max: {problem}")
    entry["low"], entry["high"] = _toml_number(low_d), _toml_number(high_d)
    if source:
        entry["source"] = source

    return entry


@range_app.command("add")
def range_add(
    ctx: typer.Context,
    method: Annotated[str, typer.Argument(help="The method the range belongs to.")],
    low: Annotated[str, typer.Option(help="Lower reference limit.")],
    high: Annotated[str, typer.Option(help="Upper reference limit.")],
    sex: Annotated[str | None, typer.Option(help="M or F; omit for both.")] = None,
    age_min: Annotated[str | None, typer.Option(help="From this age: 30d, 6m, 18y (bare number = years).")] = None,
    age_max: Annotated[str | None, typer.Option(help="Below this age: 30d, 6m, 18y.")] = None,
    source: Annotated[str | None, typer.Option(help="Where the numbers come from.")] = None,
) -> None:
    """Add a reference range; the most specific matching range applies."""
    _require_method(ctx, method)
    entry = range_entry(low=low, high=high, sex=sex, age_min=age_min, age_max=age_max, source=source)
    low_d, high_d = _number("--low", low), _number("--high", high)

    def change(doc: TOMLDocument) -> None:
        tbl = config_edit.table_at(doc, "methods", method, create=False)
        if "ranges" not in tbl:
            tbl["ranges"] = tomlkit.aot()
        tbl["ranges"].append(tomlkit.item(entry))

    config_edit.edit(config_file(ctx), "range add", f"methods.{method}.ranges", change)
    typer.echo(f"range {low_d}-{high_d} added to {method}")


@delta_app.command("set")
def delta_set(
    ctx: typer.Context,
    method: Annotated[str, typer.Argument(help="The method to check.")],
    abs_: Annotated[str | None, typer.Option("--abs", help="Minimum absolute change.")] = None,
    pct: Annotated[str | None, typer.Option(help="Minimum change in percent of the earlier value.")] = None,
    window_days: Annotated[str | None, typer.Option(help="Look back this many days (default 7).")] = None,
    action: Annotated[str, typer.Option(help="flag (U/D) or hold (review).")] = "flag",
) -> None:
    """Compare with the same patient's latest earlier result of the method within the window."""
    _require_method(ctx, method)
    if action not in DELTA_ACTIONS:
        raise UsageError(f"--action: expected one of {', '.join(DELTA_ACTIONS)}, got {action!r}")
    entry: dict[str, Any] = {"action": action}
    for option, text, key in (("--abs", abs_, "abs"), ("--pct", pct, "pct"), ("--window-days", window_days,
                                                                                "window_days")):
        value = _number(option, text)
        if value is not None:
            if value <= 0:
                raise UsageError(f"{option}: expected a positive number, got {value}")
            entry[key] = _toml_number(value)
    if "abs" not in entry and "pct" not in entry:
        raise UsageError("give at least one threshold: --abs and/or --pct")

    def change(doc: TOMLDocument) -> None:
        tbl = config_edit.table_at(doc, "methods", method, create=False)
        tbl["delta"] = tomlkit.item(entry)

    config_edit.edit(config_file(ctx), "delta set", f"methods.{method}.delta", change)
    typer.echo(f"delta check set for {method}")

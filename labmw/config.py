"""The configuration file: TOML read into frozen settings, with errors that name file, key and expectation.

The file is written and edited by the CLI (see :mod:`labmw.config_edit`, which keeps comments); the
daemon only reads it. Every clinical number lives here, never in code, with its source beside it.

Layout (all sections optional except what the daemon needs to run)::

    [service]      data_dir, retention_years, site
    [store]        url = "postgresql://..." (absent: SQLite in data_dir)
    [lis]          connect = "HOST:PORT", ack_timeout, connect_timeout, retry_initial, retry_max, ...
    [analyzers.NAME]  protocol, transport, listen/connect/device..., [analyzers.NAME.map] CODE = "METHOD"
    [methods.NAME]    analyte, units, loinc, measuring_range, critical_low/high, status, source,
                      [[methods.NAME.ranges]], [methods.NAME.delta], [[methods.NAME.conversions]],
                      [[methods.NAME.thresholds]], [methods.NAME.grading], [methods.NAME.alt_delta]
                      (+ .significant_change, .implausible_fall, .abrupt_rise), [methods.NAME.hys_law]
    [web]          listen, session_minutes, max_login_failures, max_address_failures, lockout_minutes,
                   [web.tls] (labmw web)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from labmw.config_schema import check_known_keys
from labmw.errors import ConfigError, RuleError
from labmw.model import (
    AbruptRise,
    AgeBound,
    AltDeltaTiers,
    DecisionThreshold,
    DeltaRule,
    Grading,
    HysLawRule,
    ImplausibleFall,
    Method,
    RangeRule,
    SignificantChange,
    UnitConversion,
)
from labmw.qc.settings import QcSettings, parse_qc
from labmw.rules.age import parse_age
from labmw.rules.gates import DEFAULT_TEXTS, FLAG_ACTIONS, GATE_ACTIONS, GATE_NAMES, UNMAPPED_ACTIONS, FlagRule
from labmw.rules.range_checks import age_order_problem, ambiguous_pairs, describe_pair
from labmw.rules.second_person import DEFAULT_SECOND_PERSON, SECOND_PERSON_NAMES
from labmw.rules.version import rule_set_version

DEFAULT_CONFIG = Path("/etc/labmw/labmw.toml")
PROTOCOLS = ("astm", "hl7")
TRANSPORTS = ("tcp-server", "tcp-client", "serial")
CHECKSUM_POLICIES = ("strict", "warn", "ignore")
DELTA_ACTIONS = ("flag", "hold")
METHOD_STATUSES = ("active", "pending review")
RANGE_STATUSES = ("active", "pending review", "disabled")
SPECIMEN_FIELDS = ("SPM-2", "OBR-3", "OBR-2")
LIS_GROUPS = ("specimen", "result")
MIN_RETENTION_YEARS = 6
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalyzerSettings:
    name: str
    protocol: str
    transport: str
    listen: Endpoint | None = None
    connect: Endpoint | None = None
    device: str = ""
    baud: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    map: Mapping[str, str] = field(default_factory=dict)
    encoding: str = "latin-1"
    test_code_component: int = 4
    specimen_component: int = 1
    checksum_policy: str = "strict"
    max_frame_text: int = 240
    allow: tuple[str, ...] = ()
    # HL7 analyzers (HL7.md spec nuggets 1-3, 11): where the specimen ID is, LF-separated segments
    # tolerated (only when the message has no CR at all), and the MLLP block size cap.
    specimen_field: str = "SPM-2"
    lf_segments: bool = False
    max_message_bytes: int = 4 * 1024 * 1024
    # ASTM analyzers: how host queries (Q records) are answered ("no-order" at once, or "ignore"),
    # and the receiver's frame wait in seconds (ASTM.md §1.6; short values expose half-open links).
    query_mode: str = "no-order"
    frame_timeout: float = 30.0
    # TLS on a tcp-server listener (HL7 over MLLP/TLS); ``tls.ca_file`` makes client certificates mandatory.
    tls: TlsSettings | None = None
    # A tcp-server listener's simultaneous connections (analyzers reconnect before a dead socket is
    # noticed, so more than one is normal; thousands are an attack or a bug, and cost file descriptors).
    max_connections: int = 64
    # Autoverification (labmw.rules.gates): test codes with no method are held or forwarded; gate
    # actions of this analyzer (gate -> hold|flag); its instrument-flag table (flag -> FlagRule).
    unmapped: str = "hold"
    gates: Mapping[str, str] = field(default_factory=dict)
    flags: Mapping[str, FlagRule] = field(default_factory=dict)
    # HL7 analyzers: seconds without a byte before labmw closes the connection (an MLLP sender
    # reconnects when it has a message; a silent socket may be half-open or a slot squatter).
    idle_timeout: float = 900.0
    # Alert when no message arrived for this many minutes (None: the analyzer may be quiet for ever).
    silent_after_minutes: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertSettings:
    """``[alerts]``: where alerts go and when conditions count as started (see labmw/daemon/alerts.py)."""

    command: str = ""  # run with the alert as JSON on stdin
    webhook_url: str = ""  # POSTed the alert as JSON
    timeout_seconds: float = 10.0
    check_interval_seconds: float = 30.0
    lis_down_minutes: float = 5.0
    critical_unnotified_minutes: float = 15.0
    disk_free_min_mb: float = 500.0
    audit_verify_minutes: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LisSettings:
    connect: Endpoint
    ack_timeout: float = 30.0
    connect_timeout: float = 5.0
    retry_initial: float = 1.0
    retry_max: float = 300.0
    # Attempts at the same head of the queue without an ACK before one alert (0: never).
    head_alert_attempts: int = 10
    sending_application: str = "LABMW"
    sending_facility: str = ""
    receiving_application: str = "LIS"
    receiving_facility: str = ""
    tls: TlsSettings | None = None
    # One ORU^R01 per specimen (its results as OBX of one OBR) or one per result (issue 13).
    group: str = "specimen"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """TLS for an MLLP link (stdlib ssl). Paths are resolved against the config file's directory.

    As a client: ``ca_file`` verifies the server (system CAs when empty), ``cert_file``/``key_file``
    present a client certificate when the peer asks. As a server: ``cert_file``/``key_file`` are
    required, and ``ca_file`` (when set) makes the client certificate mandatory.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoverifySettings:
    """``[autoverify]``: the reviewed clinician NTE texts per gate, and the critical-call deadline."""

    texts: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TEXTS))
    critical_notify_minutes: int = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSettings:
    """The review workstation (``labmw web``; the daemon serves it too when ``[web]`` is present).

    Loopback unless ``listen`` says otherwise; HTTPS when ``tls`` names a certificate and key.
    ``session_minutes`` is the idle time after which a session ends (automatic logoff, HIPAA
    164.312(a)(2)(iii)); ``max_login_failures`` failed logins for one name (or
    ``max_address_failures`` from one address, which several people may share) within
    ``lockout_minutes`` refuse further attempts until the window has passed.
    """

    listen: Endpoint = field(default_factory=lambda: Endpoint(host="127.0.0.1", port=8080))
    tls: TlsSettings | None = None
    session_minutes: int = 15
    max_login_failures: int = 5
    max_address_failures: int = 20
    lockout_minutes: int = 15


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewSettings:
    """``[review]``: which held results need a second person to release them (labmw.rules.second_person)."""

    second_person: tuple[str, ...] = DEFAULT_SECOND_PERSON


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    path: Path
    data_dir: Path
    retention_years: int = 10
    lis: LisSettings | None = None
    analyzers: Mapping[str, AnalyzerSettings] = field(default_factory=dict)
    methods: Mapping[str, Method] = field(default_factory=dict)
    autoverify: AutoverifySettings = field(default_factory=AutoverifySettings)
    # Operations: the daemon's log level (LABMW_DEBUG=1 still forces debug), and the optional
    # Prometheus endpoint (loopback only unless a site decides otherwise).
    log_level: str = "info"
    metrics_listen: Endpoint | None = None
    #: :func:`config_digest` of the document these settings were read from (what `status` compares).
    digest: str = ""
    alerts: AlertSettings | None = None
    qc: QcSettings = field(default_factory=QcSettings)  # [qc]: labmw.qc.settings
    web: WebSettings | None = None
    review: ReviewSettings = field(default_factory=ReviewSettings)  # [review]: second-person release
    # Several sites sharing one PostgreSQL history: this daemon's site name, and the database.
    site: str = ""
    store_url: str = ""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "labmw.sqlite3"

    @property
    def store_target(self) -> Path | str:
        """What the store opens: the PostgreSQL URL when ``[store] url`` is set, else the SQLite file."""
        return self.store_url or self.db_path

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "labmw.sock"


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file to use: ``--config``, else ``$LABMW_CONFIG``, else ``/etc/labmw/labmw.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("LABMW_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def read_toml(path: Path) -> dict[str, Any]:
    """Parse the file; a missing or unparseable file raises ConfigError naming it."""
    try:
        with path.open("rb") as fh:
            # Decimal, not float: a limit typed 0.50 stays 0.50 in OBX-7.
            return tomllib.load(fh, parse_float=Decimal)
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found (create it with `labmw init`)") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, expected the configuration file, e.g. "
                                      f"{path / 'labmw.toml'}") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None


def load(path: Path) -> Settings:
    """Read and validate the configuration at ``path``.

    Raises:
        ConfigError: naming the file, the key and what is expected.
    """
    return parse(read_toml(path), path)


def parse(doc: Mapping[str, Any], path: Path) -> Settings:
    """Validate an already parsed document (also used to check an edit before it is written)."""
    v = _Validator(path)
    check_known_keys(doc, path)
    service = v.table(doc, "service")
    data_dir = Path(v.string(service, "service.data_dir", default="data"))
    if not data_dir.is_absolute():
        # Relative to the config file, so the daemon finds the same place whatever its cwd.
        data_dir = (path.parent / data_dir).resolve()
    retention = v.integer(service, "service.retention_years", default=10)
    if retention < MIN_RETENTION_YEARS:
        raise ConfigError(path, "service.retention_years",
                          f"expected at least {MIN_RETENTION_YEARS} years (HIPAA 164.316), got {retention}")
    methods = {name: v.method(name, tbl) for name, tbl in v.table(doc, "methods").items()}
    analyzers = {name: v.analyzer(name, tbl, methods) for name, tbl in v.table(doc, "analyzers").items()}
    _refuse_shared_endpoints(path, analyzers)
    lis_tbl = doc.get("lis")
    lis = v.lis(lis_tbl) if lis_tbl else None
    site, store_url = _site_and_store(v, service, v.table(doc, "store"), path)
    autoverify = v.autoverify(v.table(doc, "autoverify"))
    qc = parse_qc(doc.get("qc"), path, methods, analyzers)
    web_tbl = doc.get("web")
    web = v.web(web_tbl) if web_tbl is not None else None
    review = v.review(doc["review"]) if "review" in doc else ReviewSettings()
    for key in doc:
        if key not in ("service", "lis", "analyzers", "methods", "alerts", "autoverify", "qc", "web", "review",
                       "store"):
            raise ConfigError(path, key, "unknown section (expected service, lis, analyzers, methods, alerts,"
                                         " autoverify, qc, web, review or store)")
    return Settings(path=path, data_dir=data_dir, retention_years=retention, lis=lis,
                    analyzers=analyzers, methods=methods, autoverify=autoverify,
                    log_level=v.choice(service, "service.log_level", LOG_LEVELS, default="info"),
                    metrics_listen=v.endpoint(service, "service.metrics_listen"), digest=config_digest(doc),
                    alerts=v.alerts(doc["alerts"]) if "alerts" in doc else None, qc=qc, web=web,
                    review=review, site=site, store_url=store_url)


def config_digest(doc: Mapping[str, Any]) -> str:
    """SHA-256 of the document's content (not its text: a changed comment needs no reload)."""
    canonical = json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _site_and_store(v: _Validator, service: Mapping[str, Any], store: Mapping[str, Any],
                    path: Path) -> tuple[str, str]:
    """``[service] site`` (a short name) and ``[store] url`` (a PostgreSQL URL, or absent for SQLite)."""
    site = v.string(service, "service.site", default="")
    if site and not all(c.isalnum() or c in "-_." for c in site):
        raise ConfigError(path, "service.site", f"expected a short name of letters, digits, '-', '_' or '.', "
                                                f"got {site!r}")
    url = v.string(store, "store.url", default="")
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(path, "store.url", "expected a PostgreSQL URL such as "
                                             "postgresql://labmw_service@dbhost/labmw (absent: SQLite)")
    return site, url  # unknown keys of [store] are refused by config_schema


def rules_version(settings: Settings) -> str:
    """The content hash of the rules in ``settings`` (``labmw rules version``; labmw.rules.version)."""
    analyzers = {name: {"map": dict(a.map), "gates": dict(a.gates), "unmapped": a.unmapped, "flags": dict(a.flags)}
                 for name, a in settings.analyzers.items()}
    return rule_set_version(settings.methods, analyzers, settings.autoverify.texts)


def parse_endpoint(text: str) -> Endpoint:
    """``HOST:PORT`` → Endpoint; raises ValueError with what is expected."""
    host, sep, port_text = str(text).rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected a port number 1-65535 after ':', got {port_text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"expected a port number 1-65535, got {port}")
    return Endpoint(host=host.strip("[]"), port=port)


def _refuse_shared_endpoints(path: Path, analyzers: Mapping[str, AnalyzerSettings]) -> None:
    """Two analyzers on one listening port or one serial device cannot both run: refuse the file."""
    seen: dict[tuple[str, object], str] = {}
    for name, a in analyzers.items():
        keys: list[tuple[str, object]] = []
        if a.transport == "tcp-server" and a.listen is not None:
            keys.append(("port", a.listen.port))  # 0.0.0.0 and 127.0.0.1 on one port collide too
        if a.transport == "serial" and a.device:
            keys.append(("device", a.device))
        for key in keys:
            if key in seen and not (key[0] == "port" and _distinct_hosts(analyzers[seen[key]], a)):
                what = f"port {key[1]}" if key[0] == "port" else f"device {key[1]}"
                field_name = "listen" if key[0] == "port" else "device"
                raise ConfigError(path, f"analyzers.{name}.{field_name}",
                                  f"{what} is already used by analyzer {seen[key]!r}; expected one analyzer per "
                                  f"{'port' if key[0] == 'port' else 'device'}")
            seen[key] = name


def _distinct_hosts(a: AnalyzerSettings, b: AnalyzerSettings) -> bool:
    """Two listeners on one port but distinct specific addresses (127.0.0.1 and 10.0.0.5) can coexist."""
    hosts = {a.listen.host if a.listen else "", b.listen.host if b.listen else ""}
    return len(hosts) == 2 and not hosts & {"0.0.0.0", "::", "", "*"}


def parse_decimal(value: object) -> Decimal:
    """A TOML number or numeric string → Decimal (as written); raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"expected a finite number, got {value!r}")
    return result


def parse_interval(text: object) -> tuple[Decimal, Decimal]:
    """``LOW-HIGH`` (or a two-item list) → (low, high) with low < high; raises ValueError."""
    if isinstance(text, list | tuple) and len(text) == 2:
        low, high = parse_decimal(text[0]), parse_decimal(text[1])
    else:
        s = str(text).strip()
        # Split on the first '-' that is not a leading sign.
        cut = s.find("-", 1)
        if cut < 0:
            raise ValueError(f"expected LOW-HIGH, got {text!r}")
        low, high = parse_decimal(s[:cut]), parse_decimal(s[cut + 1:])
    if low >= high:
        raise ValueError(f"expected low below high, got {low}-{high}")
    return low, high


class _Validator:
    """Typed getters that raise ConfigError with the dotted key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def table(self, doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = doc.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a table, got {type(value).__name__}")
        return value

    def string(self, tbl: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
        value = tbl.get(key.rsplit(".", 1)[-1], default)
        if value is None:
            raise self.fail(key, "required, expected a string")
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {value!r}")
        return value

    def integer(self, tbl: Mapping[str, Any], key: str, *, default: int, low: int | None = None,
                high: int | None = None) -> int:
        value = tbl.get(key.rsplit(".", 1)[-1], default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected a whole number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, f"expected a whole number from {low} to {high}, got {value}")
        return value

    def number(self, tbl: Mapping[str, Any], key: str, *, default: float) -> float:
        value = tbl.get(key.rsplit(".", 1)[-1], default)
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal) or value <= 0:
            raise self.fail(key, f"expected a positive number of seconds, got {value!r}")
        return float(value)

    def decimal(self, tbl: Mapping[str, Any], key: str) -> Decimal | None:
        value = tbl.get(key.rsplit(".", 1)[-1])
        if value is None:
            return None
        try:
            return parse_decimal(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def choice(self, tbl: Mapping[str, Any], key: str, choices: tuple[str, ...], *, default: str | None = None) -> str:
        value = self.string(tbl, key, default=default)
        if value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def endpoint(self, tbl: Mapping[str, Any], key: str) -> Endpoint | None:
        value = tbl.get(key.rsplit(".", 1)[-1])
        if value is None:
            return None
        try:
            return parse_endpoint(str(value))
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def method(self, name: str, tbl: Any) -> Method:
        key = f"methods.{name}"
        if not isinstance(tbl, Mapping):
            raise self.fail(key, "expected a table")
        low_high: tuple[Decimal | None, Decimal | None] = (None, None)
        if "measuring_range" in tbl:
            try:
                low_high = parse_interval(tbl["measuring_range"])
            except ValueError as exc:
                raise self.fail(f"{key}.measuring_range", str(exc)) from None
        crit_low = self.decimal(tbl, f"{key}.critical_low")
        crit_high = self.decimal(tbl, f"{key}.critical_high")
        if crit_low is not None and crit_high is not None and crit_low >= crit_high:
            raise self.fail(f"{key}.critical_low", f"expected below critical_high {crit_high}, got {crit_low}")
        ranges_raw = tbl.get("ranges", [])
        if not isinstance(ranges_raw, list):
            raise self.fail(f"{key}.ranges", "expected an array of tables ([[methods.NAME.ranges]])")
        ranges = tuple(self.range_rule(f"{key}.ranges[{i}]", r) for i, r in enumerate(ranges_raw))
        delta = self.delta_rule(f"{key}.delta", tbl["delta"]) if "delta" in tbl else None
        self.known_keys(tbl, key, _METHOD_KEYS)
        conversions = tuple(self.conversion(f"{key}.conversions[{i}]", c)
                            for i, c in enumerate(self.array(tbl, f"{key}.conversions")))
        thresholds = tuple(self.threshold(f"{key}.thresholds[{i}]", t)
                           for i, t in enumerate(self.array(tbl, f"{key}.thresholds")))
        absurd_low = self.decimal(tbl, f"{key}.absurd_low")
        absurd_high = self.decimal(tbl, f"{key}.absurd_high")
        if absurd_low is not None and absurd_high is not None and absurd_low >= absurd_high:
            raise self.fail(f"{key}.absurd_low", f"expected below absurd_high {absurd_high}, got {absurd_low}")
        method = Method(
            name=name,
            analyte=self.string(tbl, f"{key}.analyte"),
            units=self.string(tbl, f"{key}.units"),
            loinc=self.string(tbl, f"{key}.loinc", default=""),
            measuring_low=low_high[0], measuring_high=low_high[1],
            critical_low=crit_low, critical_high=crit_high,
            ranges=ranges, delta=delta,
            status=self.choice(tbl, f"{key}.status", METHOD_STATUSES, default="active"),
            source=self.string(tbl, f"{key}.source", default=""),
            conversions=conversions, thresholds=thresholds,
            grading=self.grading(f"{key}.grading", tbl["grading"]) if "grading" in tbl else None,
            alt_delta=self.alt_delta(f"{key}.alt_delta", tbl["alt_delta"]) if "alt_delta" in tbl else None,
            hys_law=self.hys_law(f"{key}.hys_law", tbl["hys_law"]) if "hys_law" in tbl else None,
            absurd_low=absurd_low, absurd_high=absurd_high, alert_high=self.decimal(tbl, f"{key}.alert_high"),
            gates=tuple(self.gate_actions(tbl, f"{key}.gates").items()),
        )
        for i, j in ambiguous_pairs(method):
            raise self.fail(f"{key}.ranges[{j}]", f"ambiguous: {describe_pair(method, i, j)}")
        return method

    def gate_actions(self, tbl: Mapping[str, Any], key: str) -> dict[str, str]:
        """``gates = { NEEDS_DILUTION = "flag" }``: gate name -> hold|flag."""
        raw = self.table(tbl, key)
        actions: dict[str, str] = {}
        for gate in raw:
            if gate not in GATE_NAMES:
                raise self.fail(f"{key}.{gate}", f"unknown gate (expected one of {', '.join(GATE_NAMES)})")
            actions[gate] = self.choice(raw, f"{key}.{gate}", GATE_ACTIONS)
        return actions

    def flag_table(self, tbl: Mapping[str, Any], key: str) -> dict[str, FlagRule]:
        """``[analyzers.NAME.flags]`` ``"Samp.S" = { action = "hold", comment = "..." }``."""
        raw = self.table(tbl, key)
        rules: dict[str, FlagRule] = {}
        for flag, row in raw.items():
            row_key = f"{key}.{flag}"
            row = self.mapping(row_key, row, frozenset({"action", "comment"}))
            rules[flag] = FlagRule(action=self.choice(row, f"{row_key}.action", FLAG_ACTIONS),
                                   comment=self.string(row, f"{row_key}.comment", default=""))
        return rules

    def autoverify(self, tbl: Mapping[str, Any]) -> AutoverifySettings:
        self.known_keys(tbl, "autoverify", frozenset({"texts", "critical_notify_minutes"}))
        texts = dict(DEFAULT_TEXTS)
        raw = self.table(tbl, "autoverify.texts")
        for gate in raw:
            if gate not in GATE_NAMES:
                raise self.fail(f"autoverify.texts.{gate}", f"unknown gate (expected one of {', '.join(GATE_NAMES)})")
            texts[gate] = self.string(raw, f"autoverify.texts.{gate}")
        return AutoverifySettings(
            texts=texts,
            critical_notify_minutes=self.integer(tbl, "autoverify.critical_notify_minutes", default=30, low=1,
                                                 high=24 * 60))

    def range_rule(self, key: str, tbl: Any) -> RangeRule:
        if not isinstance(tbl, Mapping):
            raise self.fail(key, "expected a table")
        low, high = self.decimal(tbl, f"{key}.low"), self.decimal(tbl, f"{key}.high")
        if low is None or high is None:
            raise self.fail(key, "expected both low and high")
        if low >= high:
            raise self.fail(f"{key}.low", f"expected below high {high}, got {low}")
        sex = tbl.get("sex")
        if sex not in (None, "M", "F"):
            raise self.fail(f"{key}.sex", f"expected M or F (or no key for both), got {sex!r}")
        age_min, age_max = self.age(tbl, f"{key}.age_min"), self.age(tbl, f"{key}.age_max")
        problem = age_order_problem(age_min, age_max)
        if problem:
            raise self.fail(f"{key}.age_min", problem)
        self.known_keys(tbl, key, _RANGE_KEYS)
        in_units = []
        for units, text in self.table(tbl, f"{key}.in_units").items():
            try:
                u_low, u_high = parse_interval(text)
            except ValueError as exc:
                raise self.fail(f"{key}.in_units.{units}", str(exc)) from None
            in_units.append((units, u_low, u_high))
        return RangeRule(low=low, high=high, sex=sex, age_min=age_min, age_max=age_max, in_units=tuple(in_units),
                         source=self.string(tbl, f"{key}.source", default=""),
                         status=self.choice(tbl, f"{key}.status", RANGE_STATUSES, default="active"))

    def age(self, tbl: Mapping[str, Any], key: str) -> AgeBound | None:
        value = tbl.get(key.rsplit(".", 1)[-1])
        if value is None:
            return None
        try:
            return parse_age(str(value))
        except RuleError as exc:
            raise self.fail(key, str(exc)) from None

    def delta_rule(self, key: str, tbl: Any) -> DeltaRule:
        if not isinstance(tbl, Mapping):
            raise self.fail(key, "expected a table")
        window = self.decimal(tbl, f"{key}.window_days")
        self.known_keys(tbl, key, _DELTA_KEYS)
        # The same limits `labmw delta set` enforces: a rule that could never fire, or a window
        # reaching into the future, would hold or pass results for no reason anyone could see.
        thresholds = {name: self.decimal(tbl, f"{key}.{name}") for name in ("abs", "pct")}
        for name, value in (*thresholds.items(), ("window_days", window)):
            if value is not None and value <= 0:
                raise self.fail(f"{key}.{name}", f"expected a number above 0, got {value}")
        if thresholds["abs"] is None and thresholds["pct"] is None:
            raise self.fail(key, "expected at least one threshold: abs and/or pct")
        return DeltaRule(
            abs_change=thresholds["abs"],
            pct_change=thresholds["pct"],
            window_days=window if window is not None else Decimal(7),
            action=self.choice(tbl, f"{key}.action", DELTA_ACTIONS, default="flag"),
        )

    # --- method helpers: conversions, thresholds, grading, ALT delta tiers, Hy's law ---------------
    def known_keys(self, tbl: Mapping[str, Any], key: str, known: frozenset[str]) -> None:
        for name in tbl:
            if name not in known:
                raise self.fail(f"{key}.{name}", f"unknown key (expected one of {', '.join(sorted(known))})")

    def array(self, tbl: Mapping[str, Any], key: str) -> list[Any]:
        value = tbl.get(key.rsplit(".", 1)[-1], [])
        if not isinstance(value, list):
            raise self.fail(key, f"expected an array of tables ([[{key}]])")
        return value

    def mapping(self, key: str, tbl: Any, known: frozenset[str]) -> Mapping[str, Any]:
        if not isinstance(tbl, Mapping):
            raise self.fail(key, "expected a table")
        self.known_keys(tbl, key, known)
        return tbl

    def positive(self, tbl: Mapping[str, Any], key: str, *, allow_zero: bool = False) -> Decimal:
        """A required number > 0 (or >= 0): every clinical number is written in the file."""
        value = self.decimal(tbl, key)
        if value is None:
            raise self.fail(key, "required, expected a number (with its source as a comment)")
        if value < 0 or (value == 0 and not allow_zero):
            raise self.fail(key, f"expected a number {'>= 0' if allow_zero else 'above 0'}, got {value}")
        return value

    def names(self, tbl: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = tbl.get(key.rsplit(".", 1)[-1], list(default))
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(key, "expected a non-empty list of analyte names")
        return tuple(value)

    def conversion(self, key: str, tbl: Any) -> UnitConversion:
        tbl = self.mapping(key, tbl, _CONVERSION_KEYS)
        units = self.string(tbl, f"{key}.units")
        if not units.strip():
            raise self.fail(f"{key}.units", "expected the units text results arrive in, e.g. ukat/L")
        return UnitConversion(units=units, factor=self.positive(tbl, f"{key}.factor"),
                              decimals=self.integer(tbl, f"{key}.decimals", default=2, low=0, high=6),
                              source=self.string(tbl, f"{key}.source", default=""))

    def threshold(self, key: str, tbl: Any) -> DecisionThreshold:
        tbl = self.mapping(key, tbl, _THRESHOLD_KEYS)
        sex = tbl.get("sex")
        if sex not in (None, "M", "F"):
            raise self.fail(f"{key}.sex", f"expected M or F (or no key for both), got {sex!r}")
        return DecisionThreshold(
            name=self.string(tbl, f"{key}.name"), value=self.positive(tbl, f"{key}.value"), sex=sex,
            age_min=self.age(tbl, f"{key}.age_min"), age_max=self.age(tbl, f"{key}.age_max"),
            enabled=self.flag(tbl, f"{key}.enabled", default=False),
            source=self.string(tbl, f"{key}.source", default=""))

    def grading(self, key: str, tbl: Any) -> Grading:
        tbl = self.mapping(key, tbl, _GRADING_KEYS)
        raw = tbl.get("above_uln")
        if not isinstance(raw, list) or not raw:
            raise self.fail(f"{key}.above_uln", "required, expected a list of multiples of the ULN, e.g. [1, 3, 5, 20]")
        bounds = tuple(self.list_number(f"{key}.above_uln[{i}]", v) for i, v in enumerate(raw))
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise self.fail(f"{key}.above_uln",
                            f"expected strictly increasing multiples, got {[str(b) for b in bounds]}")
        return Grading(scheme=self.string(tbl, f"{key}.scheme"), above_uln=bounds,
                       source=self.string(tbl, f"{key}.source", default=""))

    def list_number(self, key: str, value: Any) -> Decimal:
        try:
            number = parse_decimal(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        if number <= 0:
            raise self.fail(key, f"expected a number above 0, got {number}")
        return number

    def alt_delta(self, key: str, tbl: Any) -> AltDeltaTiers:
        tbl = self.mapping(key, tbl, _ALT_DELTA_KEYS)
        t1: SignificantChange | None = None
        t2: ImplausibleFall | None = None
        t3: AbruptRise | None = None
        if "significant_change" in tbl:
            k = f"{key}.significant_change"
            t = self.mapping(k, tbl["significant_change"], _TIER_KEYS["significant_change"])
            t1 = SignificantChange(
                ratio_up=self.positive(t, f"{k}.ratio_up"), ratio_down=self.positive(t, f"{k}.ratio_down"),
                min_change=self.positive(t, f"{k}.min_change", allow_zero=True),
                min_change_uln=self.positive(t, f"{k}.min_change_uln", allow_zero=True),
                enabled=self.flag(t, f"{k}.enabled", default=True), source=self.string(t, f"{k}.source", default=""))
            if not t1.ratio_down < 1 < t1.ratio_up:
                raise self.fail(k, f"expected ratio_down below 1 and ratio_up above 1, got {t1.ratio_down} and "
                                   f"{t1.ratio_up}")
        if "implausible_fall" in tbl:
            k = f"{key}.implausible_fall"
            t = self.mapping(k, tbl["implausible_fall"], _TIER_KEYS["implausible_fall"])
            t2 = ImplausibleFall(
                previous_above_uln=self.positive(t, f"{k}.previous_above_uln"),
                half_life_hours=self.positive(t, f"{k}.half_life_hours"),
                fraction_of_expected=self.positive(t, f"{k}.fraction_of_expected"),
                enabled=self.flag(t, f"{k}.enabled", default=True), source=self.string(t, f"{k}.source", default=""))
            if t2.fraction_of_expected > 1:
                raise self.fail(f"{k}.fraction_of_expected", f"expected at most 1, got {t2.fraction_of_expected}")
        if "abrupt_rise" in tbl:
            k = f"{key}.abrupt_rise"
            t = self.mapping(k, tbl["abrupt_rise"], _TIER_KEYS["abrupt_rise"])
            t3 = AbruptRise(
                ratio=self.positive(t, f"{k}.ratio"), min_rise=self.positive(t, f"{k}.min_rise", allow_zero=True),
                within_hours=self.positive(t, f"{k}.within_hours"),
                enabled=self.flag(t, f"{k}.enabled", default=True), source=self.string(t, f"{k}.source", default=""))
            if t3.ratio <= 1:
                raise self.fail(f"{k}.ratio", f"expected a number above 1, got {t3.ratio}")
        return AltDeltaTiers(
            window_days=self.positive(tbl, f"{key}.window_days"), significant_change=t1, implausible_fall=t2,
            abrupt_rise=t3, skip_when_both_within_uln=self.flag(tbl, f"{key}.skip_when_both_within_uln", default=True),
            source=self.string(tbl, f"{key}.source", default=""))

    def hys_law(self, key: str, tbl: Any) -> HysLawRule:
        tbl = self.mapping(key, tbl, _HYS_LAW_KEYS)
        return HysLawRule(
            aminotransferase_uln=self.positive(tbl, f"{key}.aminotransferase_uln"),
            bilirubin_uln=self.positive(tbl, f"{key}.bilirubin_uln"),
            alp_uln=self.positive(tbl, f"{key}.alp_uln"),
            window_hours=self.positive(tbl, f"{key}.window_hours"),
            aminotransferases=self.names(tbl, f"{key}.aminotransferases", ("ALT", "AST")),
            bilirubin=self.names(tbl, f"{key}.bilirubin", ("TBIL",)),
            alkaline_phosphatase=self.names(tbl, f"{key}.alkaline_phosphatase", ("ALP",)),
            enabled=self.flag(tbl, f"{key}.enabled", default=True),
            source=self.string(tbl, f"{key}.source", default=""))

    def analyzer(self, name: str, tbl: Any, methods: Mapping[str, Method]) -> AnalyzerSettings:
        key = f"analyzers.{name}"
        if not isinstance(tbl, Mapping):
            raise self.fail(key, "expected a table")
        transport = self.choice(tbl, f"{key}.transport", TRANSPORTS)
        listen, connect = self.endpoint(tbl, f"{key}.listen"), self.endpoint(tbl, f"{key}.connect")
        device = self.string(tbl, f"{key}.device", default="")
        if transport == "tcp-server" and listen is None:
            raise self.fail(f"{key}.listen", "required for transport tcp-server, expected HOST:PORT")
        if transport == "tcp-client" and connect is None:
            raise self.fail(f"{key}.connect", "required for transport tcp-client, expected HOST:PORT")
        if transport == "serial" and not device:
            raise self.fail(f"{key}.device", "required for transport serial, expected a device path")
        mapping = self.table(tbl, f"{key}.map")
        for code, method in mapping.items():
            if not isinstance(method, str) or method not in methods:
                raise self.fail(f"{key}.map.{code}", f"expected the name of a configured method, got {method!r}")
        allow = tbl.get("allow", [])
        if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
            raise self.fail(f"{key}.allow", "expected a list of peer addresses")
        return AnalyzerSettings(
            name=name,
            protocol=self.choice(tbl, f"{key}.protocol", PROTOCOLS),
            transport=transport, listen=listen, connect=connect, device=device,
            baud=self.integer(tbl, f"{key}.baud", default=9600, low=50, high=4_000_000),
            bytesize=self.integer(tbl, f"{key}.bytesize", default=8, low=5, high=8),
            parity=self.choice(tbl, f"{key}.parity", ("N", "E", "O", "M", "S"), default="N"),
            stopbits=self.integer(tbl, f"{key}.stopbits", default=1, low=1, high=2),
            map=dict(mapping),
            encoding=self.codec(tbl, f"{key}.encoding", default="utf-8" if tbl.get("protocol") == "hl7" else "latin-1"),
            test_code_component=self.integer(tbl, f"{key}.test_code_component", default=4, low=1, high=20),
            specimen_component=self.integer(tbl, f"{key}.specimen_component", default=1, low=1, high=20),
            checksum_policy=self.choice(tbl, f"{key}.checksum_policy", CHECKSUM_POLICIES, default="strict"),
            max_frame_text=self.integer(tbl, f"{key}.max_frame_text", default=240, low=16, high=63_993),
            allow=tuple(allow),
            specimen_field=self.specimen_field(tbl, f"{key}.specimen_field"),
            lf_segments=self.flag(tbl, f"{key}.lf_segments", default=False),
            max_message_bytes=self.integer(tbl, f"{key}.max_message_bytes", default=4 * 1024 * 1024, low=1024,
                                           high=64 * 1024 * 1024),
            query_mode=self.choice(tbl, f"{key}.query_mode", ("no-order", "ignore"), default="no-order"),
            frame_timeout=self.number(tbl, f"{key}.frame_timeout", default=30.0),
            tls=self.tls(tbl, f"{key}.tls", server=True) if transport == "tcp-server" else None,
            max_connections=self.integer(tbl, f"{key}.max_connections", default=64, low=1, high=1024),
            unmapped=self.choice(tbl, f"{key}.unmapped", UNMAPPED_ACTIONS, default="hold"),
            gates=self.gate_actions(tbl, f"{key}.gates"),
            flags=self.flag_table(tbl, f"{key}.flags"),
            idle_timeout=self.number(tbl, f"{key}.idle_timeout", default=900.0),
            silent_after_minutes=(self.number(tbl, f"{key}.silent_after_minutes", default=1.0)
                                  if "silent_after_minutes" in tbl else None),
        )

    def specimen_field(self, tbl: Mapping[str, Any], key: str) -> str:
        """HL7: SPM-2, OBR-3 or OBR-2. ASTM: any O record field ``O-2`` .. ``O-31`` (default ``O-3``)."""
        if tbl.get("protocol") != "astm":
            return self.choice(tbl, key, SPECIMEN_FIELDS, default="SPM-2")
        value = self.string(tbl, key, default="O-3")
        number = value[2:] if value.startswith("O-") else ""
        if not number.isdigit() or not 2 <= int(number) <= 31:
            raise self.fail(key, f"expected an O record field such as O-3 or O-4 for an ASTM analyzer, got {value!r}")
        return value
    def alerts(self, tbl: Any) -> AlertSettings:
        if not isinstance(tbl, Mapping):
            raise self.fail("alerts", "expected a table")
        url = self.string(tbl, "alerts.webhook_url", default="")
        if url and not url.startswith(("http://", "https://")):
            raise self.fail("alerts.webhook_url", f"expected an http:// or https:// URL, got {url!r}")
        command = self.string(tbl, "alerts.command", default="")
        if not (url or command):
            raise self.fail("alerts", "expected command and/or webhook_url (where alerts go)")
        numbers: dict[str, float] = {}
        for f in fields(AlertSettings):
            if f.name in ("command", "webhook_url"):
                continue
            value = tbl.get(f.name, f.default)
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal) or value <= 0:
                unit = f.name.rsplit("_", 1)[-1].replace("mb", "MB")
                raise self.fail(f"alerts.{f.name}", f"expected a positive number ({unit}), got {value!r}")
            numbers[f.name] = float(value)
        return AlertSettings(command=command, webhook_url=url, **numbers)

    def flag(self, tbl: Mapping[str, Any], key: str, *, default: bool) -> bool:
        value = tbl.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def codec(self, tbl: Mapping[str, Any], key: str, *, default: str) -> str:
        import codecs

        value = self.string(tbl, key, default=default)
        try:
            codecs.lookup(value)
        except LookupError:
            raise self.fail(key, f"expected a Python codec name such as latin-1 or utf-8, got {value!r}") from None
        return value

    def lis(self, tbl: Any) -> LisSettings:
        if not isinstance(tbl, Mapping):
            raise self.fail("lis", "expected a table")
        connect = self.endpoint(tbl, "lis.connect")
        if connect is None:
            raise self.fail("lis.connect", "required, expected HOST:PORT")
        return LisSettings(
            connect=connect,
            ack_timeout=self.number(tbl, "lis.ack_timeout", default=30.0),
            connect_timeout=self.number(tbl, "lis.connect_timeout", default=5.0),
            retry_initial=self.number(tbl, "lis.retry_initial", default=1.0),
            retry_max=self.number(tbl, "lis.retry_max", default=300.0),
            head_alert_attempts=self.integer(tbl, "lis.head_alert_attempts", default=10, low=0),
            sending_application=self.string(tbl, "lis.sending_application", default="LABMW"),
            sending_facility=self.string(tbl, "lis.sending_facility", default=""),
            receiving_application=self.string(tbl, "lis.receiving_application", default="LIS"),
            receiving_facility=self.string(tbl, "lis.receiving_facility", default=""),
            tls=self.tls(tbl, "lis.tls", server=False),
            group=self.choice(tbl, "lis.group", LIS_GROUPS, default="specimen"),
        )

    def web(self, tbl: Any) -> WebSettings:
        if not isinstance(tbl, Mapping):
            raise self.fail("web", "expected a table")
        listen = self.endpoint(tbl, "web.listen")
        return WebSettings(
            listen=listen or WebSettings().listen,
            tls=self.tls(tbl, "web.tls", server=True),
            session_minutes=self.integer(tbl, "web.session_minutes", default=15, low=1, high=24 * 60),
            max_login_failures=self.integer(tbl, "web.max_login_failures", default=5, low=1, high=100),
            max_address_failures=self.integer(tbl, "web.max_address_failures", default=20, low=1, high=1000),
            lockout_minutes=self.integer(tbl, "web.lockout_minutes", default=15, low=1, high=24 * 60),
        )

    def review(self, tbl: Any) -> ReviewSettings:
        if not isinstance(tbl, Mapping):
            raise self.fail("review", "expected a table")
        names = tbl.get("second_person", list(DEFAULT_SECOND_PERSON))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise self.fail("review.second_person", f"expected a list of names from {', '.join(SECOND_PERSON_NAMES)}")
        for name in names:
            if name not in SECOND_PERSON_NAMES:
                raise self.fail("review.second_person",
                                f"unknown name {name!r} (expected CRITICAL or a gate: {', '.join(GATE_NAMES)})")
        return ReviewSettings(second_person=tuple(dict.fromkeys(names)))

    def tls(self, tbl: Mapping[str, Any], key: str, *, server: bool) -> TlsSettings | None:
        """An optional ``tls`` sub-table; every named file must exist (checked now, not at 3 a.m.)."""
        sub = tbl.get(key.rsplit(".", 1)[-1])
        if sub is None:
            return None
        if not isinstance(sub, Mapping):
            raise self.fail(key, "expected a table with ca_file, cert_file, key_file, server_name")
        files: dict[str, str] = {}
        for name in ("ca_file", "cert_file", "key_file"):
            value = self.string(sub, f"{key}.{name}", default="")
            if value:
                path = Path(value) if Path(value).is_absolute() else self.path.parent / value
                if not path.is_file():
                    raise self.fail(f"{key}.{name}", f"expected an existing file, {path} not found")
                value = str(path)
            files[name] = value
        if server and not (files["cert_file"] and files["key_file"]):
            raise self.fail(key, "a TLS listener needs cert_file and key_file")
        if bool(files["cert_file"]) != bool(files["key_file"]):
            raise self.fail(f"{key}.key_file", "expected cert_file and key_file together")
        for name in sub:
            if name not in ("ca_file", "cert_file", "key_file", "server_name"):
                raise self.fail(f"{key}.{name}", "unknown key (expected ca_file, cert_file, key_file, server_name)")
        return TlsSettings(**files, server_name=self.string(sub, f"{key}.server_name", default=""))


_METHOD_KEYS = frozenset({"analyte", "units", "loinc", "measuring_range", "critical_low", "critical_high",
                          "ranges", "delta", "status", "source", "conversions", "thresholds", "grading",
                          "alt_delta", "hys_law", "absurd_low", "absurd_high", "gates", "alert_high",
                          "approved_by", "approved_at"})
_RANGE_KEYS = frozenset({"sex", "age_min", "age_max", "low", "high", "source", "status", "approved_by",
                         "approved_at", "in_units"})
_DELTA_KEYS = frozenset({"abs", "pct", "window_days", "action"})
_CONVERSION_KEYS = frozenset({"units", "factor", "decimals", "source"})
_THRESHOLD_KEYS = frozenset({"name", "value", "sex", "age_min", "age_max", "enabled", "source"})
_GRADING_KEYS = frozenset({"scheme", "above_uln", "source"})
_ALT_DELTA_KEYS = frozenset({"window_days", "skip_when_both_within_uln", "source", "significant_change",
                             "implausible_fall", "abrupt_rise"})
_TIER_KEYS = {
    "significant_change": frozenset({"ratio_up", "ratio_down", "min_change", "min_change_uln", "enabled", "source"}),
    "implausible_fall": frozenset({"previous_above_uln", "half_life_hours", "fraction_of_expected", "enabled",
                                   "source"}),
    "abrupt_rise": frozenset({"ratio", "min_rise", "within_hours", "enabled", "source"}),
}
_HYS_LAW_KEYS = frozenset({"aminotransferase_uln", "bilirubin_uln", "alp_uln", "window_hours", "aminotransferases",
                           "bilirubin", "alkaline_phosphatase", "enabled", "source"})

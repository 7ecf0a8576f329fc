"""Which keys each table of the configuration file may hold: one declarative list per table.

A misspelt key must never be silently ignored (``alow = [...]`` would leave a listener open to anyone),
so :func:`check_known_keys` refuses any key not listed here, naming the file, the key and the expected
keys. Table paths use ``*`` for a named sub-table (``analyzers.*`` is every ``[analyzers.NAME]``) and
``[]`` for the tables of an array (``methods.*.ranges[]``).

Adding a setting: add its key to the table's set below (and parse it in :mod:`labmw.config`); adding a
section: add an entry for it and for each of its sub-tables. A table whose keys are names chosen by the
laboratory (``analyzers.*.map``: test code -> method) is listed with :data:`ANY_KEY`. The method library
(``methods.*`` and below) is checked where it is parsed, in :mod:`labmw.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from labmw.errors import ConfigError

#: Marks a table whose keys are free names (each value is still checked by the parser).
ANY_KEY: Final = frozenset({"*"})

#: table path -> the keys it may hold. Tables not listed here are checked by their own parser.
KNOWN_KEYS: dict[str, frozenset[str]] = {
    "service": frozenset({
        "data_dir", "retention_years",
        # operations (F): log level, metrics endpoint
        "log_level", "metrics_listen",
        # several sites sharing one PostgreSQL history (H): this daemon's site name
        "site",
    }),
    # the store (H): a PostgreSQL URL; absent means SQLite in data_dir
    "store": frozenset({"url"}),
    "lis": frozenset({
        "connect", "ack_timeout", "connect_timeout", "retry_initial", "retry_max", "head_alert_attempts",
        "sending_application",
        "sending_facility", "receiving_application", "receiving_facility", "tls",
        # fidelity (E): one ORU per specimen or per result
        "group",
    }),
    "lis.tls": frozenset({"ca_file", "cert_file", "key_file", "server_name"}),
    "analyzers.*": frozenset({
        "protocol", "transport", "listen", "connect", "device", "baud", "bytesize", "parity", "stopbits", "map",
        "encoding", "test_code_component", "specimen_component", "checksum_policy", "max_frame_text", "allow",
        "specimen_field", "lf_segments", "max_message_bytes", "query_mode", "frame_timeout", "tls",
        "max_connections",
        # intake (A): an idle HL7 connection is closed after this many seconds
        "idle_timeout",
        # alerts (F): how long the analyzer may stay silent before an alert (minutes)
        "silent_after_minutes",
        # autoverification (C): unmapped codes hold|forward, gate actions, instrument-flag table
        "unmapped", "gates", "flags",
    }),
    "analyzers.*.gates": ANY_KEY,  # gate names, checked by the parser
    "analyzers.*.flags": ANY_KEY,  # instrument flags as the analyzer sends them
    "analyzers.*.flags.*": frozenset({"action", "comment"}),
    # autoverification (C): the critical-call deadline and the reviewed clinician texts per gate
    "autoverify": frozenset({"critical_notify_minutes", "texts"}),
    "autoverify.texts": ANY_KEY,
    "analyzers.*.tls": frozenset({"ca_file", "cert_file", "key_file", "server_name"}),
    "analyzers.*.map": ANY_KEY,
    # review workstation (G): `labmw web`, and the daemon when [web] is present
    "web": frozenset({"listen", "tls", "session_minutes", "max_login_failures", "max_address_failures",
                      "lockout_minutes"}),
    "web.tls": frozenset({"ca_file", "cert_file", "key_file", "server_name"}),
    # review (G): which held results need a second person to release them
    "review": frozenset({"second_person"}),
    "alerts": frozenset({
        "command", "webhook_url", "timeout_seconds", "check_interval_seconds", "lis_down_minutes",
        "critical_unnotified_minutes", "disk_free_min_mb", "audit_verify_minutes",
    }),
    # quality control (D, labmw.qc.settings): interval, rule sets, control materials, QC patterns
    "qc": frozenset({"interval_hours", "rules", "methods", "materials", "analyzers"}),
    "qc.methods.*": frozenset({"rules", "source"}),
    "qc.materials.*": frozenset({"method", "level", "lot", "mean", "sd", "expires", "analyzers", "specimen_ids",
                                 "source"}),
    "qc.analyzers.*": frozenset({"patterns"}),
}


def check_known_keys(doc: Mapping[str, Any], path: Path | str) -> None:
    """Refuse any key of a listed table that is not in :data:`KNOWN_KEYS`.

    Raises:
        ConfigError: naming the file, the dotted key and the expected keys.
    """
    for pattern, known in KNOWN_KEYS.items():
        if known is ANY_KEY:
            continue
        for where, table in _tables(doc, pattern.split("."), ""):
            for name in table:
                if name not in known:
                    raise ConfigError(path, f"{where}.{name}" if where else name,
                                      f"unknown key (expected one of {', '.join(sorted(known))})")


def _tables(node: Any, parts: list[str], where: str) -> list[tuple[str, Mapping[str, Any]]]:
    """Every table matching the pattern ``parts`` below ``node``, with its dotted path."""
    if not parts:
        return [(where, node)] if isinstance(node, Mapping) else []
    if not isinstance(node, Mapping):
        return []
    head, rest = parts[0], parts[1:]
    array = head.endswith("[]")
    head = head.removesuffix("[]")
    names = list(node) if head == "*" else [head] if head in node else []
    found: list[tuple[str, Mapping[str, Any]]] = []
    for name in names:
        child, here = node[name], f"{where}.{name}" if where else name
        if array and isinstance(child, list):
            for i, item in enumerate(child):
                found += _tables(item, rest, f"{here}[{i}]")
        elif not array:
            found += _tables(child, rest, here)
    return found

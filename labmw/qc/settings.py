"""The ``[qc]`` section of the configuration: control materials, rule sets, interval, QC patterns.

Layout::

    [qc]
    interval_hours = 24            # no accepted run within this -> patient results held QC_EXPIRED
    rules = ["1-2s", "1-3s", ...]  # the default Westgard rule set (labmw.rules.westgard.RULES)
    [qc.methods.NAME]  rules = [...]          # a method's own rule set (sigma-based selection)
    [qc.materials.NAME] method, level, lot, mean, sd, expires, analyzers, specimen_ids, source
    [qc.analyzers.NAME] patterns = ["FIELD=REGEX", ...]   # instruments that mark QC otherwise

Validated by :func:`parse_qc`, called from :func:`labmw.config.parse`; errors name file, key and
what is expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from labmw.errors import ConfigError
from labmw.rules.westgard import DEFAULT_RULES, RULES

#: Result fields a per-analyzer QC pattern may look at.
PATTERN_FIELDS: tuple[str, ...] = ("specimen", "order_code", "test_code", "patient")
DEFAULT_INTERVAL_HOURS = Decimal(24)
_MATERIAL_KEYS = frozenset({"method", "level", "lot", "mean", "sd", "expires", "analyzers", "specimen_ids",
                            "source"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlMaterial:
    """One control material (one level of one lot) with its target mean and SD for one method."""

    name: str
    method: str
    level: int
    lot: str
    mean: Decimal
    sd: Decimal
    expires: date | None = None
    analyzers: tuple[str, ...] = ()  # empty: every analyzer that maps the method
    specimen_ids: tuple[str, ...] = ()
    source: str = ""

    def applies_to(self, analyzer: str) -> bool:
        return not self.analyzers or analyzer in self.analyzers


@dataclass(frozen=True, slots=True, kw_only=True)
class QcPattern:
    """``FIELD=REGEX``: a result whose FIELD matches REGEX (re.search) is a control."""

    field: str
    regex: re.Pattern[str]

    def __str__(self) -> str:
        return f"{self.field}={self.regex.pattern}"


@dataclass(frozen=True, slots=True, kw_only=True)
class QcSettings:
    interval_hours: Decimal = DEFAULT_INTERVAL_HOURS
    rules: tuple[str, ...] = DEFAULT_RULES
    method_rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    materials: Mapping[str, ControlMaterial] = field(default_factory=dict)
    patterns: Mapping[str, tuple[QcPattern, ...]] = field(default_factory=dict)

    def rules_for(self, method: str) -> tuple[str, ...]:
        return self.method_rules.get(method, self.rules)

    def materials_for(self, analyzer: str, method: str) -> list[ControlMaterial]:
        return [m for m in self.materials.values() if m.method == method and m.applies_to(analyzer)]


def parse_qc(tbl: Any, path: Path, methods: Mapping[str, Any], analyzers: Mapping[str, Any]) -> QcSettings:
    """Validate the ``[qc]`` table (``None`` or absent: no QC configured).

    Raises:
        ConfigError: naming the file, the key and what is expected.
    """
    if tbl is None:
        return QcSettings()

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(path, key, problem)

    if not isinstance(tbl, Mapping):
        raise fail("qc", "expected a table")
    for key in tbl:
        if key not in ("interval_hours", "rules", "methods", "materials", "analyzers"):
            raise fail(f"qc.{key}", "unknown key (expected interval_hours, rules, methods, materials or analyzers)")
    interval = _number(tbl.get("interval_hours", DEFAULT_INTERVAL_HOURS), "qc.interval_hours", fail)
    if interval <= 0:
        raise fail("qc.interval_hours", f"expected a number of hours above 0, got {interval}")
    rules = _rules(tbl.get("rules", list(DEFAULT_RULES)), "qc.rules", fail)
    method_rules: dict[str, tuple[str, ...]] = {}
    for name, sub in _table(tbl, "methods", fail).items():
        key = f"qc.methods.{name}"
        if name not in methods:
            raise fail(key, f"expected the name of a configured method, got {name!r}")
        if not isinstance(sub, Mapping) or set(sub) - {"rules", "source"}:
            raise fail(key, "expected a table with rules (and an optional source)")
        method_rules[name] = _rules(sub.get("rules"), f"{key}.rules", fail)
    materials = {name: _material(name, sub, methods, analyzers, fail)
                 for name, sub in _table(tbl, "materials", fail).items()}
    patterns: dict[str, tuple[QcPattern, ...]] = {}
    for name, sub in _table(tbl, "analyzers", fail).items():
        key = f"qc.analyzers.{name}"
        if name not in analyzers:
            raise fail(key, f"expected the name of a configured analyzer, got {name!r}")
        if not isinstance(sub, Mapping) or set(sub) - {"patterns"}:
            raise fail(key, "expected a table with patterns = [\"FIELD=REGEX\", ...]")
        raw = sub.get("patterns", [])
        if not isinstance(raw, list):
            raise fail(f"{key}.patterns", "expected a list of \"FIELD=REGEX\" strings")
        patterns[name] = tuple(parse_pattern(p, f"{key}.patterns[{i}]", fail) for i, p in enumerate(raw))
    return QcSettings(interval_hours=interval, rules=rules, method_rules=method_rules, materials=materials,
                      patterns=patterns)


def parse_pattern(text: object, key: str, fail: Any) -> QcPattern:
    field_name, sep, regex = str(text).partition("=")
    if not isinstance(text, str) or not sep or field_name not in PATTERN_FIELDS or not regex:
        raise fail(key, f"expected FIELD=REGEX with FIELD one of {', '.join(PATTERN_FIELDS)}, got {text!r}")
    try:
        return QcPattern(field=field_name, regex=re.compile(regex))
    except re.error as exc:
        raise fail(key, f"expected a valid regular expression, got {regex!r} ({exc})") from None


def _table(tbl: Mapping[str, Any], name: str, fail: Any) -> Mapping[str, Any]:
    value = tbl.get(name, {})
    if not isinstance(value, Mapping):
        raise fail(f"qc.{name}", "expected a table")
    return value


def _rules(value: Any, key: str, fail: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise fail(key, f"expected a non-empty list of Westgard rules from {', '.join(RULES)}")
    unknown = [v for v in value if v not in RULES]
    if unknown:
        raise fail(key, f"unknown rule(s) {', '.join(unknown)}; expected rules from {', '.join(RULES)}")
    return tuple(value)


def _number(value: Any, key: str, fail: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise fail(key, f"expected a number, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise fail(key, f"expected a number, got {value!r}") from None
    if not number.is_finite():
        raise fail(key, f"expected a finite number, got {value!r}")
    return number


def _strings(value: Any, key: str, fail: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise fail(key, "expected a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _material(name: str, tbl: Any, methods: Mapping[str, Any], analyzers: Mapping[str, Any],
              fail: Any) -> ControlMaterial:
    key = f"qc.materials.{name}"
    if not isinstance(tbl, Mapping):
        raise fail(key, "expected a table")
    for k in tbl:
        if k not in _MATERIAL_KEYS:
            raise fail(f"{key}.{k}", f"unknown key (expected {', '.join(sorted(_MATERIAL_KEYS))})")
    method = tbl.get("method")
    if not isinstance(method, str) or method not in methods:
        raise fail(f"{key}.method", f"expected the name of a configured method, got {method!r}")
    level = tbl.get("level")
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
        raise fail(f"{key}.level", f"expected a control level 1-9, got {level!r}")
    lot = tbl.get("lot")
    if not isinstance(lot, str) or not lot.strip():
        raise fail(f"{key}.lot", "required, expected the lot number as text")
    if "mean" not in tbl:
        raise fail(f"{key}.mean", "required, expected the target mean (with its source as a comment)")
    if "sd" not in tbl:
        raise fail(f"{key}.sd", "required, expected the target SD (with its source as a comment)")
    mean = _number(tbl["mean"], f"{key}.mean", fail)
    sd = _number(tbl["sd"], f"{key}.sd", fail)
    if sd <= 0:
        raise fail(f"{key}.sd", f"expected an SD above 0, got {sd}")
    expires_raw = tbl.get("expires")
    expires: date | None = None
    if expires_raw is not None:
        if isinstance(expires_raw, date):
            expires = expires_raw
        else:
            try:
                expires = date.fromisoformat(str(expires_raw))
            except ValueError:
                raise fail(f"{key}.expires", f"expected a date YYYY-MM-DD, got {expires_raw!r}") from None
    names = _strings(tbl.get("analyzers", []), f"{key}.analyzers", fail)
    for analyzer in names:
        if analyzer not in analyzers:
            raise fail(f"{key}.analyzers", f"expected names of configured analyzers, got {analyzer!r}")
    source = tbl.get("source", "")
    if not isinstance(source, str):
        raise fail(f"{key}.source", f"expected a string, got {source!r}")
    return ControlMaterial(name=name, method=method, level=level, lot=lot.strip(), mean=mean, sd=sd,
                           expires=expires, analyzers=names,
                           specimen_ids=_strings(tbl.get("specimen_ids", []), f"{key}.specimen_ids", fail),
                           source=source)

"""The rule-set version: a content hash of every rule in force (``labmw rules version``).

CLINICAL.md item 21 and §4.2 step 10: rule sets are versioned artifacts, and every evaluation
records the version it was judged under. The hash covers the methods (ranges, limits, deltas,
gates, ...), each analyzer's test-code map, gate actions, unmapped policy and flag table, and the
clinician texts; it does not cover transport settings, which judge nothing. Pure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from labmw.model import Method

#: How many hex digits of the SHA-256 are shown and stamped (collisions are not a concern here:
#: the full configuration is in the audit trail; this names a version).
SHOWN = 16


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def rule_set_version(methods: Mapping[str, Method], analyzers: Mapping[str, Mapping[str, Any]],
                     texts: Mapping[str, str]) -> str:
    """The hash of ``methods``, the analyzers' rule parts (``map``, ``gates``, ``unmapped``,
    ``flags``) and the gates' clinician ``texts``."""
    document = {"methods": _plain(dict(methods)), "analyzers": _plain(dict(analyzers)), "texts": _plain(dict(texts))}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:SHOWN]


"""The ``results.wire`` column: what the instrument sent beyond the mapped columns, as JSON.

Full test identifier, HL7 sub-ID, value type, value and unit components, named gates and the
protocol (see :class:`labmw.model.Result`). Written only when there is something beyond the
plain columns, so a simple numeric ASTM result costs nothing extra; read back by ``load_result``
so a released or reprocessed result is sent exactly as it would have been at intake.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from labmw.model import Result

_KEYS = ("test_id", "sub_id", "value_type", "value_parts", "units_parts", "gates", "protocol")


def wire_json(result: Result) -> str:
    """The column text for ``result``: ``""`` when it has nothing beyond the mapped columns."""
    data = {key: getattr(result, key) for key in _KEYS}
    if not any(data[key] for key in _KEYS if key != "protocol"):
        return ""
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in data.items() if v}, sort_keys=True)


def with_wire(result: Result, text: str | None) -> Result:
    """``result`` with the fields kept in the column text (unchanged for ``""``/None or unreadable text)."""
    if not text:
        return result
    try:
        data = json.loads(text)
    except ValueError:
        return result
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in _KEYS}
    return replace(result, **fields)

"""Helpers for showing stored data on a page: raw protocol bytes made visible (labmw.wire.visible), times
from a form."""

from __future__ import annotations

from datetime import UTC, datetime

from labmw.errors import UsageError
from labmw.wire.visible import show_bytes

__all__ = ["parse_form_time", "show_bytes"]

def parse_form_time(text: str, name: str) -> datetime | None:
    """An ISO date or date-time from a search form (naive = UTC), None when empty; UsageError otherwise."""
    if not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{name}: expected an ISO date or date-time such as 2026-11-25T08:00, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)

"""Operational logging: structlog, JSON to stdout under systemd, console on a terminal.

Operational logs are for lab IT at 3 a.m.; they carry analyzer names, peers, counts, control IDs
and specimen-free event names — never patient names, birth dates or raw payloads, which belong in
the audit trail and the database. :func:`redact_phi` drops such keys if a caller ever passes one.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys that would carry patient data or raw message content; dropped from every log event.
PHI_KEYS = frozenset({"patient_name", "name", "birth_date", "dob", "raw", "payload", "text", "records", "message"})


def redact_phi(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Processor: remove keys that could hold patient data or raw payloads."""
    for key in PHI_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def level_named(name: str) -> int:
    """``service.log_level`` (debug, info, warning, error) as a logging level; LABMW_DEBUG=1 forces debug."""
    if os.environ.get("LABMW_DEBUG"):
        return logging.DEBUG
    return int(logging.getLevelNamesMapping()[name.upper()])


def configure(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Set up structlog and route stdlib logging (asyncio, pyserial) through the same renderer."""
    if json is None:
        json = not sys.stdout.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_phi,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # No file: print to sys.stdout as it is when each line is written (not as it was when configured).
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

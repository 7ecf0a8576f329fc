"""Operational logs: JSON lines with stable event names, and no patient data or raw payloads."""

from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stdout

import structlog

from labmw import log


def test_json_lines_and_phi_keys_redacted() -> None:
    """Under systemd (not a tty) each event is one JSON object; keys that could hold PHI are redacted."""
    out = io.StringIO()
    with redirect_stdout(out):
        log.configure(json=True, level=logging.INFO)
        try:
            structlog.get_logger("t").info("result_delivered", control_id="ab-1", patient_name="DOE^JANE",
                                           birth_date="19800101", payload=b"MSH|...", specimen="S1")
            logging.getLogger("asyncio").warning("stdlib too")
        finally:
            structlog.reset_defaults()
            logging.getLogger().handlers[:] = []
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    event = next(e for e in lines if e["event"] == "result_delivered")
    assert event["control_id"] == "ab-1" and event["level"] == "info" and "timestamp" in event
    assert event["patient_name"] == event["birth_date"] == event["payload"] == "[redacted]"
    assert "DOE" not in out.getvalue() and "19800101" not in out.getvalue()
    assert any(e["event"] == "stdlib too" for e in lines), "stdlib logging goes through the same renderer"

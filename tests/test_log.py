"""Operational logs: JSON lines with stable event names, and no patient data or raw payloads."""

from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stdout

import pytest
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


def test_log_level_setting_filters_and_labmw_debug_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """service.log_level = "warning" drops info events; LABMW_DEBUG=1 turns debug on whatever the setting."""
    import logging

    from labmw.log import level_named

    monkeypatch.delenv("LABMW_DEBUG", raising=False)
    assert [level_named(n) for n in ("debug", "info", "warning", "error")] == [
        logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
    out = io.StringIO()
    with redirect_stdout(out):
        log.configure(json=True, level=level_named("warning"))
        try:
            structlog.get_logger("t").info("result_delivered")
            structlog.get_logger("t").warning("lis_delivery_failed")
        finally:
            structlog.reset_defaults()
            logging.getLogger().handlers[:] = []
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["lis_delivery_failed"]
    monkeypatch.setenv("LABMW_DEBUG", "1")
    assert level_named("error") == logging.DEBUG

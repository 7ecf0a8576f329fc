"""Alerts that reach a person without flooding: each condition fires once when it starts and once when
it clears, to a command hook and/or a webhook, and each firing is an audit event.

``[alerts]`` (see :class:`labmw.config.AlertSettings`) names where alerts go. Every
``check_interval_seconds`` the loop looks at what the daemon already knows and the store:

- ``lis_down``: the LIS link has been down longer than ``lis_down_minutes``;
- ``dead_letters``: the LIS refused messages (``labmw queue list``);
- ``analyzer_silent:NAME``: no message for the analyzer's ``silent_after_minutes``;
- ``analyzer_not_started:NAME``: its endpoint could not start (port taken, device missing);
- ``critical_unnotified``: an HH/LL result older than ``critical_unnotified_minutes`` not at the LIS;
- ``disk_low``: less than ``disk_free_min_mb`` free where the database lives;
- ``audit_chain_broken``: `audit verify` fails (checked every ``audit_verify_minutes``).

The command gets the alert as one JSON object on stdin (and LABMW_ALERT, LABMW_ALERT_STATE in its
environment); the webhook gets the same object POSTed as JSON. A delivery that fails is logged and
audited; the alert is not repeated (no flood), the all-clear still follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.request
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from labmw.config import AlertSettings
from labmw.errors import LabmwError

if TYPE_CHECKING:
    from labmw.daemon.app import Service

log = structlog.get_logger(__name__)


class AlertLoop:
    """Watches the conditions of one daemon; :meth:`check` once, or :meth:`run` until cancelled."""

    def __init__(self, service: Service, settings: AlertSettings) -> None:
        self.service = service
        self.settings = settings
        self.active: dict[str, str] = {}  # condition -> what it said when it started
        self._lis_down_since: datetime | None = None
        self._next_audit_verify: datetime | None = None
        self._audit_broken: str | None = None
        self._started = service.clock()

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except LabmwError as exc:  # the store failing is itself visible elsewhere; keep watching
                log.error("alert_check_failed", error=str(exc))
            except Exception:  # a bug here must not stop the watching
                log.exception("alert_check_failed")
            await asyncio.sleep(self.settings.check_interval_seconds)

    async def check(self) -> None:
        """Evaluate every condition now; fire the ones that started or cleared."""
        now = self.service.clock()
        found = await self._conditions(now)
        for name, detail in found.items():
            if name not in self.active:
                self.active[name] = detail
                await self._fire(name, "raised", detail, now)
        for name in [n for n in self.active if n not in found]:
            detail = self.active.pop(name)
            await self._fire(name, "cleared", detail, now)

    async def _conditions(self, now: datetime) -> dict[str, str]:
        service, cfg = self.service, self.settings
        found: dict[str, str] = {}
        forwarder = service.forwarder
        if forwarder is not None and forwarder.link_state == "down":
            self._lis_down_since = self._lis_down_since or now
            if now - self._lis_down_since >= timedelta(minutes=cfg.lis_down_minutes):
                found["lis_down"] = (f"the LIS has not answered since {self._lis_down_since.isoformat()}: "
                                     f"{forwarder.last_error}")
        else:
            self._lis_down_since = None
        for name, state in service.analyzers.items():
            if state.error:
                found[f"analyzer_not_started:{name}"] = state.error
            silent = state.analyzer.silent_after_minutes
            last = state.last_message_at or self._started
            if silent is not None and not state.error and now - last >= timedelta(minutes=silent):
                found[f"analyzer_silent:{name}"] = (f"no message since {last.isoformat()} "
                                                    f"(allowed: {silent:g} min)")
        runner = service.runner
        if runner is None:
            return found
        store = runner.store
        counts = await runner.call(store.counts)
        if counts["dead"]:
            found["dead_letters"] = f"{counts['dead']} message(s) refused by the LIS (labmw queue list)"
        criticals = await runner.call(store.unnotified_criticals,
                                      received_before=now - timedelta(minutes=cfg.critical_unnotified_minutes))
        if criticals:
            found["critical_unnotified"] = (f"{criticals} critical result(s) older than "
                                            f"{cfg.critical_unnotified_minutes:g} min not at the LIS")
        st = os.statvfs(service.settings.data_dir)
        free_mb = st.f_bavail * st.f_frsize / 2**20
        if free_mb < cfg.disk_free_min_mb:
            found["disk_low"] = f"{free_mb:.0f} MB free in {service.settings.data_dir} (alert below {cfg.disk_free_min_mb:g})"
        if self._next_audit_verify is None or now >= self._next_audit_verify:
            self._next_audit_verify = now + timedelta(minutes=cfg.audit_verify_minutes)
            result = await runner.call(store.verify_audit)
            self._audit_broken = None if result.ok else f"broken at event {result.first_broken}: {result.reason}"
        if self._audit_broken:
            found["audit_chain_broken"] = self._audit_broken
        return found

    async def _fire(self, name: str, state: str, detail: str, now: datetime) -> None:
        alert = {"alert": name, "state": state, "detail": detail, "at": now.isoformat(),
                 "site": str(self.service.settings.path)}
        log.warning("alert_raised" if state == "raised" else "alert_cleared", alert=name, detail=detail)
        delivered = await asyncio.gather(self._command(alert), self._webhook(alert))
        errors = [e for e in delivered if e]
        runner = self.service.runner
        if runner is not None:
            await runner.call(runner.store.append_audit, f"alert_{state}", now=now, actor="labmw",
                              data={"alert": name, "detail": detail, "delivery_errors": errors})

    async def _command(self, alert: dict[str, Any]) -> str:
        if not self.settings.command:
            return ""
        env = {**os.environ, "LABMW_ALERT": alert["alert"], "LABMW_ALERT_STATE": alert["state"]}
        try:
            proc = await asyncio.create_subprocess_shell(
                self.settings.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=env)
            async with asyncio.timeout(self.settings.timeout_seconds):
                _, err = await proc.communicate(json.dumps(alert).encode() + b"\n")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return _failed("command", f"no exit within {self.settings.timeout_seconds:g} s")
        except OSError as exc:
            return _failed("command", str(exc))
        if proc.returncode != 0:
            return _failed("command", f"exit {proc.returncode}: {err.decode(errors='replace').strip()[:200]}")
        return ""

    async def _webhook(self, alert: dict[str, Any]) -> str:
        if not self.settings.webhook_url:
            return ""
        request = urllib.request.Request(self.settings.webhook_url, data=json.dumps(alert).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")

        def post() -> int:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_seconds) as reply:
                return int(reply.status)

        try:
            status = await asyncio.to_thread(post)
        except OSError as exc:  # URLError, HTTPError, timeouts are OSErrors
            return _failed("webhook", str(exc))
        return "" if 200 <= status < 300 else _failed("webhook", f"HTTP {status}")


def _failed(where: str, why: str) -> str:
    log.error("alert_delivery_failed", via=where, error=why)
    return f"{where}: {why}"

"""The other alert conditions, on an in-process service with a clock double: an unnotified critical,
dead letters, disk space low and a broken audit chain each fire once and clear once, to a real webhook."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alert_receiver import Receiver
from peers import alt_message, astm_send, configure, free_port
from structlog.testing import capture_logs

from labmw.config import load
from labmw.daemon.alerts import AlertLoop
from labmw.daemon.app import Service


def test_critical_dead_letter_disk_and_audit_alerts_fire_once_and_clear(tmp_path: Path) -> None:
    """Each condition: raised on the first check that sees it, nothing while it lasts, cleared when it ends."""
    lis_port, analyzer_port = free_port(), free_port()  # nothing listens on lis_port: the critical stays queued
    config = configure(tmp_path, lis_port, analyzer_port)
    with Receiver() as receiver:
        config.write_text(config.read_text() + f'\n[alerts]\nwebhook_url = "http://127.0.0.1:{receiver.port}/"\n'
                          "disk_free_min_mb = 1\nlis_down_minutes = 1000\n")
        settings = load(config)
        assert settings.alerts is not None
        now = [datetime.now(UTC)]
        with capture_logs():
            asyncio.run(_scenario(settings, now, receiver, tmp_path))

        def fired(name: str) -> list[str]:
            return receiver.firings(name)

        assert fired("critical_unnotified") == ["raised", "cleared"]
        assert fired("dead_letters") == ["raised", "cleared"]
        assert fired("disk_low") == ["raised", "cleared"]
        assert fired("audit_chain_broken") == ["raised"]


async def _scenario(settings: object, now: list[datetime], receiver: Receiver, tmp_path: Path) -> None:
    service = Service(settings, clock=lambda: now[0])  # type: ignore[arg-type]
    await service.start()
    try:
        alerts = AlertLoop(service, service.settings.alerts)  # type: ignore[arg-type]
        await asyncio.to_thread(astm_send, analyzer_port(service), [alt_message(
            specimen="S1", patient="P1", sex="M", birth="19800101", value="1250")])  # HH
        await alerts.check()
        assert receiver.firings("critical_unnotified") == [], "not yet older than 15 minutes"

        now[0] += timedelta(minutes=20)
        await alerts.check()
        await alerts.check()
        assert receiver.firings("critical_unnotified") == ["raised"]
        assert "1 critical result(s)" in alerts.active["critical_unnotified"]

        runner = service.runner
        assert runner is not None
        entry = (await runner.call(runner.store.outbox))[0]
        await runner.call(runner.store.mark_dead, entry, now=now[0], reason="LIS answered AR", alert=False)
        await alerts.check()
        assert receiver.firings("dead_letters") == ["raised"]
        await runner.call(runner.store.retry, None, now=now[0], actor="test")
        await alerts.check()
        assert receiver.firings("dead_letters") == ["raised", "cleared"]

        alerts.settings = dataclasses.replace(alerts.settings, disk_free_min_mb=1e12)
        await alerts.check()
        alerts.settings = dataclasses.replace(alerts.settings, disk_free_min_mb=1)
        await alerts.check()

        # The critical reaches the LIS... as far as the store knows: delivered.
        entry = (await runner.call(runner.store.outbox))[0]
        await runner.call(runner.store.mark_delivered_many, [(entry, "AA", "")], now=now[0])
        await alerts.check()

        raw = sqlite3.connect(service.settings.db_path)
        raw.execute("DROP TRIGGER audit_no_update")  # what someone with file access could do
        raw.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
        raw.commit()
        raw.close()
        await alerts.check()
        assert receiver.firings("audit_chain_broken") == [], "verified every audit_verify_minutes, not every check"
        now[0] += timedelta(minutes=61)
        await alerts.check()
        await alerts.check()
    finally:
        await service.close()


def analyzer_port(service: Service) -> int:
    listen = service.settings.analyzers["c501"].listen
    assert listen is not None
    return listen.port

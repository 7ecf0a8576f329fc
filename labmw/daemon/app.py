"""Builds the running service from Settings: store thread, analyzer listeners, LIS forwarder.

Everything is created here and passed down; nothing lives at module level. SIGTERM and SIGINT
stop the service cleanly: listeners close first (no new messages), the message in hand finishes
its transaction, then the forwarder and the store shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import structlog

from labmw.config import AnalyzerSettings, Settings
from labmw.daemon.forwarder import Forwarder
from labmw.daemon.pipeline import Outcome, Pipeline, utcnow
from labmw.daemon.runner import StoreRunner
from labmw.transports.astm_pump import pump_astm

log = structlog.get_logger(__name__)


class Service:
    """One running labmw: call :meth:`start`, then :meth:`wait_stopped` (or :meth:`stop`)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.runner: StoreRunner | None = None
        self.servers: dict[str, asyncio.Server] = {}
        self.forwarder: Forwarder | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._conn_ids = itertools.count(1)
        self.stats: dict[str, dict[str, float]] = {}

    async def start(self) -> None:
        """Open the store, start listeners and the forwarder. Raises StoreError/OSError on failure."""
        self.runner = StoreRunner(self.settings.db_path)
        self.pipeline = Pipeline(self.settings, self.runner.store, clock=self.clock)
        await self.runner.call(self.runner.store.append_audit, "service_started", now=self.clock(), actor="labmw",
                               data={"config": str(self.settings.path), "analyzers": sorted(self.settings.analyzers)})
        for analyzer in self.settings.analyzers.values():
            await self._start_analyzer(analyzer)
        if self.settings.lis is not None:
            self.forwarder = Forwarder(self.settings.lis, self.runner, self._wake, clock=self.clock)
            self._spawn(self.forwarder.run())
        else:
            log.warning("lis_not_configured", hint="labmw lis set --connect HOST:PORT")
        log.info("service_ready", analyzers=len(self.servers), lis=str(self.settings.lis.connect)
                 if self.settings.lis else None)

    async def _start_analyzer(self, analyzer: AnalyzerSettings) -> None:
        if analyzer.transport != "tcp-server" or analyzer.listen is None:
            # Not built yet (issue 3); say so loudly rather than pretend to listen.
            log.error("analyzer_not_started", analyzer=analyzer.name, protocol=analyzer.protocol,
                      transport=analyzer.transport, reason="this protocol/transport is not implemented yet")
            return
        self.stats[analyzer.name] = {"connections": 0, "messages": 0, "results": 0}
        serve_connection = self._serve_astm if analyzer.protocol == "astm" else self._serve_hl7
        server = await asyncio.start_server(lambda r, w: serve_connection(analyzer, r, w),
                                            analyzer.listen.host, analyzer.listen.port, limit=2**20)
        self.servers[analyzer.name] = server
        log.info("analyzer_listening", analyzer=analyzer.name, listen=str(analyzer.listen))

    async def _serve_hl7(self, analyzer: AnalyzerSettings, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        from labmw.daemon.hl7_intake import Hl7Intake
        from labmw.transports.hl7_pump import pump_hl7

        assert self.runner is not None  # noqa: S101 - start() ran; not input validation
        runner, intake, peer = self.runner, Hl7Intake(self.pipeline), _peer(writer)

        async def handle(payload: bytes) -> bytes:
            ack = await runner.call(intake.handle, analyzer, payload, peer)
            self._wake.set()
            return ack

        await self._connection(analyzer, peer, writer,
                               pump_hl7(reader, writer, analyzer=analyzer, handle=handle))

    async def _serve_astm(self, analyzer: AnalyzerSettings, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        assert self.runner is not None  # noqa: S101 - start() ran; not input validation
        peer = _peer(writer)
        runner, pipeline, stats = self.runner, self.pipeline, self.stats[analyzer.name]

        async def handle(text: bytes, raw: bytes) -> Outcome:
            outcome = await runner.call(pipeline.handle_astm, analyzer, text, raw, peer)
            if outcome.queued:
                self._wake.set()
            return outcome

        async def audit_discard(reason: str, text: bytes) -> None:
            await runner.call(runner.store.append_audit, "transfer_incomplete", now=self.clock(), actor="labmw",
                              analyzer=analyzer.name, data={"reason": reason, "bytes": len(text), "peer": peer})

        await self._connection(analyzer, peer, writer,
                               pump_astm(reader, writer, analyzer=analyzer, handle=handle, audit_discard=audit_discard,
                                         stats=stats))

    async def _connection(self, analyzer: AnalyzerSettings, peer: str, writer: asyncio.StreamWriter,
                          pump: Coroutine[Any, Any, None]) -> None:
        """The per-connection boundary: context for logs, counters, and no exception escapes."""
        stats = self.stats[analyzer.name]
        stats["connections"] += 1
        with structlog.contextvars.bound_contextvars(analyzer=analyzer.name, peer=peer, conn_id=next(self._conn_ids)):
            log.info("analyzer_connected")
            try:
                await pump
            except Exception:  # the per-connection boundary: log, never take the service down
                log.exception("analyzer_connection_crashed")
            finally:
                stats["connections"] -= 1
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                log.info("analyzer_disconnected")

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def close(self) -> None:
        for server in self.servers.values():
            server.close()
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.runner is not None:
            with contextlib.suppress(Exception):
                await self.runner.call(self.runner.store.append_audit, "service_stopped", now=self.clock(),
                                       actor="labmw")
            self.runner.close()
            self.runner = None
        log.info("service_stopped")


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    return f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    service = Service(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    try:
        await service.start()
        await service.wait_stopped()
    finally:
        await service.close()
    return 0

"""Builds the running service from Settings: store thread, analyzer endpoints, LIS forwarder.

Everything is created here and passed down; nothing lives at module level. SIGTERM and SIGINT
stop the service cleanly: endpoints close first (no new messages), the message in hand finishes
its transaction, then the forwarder and the store shut down. SIGHUP reloads the configuration:
new analyzers start, removed ones stop, changed ones restart, the others keep their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import structlog

from labmw.config import AnalyzerSettings, Settings, load
from labmw.daemon import integrity, standby
from labmw.daemon.astm_adapter import AstmAdapter
from labmw.daemon.forwarder import Forwarder
from labmw.daemon.hl7_adapter import Hl7Adapter
from labmw.daemon.intake import Intake
from labmw.daemon.pipeline import Pipeline, utcnow
from labmw.daemon.runner import StoreRunner
from labmw.daemon.standby import ActiveStandby
from labmw.errors import LabmwError, StoreError
from labmw.model import Outcome
from labmw.transports.astm_pump import pump_astm
from labmw.transports.connections import REFUSAL_INTERVAL, RefusalLog
from labmw.transports.endpoints import Endpoint, make_endpoint
from labmw.transports.hl7_pump import pump_hl7
from labmw.wire.astm_link import REPEATED_FN_CHANGED

log = structlog.get_logger(__name__)

SWITCH_INTERVAL = 0.0005  # seconds; see serve()
FORWARDER_STOP_GRACE = 5.0  # seconds the forwarder may take to finish the exchange in hand


class AnalyzerState:
    """One configured analyzer while it runs: its endpoint and its counters (for `labmw status`)."""

    def __init__(self, analyzer: AnalyzerSettings) -> None:
        self.analyzer = analyzer
        self.endpoint: Endpoint | None = None
        self.counts: dict[str, float] = {"messages": 0, "results": 0}
        self.last_message_at: datetime | None = None
        self.error = ""
        #: The last message whose final ACK this analyzer provably received (ASTM resend detection).
        self.confirmed_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        a = self.analyzer
        peers = self.endpoint.peers if self.endpoint else []
        error = self.error or (self.endpoint.error if self.endpoint else "")
        return {"state": "failed" if error else "running", "name": a.name, "protocol": a.protocol, "transport": a.transport,
                "endpoint": str(a.listen or a.connect or a.device), "peers": peers,
                "connections": len(peers), "messages": int(self.counts["messages"]),
                "results": int(self.counts["results"]),
                "last_message_at": self.last_message_at.isoformat() if self.last_message_at else None,
                "error": error}


class Service:
    """One running labmw: :meth:`start`, then :meth:`wait_stopped` (or :meth:`stop`), then :meth:`close`."""

    accept_broken_trail = False  # `labmw run --accept-broken-trail` (integrity.py)
    _head_task: asyncio.Task[None] | None = None

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.runner: StoreRunner | None = None
        self.analyzers: dict[str, AnalyzerState] = {}
        self.forwarder: Forwarder | None = None
        self._forwarder_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._conn_ids = itertools.count(1)
        self.started_at = clock()
        self._storage_episode: dict[str, Any] | None = None
        # Active/standby (PostgreSQL with [service] site): None means always active.
        self.role: ActiveStandby | None = None
        self.on_role: Callable[[str], object] | None = None  # serve() passes it to sd_notify STATUS=
        self._role_events: set[asyncio.Future[None]] = set()
        self._refusals = RefusalLog()
        self._closures = RefusalLog()
        self._refusal_flusher: asyncio.Task[None] | None = None

    # --- life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, start endpoints and the forwarder. Raises StoreError when the store cannot open."""
        self.runner = StoreRunner(self.settings.store_target, site=self.settings.site)
        self.pipeline = Pipeline(self.settings, self.runner.store, clock=self.clock)
        await integrity.check_trail_at_start(self.runner, accept_broken=self.accept_broken_trail, now=self.clock())
        self._head_task = asyncio.ensure_future(integrity.log_head_periodically(self._runner))
        await self._audit("service_started", data={"config": str(self.settings.path), "pid": os.getpid(),
                                                   "analyzers": sorted(self.settings.analyzers)})
        self._refusal_flusher = asyncio.ensure_future(self._flush_refusals_periodically())
        self.role = standby.for_service(self.settings, self.runner.store, go_active=self._go_active,
                                        go_standby=self._go_standby, on_change=self._role_changed)
        if self.role is None:
            await self._go_active()
        else:
            self.role.start()  # listeners and the LIS link come up once the site's lease is won

    async def _go_active(self) -> None:
        for analyzer in self.settings.analyzers.values():
            await self._start_analyzer(analyzer)
        self._start_forwarder()
        log.info("service_ready", analyzers=len(self.analyzers), failed=sorted(self.failed_analyzers()),
                 lis=str(self.settings.lis.connect) if self.settings.lis else None)

    async def _go_standby(self) -> None:
        for name in list(self.analyzers):
            await self._stop_analyzer(name)
        await self._stop_forwarder()

    def _role_changed(self, role: str) -> None:
        task = asyncio.ensure_future(self._audit(f"site_{role}", data={"site": self.settings.site}))
        self._role_events.add(task)  # kept until done, so the event is not garbage-collected unwritten
        task.add_done_callback(self._role_events.discard)
        if self.on_role is not None:
            self.on_role(f"{role} (site {self.settings.site})")

    def failed_analyzers(self) -> dict[str, str]:
        """Analyzers that are configured but not working (port taken, device not openable): name -> why."""
        return {name: d["error"] for name, d in ((n, s.as_dict()) for n, s in self.analyzers.items()) if d["error"]}

    def ready_text(self) -> str:
        """The sd_notify STATUS= line: how many analyzers run, and which failed and why."""
        failed = self.failed_analyzers()
        text = f"{len(self.analyzers) - len(failed)} of {len(self.analyzers)} analyzers running"
        return text + ("; FAILED: " + "; ".join(f"{n} ({why})" for n, why in sorted(failed.items())) if failed else "")

    def stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def close(self) -> None:
        if self.role is not None:
            await self.role.stop()
        for name in list(self.analyzers):
            await self._stop_analyzer(name)
        await self._stop_forwarder()
        if self._refusal_flusher is not None:
            self._refusal_flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refusal_flusher
        if self.runner is not None:
            with contextlib.suppress(Exception):
                await self._audit_refusals(self._refusals.due(_loop_time(), flush=True))
                await self._audit_aggregated("connection_closed", self._closures.due(_loop_time(), flush=True))
            with contextlib.suppress(Exception):
                await self._audit("service_stopped")
            if self._head_task is not None:
                self._head_task.cancel()
                await integrity.log_head(self.runner, reason="stop")
            self.runner.close()
            self.runner = None
        log.info("service_stopped")

    async def reload(self) -> None:
        """Apply the configuration file as it is now; a bad file is refused and the old one kept."""
        try:
            new = load(self.settings.path)
        except LabmwError as exc:
            log.error("reload_refused", error=str(exc))
            await self._audit("config_reload_refused", data={"error": str(exc)})
            return
        old, self.settings = self.settings, new
        self.pipeline.settings = new
        changed: dict[str, list[str]] = {"added": [], "removed": [], "restarted": []}
        if self.role is not None and not self.role.active:
            log.info("config_reloaded", role="standby")  # applied when this daemon becomes active
            await self._audit("config_reloaded", data={"role": "standby"})
            return
        for name, state in list(self.analyzers.items()):
            if name not in new.analyzers:
                await self._stop_analyzer(name)
                changed["removed"].append(name)
            elif new.analyzers[name] != state.analyzer:
                await self._stop_analyzer(name)
                await self._start_analyzer(new.analyzers[name])
                changed["restarted"].append(name)
        for name, analyzer in new.analyzers.items():
            if name not in self.analyzers:
                await self._start_analyzer(analyzer)
                changed["added"].append(name)
        if new.lis != old.lis:
            await self._stop_forwarder()
            self._start_forwarder()
            changed["lis"] = [str(new.lis.connect) if new.lis else "none"]
        log.info("config_reloaded", **{k: v for k, v in changed.items() if v})
        await self._audit("config_reloaded", data=changed)

    # --- analyzers ---------------------------------------------------------------------------------
    async def _start_analyzer(self, analyzer: AnalyzerSettings) -> None:
        state = AnalyzerState(analyzer)
        self.analyzers[analyzer.name] = state

        async def handle(reader: Any, writer: Any, peer: str) -> None:
            await self._connection(state, reader, writer, peer)

        async def refuse(peer: str, reason: str) -> None:
            # Once per peer host and reason per interval, with a count: a flood of refused
            # connections must not flood the audit trail (or the disk) as well.
            records = self._refusals.refused(peer, f"{analyzer.name}: {reason}", _loop_time())
            if any(r.get("first") for r in records):
                log.warning("analyzer_connection_refused", analyzer=analyzer.name, peer=peer, reason=reason)
            await self._audit_refusals(records)

        endpoint = make_endpoint(analyzer, handle, refuse)
        try:
            await endpoint.start()
        except OSError as exc:
            # One analyzer's bad port must not keep the others (or the LIS queue) down.
            state.error = f"cannot start: {exc.strerror or exc}"
            log.error("analyzer_not_started", analyzer=analyzer.name, error=state.error)
            await self._audit("analyzer_not_started", analyzer=analyzer.name, data={"error": state.error})
            return
        state.endpoint = endpoint
        log.info("analyzer_started", analyzer=analyzer.name, transport=analyzer.transport,
                 endpoint=str(analyzer.listen or analyzer.connect or analyzer.device))

    async def _stop_analyzer(self, name: str) -> None:
        state = self.analyzers.pop(name, None)
        if state is not None and state.endpoint is not None:
            await state.endpoint.stop()
            log.info("analyzer_stopped", analyzer=name)

    async def _connection(self, state: AnalyzerState, reader: Any, writer: Any, peer: str) -> None:
        """The per-connection boundary: log context, no exception escapes, and every end is audited."""
        analyzer = state.analyzer
        activity = state.endpoint.activity_of(writer) if state.endpoint is not None else None
        with structlog.contextvars.bound_contextvars(analyzer=analyzer.name, peer=peer, conn_id=next(self._conn_ids)):
            log.info("analyzer_connected")
            ended = "crashed"
            try:
                if analyzer.protocol == "astm":
                    ended = await self._astm(state, reader, writer, peer)
                else:
                    ended = await self._hl7(state, reader, writer, peer)
            except Exception as exc:  # one bad connection never takes the service down
                log.exception("analyzer_connection_crashed")
                ended = f"error: {type(exc).__name__}"
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                # FIN, RST, timeout, eviction or error: one event, one shape (issue #17 item 3).
                reason = (activity.ended if activity is not None and activity.ended else ended) or "closed"
                data = {**(activity.as_dict(_loop_time()) if activity is not None else {"peer": peer}),
                        "reason": reason}
                log.info("analyzer_disconnected", reason=reason)
                with contextlib.suppress(Exception):
                    await self._connection_closed(analyzer.name, data)

    async def _connection_closed(self, analyzer: str, data: dict[str, Any]) -> None:
        """Audit a connection's end. One that carried messages gets its own row; empty ones (idle
        squatters, probes) are counted per peer host and reason like refusals, so a flood of them
        costs a few rows, not one store transaction each ahead of the results."""
        runner = self._runner()
        if data.get("messages"):
            await runner.call_batched(runner.store.append_audit, "connection_closed", now=self.clock(),
                                      actor="labmw", analyzer=analyzer, data=data)
            return
        records = self._closures.refused(str(data["peer"]), f"{analyzer}: {data['reason']}", _loop_time())
        await self._audit_aggregated("connection_closed", records, first=data)

    def _intake(self, state: AnalyzerState, writer: Any) -> Intake:
        """The analyzer's intake for one connection (its link memory lives with the analyzer)."""
        analyzer = state.analyzer
        adapter = (AstmAdapter(analyzer, self.settings) if analyzer.protocol == "astm"
                   else Hl7Adapter(analyzer, self.clock))
        intake = Intake(analyzer, adapter, self.pipeline, self._runner(), on_refused=self._storage_failed,
                        on_stored=self._storage_ok)
        intake.confirmed_id = state.confirmed_id
        return intake

    def _counted(self, state: AnalyzerState, writer: Any, outcome: Outcome) -> None:
        if outcome.stored and outcome.message_id:
            state.last_message_at = self.clock()
            activity = state.endpoint.activity_of(writer) if state.endpoint is not None else None
            if activity is not None:
                activity.messages += 1
            if outcome.queued:
                self._wake.set()

    async def _astm(self, state: AnalyzerState, reader: Any, writer: Any, peer: str) -> str:
        analyzer, intake = state.analyzer, self._intake(state, writer)

        async def handle(text: bytes, raw: bytes) -> Outcome:
            outcome = await intake.receive(raw, peer, text=text)
            self._counted(state, writer, outcome)
            return outcome

        def confirmed(message_id: int) -> None:
            intake.confirmed(message_id)
            state.confirmed_id = message_id

        async def audit_discard(reason: str, text: bytes) -> None:
            event = "frame_number_repeated" if reason.startswith(REPEATED_FN_CHANGED) else "transfer_incomplete"
            await self._audit(event, analyzer=analyzer.name,
                              data={"reason": reason, "bytes": len(text), "peer": peer})

        return await pump_astm(reader, writer, analyzer=analyzer, handle=handle, audit_discard=audit_discard,
                               stats=state.counts, confirmed=confirmed)

    async def _hl7(self, state: AnalyzerState, reader: Any, writer: Any, peer: str) -> str:
        analyzer, intake = state.analyzer, self._intake(state, writer)

        async def handle(payload: bytes) -> bytes:
            outcome = await intake.receive(payload, peer)
            self._counted(state, writer, outcome)
            if outcome.stored and outcome.message_id:
                state.counts["messages"] += 1
                state.counts["results"] += outcome.results
            return outcome.answer

        return await pump_hl7(reader, writer, analyzer=analyzer, handle=handle, idle_timeout=analyzer.idle_timeout)

    # --- forwarder ---------------------------------------------------------------------------------
    def _start_forwarder(self) -> None:
        if self.settings.lis is None:
            log.warning("lis_not_configured", hint="labmw lis set --connect HOST:PORT")
            return
        try:
            self.forwarder = Forwarder(self.settings.lis, self._runner(), self._wake, clock=self.clock)
        except LabmwError as exc:
            # E.g. an unreadable TLS certificate: keep receiving and queueing; say why nothing is sent.
            log.error("lis_not_started", error=str(exc))
            return
        self._forwarder_task = asyncio.ensure_future(self.forwarder.run())
        self._forwarder_task.add_done_callback(self._forwarder_ended)

    def _forwarder_ended(self, task: asyncio.Task[None]) -> None:
        """The forwarder only ends when told to; if it ever dies, say so and start a new one."""
        if task is not self._forwarder_task or task.cancelled():
            return
        error = task.exception()
        log.error("forwarder_died", error=repr(error))
        if self.runner is not None and not self._stopped.is_set():
            self._start_forwarder()

    async def _stop_forwarder(self) -> None:
        task, forwarder = self._forwarder_task, self.forwarder
        self._forwarder_task = self.forwarder = None
        if task is None or forwarder is None:
            return
        forwarder.stop()  # finish the exchange in hand (its ACK is recorded), then return
        try:
            async with asyncio.timeout(FORWARDER_STOP_GRACE):
                await asyncio.shield(task)
        except (TimeoutError, Exception):  # noqa: BLE001 - stopping; what matters is that it ends
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(FORWARDER_STOP_GRACE):
                    await task

    # --- storage refusals ---------------------------------------------------------------------------
    def _storage_failed(self, analyzer: str, exc: StoreError) -> None:
        """Remember a refusal (NAK/AE because nothing could be stored) to audit once storage works again."""
        episode = self._storage_episode
        if episode is None:
            self._storage_episode = {"first_at": self.clock().isoformat(), "first_error": str(exc),
                                     "refusals": 1, "analyzers": [analyzer]}
            log.error("storage_refusing_messages", error=str(exc))
        else:
            episode["refusals"] += 1
            if analyzer not in episode["analyzers"]:
                episode["analyzers"].append(analyzer)

    async def _storage_ok(self) -> None:
        # The audit trail could not take the refusals while the disk was full: record them now.
        # (An HL7 intake answers AE itself when it cannot store, so "no exception" is not proof of
        # recovery: if this audit fails too, keep the episode for the next success.)
        episode, self._storage_episode = self._storage_episode, None
        if episode is not None:
            try:
                await self._audit("storage_refusals", data={**episode, "recovered_at": self.clock().isoformat()})
            except StoreError:
                if self._storage_episode is None:
                    self._storage_episode = episode
                else:
                    self._storage_episode["refusals"] += episode["refusals"]
                return
            log.info("storage_recovered", refusals=episode["refusals"])

    async def _audit_refusals(self, records: list[dict[str, Any]]) -> None:
        await self._audit_aggregated("connection_refused", records)

    async def _audit_aggregated(self, event: str, records: list[dict[str, Any]],
                                first: dict[str, Any] | None = None) -> None:
        """Write the rows a :class:`RefusalLog` says are due (``first``: the data of an interval's first)."""
        for record in records:
            analyzer, _, reason = str(record.pop("reason")).partition(": ")
            if record.pop("first", False) and first is not None:
                record = {**first, "count": 1}
            with contextlib.suppress(StoreError):
                await self._audit(event, analyzer=analyzer, data={**record, "reason": reason})

    async def _flush_refusals_periodically(self) -> None:
        while True:
            await asyncio.sleep(REFUSAL_INTERVAL / 4)
            await self._audit_refusals(self._refusals.due(_loop_time()))
            await self._audit_aggregated("connection_closed", self._closures.due(_loop_time()))

    # --- helpers -----------------------------------------------------------------------------------
    def _runner(self) -> StoreRunner:
        if self.runner is None:
            raise LabmwError("the service is not started")
        return self.runner

    async def _audit(self, event: str, *, analyzer: str = "", data: dict[str, Any] | None = None) -> None:
        runner = self._runner()
        await runner.call(runner.store.append_audit, event, now=self.clock(), actor="labmw", analyzer=analyzer,
                          data=data)

    async def status(self) -> dict[str, Any]:
        """The snapshot `labmw status` prints."""
        from labmw.qc.status import qc_states

        runner = self._runner()
        counts = await runner.call(runner.store.counts)
        lis = self.settings.lis
        forwarder = self.forwarder
        return {
            "pid": os.getpid(), "started_at": self.started_at.isoformat(), "config": str(self.settings.path),
            "config_digest": self.settings.digest,
            "analyzers": [state.as_dict() for state in self.analyzers.values()],
            "lis": {"endpoint": str(lis.connect) if lis else "", "state": forwarder.link_state if forwarder
                    else "not configured", "last_error": forwarder.last_error if forwarder else ""},
            "queue": {"pending": counts["pending"], "dead": counts["dead"]},
            "held": counts["held"],
            "role": self.role.role if self.role is not None else "active",
            "site": self.settings.site,
            "qc": await runner.call(qc_states, self.settings, runner.store, self.clock()),  # labmw.qc.status
            "held_test_code_missing": counts.get("held_test_code_missing", 0),
        }


class Companion(Protocol):
    """Something served beside the service in the same process (the review workstation of ``[web]``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(settings: Settings, *, accept_broken_trail: bool = False,
                companions: Sequence[Callable[[Service], Companion]] = ()) -> int:
    """Run until SIGTERM/SIGINT (SIGHUP reloads); returns the process exit code.

    The control socket comes first, so a second daemon for the same data directory stops before
    it binds any analyzer port; READY=1 goes to systemd only once every endpoint is up.
    ``companions`` are built from the started service, started after it and stopped before it.
    """
    from labmw.daemon import operations
    from labmw.daemon.control import ControlServer
    from labmw.daemon.notify import Notifier
    from labmw.store.db import ensure_private_dir

    # The store thread and the event loop share the GIL: with the default 5 ms switch interval a
    # commit that releases it a dozen times (each SQLite call) waits up to 5 ms each time a busy
    # loop (a flood on some other connection) holds it. 0.5 ms keeps commits, and so ACKs, prompt.
    sys.setswitchinterval(SWITCH_INTERVAL)
    service = Service(settings)
    service.accept_broken_trail = accept_broken_trail
    notifier = Notifier.from_env()
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        notifier.reloading()
        try:
            await service.reload()
        finally:
            notifier.ready("reloaded")

    def on_hup() -> None:
        task = asyncio.ensure_future(reload())
        background.add(task)
        task.add_done_callback(background.discard)

    ensure_private_dir(settings.data_dir)
    control = ControlServer(settings.control_socket, service.status)
    await control.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    watchdog = asyncio.ensure_future(notifier.run_watchdog())
    ops: operations.Operations | None = None
    running: list[Companion] = []
    try:
        service.on_role = notifier.status
        await service.start()
        ops = await operations.start(service)  # metrics, alerts, retention (labmw/daemon/operations.py)
        await asyncio.sleep(0.05)  # let serial endpoints try their device once, so STATUS= can say it failed
        for make in companions:
            running.append(make(service))
            await running[-1].start()
        role = f"{service.role.role} (site {settings.site}), " if service.role is not None else ""
        notifier.ready(role + service.ready_text())
        await service.wait_stopped()
        notifier.stopping()
    finally:
        watchdog.cancel()
        for companion in reversed(running):
            with contextlib.suppress(Exception):
                await companion.stop()
        if ops is not None:
            await ops.close()
        await service.close()
        await control.close()
        notifier.close()
    return 0


def _loop_time() -> float:
    return asyncio.get_running_loop().time()

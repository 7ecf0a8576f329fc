"""The optional metrics endpoint: ``GET /metrics`` (Prometheus text format) and ``GET /healthz``.

``[service] metrics_listen = "127.0.0.1:9464"`` turns it on; it serves plain HTTP with no
authentication, so keep it on loopback (or behind the site's own proxy). The figures come from
what the daemon already keeps for ``labmw status`` (per-analyzer counts, the LIS link, the queue,
held results) plus the store's read-only ops queries, read at each scrape; a few counters that
status has no place for (NAKs, rejects, connections accepted) count the daemon's stable log events
(``astm_frame_rejected``, ``hl7_message_rejected``, ``analyzer_connected``), so a log level above
the event's own (warning, info) stops counting them. Each daemon builds its own
:class:`~prometheus_client.CollectorRegistry`: no global default registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator, MutableMapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from labmw.config import Endpoint
from labmw.errors import LabmwError

if TYPE_CHECKING:
    from labmw.daemon.app import Service

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT = 5.0  # seconds a scraper may take to send its request line and headers
MAX_REQUEST = 8192
MIN_FREE_BYTES = 16 * 1024 * 1024  # below this the store is not "writable" for /healthz
LIS_STATES = ("up", "down", "idle", "not configured")
# Group commits take milliseconds on a healthy disk (fsync); the upper buckets show a disk in trouble.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The counters status keeps no number for, and the log events that count them.
COUNTERS = {
    "labmw_analyzer_naks": "ASTM frames answered NAK (bad checksum, frame number, ...).",
    "labmw_analyzer_rejects": "Messages stored but rejected (HL7 AE/AR, ASTM messages that cannot be judged).",
    "labmw_analyzer_connections_accepted": "Connections made with the analyzer.",
}
EVENT_COUNTERS = {
    "astm_frame_rejected": "labmw_analyzer_naks",
    "hl7_message_rejected": "labmw_analyzer_rejects",
    "astm_message_rejected": "labmw_analyzer_rejects",
    "analyzer_connected": "labmw_analyzer_connections_accepted",
}
# The ASTM pump logs the first of a burst of rejected frames, then one line with the burst's count.
REPEATED_EVENTS = "astm_frame_events_repeated"


class Metrics:
    """Owns the registry, the commit histogram, the log-event counters and the HTTP server."""

    def __init__(self, service: Service, listen: Endpoint) -> None:
        self.service = service
        self.listen = listen
        self.registry = CollectorRegistry()
        self.commit_seconds = Histogram(
            "labmw_store_commit_seconds", "Time of each group commit of received messages (durable, fsynced).",
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.counters = {name: Counter(name, text, ["analyzer"], registry=self.registry)
                         for name, text in COUNTERS.items()}
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)
        self._server: asyncio.Server | None = None
        self._since: tuple[int, int] = (0, 0)
        self._processors: list[Any] | None = None

    async def start(self) -> None:
        runner = self.service.runner
        if runner is not None:
            runner.on_commit = self.commit_seconds.observe
            self._since = await runner.call(runner.store.ops_marks)
        self._count_log_events()
        self._server = await asyncio.start_server(self._handle, self.listen.host, self.listen.port)
        log.info("metrics_listening", listen=str(self.listen))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._processors is not None:
            structlog.configure(processors=self._processors)
            self._processors = None
        runner = self.service.runner
        if runner is not None and runner.on_commit == self.commit_seconds.observe:
            runner.on_commit = None

    # --- figures ----------------------------------------------------------------------------------
    def _count_log_events(self) -> None:
        processors = list(structlog.get_config()["processors"])
        self._processors = list(processors)
        merge = structlog.contextvars.merge_contextvars
        at = processors.index(merge) + 1 if merge in processors else 0
        processors.insert(at, self._count)
        structlog.configure(processors=processors)

    def _count(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event = str(event_dict.get("event"))
        analyzer = str(event_dict.get("analyzer", ""))
        if event in EVENT_COUNTERS:
            self.counters[EVENT_COUNTERS[event]].labels(analyzer=analyzer).inc()
        elif event == REPEATED_EVENTS and event_dict.get("kind") == "FrameRejected":
            more = int(event_dict.get("count", 1)) - 1  # the first of them was logged (and counted) alone
            if more > 0:
                self.counters["labmw_analyzer_naks"].labels(analyzer=analyzer).inc(more)
        return event_dict

    async def scrape(self) -> bytes:
        """The Prometheus text for this moment."""
        status = await self.service.status()
        runner = self.service.runner
        ops: dict[str, Any] = {}
        if runner is not None:
            ops = await runner.call(runner.store.ops_snapshot, since=self._since, now=self.service.clock())
        self._snapshot.data = {**status, "ops": ops}
        return generate_latest(self.registry)

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Every configured analyzer's endpoint serving, and the store writable."""
        service = self.service
        analyzers = {name: ("serving" if state.endpoint is not None and not state.error else
                            state.error or "not started") for name, state in service.analyzers.items()}
        for name in service.settings.analyzers:
            analyzers.setdefault(name, "not started")
        store = "writable"
        try:
            runner = service.runner
            if runner is None:
                raise LabmwError("store not open")
            await runner.call(runner.store.probe_writable)
            free = _free_bytes(service.settings.data_dir)
            if free < MIN_FREE_BYTES:
                store = f"only {free // 1024} KiB free in {service.settings.data_dir}"
        except LabmwError as exc:
            store = str(exc)
        ok = store == "writable" and all(v == "serving" for v in analyzers.values())
        return ok, {"ok": ok, "analyzers": analyzers, "store": store}

    # --- HTTP -------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await _reply(writer, 405, b"only GET\n", "text/plain")
            elif path == "/metrics":
                await _reply(writer, 200, await self.scrape(), CONTENT_TYPE_LATEST, head_only=method == "HEAD")
            elif path == "/healthz":
                ok, body = await self.health()
                await _reply(writer, 200 if ok else 503, json.dumps(body).encode() + b"\n", "application/json",
                             head_only=method == "HEAD")
            else:
                await _reply(writer, 404, b"try /metrics or /healthz\n", "text/plain")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:  # a failing scrape must never take the daemon down
            log.exception("metrics_request_failed")
            with contextlib.suppress(Exception):
                await _reply(writer, 500, b"internal error, see the daemon's log\n", "text/plain")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}


async def _reply(writer: asyncio.StreamWriter, code: int, body: bytes, content_type: str, *,
                 head_only: bool = False) -> None:
    header = (f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
    writer.write(header if head_only else header + body)
    await writer.drain()


def _free_bytes(path: os.PathLike[str] | str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class _Snapshot(Collector):
    """Turns the status/ops snapshot taken just before :func:`generate_latest` into metric families."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def describe(self) -> list[Metric]:
        return []  # families are only known from the data: not checked for name clashes at register

    def collect(self) -> Iterator[Metric]:
        data = self.data
        if not data:
            return
        analyzers = data.get("analyzers") or []
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "connections": GaugeMetricFamily("labmw_analyzer_connections", "Peers connected now.",
                                             labels=["analyzer"]),
            "messages": CounterMetricFamily("labmw_analyzer_messages", "Messages stored since the daemon started.",
                                            labels=["analyzer"]),
            "results": CounterMetricFamily("labmw_analyzer_results", "Results stored since the daemon started.",
                                           labels=["analyzer"]),
        }
        last = GaugeMetricFamily("labmw_analyzer_last_message_timestamp_seconds",
                                 "When the analyzer's last message was stored (Unix time); absent before the first.",
                                 labels=["analyzer"])
        for a in analyzers:
            name = str(a.get("name", ""))
            for key, family in families.items():
                family.add_metric([name], float(a.get(key) or 0))
            if a.get("last_message_at"):
                last.add_metric([name], datetime.fromisoformat(a["last_message_at"]).timestamp())
        yield from families.values()
        yield last
        queue = data.get("queue") or {}
        ops = data.get("ops") or {}
        yield GaugeMetricFamily("labmw_queue_pending", "Outbound messages not yet acknowledged by the LIS.",
                                value=float(queue.get("pending") or 0))
        age = ops.get("oldest_pending_age_s")
        yield GaugeMetricFamily("labmw_queue_oldest_pending_age_seconds",
                                "Age of the oldest message waiting for the LIS (0 when none waits).",
                                value=float(age or 0))
        yield GaugeMetricFamily("labmw_queue_dead_letters", "Messages the LIS refused (labmw queue retry).",
                                value=float(queue.get("dead") or 0))
        state = str((data.get("lis") or {}).get("state", "not configured"))
        link = GaugeMetricFamily("labmw_lis_link_state", "1 for the LIS link's current state.", labels=["state"])
        for known in (*LIS_STATES, *(() if state in LIS_STATES else (state,))):
            link.add_metric([known], 1.0 if known == state else 0.0)
        yield link
        yield GaugeMetricFamily("labmw_lis_up", "1 when the LIS answered the last attempt.",
                                value=1.0 if state == "up" else 0.0)
        held = GaugeMetricFamily("labmw_results_held", "Results waiting for a person, by the gate that held them.",
                                 labels=["gate"])
        for gate, count in sorted((ops.get("held_by_gate") or {}).items()):
            held.add_metric([gate], float(count))
        yield held
        results, holds = ops.get("results_since_start") or 0, ops.get("held_since_start") or 0
        yield GaugeMetricFamily(
            "labmw_autoverification_ratio",
            "Share of results stored since the daemon started that went to the LIS without a hold (1 when none).",
            value=1.0 if not results else max(0.0, 1.0 - holds / results))

"""Where an analyzer's byte stream comes from: a TCP listener, an outgoing TCP connection, or a serial port.

Each endpoint hands every stream it gets to the same connection handler ``handle(reader, writer,
peer)``, so ASTM and HL7 run unchanged over all three. ``reader`` needs only ``read(n)``; ``writer``
needs ``write``, ``drain``, ``close``, ``wait_closed`` and ``get_extra_info`` — asyncio streams
for TCP, :class:`SerialStream` for a serial port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from labmw.config import AnalyzerSettings
from labmw.transports.connections import Activity, eviction_victim
from labmw.transports.tls import server_context

log = structlog.get_logger(__name__)

RECONNECT_INITIAL = 1.0
RECONNECT_MAX = 60.0


class Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...
    async def wait_closed(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


Handler = Callable[[Any, Any, str], Awaitable[None]]
Refuse = Callable[[str, str], Awaitable[None]]


class Endpoint:
    """Base: ``start()`` begins accepting or connecting; ``stop()`` ends it and every live stream."""

    def __init__(self, analyzer: AnalyzerSettings, handle: Handler) -> None:
        self.analyzer = analyzer
        self.handle = handle
        self.writers: set[Any] = set()
        #: Each live stream's counters (bytes, messages, last activity), by its writer.
        self.activity: dict[Any, Activity] = {}
        self._task: asyncio.Task[None] | None = None
        #: why the endpoint cannot work right now (a serial device that cannot be opened), "" when it can
        self.error = ""

    async def start(self) -> None:
        raise NotImplementedError

    async def _serve(self, reader: Any, writer: Any, peer: str) -> None:
        now = _monotonic()
        activity = Activity(peer=peer, opened_at=now, last_at=now)
        self.writers.add(writer)
        self.activity[writer] = activity
        try:
            await self.handle(_CountingReader(reader, activity), writer, peer)
        finally:
            self.writers.discard(writer)
            self.activity.pop(writer, None)

    def activity_of(self, writer: Any) -> Activity | None:
        return self.activity.get(writer)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for writer in list(self.writers):
            _end(writer, self.activity.get(writer), "service stopping")

    @property
    def peers(self) -> list[str]:
        return sorted(_peer(w) for w in self.writers)


class TcpServerEndpoint(Endpoint):
    """Listens on ``analyzer.listen``; several connections at once (analyzers reconnect before a dead
    socket is noticed). Peers outside ``analyzer.allow`` (when set) are refused and audited."""

    def __init__(self, analyzer: AnalyzerSettings, handle: Handler, refuse: Refuse) -> None:
        super().__init__(analyzer, handle)
        self.refuse = refuse
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        assert self.analyzer.listen is not None
        tls = server_context(self.analyzer.tls) if self.analyzer.tls else None
        self.server = await asyncio.start_server(self._accept, self.analyzer.listen.host, self.analyzer.listen.port,
                                                 limit=2**20, ssl=tls, ssl_handshake_timeout=30 if tls else None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        host = peer.rsplit(":", 1)[0]
        if self.analyzer.allow and host not in self.analyzer.allow:
            writer.close()
            await self.refuse(peer, "peer address not in the analyzer's allow list")
            return
        if len(self.writers) >= self.analyzer.max_connections:
            victim = eviction_victim(self.activity.values(), _monotonic())
            if victim is None:
                writer.close()
                await self.refuse(peer, f"already {len(self.writers)} busy connections (max_connections)")
                return
            # A full listener makes room: the idlest connection goes, so a real analyzer gets in.
            for old, activity in list(self.activity.items()):
                if activity is victim:
                    log.warning("analyzer_connection_evicted", analyzer=self.analyzer.name, peer=victim.peer,
                                for_peer=peer)
                    _end(old, victim, "evicted: idle while the listener was full (max_connections)")
        await self._serve(reader, writer, peer)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        await super().stop()


class TcpClientEndpoint(Endpoint):
    """Connects out to ``analyzer.connect`` and reconnects with backoff whenever the link drops."""

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self.analyzer.connect is not None
        delay = RECONNECT_INITIAL
        target = self.analyzer.connect
        while True:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port, limit=2**20),
                                                        10)
            except (OSError, TimeoutError) as exc:
                log.warning("analyzer_connect_failed", analyzer=self.analyzer.name, target=str(target),
                            error=str(exc) or "timeout", retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_INITIAL
            await self._serve(reader, writer, str(target))
            await asyncio.sleep(RECONNECT_INITIAL)  # do not hammer a peer that closes at once


class SerialEndpoint(Endpoint):
    """Owns one serial device (pyserial sets the line up); reopens it with backoff after an error."""

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        delay = RECONNECT_INITIAL
        while True:
            try:
                stream = SerialStream.open(self.analyzer)
            except OSError as exc:
                log.warning("serial_open_failed", analyzer=self.analyzer.name, device=self.analyzer.device,
                            error=str(exc), retry_in_s=delay)
                self.error = f"cannot open {self.analyzer.device}: {exc.strerror or exc}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_INITIAL
            self.error = ""
            await self._serve(stream, stream, self.analyzer.device)
            stream.close()
            await asyncio.sleep(RECONNECT_INITIAL)


class SerialStream:
    """A serial port as an asyncio byte stream: pyserial configures the line, the event loop watches the fd."""

    def __init__(self, port: Any, device: str) -> None:
        self._port = port
        self._fd: int = port.fileno()
        self.device = device
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    def open(cls, analyzer: AnalyzerSettings) -> SerialStream:
        """Open and configure the device (raises OSError, including pyserial's SerialException)."""
        import serial  # pyserial; imported here so TCP-only installs never touch it

        try:
            port = serial.Serial(analyzer.device, baudrate=analyzer.baud, bytesize=analyzer.bytesize,
                                 parity=analyzer.parity, stopbits=analyzer.stopbits, timeout=0, exclusive=True,
                                 xonxoff=False, rtscts=False)
        except (serial.SerialException, ValueError) as exc:
            raise OSError(str(exc)) from None
        return cls(port, analyzer.device)

    async def read(self, n: int = -1) -> bytes:
        """Wait until the device is readable, then return what is there (b"" once closed)."""
        if self._closed:
            return b""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._waiter = ready
        loop.add_reader(self._fd, lambda: None if ready.done() else ready.set_result(None))
        try:
            await ready
        finally:
            self._waiter = None
            with contextlib.suppress(Exception):
                loop.remove_reader(self._fd)
        if self._closed:
            return b""
        try:
            return os.read(self._fd, n if n > 0 else 65536) or b""
        except BlockingIOError:
            return await self.read(n)
        except OSError:
            return b""  # device gone (USB adapter unplugged): the pump ends, the endpoint reopens

    def write(self, data: bytes) -> None:
        # Replies are single control bytes or short frames; a blocking write of a few bytes is fine.
        self._port.write(data)

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)  # wake a pending read so the pump sees the end
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            with contextlib.suppress(Exception):
                self._port.close()

    def is_closing(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.device if name == "peername" else default


class _CountingReader:
    """A reader that notes every byte read in the connection's :class:`Activity`."""

    def __init__(self, reader: Any, activity: Activity) -> None:
        self._reader = reader
        self.activity = activity

    async def read(self, n: int = -1) -> bytes:
        data: bytes = await self._reader.read(n)
        self.activity.saw(len(data), _monotonic())
        return data


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def _end(writer: Any, activity: Activity | None, reason: str) -> None:
    """Close a stream on purpose, saying why (the connection's end is audited with that reason)."""
    if activity is not None and not activity.ended:
        activity.ended = reason
    transport = getattr(writer, "transport", None)
    if transport is not None:
        transport.abort()  # do not wait for a silent peer to read what is buffered
    else:
        writer.close()


def _peer(writer: Any) -> str:
    info = writer.get_extra_info("peername")
    return f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)


def make_endpoint(analyzer: AnalyzerSettings, handle: Handler, refuse: Refuse) -> Endpoint:
    """The endpoint for the analyzer's configured transport."""
    if analyzer.transport == "tcp-server":
        return TcpServerEndpoint(analyzer, handle, refuse)
    if analyzer.transport == "tcp-client":
        return TcpClientEndpoint(analyzer, handle)
    return SerialEndpoint(analyzer, handle)

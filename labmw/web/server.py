"""Serving the workstation with uvicorn: on its own (`labmw web`) or inside the daemon (`[web]`).

Loopback by default (``127.0.0.1:8080``); HTTPS when ``[web.tls]`` names a certificate and key
(then cookies are marked Secure and HSTS is sent). uvicorn's access log is off: request lines carry
patient and specimen IDs in their query strings, and page views are audited instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
import uvicorn

from labmw.config import Endpoint, Settings, WebSettings, load
from labmw.daemon.control import query_status
from labmw.daemon.runner import StoreRunner
from labmw.errors import UsageError
from labmw.web.app import build_app
from labmw.web.context import WebContext

log = structlog.get_logger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon's (or `labmw web`'s) handlers stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: Any, web: WebSettings) -> uvicorn.Config:
    tls = web.tls
    return uvicorn.Config(app, host=web.listen.host, port=web.listen.port, log_config=None, access_log=False,
                          server_header=False, proxy_headers=False, lifespan="off", timeout_graceful_shutdown=3,
                          ssl_certfile=tls.cert_file if tls else None, ssl_keyfile=tls.key_file if tls else None,
                          ssl_ca_certs=tls.ca_file if tls and tls.ca_file else None,
                          ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.ca_file else ssl.CERT_NONE)


def bind(listen: Endpoint) -> socket.socket:
    """The listening socket, bound here so a taken port is a clear error instead of uvicorn's sys.exit.

    Raises:
        UsageError: the address cannot be bound (in use, not local, no permission).
    """
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"web: cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def web_settings(settings: Settings, listen: Endpoint | None = None) -> WebSettings:
    import dataclasses

    web = settings.web or WebSettings()
    return dataclasses.replace(web, listen=listen) if listen is not None else web


def _context(settings: Settings, web: WebSettings, runner: StoreRunner,
             settings_now: Callable[[], Settings], status: Callable[[], Awaitable[dict[str, Any]]],
             clock: Callable[[], datetime]) -> WebContext:
    return WebContext(runner=runner, web=web, settings=settings_now, status=status, clock=clock,
                      secure=web.tls is not None)


async def serve_web(settings: Settings, *, listen: Endpoint | None = None,
                    clock: Callable[[], datetime] = utcnow) -> int:
    """`labmw web`: serve until SIGTERM/SIGINT; the daemon's status is read over its control socket.

    Raises UsageError when there is no database yet (as every other reading command does).
    """
    if not settings.store_url and not settings.db_path.exists():
        raise UsageError(f"no database at {settings.db_path} (run `labmw init` or start the daemon once)")
    web = web_settings(settings, listen)

    async def status() -> dict[str, Any]:
        return await asyncio.to_thread(query_status, settings.control_socket, 3.0, config=settings.path)

    runner = StoreRunner(settings.store_target, site=settings.site)
    try:
        # Each decision reads the file as it is now, as `labmw review release` does.
        app = build_app(_context(settings, web, runner, lambda: load(settings.path), status, clock))
        server = _Server(_config(app, web))
        sock = bind(web.listen)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Stop accepting, finish the requests in hand, exit 0 (uvicorn's own handling re-raises the signal).
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        log.info("web_listening", listen=str(web.listen), tls=web.tls is not None)
        await server.serve(sockets=[sock])
    finally:
        runner.close()
    return 0


class DaemonWeb:
    """The workstation inside the daemon (``[web]`` present): :meth:`start` after the service, :meth:`stop`.

    ``service`` is the running :class:`labmw.daemon.app.Service`; its status and its current
    (reloaded) settings are read directly, and the web has a store thread of its own.
    """

    def __init__(self, service: Any, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.service = service
        self.clock = clock
        self._runner: StoreRunner | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings: Settings = self.service.settings
        web = web_settings(settings)
        try:
            sock = bind(web.listen)
        except UsageError as exc:
            # The analyzers and the LIS queue matter more than the workstation: keep running, say why.
            log.error("web_not_started", error=str(exc))
            return
        self._runner = StoreRunner(settings.store_target, site=settings.site)
        app = build_app(_context(settings, web, self._runner, lambda: self.service.settings, self.service.status,
                                 self.clock))
        self._server = _Server(_config(app, web))
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        log.info("web_listening", listen=str(web.listen), tls=web.tls is not None)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        if self._runner is not None:
            self._runner.close()
        self._server = self._task = self._runner = None

"""The daemon's control socket: ``labmw status`` asks the running daemon how it is doing.

One AF_UNIX stream socket in the data directory (``Settings.control_socket``), created 0600 so only
the service's user and root can talk to it. The protocol is deliberately tiny: the client sends one
JSON object on one line, ``{"command": "status"}``, and gets one JSON object on one line back, the
status dict, or ``{"error": "..."}``. Requests are bounded in size and time, so a stray client can
neither fill memory nor hold a connection open.

The socket also serves as a pid-file that cannot go stale: a second daemon started on the same data
directory finds the first one answering and refuses to start (:class:`AlreadyRunning`), while a socket
file left by a daemon that died is simply replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from labmw.errors import LabmwError

log = structlog.get_logger(__name__)

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]

MAX_REQUEST = 4096  # bytes, newline included; a status request is about 25
MAX_REPLY = 1 << 20  # what the client accepts: ample for hundreds of analyzers
REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request line
# sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included (unix(7)).
MAX_SOCKET_PATH = 107
STATUS_REQUEST = b'{"command": "status"}\n'


class ControlError(LabmwError):
    """The control socket cannot be served or queried (bad path, permissions, no or bad answer)."""


class AlreadyRunning(ControlError):
    """Another labmw daemon answers on this control socket, i.e. serves the same data directory."""


class DaemonNotRunning(ControlError):
    """No daemon answers on the control socket: there is no socket file, or nobody listens on it."""

    def __init__(self, path: Path, config: Path | None = None, *, stale: bool = False) -> None:
        self.path = path
        self.config = config
        who = f"for {config} " if config is not None else ""
        why = (f"the control socket {path} is left over from a daemon that stopped" if stale
               else f"no control socket at {path}")
        super().__init__(f"no labmw daemon is running {who}({why})")


class ControlServer:
    """Serves ``{"command": "status"}`` on the UNIX socket ``path``, answering with ``await status()``.

    Call :meth:`start` once the daemon is up and :meth:`close` when it stops.
    """

    def __init__(self, path: Path, status: StatusProvider) -> None:
        self.path = path
        self._status = status
        self._server: asyncio.Server | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        """Listen on ``path`` (mode 0600), replacing a stale socket file left by a dead daemon.

        Raises AlreadyRunning if a daemon answers on ``path``, ControlError if the path is too long,
        is something other than a socket, or cannot be bound (missing directory, permissions).
        """
        _check_length(self.path)
        await self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # On Linux the socket inode's mode is the file's mode at bind(): no window in which
            # the socket exists with the umask's (wider) permissions.
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._inode = os.stat(self.path).st_ino
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST)
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot listen on the control socket {self.path}: {exc.strerror or exc}") from exc
        log.info("control_listening", path=str(self.path))

    async def close(self) -> None:
        """Stop listening and remove the socket file (unless another daemon has replaced it since)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._inode = None

    async def _remove_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ControlError(f"cannot inspect the control socket {self.path}: {exc.strerror or exc}") from exc
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{self.path} exists and is not a socket; refusing to replace it")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), REQUEST_TIMEOUT)
        except ConnectionRefusedError:
            # Nobody listens: the file outlived its daemon (kill -9, power cut). Safe to replace.
            log.info("control_stale_socket_removed", path=str(self.path))
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        except TimeoutError:
            raise AlreadyRunning(f"something holds the control socket {self.path} but does not answer; "
                                 f"is another labmw daemon starting on the same data directory?") from None
        except OSError as exc:
            raise ControlError(f"cannot check the control socket {self.path}: {exc.strerror or exc}") from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise AlreadyRunning(f"another labmw daemon is already running on this data directory "
                             f"(it answers on {self.path})")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._reply(reader)
            writer.write(json.dumps(reply, ensure_ascii=False, default=str).encode() + b"\n")
            await writer.drain()
        except OSError:
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _reply(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
        except ValueError:  # StreamReader.readline's way of saying "longer than limit"
            return {"error": f"request longer than {MAX_REQUEST} bytes"}
        except TimeoutError:
            return {"error": f"no request line within {REQUEST_TIMEOUT:g} s"}
        try:
            request = json.loads(line)
        except ValueError:
            return {"error": 'expected one JSON line such as {"command": "status"}'}
        command = request.get("command") if isinstance(request, dict) else None
        if command != "status":
            return {"error": f"unknown command {command!r}; known: 'status'"}
        try:
            status = await self._status()
        except Exception as exc:
            log.exception("control_status_failed")
            return {"error": f"status unavailable: {type(exc).__name__}"}
        if not isinstance(status, dict):
            return {"error": "status unavailable: provider returned no object"}
        return status


def query_status(path: Path, timeout: float = 5.0, *, config: Path | None = None) -> dict[str, Any]:
    """Ask the daemon listening on ``path`` for its status dict (blocking, at most ``timeout`` seconds).

    ``config`` only names the configuration in the error message. Raises DaemonNotRunning when there
    is no socket or nobody listens on it; ControlError on no permission, a timeout, or an unreadable
    or ``{"error": ...}`` reply.
    """
    _check_length(path)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(STATUS_REQUEST)
            data = _read_line(sock, deadline)
    except (FileNotFoundError, NotADirectoryError):
        raise DaemonNotRunning(path, config) from None
    except ConnectionRefusedError:
        raise DaemonNotRunning(path, config, stale=True) from None
    except PermissionError:
        raise ControlError(f"permission denied on the control socket {path}: run this as root "
                           f"or as the service's user") from None
    except TimeoutError:
        raise ControlError(f"the daemon did not answer on {path} within {timeout:g} s") from None
    except OSError as exc:
        raise ControlError(f"cannot query the daemon on {path}: {exc.strerror or exc}") from exc
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(f"unreadable reply from the daemon on {path}")
    if "error" in reply:
        raise ControlError(f"the daemon on {path} answered: {reply['error']}")
    return reply


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """Bytes up to the first newline (or EOF); raises TimeoutError past ``deadline``, ControlError past MAX_REPLY."""
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            break
        if size > MAX_REPLY:
            raise ControlError(f"reply from the daemon longer than {MAX_REPLY} bytes")
    return b"".join(chunks).split(b"\n", 1)[0]


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlError(f"control socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a UNIX "
                           f"socket allows; choose a shorter service.data_dir")

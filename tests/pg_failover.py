"""Pieces of an active/standby pair on one machine: two loopback addresses and a TCP proxy in front.

In production the analyzers reach the active daemon through a virtual IP that keepalived moves
(README "Active/standby"); here :class:`FirstAlive` plays that address: every new connection goes to
the first backend that accepts it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

from engine_kit import Engine
from peers import labmw


class FirstAlive:
    """A TCP proxy on 127.0.0.1:``port`` forwarding each connection to the first backend that accepts."""

    def __init__(self, port: int, backends: Sequence[tuple[str, int]]) -> None:
        self.port = port
        self.backends = list(backends)
        self._server = socket.create_server(("127.0.0.1", port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> FirstAlive:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            upstream = self._connect()
            if upstream is None:
                client.close()  # nobody listening: the analyzer sees a refused session and retries
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        for address in self.backends:
            with contextlib.suppress(OSError):
                return socket.create_connection(address, timeout=0.3)
        return None


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    src.settimeout(None)
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def node_config(tmp_path: Path, engine: Engine, name: str, host: str, port: int, lis_port: int) -> Path:
    """One node of site north: the site's configuration, with this host's listen address and data dir."""
    config = tmp_path / name / "lab.toml"
    config.parent.mkdir()
    labmw(config, "init", "--data-dir", str(config.parent / "data"), "--store-url", str(engine.target),
          "--site", "north")
    labmw(config, "lis", "set", "--connect", f"127.0.0.1:{lis_port}")
    labmw(config, "analyzer", "add", "c501", "--protocol", "astm", "--transport", "tcp-server",
          "--listen", f"{host}:{port}", "--map", "ALTL=ALT-P5P")
    return config



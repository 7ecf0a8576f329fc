"""A tiny sd_notify client: tell systemd we are ready, reloading, stopping, and still alive.

The protocol is sd_notify(3): newline-separated ``KEY=VALUE`` assignments sent as one datagram to
the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace).
It is small enough that no extra package is needed. Outside systemd (no ``$NOTIFY_SOCKET``) every
method is a no-op, and no method ever raises into the caller: a failed send returns False, because
a daemon must not go down over a status message.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

# sd_notify(3): STATUS= is one line of free text; keep it short and single-line.
_MAX_STATUS = 200


class Notifier:
    """Sends sd_notify messages to ``address`` (None: not under systemd, everything is a no-op).

    ``watchdog_usec`` is the watchdog timeout systemd asked for (``WatchdogSec=``), or None.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A Notifier for ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` (default: os.environ).

        Never raises: an absent, empty or unsupported socket address (systemd 254's ``vsock:``) gives
        a disabled Notifier; a malformed or non-positive ``$WATCHDOG_USEC``, or a ``$WATCHDOG_PID``
        naming another process (the variables were inherited, sd_watchdog_enabled(3)), gives no watchdog.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            address = None
        return cls(address, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self.address is not None

    def ready(self, status: str = "") -> bool:
        """READY=1 (start-up finished: listeners are up), with an optional STATUS= line. True if sent."""
        return self._send("READY=1", *((f"STATUS={_one_line(status)}",) if status else ()))

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC= (sd_notify(3) wants both); send ready() when done. True if sent."""
        return self._send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        """STOPPING=1: a clean shutdown has begun. True if sent."""
        return self._send("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=text, shown by ``systemctl status`` (newlines become spaces). True if sent."""
        return self._send(f"STATUS={_one_line(text)}")

    def ping(self) -> bool:
        """WATCHDOG=1: the service is alive. A no-op (False) when systemd asked for no watchdog."""
        if self.watchdog_usec is None:
            return False
        return self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the watchdog timeout (sd_watchdog_enabled(3)), or None if disabled."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    async def run_watchdog(self) -> None:
        """Ping every watchdog_interval() until cancelled; returns at once when there is no watchdog.

        Running in the event loop is the point: if the loop stalls, the pings stop and systemd
        restarts the service (``Restart=on-failure`` counts a watchdog timeout as a failure).
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.ping()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the datagram socket (sending again reopens it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, *assignments: str) -> bool:
        if self.address is None:
            return False
        # "@name" is Linux's abstract namespace: the kernel wants a leading NUL byte instead.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a full receive queue: a lost notification is
                # recoverable (the next ping), a stalled daemon is not.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto("\n".join(assignments).encode("utf-8", "replace"), target)
        except OSError:
            self.close()
            return False
        return True


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MAX_STATUS]


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec

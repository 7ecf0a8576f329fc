"""labmw.daemon.notify against a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from labmw.daemon.notify import Notifier


@pytest.fixture(name="systemd")
def _systemd(tmp_path: Path) -> Iterator[socket.socket]:
    """A bound datagram socket playing systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    yield sock
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def _env(sock: socket.socket, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": sock.getsockname(), **extra}


def test_ready_sends_ready_and_status(systemd: socket.socket) -> None:
    """ready() sends READY=1 and the status line in one datagram."""
    notifier = Notifier.from_env(_env(systemd))
    assert notifier.ready("listening: c501 127.0.0.1:5001")
    assert _received(systemd) == ["READY=1", "STATUS=listening: c501 127.0.0.1:5001"]
    notifier.close()


def test_reloading_stopping_and_status_messages(systemd: socket.socket) -> None:
    """reloading() carries MONOTONIC_USEC, stopping() STOPPING=1, status() a single-line STATUS."""
    notifier = Notifier.from_env(_env(systemd))
    assert notifier.reloading()
    reload_msg = _received(systemd)
    assert reload_msg[0] == "RELOADING=1" and reload_msg[1].startswith("MONOTONIC_USEC=")
    assert int(reload_msg[1].split("=", 1)[1]) > 0
    assert notifier.stopping() and _received(systemd) == ["STOPPING=1"]
    assert notifier.status("LIS down:\nconnection refused") and _received(systemd) == [
        "STATUS=LIS down: connection refused"]
    notifier.close()


def test_abstract_socket_name_is_supported() -> None:
    """An address starting with @ reaches a socket in the abstract namespace."""
    name = f"labmw-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.stopping()
        assert sock.recv(100) == b"STOPPING=1"
        notifier.close()


def test_watchdog_interval_is_half_the_timeout_and_ping_sends(systemd: socket.socket) -> None:
    """WATCHDOG_USEC=30 s for this pid gives a 15 s ping period, and ping() sends WATCHDOG=1."""
    notifier = Notifier.from_env(_env(systemd, WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid())))
    assert notifier.watchdog_interval() == 15.0
    assert notifier.ping() and _received(systemd) == ["WATCHDOG=1"]
    notifier.close()


@pytest.mark.parametrize("extra", [
    {}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"}, {"WATCHDOG_USEC": "soon"},
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"},
], ids=["unset", "zero", "negative", "garbage", "other-pid", "bad-pid"])
def test_no_watchdog_means_no_interval_and_no_ping(systemd: socket.socket, extra: dict[str, str]) -> None:
    """Without a valid watchdog for this very process there is no interval and ping() sends nothing."""
    notifier = Notifier.from_env(_env(systemd, **extra))
    assert notifier.watchdog_interval() is None
    assert notifier.ping() is False
    notifier.status("marker")
    assert _received(systemd) == ["STATUS=marker"]  # the first datagram: no WATCHDOG=1 went before it
    notifier.close()


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}],
                         ids=["unset", "empty", "vsock"])
def test_everything_is_a_no_op_outside_systemd(env: dict[str, str]) -> None:
    """With no usable $NOTIFY_SOCKET every call returns False and nothing is raised."""
    notifier = Notifier.from_env({**env, "WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert [notifier.ready("x"), notifier.reloading(), notifier.stopping(), notifier.status("x"),
            notifier.ping()] == [False] * 5


def test_a_failed_send_returns_false_instead_of_raising(tmp_path: Path) -> None:
    """A socket path nobody listens on makes the send fail quietly, and a later listener still gets messages."""
    path = tmp_path / "gone"
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    assert notifier.ready() is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        assert notifier.ready() is True
        assert sock.recv(100) == b"READY=1"
    notifier.close()


def test_from_env_defaults_to_the_process_environment(systemd: socket.socket,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env() without an argument reads os.environ."""
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.getsockname())
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier.from_env()
    assert notifier.stopping() and _received(systemd) == ["STOPPING=1"]
    notifier.close()


def test_run_watchdog_pings_repeatedly_until_cancelled(systemd: socket.socket) -> None:
    """run_watchdog() pings at the watchdog period until its task is cancelled."""
    notifier = Notifier.from_env(_env(systemd, WATCHDOG_USEC="40000"))  # 40 ms: a ping every 20 ms

    async def scenario() -> None:
        task = asyncio.create_task(notifier.run_watchdog())
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    systemd.setblocking(False)
    pings = 0
    while True:
        try:
            assert systemd.recv(100) == b"WATCHDOG=1"
        except BlockingIOError:
            break
        pings += 1
    assert pings >= 3
    notifier.close()


def test_run_watchdog_returns_at_once_without_a_watchdog() -> None:
    """Without a watchdog run_watchdog() finishes immediately rather than looping."""
    asyncio.run(asyncio.wait_for(Notifier(None).run_watchdog(), 1))

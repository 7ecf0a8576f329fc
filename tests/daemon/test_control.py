"""labmw.daemon.control: the control socket server and the `labmw status` client, over real UNIX sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from labmw.daemon.control import (
    MAX_REQUEST,
    AlreadyRunning,
    ControlError,
    ControlServer,
    DaemonNotRunning,
    query_status,
)
from labmw.errors import LabmwError

STATUS: dict[str, Any] = {"pid": 4242, "held": 1, "queue": {"pending": 2, "dead": 0}, "analyzers": []}


@pytest.fixture(name="logs", autouse=True)
def _logs() -> Iterator[list[dict[str, Any]]]:
    """The server's log events, captured instead of printed."""
    with capture_logs() as logs:
        yield logs


async def _fixed_status() -> dict[str, Any]:
    return STATUS


async def _exchange(path: Path, request: bytes) -> dict[str, Any]:
    """Send raw bytes on the control socket and decode the one-line reply."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    await writer.wait_closed()
    assert line.endswith(b"\n")
    reply: dict[str, Any] = json.loads(line)
    return reply


def _leave_stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a daemon killed with SIGKILL leaves behind."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def test_status_round_trip_with_a_0600_socket_removed_on_close(tmp_path: Path) -> None:
    """query_status gets the provider's dict; the socket is 0600 while up and gone after close()."""
    path = tmp_path / "labmw.sock"

    async def scenario() -> dict[str, Any]:
        server = ControlServer(path, _fixed_status)
        await server.start()
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        try:
            return await asyncio.to_thread(query_status, path)
        finally:
            await server.close()

    assert asyncio.run(scenario()) == STATUS
    assert not path.exists()


def test_a_stale_socket_file_is_replaced(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    """A socket file left by a dead daemon does not stop a new one from starting."""
    path = tmp_path / "labmw.sock"
    _leave_stale_socket(path)

    async def scenario() -> dict[str, Any]:
        server = ControlServer(path, _fixed_status)
        await server.start()
        try:
            return await asyncio.to_thread(query_status, path)
        finally:
            await server.close()

    assert asyncio.run(scenario())["pid"] == 4242
    assert [e["event"] for e in logs] == ["control_stale_socket_removed", "control_listening"]


def test_a_second_daemon_refuses_to_start_while_the_first_answers(tmp_path: Path) -> None:
    """start() raises AlreadyRunning, a LabmwError, and leaves the first daemon serving."""
    path = tmp_path / "labmw.sock"

    async def scenario() -> dict[str, Any]:
        first = ControlServer(path, _fixed_status)
        await first.start()
        try:
            with pytest.raises(AlreadyRunning, match="already running") as caught:
                await ControlServer(path, _fixed_status).start()
            assert isinstance(caught.value, LabmwError)
            return await asyncio.to_thread(query_status, path)
        finally:
            await first.close()

    assert asyncio.run(scenario()) == STATUS


def test_a_regular_file_at_the_socket_path_is_not_replaced(tmp_path: Path) -> None:
    """start() refuses to delete something that is not a socket."""
    path = tmp_path / "labmw.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="not a socket"):
        asyncio.run(ControlServer(path, _fixed_status).start())
    assert path.read_text() == "precious"


def test_close_leaves_a_successors_socket_alone(tmp_path: Path) -> None:
    """If the socket file was replaced meanwhile, close() does not unlink the new one."""
    path = tmp_path / "labmw.sock"

    async def scenario() -> None:
        server = ControlServer(path, _fixed_status)
        await server.start()
        path.unlink()
        _leave_stale_socket(path)
        await server.close()

    asyncio.run(scenario())
    assert stat.S_ISSOCK(path.stat().st_mode)


@pytest.mark.parametrize(("request_bytes", "error"), [
    (b'{"command": "reboot"}\n', "unknown command 'reboot'"),
    (b'{"verb": "status"}\n', "unknown command None"),
    (b'["status"]\n', "unknown command None"),
    (b"status please\n", "expected one JSON line"),
    (b"\n", "expected one JSON line"),
    (b'{"command": "' + b"x" * MAX_REQUEST + b'"}\n', f"longer than {MAX_REQUEST} bytes"),
], ids=["unknown", "no-command", "not-object", "not-json", "empty", "too-long"])
def test_bad_requests_get_an_error_reply(tmp_path: Path, request_bytes: bytes, error: str) -> None:
    """Malformed, unknown and oversized requests are answered with {"error": ...}, not dropped."""
    path = tmp_path / "labmw.sock"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        server = ControlServer(path, _fixed_status)
        await server.start()
        try:
            bad = await _exchange(path, request_bytes)
            good = await _exchange(path, b'{"command": "status"}\n')
            return bad, good
        finally:
            await server.close()

    bad, good = asyncio.run(scenario())
    assert list(bad) == ["error"] and error in bad["error"]
    assert good == STATUS


def test_a_failing_status_provider_is_answered_as_an_error(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    """An exception in the provider becomes {"error": ...} and query_status raises ControlError."""
    path = tmp_path / "labmw.sock"

    async def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    async def scenario() -> None:
        server = ControlServer(path, broken)
        await server.start()
        try:
            with pytest.raises(ControlError, match="status unavailable: RuntimeError"):
                await asyncio.to_thread(query_status, path)
        finally:
            await server.close()

    asyncio.run(scenario())
    failed = [e for e in logs if e["event"] == "control_status_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "error"


def test_no_socket_means_daemon_not_running_with_a_plain_message(tmp_path: Path) -> None:
    """An absent socket raises DaemonNotRunning naming the config and the socket path."""
    path, config = tmp_path / "labmw.sock", tmp_path / "lab.toml"
    with pytest.raises(DaemonNotRunning) as caught:
        query_status(path, config=config)
    assert str(caught.value) == f"no labmw daemon is running for {config} (no control socket at {path})"


def test_a_stale_socket_means_daemon_not_running(tmp_path: Path) -> None:
    """A socket file nobody listens on is reported as no daemon, not as an OS error."""
    path = tmp_path / "labmw.sock"
    _leave_stale_socket(path)
    with pytest.raises(DaemonNotRunning, match="left over from a daemon that stopped"):
        query_status(path)


def test_a_silent_daemon_times_out(tmp_path: Path) -> None:
    """A listener that never answers makes query_status raise ControlError after the timeout."""
    path = tmp_path / "labmw.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        with pytest.raises(ControlError, match="did not answer .* within 0.2 s"):
            query_status(path, timeout=0.2)


def test_a_socket_path_too_long_for_unix_sockets_is_refused(tmp_path: Path) -> None:
    """Paths over sun_path's limit give a ControlError that says so, on both sides."""
    path = tmp_path / ("d" * 120) / "labmw.sock"
    with pytest.raises(ControlError, match="longer than the 107 bytes"):
        asyncio.run(ControlServer(path, _fixed_status).start())
    with pytest.raises(ControlError, match="longer than the 107 bytes"):
        query_status(path)

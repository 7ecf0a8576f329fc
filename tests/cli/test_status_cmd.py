"""`labmw status` through CliRunner, against a real ControlServer running in a background event loop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from structlog.testing import capture_logs
from typer.testing import CliRunner

from labmw.cli import _Group, _root
from labmw.cli import app as root_app
from labmw.cli import status_cmd
from labmw.config import load
from labmw.daemon.control import ControlServer

runner = CliRunner()

STATUS: dict[str, Any] = {
    "pid": 31337, "started_at": "2026-11-25T06:00:00+00:00", "config": "/etc/labmw/labmw.toml",
    "analyzers": [
        {"name": "c501", "protocol": "astm", "transport": "tcp-server", "endpoint": "127.0.0.1:5001",
         "peers": ["10.0.0.7:40211", "10.0.0.8:40212"], "connections": 2, "messages": 12, "results": 48,
         "last_message_at": "2026-11-25T07:59:30+00:00"},
        {"name": "xn1000", "protocol": "hl7", "transport": "tcp-server", "endpoint": "0.0.0.0:6001",
         "peers": [], "connections": 0, "messages": 0, "results": 0, "last_message_at": None},
    ],
    "lis": {"endpoint": "10.0.0.2:2575", "state": "down", "last_error": "connection refused"},
    "queue": {"pending": 3, "dead": 1},
    "held": 2,
}


def _status_app() -> typer.Typer:
    """A root app like labmw.cli's (same group class and --config callback) with only `status` in it."""
    app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
    app.callback()(_root)
    status_cmd.register(app)
    return app


def invoke(config: Path, *args: str):  # noqa: ANN201
    return runner.invoke(_status_app(), ["--config", str(config), "status", *args])


@pytest.fixture(name="logs", autouse=True)
def _logs() -> Iterator[list[dict[str, Any]]]:
    """The in-process daemon's log events, kept off stdout (which CliRunner swaps in and out)."""
    with capture_logs() as logs:
        yield logs


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    result = runner.invoke(root_app, ["--config", str(path), "init", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    load(path).data_dir.mkdir(exist_ok=True)
    return path


class _Daemon:
    """A ControlServer serving ``status`` on its own event loop in a background thread."""

    def __init__(self, socket_path: Path, status: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = ControlServer(socket_path, status)

    def __enter__(self) -> _Daemon:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(name="daemon")
def _daemon(config: Path) -> Iterator[_Daemon]:
    async def status() -> dict[str, Any]:
        return STATUS

    with _Daemon(load(config).control_socket, status) as daemon:
        yield daemon


def test_status_help() -> None:
    """`status --help` works and mentions the JSON option."""
    result = runner.invoke(_status_app(), ["status", "--help"])
    assert result.exit_code == 0 and "Usage" in result.output and "--json" in result.output


def test_status_json_is_the_daemons_object(config: Path, daemon: _Daemon) -> None:
    """`status --json` prints the object the daemon answered, that it is running with this file, and the
    kill switches and overdue criticals (#11)."""
    result = invoke(config, "--json")
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    assert {k: v for k, v in reply.items() if k in STATUS} == STATUS
    assert reply["running"] is True and reply["config_error"] is None and reply["config_drift"] is None
    assert reply["autoverify"] == {"suspensions": [], "overdue_criticals": []}


def test_status_shows_a_suspension(config: Path, daemon: _Daemon) -> None:
    """A kill switch in force is the first thing an operator must see (CAP GEN.43893)."""
    from labmw.cli import app

    assert runner.invoke(app, ["--config", str(config), "autoverify", "suspend", "--reason", "QC failed"]).exit_code == 0
    out = invoke(config).stdout
    assert "SUSPENDED autoverification for all analyzers / all methods" in out and "QC failed" in out
    shown = json.loads(invoke(config, "--json").stdout)
    assert shown["autoverify"]["suspensions"][0]["reason"] == "QC failed"


def test_status_for_people_shows_every_part(config: Path, daemon: _Daemon) -> None:
    """The readable summary has the pid, LIS state and error, queue depth, held count and one row per analyzer."""
    result = invoke(config)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "pid 31337" in out and "2026-11-25T06:00:00+00:00" in out
    assert "10.0.0.2:2575  down  (last error: connection refused)" in out
    assert "3 pending, 1 dead" in out and "held     2 result(s)" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("c501", "xn1000"))}
    assert rows["c501"].split()[:5] == ["c501", "astm", "tcp-server", "127.0.0.1:5001", "2"]
    assert "10.0.0.7:40211, 10.0.0.8:40212" in rows["c501"] and rows["c501"].rstrip().endswith(
        "2026-11-25T07:59:30+00:00")
    assert rows["xn1000"].split()[4:] == ["0", "-", "0", "0", "never"]


def test_status_without_a_daemon_says_so_on_stderr(config: Path) -> None:
    """With no daemon running: a plain line on stderr naming config and socket, nothing on stdout, exit 1."""
    socket_path = load(config).control_socket
    result = invoke(config)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"no labmw daemon is running for {config} (no control socket at {socket_path})\n"


def test_status_error_reply_is_one_line_error(config: Path, logs: list[dict[str, Any]]) -> None:
    """A daemon whose status fails gives the usual one-line `labmw: error:` and exit 1, no traceback."""
    async def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    with _Daemon(load(config).control_socket, broken):
        result = invoke(config)
    assert result.exit_code == 1
    assert result.stderr.startswith("labmw: error: the daemon on ") and "status unavailable" in result.stderr
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1
    assert "control_status_failed" in [e["event"] for e in logs]  # the daemon's side keeps the traceback


def test_status_with_no_analyzers_says_so(config: Path) -> None:
    """A daemon with no analyzers configured renders that plainly instead of an empty table."""
    async def bare() -> dict[str, Any]:
        return {**STATUS, "analyzers": [], "lis": {"endpoint": "", "state": "not configured", "last_error": ""}}

    with _Daemon(load(config).control_socket, bare):
        result = invoke(config)
    assert result.exit_code == 0, result.output
    assert "LIS      -  not configured\n" in result.stdout
    assert result.stdout.rstrip().endswith("no analyzers configured")

"""Operations commands: analyzer set, method remove, delta show/remove, lis show, the reload hint after
every edit, status with a broken or changed file, --version, help texts, directory --config, broken pipes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import LABMW
from structlog.testing import capture_logs
from typer.testing import CliRunner

from labmw.cli import app
from labmw.cli.reload_hint import file_digest
from labmw.config import load
from labmw.daemon.control import ControlServer

runner = CliRunner()


def invoke(config: Path, *args: str):  # noqa: ANN201
    return runner.invoke(app, ["--config", str(config), *args])


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    assert invoke(path, "init", "--data-dir", str(tmp_path / "data")).exit_code == 0
    assert invoke(path, "lis", "set", "--connect", "127.0.0.1:2575").exit_code == 0
    result = invoke(path, "analyzer", "add", "c501", "--protocol", "astm", "--transport", "tcp-server",
                    "--listen", "127.0.0.1:5001", "--map", "ALTL=ALT-P5P", "--baud", "19200")
    assert result.exit_code == 0, result.output
    return path


class _Daemon:
    """A real ControlServer on the configuration's socket, answering ``status`` from a background loop."""

    def __init__(self, socket_path: Path, reply: dict[str, Any]) -> None:
        async def status() -> dict[str, Any]:
            return reply

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


def _running(config: Path) -> _Daemon:
    """A daemon that runs the file as it is now."""
    return _Daemon(load(config).control_socket, {"pid": 4242, "config_digest": file_digest(config),
                                                 "analyzers": [], "lis": {}, "queue": {}, "held": 0})


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    with capture_logs():
        yield


# --- analyzer set ---------------------------------------------------------------------------------
def test_analyzer_set_changes_only_what_is_named(config: Path) -> None:
    """--frame-timeout and --allow change; listen, baud and the map stay; the edit is audited."""
    result = invoke(config, "analyzer", "set", "c501", "--frame-timeout", "12", "--allow", "10.0.0.9")
    assert result.exit_code == 0, result.output
    a = load(config).analyzers["c501"]
    assert a.frame_timeout == 12 and a.allow == ("10.0.0.9",)
    assert str(a.listen) == "127.0.0.1:5001" and a.baud == 19200 and dict(a.map) == {"ALTL": "ALT-P5P"}
    events = json.loads(invoke(config, "audit", "list", "--event", "config_changed", "--json").output)
    assert events[-1]["data"]["command"] == "analyzer set" and events[-1]["data"]["after"]["frame_timeout"] == 12
    assert invoke(config, "analyzer", "set", "c501", "--allow-any").exit_code == 0
    assert load(config).analyzers["c501"].allow == ()


def test_analyzer_set_edits_the_map(config: Path) -> None:
    """--map adds or changes a code, --unmap removes one."""
    assert invoke(config, "analyzer", "set", "c501", "--map", "ALT2=ALT-NOP5P").exit_code == 0
    assert dict(load(config).analyzers["c501"].map) == {"ALTL": "ALT-P5P", "ALT2": "ALT-NOP5P"}
    assert invoke(config, "analyzer", "set", "c501", "--unmap", "ALTL").exit_code == 0
    assert dict(load(config).analyzers["c501"].map) == {"ALT2": "ALT-NOP5P"}


@pytest.mark.parametrize(("args", "needle"), [
    (["nope", "--baud", "9600"], "no analyzer named 'nope' (configured: c501)"),
    (["c501"], "nothing to change"),
    (["c501", "--baud", "7"], "analyzers.c501.baud: expected a whole number from 50 to 4000000, got 7"),
    (["c501", "--map", "X=NOPE"], "analyzers.c501.map.X: expected the name of a configured method"),
    (["c501", "--unmap", "ZZZ"], "--unmap ZZZ: c501 maps no such code (mapped: ALTL)"),
    (["c501", "--transport", "tcp-client"], "analyzers.c501.connect: required for transport tcp-client"),
], ids=["unknown", "nothing", "bad-baud", "bad-map", "bad-unmap", "incomplete"])
def test_analyzer_set_refuses_with_one_line_and_leaves_the_file(config: Path, args: list[str], needle: str) -> None:
    """A refused change names what is wrong and writes nothing."""
    before = config.read_text()
    result = invoke(config, "analyzer", "set", *args)
    assert result.exit_code == 1 and needle in result.output, result.output
    assert config.read_text() == before


# --- method remove, delta show/remove, lis show ----------------------------------------------------------
def test_method_remove_refuses_a_mapped_method_and_removes_an_unused_one(config: Path) -> None:
    """A method an analyzer still maps to stays (the error says which); an unused one goes."""
    result = invoke(config, "method", "remove", "ALT-P5P")
    assert result.exit_code == 1 and "still mapped by c501 (ALTL)" in result.output
    assert invoke(config, "method", "remove", "ALT-VITROS").exit_code == 0
    assert "ALT-VITROS" not in load(config).methods and "ALT-P5P" in load(config).methods
    assert invoke(config, "method", "remove", "ALT-VITROS").exit_code == 1


def test_delta_show_and_remove(config: Path) -> None:
    """delta show prints the rule (JSON for one method), delta remove takes it away; both refuse unknowns."""
    assert invoke(config, "delta", "set", "ALT-P5P", "--abs", "20", "--window-days", "3").exit_code == 0
    shown = json.loads(invoke(config, "delta", "show", "ALT-P5P", "--json").output)
    assert shown == {"method": "ALT-P5P", "delta": {"abs": "20", "pct": None, "window_days": "3", "action": "flag"}}
    table = invoke(config, "delta", "show").output
    assert any(line.split()[:5] == ["ALT-P5P", "20", "-", "3", "flag"] for line in table.splitlines())
    assert invoke(config, "delta", "remove", "ALT-P5P").exit_code == 0
    assert load(config).methods["ALT-P5P"].delta is None
    result = invoke(config, "delta", "remove", "ALT-P5P")
    assert result.exit_code == 1 and "has no delta rule" in result.output
    assert invoke(config, "delta", "show", "NOPE").exit_code == 1


def test_lis_show(config: Path, tmp_path: Path) -> None:
    """lis show --json has the endpoint and the defaults; without a LIS it says so."""
    shown = json.loads(invoke(config, "lis", "show", "--json").output)
    assert shown["connect"] == "127.0.0.1:2575" and shown["ack_timeout"] == 30.0 and shown["tls"] is None
    assert "127.0.0.1:2575" in invoke(config, "lis", "show").output
    bare = tmp_path / "bare.toml"
    assert invoke(bare, "init", "--data-dir", str(tmp_path / "d2")).exit_code == 0
    assert "no LIS configured" in invoke(bare, "lis", "show").output


# --- the reload hint ---------------------------------------------------------------------------------
def test_every_edit_says_whether_the_daemon_needs_a_reload(config: Path) -> None:
    """No daemon: 'applies when it starts'; a daemon on the old file: reload; a read-only command: nothing."""
    result = invoke(config, "analyzer", "set", "c501", "--baud", "9600")
    assert "no labmw daemon is running for this configuration" in result.stderr
    assert result.stdout == "analyzer c501 changed\n", "stdout stays the command's own (JSON stays JSON)"
    with _running(config):
        result = invoke(config, "delta", "set", "ALT-P5P", "--abs", "20")
        assert result.exit_code == 0
        assert ("the running daemon (pid 4242) still runs the previous settings: `systemctl reload labmw` "
                "(or `kill -HUP 4242`) applies the change") in result.stderr
        assert "reload" not in invoke(config, "analyzer", "list").output


# --- status -----------------------------------------------------------------------------------------------
def test_status_says_when_the_file_differs_from_what_runs(config: Path) -> None:
    """The daemon runs the file as loaded; after an edit status adds a note (text) and config_drift (JSON)."""
    with _running(config):
        assert "note:" not in invoke(config, "status").output
        assert invoke(config, "analyzer", "set", "c501", "--baud", "9600").exit_code == 0
        out = invoke(config, "status").output
        assert "note: the configuration file differs from what the daemon (pid 4242) runs" in out
        reply = json.loads(invoke(config, "status", "--json").stdout)
        assert "systemctl reload labmw" in reply["config_drift"]


def test_status_with_a_broken_file_still_asks_the_daemon(config: Path) -> None:
    """A TOML error does not hide the running daemon: both are shown, and JSON carries both."""
    with _running(config):
        config.write_text(config.read_text() + "\n[broken\n")
        result = invoke(config, "status")
        assert result.exit_code == 0, result.output
        assert "labmw daemon pid 4242" in result.stdout and "not valid TOML" in result.stdout
        assert "cannot be read as it is now" in result.stdout
        reply = json.loads(invoke(config, "status", "--json").stdout)
        assert reply["pid"] == 4242 and "not valid TOML" in reply["config_error"]


def test_status_json_without_a_daemon_is_json(config: Path) -> None:
    """--json with no daemon: a JSON object saying it is not running, exit 1."""
    result = invoke(config, "status", "--json")
    assert result.exit_code == 1
    reply = json.loads(result.stdout)
    assert reply["running"] is False and "no labmw daemon is running" in reply["error"]


# --- the real console script ------------------------------------------------------------------------
def _run(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["--config", str(config)] if config else []
    return subprocess.run([*LABMW, *prefix, *args], capture_output=True, text=True, timeout=60, check=False)


def test_version() -> None:
    """`labmw --version` prints the installed version."""
    done = _run("--version")
    assert done.returncode == 0 and done.stdout.startswith("labmw 0.")


def test_a_directory_as_config_is_a_clear_error(tmp_path: Path) -> None:
    """--config naming a directory: one line naming it, exit 1, never 'internal error'."""
    for args in (["config", "validate"], ["status"], ["init"]):
        done = _run(*args, config=tmp_path)
        assert done.returncode == 1, done
        assert "is a directory" in done.stderr and "internal error" not in done.stderr, done.stderr


def test_output_into_a_closed_pipe_is_not_an_internal_error(config: Path) -> None:
    """`labmw audit list | head -1`: no 'internal error', no traceback, the SIGPIPE exit status."""
    from datetime import UTC, datetime

    from labmw.store import Store

    store = Store.open(load(config).db_path)  # more lines than a pipe holds, so head's exit breaks it
    try:
        for i in range(3000):
            store.append_audit("config_changed", now=datetime.now(UTC), actor="test", data={"i": i})
    finally:
        store.close()
    pipeline = f"{LABMW[0]} --config {config} audit list | head -1; echo \"rc=${{PIPESTATUS[0]}}\""
    done = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.startswith("SEQ") and "rc=141" in done.stdout, done
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _commands(sub, (*path, name))


def test_help_texts_name_values_not_python_types() -> None:
    """No `<str>`, `<bool>`, `<list[str]>` or `--help <bool>` anywhere; Rich markup eats nothing."""
    import typer.main

    root = typer.main.get_command(app)
    paths = list(_commands(root))
    assert len(paths) > 40
    from click.testing import CliRunner as ClickRunner

    for path in paths:  # the command tree built once (typer builds it anew on every invoke of the app)
        result = ClickRunner().invoke(root, [*path, "--help"], terminal_width=200, prog_name="labmw")
        assert result.exit_code == 0, path
        for noise in ("<str>", "<bool>", "<int>", "<float>", "<list[", "<path>"):
            assert noise not in result.output, (path, result.output)
    check = runner.invoke(app, ["rules", "check", "--help"], terminal_width=200).output
    assert "A TOML file of [[cases]]" in check


def test_the_document_the_config_cites_ships_with_the_package(config: Path) -> None:
    """Every "CLINICAL.md 1.4"-style citation in the shipped config names a section of the shipped document."""
    import re

    from labmw.config_edit import clinical_reference, shipped_library

    document = Path(clinical_reference()).read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", document, re.MULTILINE))
    cited = set(re.findall(r"CLINICAL\.md[,:]? (?:§|section )?(\d+\.\d+)", shipped_library()))
    assert cited and cited <= sections, cited - sections
    assert clinical_reference() in config.read_text(), "the written config says where the document is"
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "labmw/data/CLINICAL.md" in readme

"""`labmw user add|disable|list`, `labmw web` and `run` with [web], through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labmw.cli import app

runner = CliRunner()


def invoke(config: Path, *args: str, input: str | None = None):
    return runner.invoke(app, ["--config", str(config), *args], input=input)


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    assert invoke(path, "init", "--data-dir", str(tmp_path / "data")).exit_code == 0
    return path


@pytest.mark.parametrize("command", [["user"], ["user", "add"], ["user", "disable"], ["user", "list"], ["web"]])
def test_help(command: list[str]) -> None:
    """Every new command has --help."""
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_add_list_disable(config: Path) -> None:
    """Add from stdin and from the prompt, list as a table and as JSON (no hashes), disable; all audited."""
    result = invoke(config, "user", "add", "rita", "--role", "reviewer", "--password-stdin", input="a long password\n")
    assert result.exit_code == 0 and "rita added as reviewer" in result.output
    prompted = invoke(config, "user", "add", "audrey", "--role", "auditor", input="another password\nanother password\n")
    assert prompted.exit_code == 0, prompted.output
    users = json.loads(invoke(config, "user", "list", "--json").output)
    assert [(u["name"], u["role"], u["enabled"]) for u in users] == [("audrey", "auditor", True), ("rita", "reviewer", True)]
    assert "argon2" not in invoke(config, "user", "list", "--json").output
    assert invoke(config, "user", "disable", "rita").exit_code == 0
    table = invoke(config, "user", "list").output.splitlines()
    assert table[0].split() == ["NAME", "ROLE", "ENABLED", "CREATED"] and table[2].split()[:3] == ["rita", "reviewer", "no"]
    events = [e["event"] for e in json.loads(invoke(config, "audit", "list", "--json").output)]
    assert events.count("user_added") == 2 and "user_disabled" in events


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["user", "add", "x", "--role", "king", "--password-stdin"], "long enough pw\n", "--role: expected one of"),
    (["user", "add", "x", "--role", "auditor", "--password-stdin"], "short\n", "at least 10 characters"),
    (["user", "add", "x", "--role", "auditor"], "one password\nanother one\n", "passwords differ"),
    (["user", "add", "a/b", "--role", "auditor", "--password-stdin"], "long enough pw\n", "user name"),
    (["user", "disable", "ghost"], None, "no user 'ghost'"),
    (["web", "--listen", "nowhere"], None, "--listen"),
])
def test_bad_input_gets_one_clear_line(config: Path, args: list[str], stdin: str | None, message: str) -> None:
    """Errors are one line naming what is wrong, exit 1, no traceback."""
    result = invoke(config, *args, input=stdin)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_web_refuses_without_a_database(tmp_path: Path) -> None:
    """`labmw web` before `init` says what to do instead of creating an empty store."""
    config = tmp_path / "lab.toml"
    config.write_text(f'[service]\ndata_dir = "{tmp_path / "none"}"\n')
    result = invoke(config, "web")
    assert result.exit_code == 1 and "no database" in result.output


def test_web_section_is_validated(config: Path) -> None:
    """[web] keys are checked like every other section: unknown keys and bad values name the key."""
    text = config.read_text()
    config.write_text(text + '\n[web]\nlisten = "127.0.0.1:8443"\nsession_minutes = 0\n')
    assert "web.session_minutes" in invoke(config, "config", "validate").output
    config.write_text(text + '\n[web]\nlisten = "127.0.0.1:8443"\ncolour = "blue"\n')
    assert "web.colour: unknown key" in invoke(config, "config", "validate").output
    config.write_text(text + '\n[web]\nlisten = "127.0.0.1:8443"\n[web.tls]\ncert_file = "missing.pem"\n')
    assert "web.tls" in invoke(config, "config", "validate").output


def test_run_serves_the_workstation_when_web_is_configured(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With [web], `labmw run` hands daemon.app.serve the workstation as a companion; without it, none."""
    import labmw.daemon.app as daemon_app
    from labmw.web.server import DaemonWeb

    seen: dict[str, object] = {}

    async def fake_serve(settings, companions=(), accept_broken_trail=False):
        seen["companions"] = list(companions)
        seen["listen"] = str(settings.web.listen) if settings.web else None
        return 0

    monkeypatch.setattr(daemon_app, "serve", fake_serve)
    monkeypatch.setattr("labmw.log.configure", lambda **_: None)
    assert invoke(config, "run").exit_code == 0 and seen["companions"] == []
    config.write_text(config.read_text() + '\n[web]\nlisten = "127.0.0.1:8443"\n')
    assert invoke(config, "run").exit_code == 0
    assert seen == {"companions": [DaemonWeb], "listen": "127.0.0.1:8443"}

"""`labmw message list|show|reprocess` through Typer's CliRunner on a real store filled by the real pipeline."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import tomlkit
from inline_runner import make_intake, receive
from peers import astm_frame
from typer.testing import CliRunner

from labmw.cli import app
from labmw.config import load
from labmw.store import Store

runner = CliRunner()
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
XP = (b"H|\\^&|||XP-100^00-12^12345|||||||E1394-97\rP|1||PT-1||DOE^J||19800101|M\r"
      b"O|1||^^          1042^B|^^^^ALT|||||||N||||||||||||||F\r"
      b"R|1|^^^^ALT^1|85|U/L||N||F||||20261125090000\rL|1|N\r")


def invoke(config: Path, *args: str):  # noqa: ANN201
    return runner.invoke(app, ["--config", str(config), *args])


def _lab(tmp_path: Path) -> Path:
    config = tmp_path / "lab.toml"
    for args in (("init", "--data-dir", str(tmp_path / "data")),
                 ("method", "add", "ALT-T", "--analyte", "ALT", "--units", "U/L", "--loinc", "1743-4"),
                 ("range", "add", "ALT-T", "--sex", "M", "--low", "9", "--high", "59"),
                 ("lis", "set", "--connect", "127.0.0.1:2575"),
                 ("analyzer", "add", "xp", "--protocol", "astm", "--transport", "tcp-server", "--listen",
                  "127.0.0.1:5091", "--specimen-field", "O-4", "--specimen-component", "3", "--map", "ALT=ALT-T")):
        result = invoke(config, *args)
        assert result.exit_code == 0, result.output
    return config


def _receive(config: Path, text: bytes) -> int:
    cfg = load(config)
    store = Store.open(cfg.db_path)
    try:
        frames = astm_frame(1, text)
        intake = make_intake(cfg, store, cfg.analyzers["xp"], clock=lambda: NOW)
        return receive(intake, frames, "10.0.0.9:4000", text=text).message_id
    finally:
        store.close()


def _deliver_all(config: Path) -> None:
    store = Store.open(load(config).db_path)
    try:
        for entry in store.outbox(states=("pending",)):
            store.mark_delivered(entry, now=NOW, ack_code="AA", ack_text="ok")
    finally:
        store.close()


def test_help_for_every_message_command() -> None:
    for command in ("list", "show", "reprocess"):
        result = runner.invoke(app, ["message", command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_list_show_and_reprocess_after_a_mapping_fix(tmp_path: Path) -> None:
    config = _lab(tmp_path)
    message_id = _receive(config, XP)  # default test code component 4: the XP's code is in 5 -> held

    listed = json.loads(invoke(config, "message", "list", "--specimen", "1042", "--json").stdout)
    assert [(m["id"], m["results"], m["held"], m["specimens"]) for m in listed] == [(message_id, 1, 1, ["1042"])]
    assert json.loads(invoke(config, "message", "list", "--specimen", "nope", "--json").stdout) == []
    assert len(json.loads(invoke(config, "message", "list", "--analyzer", "xp", "--since", "2026-11-25",
                                 "--until", "2026-11-26", "--json").stdout)) == 1
    assert json.loads(invoke(config, "message", "list", "--until", "2026-11-24", "--json").stdout) == []

    shown = invoke(config, "message", "show", str(message_id))
    assert shown.exit_code == 0, shown.output
    assert "<STX>1H|\\^&|||XP-100" in shown.stdout and "<CR>" in shown.stdout and "<ETX>" in shown.stdout
    assert "TEST_CODE_MISSING" in shown.stdout and "nothing (held" in shown.stdout

    # Fix the mapping by hand, then reprocess: the held result is replaced by a queued one.
    doc = tomlkit.parse(config.read_text())
    doc["analyzers"]["xp"]["test_code_component"] = 5  # type: ignore[index]
    config.write_text(tomlkit.dumps(doc))
    assert invoke(config, "message", "reprocess", str(message_id)).exit_code != 0, "a reason is required"
    result = invoke(config, "message", "reprocess", str(message_id), "--reason", "fixed test_code_component")
    assert result.exit_code == 0, result.output
    assert "1 replaced" in result.stdout
    assert json.loads(invoke(config, "review", "list", "--json").stdout) == []

    _deliver_all(config)
    detail = json.loads(invoke(config, "message", "show", str(message_id), "--json").stdout)
    standing = [r for r in detail["results"] if r["state"] == "delivered"]
    assert len(standing) == 1 and standing[0]["flags"] == ["H"] and standing[0]["sent_in"]
    (sent,) = detail["sent"]
    assert sent["answers"][0]["ack_code"] == "AA" and "OBX|1|NM|1743-4^ALT^LN" in sent["payload"]
    assert any(d["rule"] for d in standing[0]["decisions"]), "each result with its rule outcomes"

    # Unchanged rules: nothing is re-sent. A changed range: a correction (status C).
    again = invoke(config, "message", "reprocess", str(message_id), "--reason", "check")
    assert "1 unchanged" in again.stdout and "0 sent as corrections" in again.stdout
    assert invoke(config, "range", "add", "ALT-T", "--sex", "M", "--age-min", "18y", "--low", "9", "--high",
                  "99").exit_code == 0
    fixed = invoke(config, "message", "reprocess", str(message_id), "--reason", "new range")
    assert "1 sent as corrections" in fixed.stdout, fixed.stdout
    detail = json.loads(invoke(config, "message", "show", str(message_id), "--json").stdout)
    correction = detail["sent"][-1]["payload"]
    assert "|C|" in correction and "9-99" in correction
    events = json.loads(invoke(config, "audit", "list", "--event", "message_reprocessed", "--json").stdout)
    assert [e["data"]["reason"] for e in events] == ["fixed test_code_component", "check", "new range"]
    assert all(e["actor"] for e in events)


def test_show_unknown_message_is_a_clear_error(tmp_path: Path) -> None:
    config = _lab(tmp_path)
    _receive(config, XP)
    result = invoke(config, "message", "show", "999")
    assert result.exit_code == 1 and "no message with id 999" in result.output

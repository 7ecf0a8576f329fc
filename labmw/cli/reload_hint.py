"""Whether the running daemon runs what the configuration file says: after an edit, and in `status`.

The daemon reports the :func:`labmw.config.config_digest` of the document it loaded; the CLI hashes
the file as it is now. A command that changed the file says whether `systemctl reload labmw` is
needed (the root command group calls :func:`advice_after_edit` for every command, so a new editing
command says it too without doing anything).
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

from labmw.config import Settings, config_digest
from labmw.daemon.control import DaemonNotRunning, query_status
from labmw.errors import LabmwError

STATUS_TIMEOUT = 2.0  # seconds: a hint must not hold up an edit when the daemon is busy


def file_digest(path: Path) -> str | None:
    """The digest of the file's content now; None when it is missing, unreadable or not TOML."""
    try:
        with path.open("rb") as fh:
            # Parsed exactly as the daemon parses it (Decimal numbers), or the digests never agree.
            return config_digest(tomllib.load(fh, parse_float=Decimal))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None


def drift(running: dict[str, Any], on_disk: str | None) -> str | None:
    """A line saying the daemon runs something else than the file, or None when they agree."""
    digest = running.get("config_digest")
    if not digest or digest == on_disk:
        return None
    pid = running.get("pid")
    if on_disk is None:
        return (f"the configuration file cannot be read as it is now: the daemon (pid {pid}) keeps running the "
                f"settings it loaded; fix the file (`labmw config validate`), then `systemctl reload labmw`")
    return (f"the configuration file differs from what the daemon (pid {pid}) runs: `systemctl reload labmw` "
            f"(or `kill -HUP {pid}`) applies it")


def advice_after_edit(path: Path, before: str | None, settings: Settings | None = None) -> str | None:
    """After a command: None if it left the file's content alone, else what the running daemon needs."""
    after = file_digest(path)
    if after is None or after == before:
        return None
    try:
        from labmw.config import load

        cfg = settings or load(path)
        running = query_status(cfg.control_socket, STATUS_TIMEOUT, config=path)
    except DaemonNotRunning:
        return "no labmw daemon is running for this configuration: the change applies when it starts"
    except LabmwError as exc:
        return f"could not ask the daemon whether it needs a reload ({exc}): `systemctl reload labmw` applies the change"
    if running.get("config_digest") == after:
        return "the running daemon already runs this configuration"
    return (f"the running daemon (pid {running.get('pid')}) still runs the previous settings: "
            f"`systemctl reload labmw` (or `kill -HUP {running.get('pid')}`) applies the change")

"""Storage faults without faking them: the daemon's data directory on a small tmpfs, or read-only,
inside a private mount namespace (the rest of the machine sees nothing), and a way to query the
database that lives there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


_QUERY = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=10)
conn.row_factory = sqlite3.Row
print(json.dumps([dict(r) for r in conn.execute(sys.argv[2], json.loads(sys.argv[3]))]))
"""


class NamespacedDb:
    """A database inside a private mount namespace, queried by a process entered into it (SQLite
    resolves /proc/PID/root to "/" and would open the file of the same name outside)."""

    def __init__(self, path: Path, prefix: Sequence[str]) -> None:
        self.path, self.prefix = path, list(prefix)

    def rows(self, sql: str, args: Sequence[object]) -> list[dict[str, Any]]:
        proc = subprocess.run([*self.prefix, sys.executable, "-c", _QUERY, str(self.path), sql, json.dumps(list(args))],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise AssertionError(f"query failed: {proc.stderr}")
        return list(json.loads(proc.stdout))


# --- a data directory on its own small or read-only filesystem ---------------------------------------
class PrivateMount:
    """``data`` replaced, in a private mount namespace only, by a small tmpfs (``size``) seeded with its
    current files, or by a read-only bind mount of itself. Nothing changes for the rest of the machine.

    The namespace is held by a sleeping process; ``prefix`` runs a command inside it (``nsenter``), and
    :meth:`path` names a file in it as seen from outside (``/proc/PID/root/...``).
    """

    def __init__(self, data: Path, *, size: str = "", read_only: bool = False) -> None:
        self.data = data
        if read_only:
            setup = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1"'
            args = [str(data)]
        else:
            seed = data.with_name(data.name + ".seed")
            data.rename(seed)
            data.mkdir(mode=0o700)
            setup = 'mount -t tmpfs -o size="$2",mode=0700 tmpfs "$1" && cp -a "$3"/. "$1"/'
            args = [str(data), size, str(seed)]
        self.holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", setup + " && echo ready && exec sleep 600",
             "sh", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.holder.stdout is not None  # noqa: S101
        if self.holder.stdout.readline() != b"ready\n":
            err = self.holder.stderr.read() if self.holder.stderr else b""
            raise AssertionError(f"cannot set up the mount namespace: {err!r}")
        self.prefix = ["nsenter", "-t", str(self.holder.pid), "-m", "--"]
        self._filler: Path | None = None

    def path(self, inside: Path) -> Path:
        """``inside`` (an absolute path) as seen from outside the namespace."""
        return Path(f"/proc/{self.holder.pid}/root{inside}")

    def fill(self) -> int:
        """Write a filler file until the filesystem is full (ENOSPC); returns its size."""
        self._filler = self.path(self.data / "filler")
        written = 0
        with self._filler.open("wb", buffering=0) as fh:
            block = b"\0" * 65536
            try:
                while True:
                    written += fh.write(block)
            except OSError as exc:
                if exc.errno != 28:  # ENOSPC
                    raise
            try:
                while True:
                    written += fh.write(b"\0" * 512)
            except OSError:
                pass
        return written

    def free(self) -> None:
        """Delete the filler: space returns."""
        if self._filler is not None:
            self._filler.unlink()
            self._filler = None

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(10)

    def __enter__(self) -> PrivateMount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

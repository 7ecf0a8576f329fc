"""The two floors labmw's throughput is compared with: the disk's durable commit rate and a raw relay.

Both are measured in the same run, on the same machine and the same filesystem as the daemon's data
directory, so the ratios say how much of the hardware labmw turns into delivered results.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

RELAY = Path(__file__).with_name("relay.py")


def sqlite_commit_rate(directory: Path, seconds: float) -> float:
    """Durable commits/s: one small INSERT per BEGIN IMMEDIATE..COMMIT, WAL, synchronous=FULL (labmw's settings)."""
    path = directory / "floor.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        payload = b"x" * 600  # about one stored ASTM message
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (payload) VALUES (?)", (payload,))
            conn.execute("COMMIT")
            count += 1
        return count / elapsed
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


class Relay:
    """relay.py as a child process listening on ``ports`` and forwarding to the LIS on ``lis_port``."""

    def __init__(self, lis_port: int, ports: list[int]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(RELAY), str(lis_port), *map(str, ports)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout: IO[bytes] | None = self.proc.stdout
        line = stdout.readline() if stdout is not None else b""
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"relay did not start: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

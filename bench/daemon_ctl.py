"""labmw as the laboratory runs it: configured with the README's CLI commands, `labmw run` as a subprocess.

The first analyzer is added with `labmw analyzer add`; the others are copies of the table the CLI
wrote, with their own name and port, appended by hand and checked with `labmw config validate`
(the README's route for hand edits). That keeps 100 analyzers to a second instead of 20 CLI runs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from loadgen import PANEL

LABMW = str(Path(sys.executable).with_name("labmw"))


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def labmw(config: Path, *args: str) -> str:
    """Run the real `labmw` console script; raise RuntimeError with its output when it fails."""
    proc = subprocess.run([LABMW, "--config", str(config), *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        last = ((proc.stderr.strip() or proc.stdout.strip()).splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`labmw {args[0]}` failed ({proc.returncode}): {last[:200]}")
    return proc.stdout


#: Every panel code of the workload mapped to the one judged method, as `analyzer add` arguments.
PANEL_MAPS = [arg for code in PANEL for arg in ("--map", f"{code}=ALT-T")]


def configure_lab(config: Path, data_dir: Path, lis_port: int, *init_args: str) -> None:
    """The README's commands for the workload: init, one ALT method with its ranges and delta check, the LIS."""
    labmw(config, "init", "--data-dir", str(data_dir), *init_args)
    labmw(config, "method", "add", "ALT-T", "--analyte", "ALT", "--units", "U/L", "--loinc", "1743-4",
          "--measuring-range", "5-7000", "--critical-high", "1000")
    labmw(config, "range", "add", "ALT-T", "--sex", "M", "--age-min", "18y", "--low", "9", "--high", "59")
    labmw(config, "range", "add", "ALT-T", "--sex", "F", "--age-min", "18y", "--low", "8", "--high", "41")
    labmw(config, "delta", "set", "ALT-T", "--abs", "30", "--pct", "50")
    # One ORU per result, as the workload says (the default groups by specimen: one ORU per message here).
    labmw(config, "lis", "set", "--connect", f"127.0.0.1:{lis_port}", "--group", "result")


def configure(workdir: Path, lis_port: int, analyzer_ports: Sequence[int]) -> Path:
    """Write a configuration with one ALT method, its ranges and delta check, the LIS and the analyzers."""
    config = workdir / "lab.toml"
    configure_lab(config, workdir / "data", lis_port)
    labmw(config, "analyzer", "add", "a001", "--protocol", "astm", "--transport", "tcp-server",
          "--listen", f"127.0.0.1:{analyzer_ports[0]}", *PANEL_MAPS)
    text = config.read_text(encoding="utf-8")
    match = re.search(r"^\[analyzers\.a001\]\n.*?(?=^\[(?!analyzers\.a001[.\]])|\Z)", text, re.M | re.S)
    if match is None:
        raise RuntimeError("cannot find the [analyzers.a001] table the CLI wrote")
    block = match.group(0).rstrip() + "\n"
    extra = []
    for n, port in enumerate(analyzer_ports[1:], start=2):
        copy = block.replace("analyzers.a001", f"analyzers.a{n:03d}")
        copy = copy.replace(f"127.0.0.1:{analyzer_ports[0]}", f"127.0.0.1:{port}")
        extra.append(copy)
    config.write_text(text.rstrip() + "\n\n" + "\n".join(extra), encoding="utf-8")
    labmw(config, "config", "validate")
    return config


class Daemon:
    """`labmw --config FILE run` as a child process, with its memory and CPU read from /proc."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ports: Sequence[int], timeout: float = 30.0) -> None:
        """Start the daemon and wait until every port in ``wait_ports`` accepts connections."""
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([LABMW, "--config", str(self.config), "run"], stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        for port in wait_ports:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}; see {self.log}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"daemon not listening on {port} after {timeout} s") from None
                    time.sleep(0.05)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("daemon not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident set size (VmRSS of /proc/PID/status) in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon has used so far (all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL; returns the exit code (-9 when killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

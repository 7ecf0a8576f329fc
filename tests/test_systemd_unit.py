"""systemd/labmw.service: what issue 6 asks of it, and systemd's own verdict (verify, security).

systemd-analyze is required, not optional: .ci/run installs Debian's systemd package when it is
missing, so a missing tool fails here instead of silently passing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "labmw.service"
SHIPPED_EXEC_START = "/opt/labmw/.venv/bin/labmw --config /etc/labmw/labmw.toml run"
MAX_EXPOSURE = 3.0


def _directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; systemd allows keys to repeat, so not a dict."""
    section, found = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def _values(key: str) -> list[str]:
    return [v for s, k, v in _directives(UNIT.read_text()) if s == "Service" and k == key]


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd package (.ci/run does so as root)")
    return tool


@pytest.fixture(name="testable_unit")
def _testable_unit(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this venv's labmw, which exists (verify checks that)."""
    labmw = Path(sys.executable).with_name("labmw")
    assert labmw.is_file(), f"{labmw} missing: install the package (pip install -e .)"
    path = tmp_path / "labmw.service"
    path.write_text(UNIT.read_text().replace("/opt/labmw/.venv/bin/labmw", str(labmw)))
    return path


def test_unit_runs_the_installed_console_script() -> None:
    """ExecStart is the /opt/labmw venv's labmw with the /etc/labmw config."""
    assert _values("ExecStart") == [SHIPPED_EXEC_START]


def test_unit_is_a_notify_service_with_watchdog_reload_and_restart() -> None:
    """Type=notify, a watchdog, SIGHUP on reload and restart on failure, as issue 6 asks."""
    assert _values("Type") == ["notify"]
    assert _values("WatchdogSec") and int(_values("WatchdogSec")[0]) > 0
    assert _values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert _values("Restart") == ["on-failure"]


def test_unit_has_its_own_user_directories_and_serial_access() -> None:
    """The static user of labmw.sysusers in dialout, state and config directories, the serial drivers allowed."""
    assert _values("DynamicUser") in ([], ["no"])  # a dynamic user cannot read the root-owned config
    assert _values("User") == ["labmw"] and _values("Group") == ["labmw"]
    sysusers = (UNIT.parent / "labmw.sysusers").read_text().splitlines()
    entries = [line.split() for line in sysusers if line.strip() and not line.startswith("#")]
    assert ["u", "labmw", "-"] == entries[0][:3] and ["m", "labmw", "dialout"] in entries
    assert _values("SupplementaryGroups") == ["dialout"]
    assert _values("StateDirectory") == ["labmw"] and _values("ConfigurationDirectory") == ["labmw"]
    # PrivateDevices=yes would hide /dev/ttyS* and friends from the service.
    assert _values("PrivateDevices") in ([], ["no"])
    assert _values("DevicePolicy") == ["closed"]
    allowed = {v.split()[0] for v in _values("DeviceAllow")}
    assert allowed >= {"char-ttyS", "char-ttyUSB", "char-ttyACM"}
    assert set(_values("RestrictAddressFamilies")[0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_systemd_analyze_verify_is_clean(testable_unit: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single complaint about it."""
    done = subprocess.run([_systemd_analyze(), "verify", str(testable_unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if testable_unit.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_systemd_analyze_security_exposure_is_at_most_3(testable_unit: Path) -> None:
    """`systemd-analyze security --offline=true` rates the unit's overall exposure 3.0 or lower."""
    done = subprocess.run([_systemd_analyze(), "security", "--offline=true", "--no-pager", str(testable_unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, done.stdout


def test_unit_caps_memory_above_what_the_bench_measures() -> None:
    """Issue #17: MemoryMax= is set, above the bench's RSS (about 51 MiB with 100 analyzers) and the
    150 MB the hostile-input tests allow, so only a runaway is stopped; MemoryHigh= below it."""

    def mib(value: str) -> float:
        units = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}
        return float(value[:-1]) * units[value[-1]]

    (high,), (cap,) = _values("MemoryHigh"), _values("MemoryMax")
    assert 150 < mib(high) < mib(cap) <= 512, (high, cap)

"""The README's service install, as a fresh Debian machine runs it, with the daemon as the unprivileged user.

What stands in for systemd: the user comes from the shipped systemd/labmw.sysusers through the real
`systemd-sysusers`; the directories are made with the README's own `install -d` line; StateDirectory=
(which hands /var/lib/labmw to the service user on start) is a `chown -R`; and the unit's User=/Group=/
SupplementaryGroups= become `setpriv`. Everything else is the real console script on the files `init`
wrote. Creating a system user needs root: CI runs as root, so this test fails (never skips) without it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import LABMW, MllpLis, alt_message, astm_send, free_port, labmw, wait_until

REPO = Path(__file__).resolve().parents[1]
USER = "labmw"


@pytest.fixture(name="service_user")
def _service_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.fail("this test creates the labmw system user and must run as root (CI does)")
    tool = shutil.which("systemd-sysusers")
    assert tool is not None, "systemd-sysusers missing: install Debian's systemd package (.ci/run does)"
    subprocess.run([tool, str(REPO / "systemd" / "labmw.sysusers")], check=True, capture_output=True, timeout=60)
    user = pwd.getpwnam(USER)
    assert user.pw_uid != 0 and user.pw_uid < 1000, "a system user"
    return user


@pytest.fixture(name="root_dir")
def _root_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: it sits under a 0700 root directory the service user could not enter.
    base = Path(tempfile.mkdtemp(prefix="labmw-install-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _as_service(user: pwd.struct_passwd, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`labmw run` with the unit's User=labmw Group=labmw SupplementaryGroups=dialout (setpriv: no PAM)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
             *LABMW, "--config", str(config), "run"],
            stdout=out, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", "LABMW_CONFIG": str(config)})


def _listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"daemon exited with {proc.returncode}:\n{log.read_text()}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_the_readme_install_runs_the_daemon_as_the_unprivileged_user(
        service_user: pwd.struct_passwd, root_dir: Path) -> None:
    """init as root, the service as labmw: it reads the config, listens, stores, reloads after a root edit."""
    etc, state = root_dir / "etc-labmw", root_dir / "var-lib-labmw"
    # The README's line, with /etc/labmw under the test's directory.
    subprocess.run(["install", "-d", "-m", "0750", "-g", USER, str(etc)], check=True, timeout=30)
    config = etc / "labmw.toml"
    lis_port, analyzer_port = free_port(), free_port()
    labmw(config, "init", "--data-dir", str(state))
    labmw(config, "lis", "set", "--connect", f"127.0.0.1:{lis_port}")
    labmw(config, "analyzer", "add", "c501", "--protocol", "astm", "--transport", "tcp-server",
          "--listen", f"127.0.0.1:{analyzer_port}", "--map", "ALTL=ALT-P5P")
    info = config.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, service_user.pw_gid, 0o640), \
        "root's file, readable by the service's group, by nobody else"
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(state)], check=True, timeout=30)  # StateDirectory=

    log = root_dir / "daemon.log"
    lis = MllpLis(lis_port).start()
    proc = _as_service(service_user, config, log)
    try:
        wait_until(lambda: _listening(proc, analyzer_port, log), what="the service to listen")
        uid_line = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                        if line.startswith("Uid:"))
        assert {int(u) for u in uid_line.split()[1:]} == {service_user.pw_uid}, "runs as labmw, not root"
        assert astm_send(analyzer_port, [alt_message(specimen="S1", patient="P1", sex="M", birth="19800101",
                                                     value="85")])[-1] == b"\x06"
        wait_until(lambda: len(lis.received) == 1, what="the LIS to receive the result")
        status = json.loads(labmw(config, "status", "--json").stdout)  # root reads the 0600 socket
        assert status["analyzers"][0]["name"] == "c501" and status["analyzers"][0]["results"] == 1

        # A root edit keeps the file readable by the service, and the reload it asks for works.
        edited = labmw(config, "analyzer", "set", "c501", "--frame-timeout", "20")
        assert "systemctl reload labmw" in edited.stderr
        assert config.stat().st_gid == service_user.pw_gid and stat.S_IMODE(config.stat().st_mode) == 0o640
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config_reloaded" in log.read_text(), what="the reload")
        assert proc.poll() is None
    finally:
        _stop(proc)
        lis.stop()

    # Root reads the trail while the service is stopped: the files it touches stay the service's.
    assert "intact" in labmw(config, "audit", "verify").stdout
    for path in state.iterdir():
        assert path.stat().st_uid == service_user.pw_uid, f"{path.name} must stay the service's own"
    proc = _as_service(service_user, config, log)
    try:
        wait_until(lambda: _listening(proc, analyzer_port, log), what="the service to start again")
    finally:
        _stop(proc)

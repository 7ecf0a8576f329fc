"""`labmw web` as its own real process over HTTPS ([web.tls], trustme certificates), read with the
standard library's HTTP client: TLS, secure cookies, security headers, CSRF on the login form, and a
dashboard that says plainly when no daemon is running.
"""

from __future__ import annotations

import http.cookiejar
import re
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
import trustme
from peers import LABMW, free_port, wait_until
from typer.testing import CliRunner

from labmw.cli import app


@pytest.fixture(scope="module", name="server")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    tmp = tmp_path_factory.mktemp("standalone")
    config = tmp / "lab.toml"
    runner = CliRunner()
    assert runner.invoke(app, ["--config", str(config), "init", "--data-dir", str(tmp / "data")]).exit_code == 0
    added = runner.invoke(app, ["--config", str(config), "user", "add", "rita", "--role", "reviewer",
                                "--password-stdin"], input="rita-reviews-alt\n")
    assert added.exit_code == 0, added.output
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "web.pem"))
    port = free_port()
    config.write_text(config.read_text() + f'\n[web]\nlisten = "127.0.0.1:{port}"\n'
                      '[web.tls]\ncert_file = "web.pem"\nkey_file = "web.pem"\n')
    client = ssl.create_default_context()
    ca.configure_trust(client)
    log = (tmp / "web.log").open("wb")
    proc = subprocess.Popen([*LABMW, "--config", str(config), "web"], stdout=log, stderr=subprocess.STDOUT)
    base = f"https://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"labmw web exited with {proc.returncode}: {(tmp / 'web.log').read_text()}")
        try:
            urllib.request.urlopen(f"{base}/login", context=client, timeout=2).close()
            return True
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(up, timeout=30, what="labmw web over HTTPS")
        yield base, client
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, "labmw web stops cleanly on SIGTERM"
        log.close()
        assert "rita-reviews-alt" not in (tmp / "web.log").read_text()


def test_https_login_and_dashboard(server: tuple[str, ssl.SSLContext]) -> None:
    """Over TLS: Secure HttpOnly SameSite cookies, HSTS and CSP headers, login, and the dashboard
    saying the daemon is not running."""
    base, client = server
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=client),
                                         urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{base}/login") as reply:
        page = reply.read().decode()
        assert reply.headers["Strict-Transport-Security"] and "default-src 'none'" in reply.headers[
            "Content-Security-Policy"]
        assert reply.headers["X-Frame-Options"] == "DENY"
        cookie = reply.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    form = urllib.parse.urlencode({"csrf": token, "name": "rita", "password": "rita-reviews-alt",
                                   "next": "/"}).encode()
    with opener.open(f"{base}/login", data=form) as reply:
        dashboard = reply.read().decode()
    assert 'id="whoami">rita (reviewer)' in dashboard
    assert 'id="daemon-down"' in dashboard and "no labmw daemon is running" in dashboard
    assert '<meta http-equiv="refresh"' in dashboard


def test_a_login_post_without_the_form_token_is_refused(server: tuple[str, ssl.SSLContext]) -> None:
    """A cross-site login attempt (no double-submit token) is refused before any password check."""
    base, client = server
    form = urllib.parse.urlencode({"csrf": "x", "name": "rita", "password": "rita-reviews-alt"}).encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/login", data=form, context=client)
    assert refused.value.code == 403


def test_plain_http_is_not_served_when_tls_is_configured(server: tuple[str, ssl.SSLContext]) -> None:
    """The port speaks TLS only."""
    base, _ = server
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(base.replace("https", "http") + "/login", timeout=5).read()


def test_a_taken_port_is_one_clear_error() -> None:
    """The web binds its own socket, so a port in use is a UsageError naming it (not uvicorn's exit)."""
    import socket

    from labmw.config import Endpoint
    from labmw.errors import UsageError
    from labmw.web.server import bind

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"web: cannot listen on 127.0.0.1:{port}"):
            bind(Endpoint(host="127.0.0.1", port=port))

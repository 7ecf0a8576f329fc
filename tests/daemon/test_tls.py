"""MLLP to the LIS over TLS, against a real TLS peer with certificates made inside the test (trustme)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import trustme
from peers import MllpLis, alt_message, astm_send, configure, daemon, free_port, labmw, obx8, wait_until


def _lis_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def test_results_reach_a_tls_lis_and_an_untrusted_one_is_refused(tmp_path: Path) -> None:
    """With the LIS's CA configured the ORU arrives over TLS; a LIS certificate from another CA is not trusted."""
    ca, rogue = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "lis-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    lis_port, analyzer_port = free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    labmw(config, "lis", "set", "--connect", f"127.0.0.1:{lis_port}", "--tls-ca-file", str(ca_file))
    text = config.read_text()
    config.write_text(text.replace("[lis]\n", "[lis]\nretry_initial = 0.2\nretry_max = 0.5\n", 1))

    lis = MllpLis(lis_port, ssl=_lis_context(ca)).start()
    try:
        with daemon(config, wait_port=analyzer_port):
            astm_send(analyzer_port, [alt_message(specimen="TLS1", patient="PT", sex="M", birth="19800101",
                                                  value="85")])
            wait_until(lambda: len(lis.received) >= 1, what="the ORU over TLS")
    finally:
        lis.stop()
    assert obx8(lis.received[0]) == ["H"]

    impostor = MllpLis(lis_port, ssl=_lis_context(rogue)).start()
    try:
        with daemon(config, wait_port=analyzer_port):
            astm_send(analyzer_port, [alt_message(specimen="TLS2", patient="PT", sex="M", birth="19800101",
                                                  value="86")])

            def refused() -> list[dict[str, object]]:
                events = json.loads(labmw(config, "audit", "list", "--specimen", "TLS2", "--json").stdout)
                return [e for e in events if e["event"] == "delivery_failed"]

            wait_until(refused, what="a failed, audited delivery")
            assert "CERTIFICATE_VERIFY_FAILED" in str(refused()[0]["data"]["error"])
    finally:
        impostor.stop()
    assert impostor.received == [], "nothing is sent to a LIS whose certificate is not trusted"

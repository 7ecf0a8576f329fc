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


def test_hl7_analyzer_over_tls_listener(tmp_path: Path) -> None:
    """An HL7 analyzer connecting with TLS to a labmw listener gets its AA; a plain-TCP peer gets nothing."""
    import asyncio
    import socket

    from labmw.wire.hl7_codec import parse_ack
    from labmw.wire.mllp import BlockReceived, MllpFramer, frame

    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    config = configure(tmp_path, free_port(), free_port())
    port = free_port()
    labmw(config, "analyzer", "add", "mx", "--protocol", "hl7", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{port}", "--map", "ALT=ALT-T", "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    message = ("MSH|^~\\&|MX|LAB|LABMW|LAB|20261125090000||ORU^R01^ORU_R01|TLS-1|P|2.5.1\r"
               "PID|||PX1||DOE^JOHN||19800101|M\rOBR|1||TLS-H1|ALT\r"
               "OBX|1|NM|ALT^ALT||85|U/L|||||F|||20261125080000\r").encode()

    async def send() -> bytes:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(frame(message))
        await writer.drain()
        framer = MllpFramer()
        while True:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "closed before the ACK"
            for event in framer.feed(data):
                if isinstance(event, BlockReceived):
                    writer.close()
                    return event.payload

    with daemon(config, wait_port=port):
        ack = parse_ack(asyncio.run(send()))
        assert ack.code == "AA" and ack.control_id == "TLS-1"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(frame(message))
            try:
                answer = plain.recv(100)
            except (ConnectionResetError, TimeoutError):
                answer = b""
            assert b"MSA" not in answer, "no HL7 answer without TLS"

"""The metrics endpoint of the real daemon, read with real HTTP requests while a real analyzer sends."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

from peers import ACK, ENQ, NAK, MllpLis, alt_message, astm_send, configure, daemon, free_port, labmw, listening, wait_until
from prometheus_client.parser import text_string_to_metric_families


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:  # noqa: S310
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = _get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _one(samples: dict, name: str, **labels: str) -> float:  # noqa: ANN001
    return samples[(name, tuple(sorted(labels.items())))]


def _bad_frames(port: int, count: int) -> bytes:
    """ENQ, then ``count`` frames with a wrong checksum in one write: the answers are NAKs."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(ENQ)
        assert sock.recv(1) == ACK
        sock.sendall(b"\x021H|\\^&\r\x03ZZ\r\n" * count)
        replies = b""
        while len(replies) < count:
            replies += sock.recv(count - len(replies))
        return replies


def test_metrics_move_under_traffic_and_healthz_follows_the_endpoints(tmp_path: Path) -> None:
    """Counters per analyzer, queue, LIS link, held by gate, commit histogram; /healthz 200, then 503."""
    lis_port, analyzer_port, metrics_port = free_port(), free_port(), free_port()
    config = configure(tmp_path, lis_port, analyzer_port)
    text = config.read_text().replace("[service]\n", f'[service]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n', 1)
    config.write_text(text.replace("[lis]\n", "[lis]\nretry_initial = 0.2\nretry_max = 0.5\n", 1))
    labmw(config, "delta", "set", "ALT-T", "--abs", "50", "--action", "hold")
    with daemon(config, wait_port=analyzer_port, log=tmp_path / "daemon.log") as proc:
        wait_until(lambda: listening(metrics_port), what="the metrics listener")
        before = _samples(metrics_port)
        assert _one(before, "labmw_analyzer_results_total", analyzer="c501") == 0
        assert _one(before, "labmw_lis_link_state", state="up") == 0
        health, body = _get(metrics_port, "/healthz")
        assert health == 200 and json.loads(body) == {"ok": True, "analyzers": {"c501": "serving"},
                                                        "store": "writable"}

        # LIS down: two results wait; the second of the same patient is held by the delta rule.
        astm_send(analyzer_port, [alt_message(specimen="S1", patient="P1", sex="M", birth="19800101", value="40"),
                                  alt_message(specimen="S2", patient="P1", sex="M", birth="19800101", value="400",
                                              collected="20261125100000"),
                                  alt_message(specimen="S3", patient="P2", sex="F", birth="19800101", value="20")])
        assert _bad_frames(analyzer_port, 3) == NAK * 3  # a burst: logged once with its count, counted 3 times
        wait_until(lambda: _one(_samples(metrics_port), "labmw_queue_pending") == 2, what="two queued")
        during = _samples(metrics_port)
        assert _one(during, "labmw_analyzer_messages_total", analyzer="c501") == 3
        assert _one(during, "labmw_analyzer_results_total", analyzer="c501") == 3
        assert _one(during, "labmw_analyzer_naks_total", analyzer="c501") == 3
        # (the start-up probe of the daemon fixture may or may not be counted: it can come before the counter)
        accepted = ("labmw_analyzer_connections_accepted_total", (("analyzer", "c501"),))
        assert during[accepted] - before.get(accepted, 0) == 2
        assert _one(during, "labmw_analyzer_last_message_timestamp_seconds", analyzer="c501") > 1.7e9
        assert _one(during, "labmw_results_held", gate="delta") == 1
        assert abs(_one(during, "labmw_autoverification_ratio") - 2 / 3) < 1e-9
        assert _one(during, "labmw_store_commit_seconds_count") >= 1
        wait_until(lambda: _one(_samples(metrics_port), "labmw_lis_link_state", state="down") == 1,
                   what="the LIS link seen down")
        assert _one(_samples(metrics_port), "labmw_queue_oldest_pending_age_seconds") >= 0

        lis = MllpLis(lis_port).start()
        try:
            wait_until(lambda: len(lis.received) == 2, timeout=30, what="delivery")
            wait_until(lambda: _one(_samples(metrics_port), "labmw_queue_pending") == 0, what="the queue drained")
            after = _samples(metrics_port)
            assert _one(after, "labmw_lis_up") == 1 and _one(after, "labmw_lis_link_state", state="up") == 1
            assert _one(after, "labmw_queue_oldest_pending_age_seconds") == 0
        finally:
            lis.stop()

        # An analyzer that cannot bind its port: /healthz says which, with 503.
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            labmw(config, "analyzer", "add", "c502", "--protocol", "astm", "--transport", "tcp-server",
                  "--listen", f"127.0.0.1:{taken}")
            proc.send_signal(1)  # SIGHUP: reload
            wait_until(lambda: _get(metrics_port, "/healthz")[0] == 503, what="healthz to notice")
            body = json.loads(_get(metrics_port, "/healthz")[1])
            assert body["analyzers"]["c501"] == "serving" and body["analyzers"]["c502"].startswith("cannot start")
        assert _get(metrics_port, "/nope")[0] == 404



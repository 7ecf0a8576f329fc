"""`labmw simulate` against the real daemon (ASTM) and a real MLLP peer (HL7): printed answers, results.

The command is invoked through a root app built here the way ``labmw.cli`` builds its own (a global
``--config`` and the same error handling), so these tests do not depend on where it is registered.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Annotated

import typer
from peers import MllpLis, alt_message, configure, daemon, free_port, labmw, wait_until
from typer.testing import CliRunner, Result

from labmw.cli import _Group
from labmw.cli.simulate_cmd import astm_messages, hl7_messages, register

DATA = Path(__file__).resolve().parents[1] / "data"
QUERY = b"H|\\^&|||cobas-e411^1|||||host|TSREQ^REAL|P|1\nQ|1|^^SIM-Q1^40^0^5^^S1^SC||ALL||||||||O\nL|1|N\n"

root = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


@root.callback()
def _root(ctx: typer.Context, config: Annotated[Path, typer.Option("--config")]) -> None:
    ctx.obj = config


register(root)
runner = CliRunner()


def simulate(config: Path, *args: str) -> Result:
    """Run `labmw --config CONFIG simulate ARGS...` in this process."""
    return runner.invoke(root, ["--config", str(config), "simulate", *args])


def records_file(tmp_path: Path, name: str, records: list[bytes]) -> Path:
    """Plain records, one per line (LF), as a person would type them."""
    path = tmp_path / name
    path.write_bytes(b"\n".join(records) + b"\n")
    return path


def test_astm_framed_capture_plain_records_and_a_query(tmp_path: Path) -> None:
    """A framed sample and a records file are ACKed and reach the LIS; a query's reply is printed."""
    lis_port, port = free_port(), free_port()
    config = configure(tmp_path, lis_port, port)
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=port):
            framed = simulate(config, "c501", str(DATA / "astm" / "roche_cobas_labgate_1.astm"), "--timeout", "10")
            assert framed.exit_code == 0, framed.output
            assert "message 1 (H P O 7R 7C L, 681 bytes): ACK" in framed.output
            plain = records_file(tmp_path, "one.txt", alt_message(specimen="SIM1", patient="PS", sex="M",
                                                                  birth="19800101", value="120"))
            result = simulate(config, "c501", str(plain), "--timeout", "10")
            assert result.exit_code == 0 and "message 1 (H P O R L, " in result.output and ": ACK" in result.output
            query = tmp_path / "query.txt"
            query.write_bytes(QUERY)
            answered = simulate(config, "c501", str(query), "--timeout", "10")
            assert answered.exit_code == 0, answered.output
            assert "message 1 (H Q L, " in answered.output
            assert "reply from labmw (H P O L): H|\\^&|||LABMW|" in answered.output
            assert "O|1|SIM-Q1|40^0^5^^S1^SC|" in answered.output and "|Y<CR>L|1|N<CR>" in answered.output
            wait_until(lambda: {"99900001", "SIM1"} <= set(lis.by_specimen()), what="both results at the LIS")
    finally:
        lis.stop()


def test_tcp_client_analyzer_waits_for_labmw_to_connect(tmp_path: Path) -> None:
    """For a tcp-client analyzer the simulator listens on its connect address; labmw comes and ACKs."""
    lis_port, port = free_port(), free_port()
    config = configure(tmp_path, lis_port, free_port())
    labmw(config, "analyzer", "add", "cli1", "--protocol", "astm", "--transport", "tcp-client", "--connect",
          f"127.0.0.1:{port}", "--map", "ALTL=ALT-T")
    plain = records_file(tmp_path, "cli.txt", [b"1" + r for r in alt_message(specimen="CLI9", patient="PC", sex="F",
                                                                               birth="19700101", value="33")])
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config):
            result = simulate(config, "cli1", str(plain), "--timeout", "20")
            assert result.exit_code == 0, result.output
            assert "waiting up to 20 s for labmw to connect" in result.output and ": ACK" in result.output
            wait_until(lambda: "CLI9" in lis.by_specimen(), what="the result at the LIS")
    finally:
        lis.stop()


def test_hl7_file_is_sent_in_mllp_blocks_and_the_acks_printed(tmp_path: Path) -> None:
    """Each HL7 message of a file (LF-separated here) goes in its own block; MSA-1 of every ACK is printed."""
    port = free_port()
    config = configure(tmp_path, free_port(), free_port())
    labmw(config, "analyzer", "add", "xn", "--protocol", "hl7", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{port}")
    data = (DATA / "hl7" / "python-hl7_1.hl7").read_bytes() + b"\n" + (DATA / "hl7" / "openlis_1.hl7").read_bytes()
    capture = tmp_path / "two.hl7"
    capture.write_bytes(data)
    peer = MllpLis(port).start()  # an independent MLLP receiver (python-hl7) in labmw's place
    try:
        result = simulate(config, "xn", str(capture), "--timeout", "10")
    finally:
        peer.stop()
    assert result.exit_code == 0, result.output
    assert "message 1 (ORU^R01 CNTRL-3456): AA" in result.output
    assert "message 2 (ORU^R01 " in result.output and result.output.count(": AA") == 2
    assert [str(m.segment("MSH")[10]) for m in peer.received][0] == "CNTRL-3456" and len(peer.received) == 2


def test_negative_hl7_ack_fails_the_run(tmp_path: Path) -> None:
    """An AE answer is printed and the exit code is 1."""
    port = free_port()
    config = configure(tmp_path, free_port(), free_port())
    labmw(config, "analyzer", "add", "xn", "--protocol", "hl7", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{port}")
    peer = MllpLis(port, ack_code="AE").start()
    try:
        result = simulate(config, "xn", str(DATA / "hl7" / "medplum_2.hl7"), "--timeout", "10")
    finally:
        peer.stop()
    assert result.exit_code == 1 and "): AE" in result.output


def test_astm_nak_is_reported_and_fails_the_run(tmp_path: Path) -> None:
    """A peer that NAKs every frame: six tries, then the message is reported NAKed and the exit code is 1."""
    server = socket.create_server(("127.0.0.1", 0))  # bound first: no other process can take the port
    config = configure(tmp_path, free_port(), server.getsockname()[1])

    def naysayer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            try:
                while data := conn.recv(65536):
                    conn.sendall(b"\x06" if data.startswith(b"\x05") else b"\x15" * data.count(b"\x02"))
            except OSError:
                pass

    thread = threading.Thread(target=naysayer, daemon=True)
    thread.start()
    plain = records_file(tmp_path, "nak.txt", [b"H|\\^&", b"L|1|N"])
    try:
        result = simulate(config, "c501", str(plain), "--timeout", "5")
    finally:
        server.close()
        thread.join(10)
    assert result.exit_code == 1
    assert "message 1 (H L, 12 bytes): NAK (frame 1 refused 6 times (last reply: NAK))" in result.output


def test_serial_analyzer_needs_the_other_end_of_the_line(tmp_path: Path) -> None:
    """A serial analyzer without --device is refused with a plain explanation."""
    config = configure(tmp_path, free_port(), free_port())
    labmw(config, "analyzer", "add", "ser", "--protocol", "astm", "--transport", "serial", "--device", "/dev/ttyS9")
    result = simulate(config, "ser", str(DATA / "astm" / "erba_em200_1.astm"))
    assert result.exit_code == 1 and "not supported unless --device PATH" in result.output


def test_clear_errors_without_a_daemon_or_analyzer(tmp_path: Path) -> None:
    """No daemon listening, an unknown analyzer and a missing file each give one clear line and exit 1."""
    config = configure(tmp_path, free_port(), free_port())
    sample = str(DATA / "astm" / "erba_em200_1.astm")
    down = simulate(config, "c501", sample, "--timeout", "2")
    assert down.exit_code == 1 and "is the daemon running?" in down.output
    unknown = simulate(config, "nope", sample)
    assert unknown.exit_code == 1 and "no analyzer named 'nope'" in unknown.output
    missing = simulate(config, "c501", str(tmp_path / "missing.astm"))
    assert missing.exit_code == 1 and "cannot read" in missing.output


def test_capture_readers() -> None:
    """Framed samples give their messages; PSM-style digit-prefixed records and LF-separated HL7 are split."""
    (erba,) = astm_messages((DATA / "astm" / "erba_em200_1.astm").read_bytes())
    assert erba.startswith(b"H|`^&") and erba.endswith(b"L|1|N\r")
    psm = astm_messages((DATA / "astm" / "roche_psm_1.astm").read_bytes())
    assert len(psm) == 1 and psm[0].count(b"\rP|") == 10
    (message,) = hl7_messages((DATA / "hl7" / "openelis-analyzer-bridge_1.hl7").read_bytes())
    assert message.startswith(b"MSH|") and b"\n" not in message and message.endswith(b"\r")

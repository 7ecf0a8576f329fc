"""Issue 13 against the real daemon process: a repeated FN with new content over TCP is NAKed and audited,
`status` counts HL7 results and shows failed analyzers (port taken, device missing), sd_notify STATUS= says
so, a port used twice is refused, and a specimen's results reach the LIS in one ORU."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from hl7.client import MLLPClient
from peers import ACK, ENQ, EOT, LABMW, NAK, MllpLis, astm_frame, free_port, labmw, wait_until


def _config(tmp_path: Path, lis_port: int, astm_port: int, hl7_port: int, busy_port: int) -> Path:
    config = tmp_path / "lab.toml"
    labmw(config, "init", "--data-dir", str(tmp_path / "data"))
    # The XN's WBC mapped to a method of its own units, with one band, so it is judged and released.
    labmw(config, "method", "add", "ALT-T", "--analyte", "ALT", "--units", "10*3/uL", "--loinc", "1743-4")
    labmw(config, "range", "add", "ALT-T", "--low", "0", "--high", "100")
    labmw(config, "lis", "set", "--connect", f"127.0.0.1:{lis_port}", "--group", "specimen")
    labmw(config, "analyzer", "add", "xn", "--protocol", "astm", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{astm_port}", "--test-code-component", "5", "--specimen-field", "O-4",
          "--specimen-component", "3", "--map", "WBC^1=ALT-T", "--unmapped", "forward")
    # ba400's codes are mapped to no method and forwarded as sent (--unmapped forward): this test is about
    # fidelity of what reaches the LIS, not about the METHOD_UNKNOWN hold.
    labmw(config, "analyzer", "add", "ba400", "--protocol", "hl7", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{hl7_port}", "--unmapped", "forward")
    labmw(config, "analyzer", "add", "busy", "--protocol", "astm", "--transport", "tcp-server", "--listen",
          f"127.0.0.1:{busy_port}")
    labmw(config, "analyzer", "add", "rs", "--protocol", "astm", "--transport", "serial", "--device",
          str(tmp_path / "no-such-tty"))
    return config


def test_port_used_twice_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, free_port(), free_port(), 5099, free_port())
    refused = labmw(config, "analyzer", "add", "dup", "--protocol", "hl7", "--transport", "tcp-server",
                    "--listen", "0.0.0.0:5099", check=False)
    assert refused.returncode != 0 and "5099 is already used by analyzer 'ba400'" in refused.stderr + refused.stdout
    with config.open("a") as f:  # edited by hand
        f.write('\n[analyzers.dup2]\nprotocol = "astm"\ntransport = "tcp-server"\nlisten = "127.0.0.1:5099"\n')
    check = labmw(config, "config", "validate", check=False)
    assert check.returncode != 0
    assert "analyzers.dup2.listen" in check.stderr + check.stdout and "ba400" in check.stderr + check.stdout


XN_H = b"H|\\^&|||XN-350^00-22^11001^^^^^AB123||||||||E1394-97\r"
XN_O = b"P|1\rO|1||^^        2041^B|^^^^WBC\\^^^^RBC|||||||N||||||||||||||F\r"
XN_R1 = b"R|1|^^^^WBC^1|6.93|10*3/uL||N||||||20261125090000\r"
XN_R2 = b"R|2|^^^^RBC^1|4.48|10*6/uL||N||||||20261125090000\r"


def _exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(1)


def test_daemon_fidelity(tmp_path: Path) -> None:
    lis_port, astm_port, hl7_port = free_port(), free_port(), free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy_port = holder.getsockname()[1]
    config = _config(tmp_path, lis_port, astm_port, hl7_port, busy_port)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    lis = MllpLis(lis_port).start()
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen([*LABMW, "--config", str(config), "run"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        ready = notify.recv(4096).decode()
        while "READY=1" not in ready:
            ready = notify.recv(4096).decode()
        assert "STATUS=2 of 4 analyzers running; FAILED: busy (cannot start:" in ready, ready
        assert "rs (cannot open" in ready, ready

        # The XN QC shape: a second, different frame 2 must be refused, not ACKed as a duplicate.
        with socket.create_connection(("127.0.0.1", astm_port), timeout=10) as sock:
            assert _exchange(sock, ENQ) == ACK
            assert _exchange(sock, astm_frame(1, XN_H + XN_O, final=False)) == ACK
            assert _exchange(sock, astm_frame(2, XN_R1, final=False)) == ACK
            assert _exchange(sock, astm_frame(2, XN_R2, final=False)) == NAK
            assert _exchange(sock, astm_frame(3, XN_R2, final=False)) == ACK
            assert _exchange(sock, astm_frame(4, b"L|1|N\r")) == ACK
            sock.sendall(EOT)

        with MLLPClient("127.0.0.1", hl7_port) as client:
            ack = client.send_message(
                "MSH|^~\\&|BA400|BIOSYSTEMS|LIS||20261125101500||ORU^R01^ORU_R01|B4-1|P|2.5.1\r"
                "PID|||PT-4\rOBR|1||BA-9|PANEL|||20261125080000\r"
                "OBX|1|NM|ALT^ALT^A400||35|U/L^U/L^A400|||||F\rOBX|2|SN|GLU^Glucose^A400||^182|mg/dL|||||F\r")
            assert b"MSA|AA|B4-1" in ack

        wait_until(lambda: len(lis.received) >= 2, what="two ORUs at the LIS")
        status = json.loads(labmw(config, "status", "--json").stdout)
        by_name = {a["name"]: a for a in status["analyzers"]}
        assert by_name["ba400"]["results"] == 2 and by_name["ba400"]["messages"] == 1
        assert by_name["xn"]["results"] == 2
        assert by_name["busy"]["state"] == "failed" and "cannot start" in by_name["busy"]["error"]
        assert by_name["rs"]["state"] == "failed" and "cannot open" in by_name["rs"]["error"]
        assert by_name["xn"]["state"] == "running"
        people = labmw(config, "status").stdout
        assert "FAILED   busy: cannot start" in people and "FAILED   rs: cannot open" in people

        xn = next(m for m in lis.received if str(m.segment("OBR")[3]) == "2041")
        assert [str(s[3]).split("^")[0] for s in xn.segments("OBX")] == ["1743-4", r"RBC\S\1"]
        assert [str(s[5]) for s in xn.segments("OBX")] == ["6.93", "4.48"], "both results, one ORU per specimen"
        ba = next(m for m in lis.received if str(m.segment("OBR")[3]) == "BA-9")
        assert [str(s[6]) for s in ba.segments("OBX")] == ["U/L^U/L^A400", "mg/dL"]
        assert [str(s[5]) for s in ba.segments("OBX")] == ["35", "^182"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lis.stop()
        holder.close()
        notify.close()
        log.close()
    repeated = json.loads(labmw(config, "audit", "list", "--event", "frame_number_repeated", "--json").stdout)
    assert len(repeated) == 1 and repeated[0]["analyzer"] == "xn"
    assert "repeated frame number 2" in repeated[0]["data"]["reason"]

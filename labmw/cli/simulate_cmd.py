"""`labmw simulate ANALYZER FILE`: play a capture to the running daemon as that analyzer would.

The analyzer's configured transport decides how: a tcp-server analyzer is connected to at its listen
address; for a tcp-client analyzer we listen on its connect address and wait for labmw to come; a
serial analyzer's port is held by labmw, so only ``--device`` naming the other end of the line works.

ASTM files hold framed bytes (STX ... as captured; reassembled with the link engine, checksums not
enforced) or plain records, one per line (an optional frame digit before each, as Roche PSM logs).
The messages go out through an :class:`AstmLink` in the sender role, all in one ENQ..EOT session,
and any message labmw sends back (answers to host queries) is received and printed. HL7 files hold
messages starting at each MSH segment (LF and CR LF become CR); each is sent in an MLLP block and its
ACK is read. One line per message says what was sent and the answer; the exit code is 1 when any
message was not positively acknowledged.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from labmw.cli.common import settings
from labmw.config import AnalyzerSettings
from labmw.errors import CodecError, UsageError
from labmw.wire.astm_events import (
    FrameRefused,
    FrameRejected,
    MessageDiscarded,
    MessageReceived,
    MessageSent,
    SendFailed,
)
from labmw.wire.astm_frames import ENQ, EOT, MAX_TEXT, STX
from labmw.wire.astm_link import AWAITING_COMMIT, IDLE, AstmLink
from labmw.wire.astm_records import split_unframed
from labmw.wire.hl7_codec import parse_ack
from labmw.wire.mllp import BlockReceived, MllpFramer, frame


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def simulate(
    ctx: typer.Context,
    analyzer: Annotated[str, typer.Argument(help="The configured analyzer to play.")],
    file: Annotated[Path, typer.Argument(help="Capture: ASTM framed bytes or records one per line, or HL7 messages.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for labmw (connection, answers).")] = 30.0,
    device: Annotated[str | None, typer.Option(help="Serial analyzers: the other end of the line.")] = None,
) -> None:
    """Send FILE to the running daemon as ANALYZER would and print what was acknowledged."""
    cfg = settings(ctx)
    if analyzer not in cfg.analyzers:
        raise UsageError(f"no analyzer named {analyzer!r} (configured: {', '.join(sorted(cfg.analyzers)) or 'none'})")
    a = cfg.analyzers[analyzer]
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    with _open_channel(a, timeout, device) as channel:
        ok = _play_astm(channel, a, data, timeout) if a.protocol == "astm" else _play_hl7(channel, a, data, timeout)
    if not ok:
        raise typer.Exit(1)


# --- the line to labmw ------------------------------------------------------------------------------
class _Channel:
    """A byte pipe with timed reads: ``recv`` gives None when nothing came in time, b"" once closed."""

    def __init__(self, sock: socket.socket | None = None, port: Any = None) -> None:
        self._sock, self._port = sock, port

    def send(self, data: bytes) -> None:
        if self._sock is not None:
            self._sock.sendall(data)
        else:
            self._port.write(data)

    def recv(self, timeout: float) -> bytes | None:
        timeout = max(0.0, timeout)
        if self._sock is not None:
            ready, _, _ = select.select([self._sock], [], [], timeout)
            return self._sock.recv(65536) if ready else None
        self._port.timeout = timeout
        first = self._port.read(1)
        return first + self._port.read(self._port.in_waiting) if first else None

    def close(self) -> None:
        (self._sock or self._port).close()


@contextlib.contextmanager
def _open_channel(a: AnalyzerSettings, timeout: float, device: str | None) -> Iterator[_Channel]:
    if a.transport == "serial":
        if not device:
            raise UsageError(f"analyzer {a.name} is on serial port {a.device}, which labmw holds: simulating it is "
                             "not supported unless --device PATH names the other end of the line (a null-modem "
                             "port or the far side of a pty pair)")
        import serial  # pyserial, as in labmw.transports.endpoints

        try:
            port = serial.Serial(device, baudrate=a.baud, bytesize=a.bytesize, parity=a.parity, stopbits=a.stopbits)
        except (serial.SerialException, ValueError) as exc:
            raise UsageError(f"--device {device}: {exc}") from None
        channel = _Channel(port=port)
    elif a.transport == "tcp-server":
        assert a.listen is not None
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(a.listen.host, a.listen.host)
        try:
            channel = _Channel(socket.create_connection((host, a.listen.port), timeout=timeout))
        except OSError as exc:
            raise UsageError(f"cannot connect to labmw at {host}:{a.listen.port} ({exc.strerror or exc}); "
                             "is the daemon running?") from None
    else:
        assert a.connect is not None
        with socket.create_server((a.connect.host, a.connect.port)) as server:
            typer.echo(f"waiting up to {timeout:g} s for labmw to connect to {a.connect}", err=True)
            server.settimeout(timeout)
            try:
                sock, _ = server.accept()
            except TimeoutError:
                raise UsageError(f"labmw did not connect to {a.connect} within {timeout:g} s") from None
        channel = _Channel(sock)
    try:
        yield channel
    finally:
        channel.close()


# --- ASTM -------------------------------------------------------------------------------------------
def astm_messages(data: bytes) -> list[bytes]:
    """The messages of an ASTM capture: framed if it contains STX, else records one per line.

    Framed bytes are reassembled by the link engine as a receiver would (checksums not enforced,
    since captures are often retyped); frames it cannot read are reported on stderr. Raises
    :class:`CodecError` when plain records do not form H..L messages.
    """
    if STX not in data:
        first = data.lstrip()[:1]
        return split_unframed(data, frame_numbers=first.isdigit())
    reader = AstmLink(checksum_policy="ignore", max_frame_text=MAX_TEXT)
    reader.receive_data(ENQ + data + EOT, 0.0)
    texts: list[bytes] = []
    while (event := reader.next_event()) is not None or reader.state == AWAITING_COMMIT:
        if event is None:
            reader.message_committed()
        elif isinstance(event, MessageReceived):
            texts.append(event.text)
        elif isinstance(event, FrameRejected | MessageDiscarded):
            typer.echo(f"capture: skipped: {getattr(event, 'reason', '')}", err=True)
    return texts


def _summary(text: bytes) -> str:
    """Record types in order of first appearance with their counts: ``H P O 5R 5C L``."""
    counts = Counter(record[:1].decode("latin-1") for record in re.split(rb"[\r\n]+", text) if record)
    return " ".join(kind if n == 1 else f"{n}{kind}" for kind, n in counts.items())


def _play_astm(channel: _Channel, a: AnalyzerSettings, data: bytes, timeout: float) -> bool:
    messages = astm_messages(data)
    if not messages:
        raise CodecError("the file holds no complete ASTM message")
    link = AstmLink(checksum_policy=a.checksum_policy, max_send_text=a.max_frame_text, frame_timeout=timeout)
    # Host queries (records "Q" + the field delimiter of their message's H) each expect a reply.
    queries = sum(1 for m in messages for record in re.split(rb"[\r\n]+", m) if record[:2] == b"Q" + m[1:2])
    for text in messages:
        link.send_message(text, now=time.monotonic())
    done, replies, ok = 0, 0, True  # the engine finishes queued messages strictly in order
    deadline = time.monotonic() + timeout
    while True:
        _send(channel, link)
        while (event := link.next_event()) is not None or link.state == AWAITING_COMMIT:
            if event is None:
                link.message_committed()  # labmw's message: "store" it by printing it
            elif isinstance(event, MessageSent | SendFailed):
                # A failed transfer is the verdict: the simulator reports it rather than retrying
                # for minutes as an analyzer would (the engine would re-bid after 10 s).
                done += 1
                answer = "ACK" if isinstance(event, MessageSent) else f"NAK ({event.reason})"
                typer.echo(f"message {done} ({_summary(event.text)}, {len(event.text)} bytes): {answer}")
                ok = ok and isinstance(event, MessageSent)
            elif isinstance(event, FrameRefused):
                typer.echo(f"frame {event.fn} answered {event.reply}; sending it again", err=True)
            elif isinstance(event, MessageReceived):
                replies += 1
                typer.echo(f"reply from labmw ({_summary(event.text)}): "
                           + event.text.decode(a.encoding, "replace").replace("\r", "<CR>"))
        _send(channel, link)
        if not ok:
            for index in range(done + 1, len(messages) + 1):
                typer.echo(f"message {index}: not sent")
            return False
        if done == len(messages) and replies >= queries and link.state == IDLE:
            return True
        now = time.monotonic()
        if now >= deadline:
            if done < len(messages):
                typer.echo(f"{len(messages) - done} message(s) not acknowledged within {timeout:g} s")
            else:
                typer.echo(f"no reply to {queries - replies} host query(ies) within {timeout:g} s")
            return False
        timer = link.get_timer()
        received = channel.recv(min(deadline, timer if timer is not None else deadline) - now)
        if received == b"":
            typer.echo("labmw closed the connection")
            return False
        if received is None:
            link.handle_timer(time.monotonic())
        else:
            link.receive_data(received, time.monotonic())


def _send(channel: _Channel, link: AstmLink) -> None:
    out = link.data_to_send()
    if out:
        channel.send(out)


# --- HL7 --------------------------------------------------------------------------------------------
def hl7_messages(data: bytes) -> list[bytes]:
    """The messages of an HL7 file: each starts at an MSH segment; LF and CR LF become CR."""
    text = data.replace(b"\x0b", b"").replace(b"\x1c", b"").replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    starts = [m.start() for m in re.finditer(rb"(?:^|(?<=\r))MSH", text)]
    messages = []
    for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
        body = re.sub(rb"\r+", b"\r", text[start:end]).strip(b"\r")
        messages.append(body + b"\r")
    return messages


def _play_hl7(channel: _Channel, a: AnalyzerSettings, data: bytes, timeout: float) -> bool:
    messages = hl7_messages(data)
    if not messages:
        raise CodecError("the file holds no HL7 message (no MSH segment)")
    ok = True
    for index, message in enumerate(messages, start=1):
        msh = message.split(b"\r", 1)[0]
        fields = msh.split(msh[3:4]) if len(msh) > 3 else []
        what = " ".join(f.decode(a.encoding, "replace") for f in fields[8:10])
        channel.send(frame(message))
        framer, deadline, answer = MllpFramer(max_size=a.max_message_bytes), time.monotonic() + timeout, None
        while answer is None:
            received = channel.recv(deadline - time.monotonic())
            if not received:
                typer.echo(f"message {index} ({what}): no answer within {timeout:g} s"
                           if received is None else f"message {index} ({what}): labmw closed the connection")
                return False
            answer = next((e.payload for e in framer.feed(received) if isinstance(e, BlockReceived)), None)
        try:
            ack = parse_ack(answer, encoding=a.encoding)
        except CodecError as exc:
            typer.echo(f"message {index} ({what}): unreadable answer: {exc}")
            ok = False
            continue
        typer.echo(f"message {index} ({what}): {ack.code}" + (f" {ack.text}" if ack.text else ""))
        ok = ok and ack.code in ("AA", "CA")
    return ok

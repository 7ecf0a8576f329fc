"""Test helpers for the ASTM link engine: a tiny playbook DSL and the sample corpus.

A script is a list of steps, as in mitmproxy's Playbook: ``(">>", data)`` is bytes the peer sends
to the engine, ``("<<", data)`` is bytes the engine must have queued for the peer. :func:`play`
runs the script and compares the whole conversation at once, so a failure shows both transcripts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from labmw.wire.astm_events import Event
from labmw.wire.astm_frames import ACK, CR, ENQ, EOT, ETB, ETX, LF, NAK, STX, build_frame, checksum
from labmw.wire.astm_link import AstmLink

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "astm"  # byte-exact copies; SOURCES.md there
#: The framed captures (roche_psm_1.astm carries bare records, not E1381 frames).
# The Yumizen H500 QC capture numbers its frames 1 2 3 4 5 1 1 1 4 5 6 ... (frames missing from the
# capture, or renumbered by the instrument): a receiver NAKs the out-of-sequence ones, so it cannot be
# received whole without the retransmissions the capture lacks (tests/fidelity/test_repeated_frame_number.py).
FN_BROKEN_SAMPLES = ("horiba_yumizen_h500_1.astm",)
FRAMED_SAMPLES = sorted(p.name for p in SAMPLES.glob("*.astm")
                        if STX in p.read_bytes() and p.name not in FN_BROKEN_SAMPLES)

Step = tuple[str, bytes]

__all__ = ["ACK", "ENQ", "EOT", "FRAMED_SAMPLES", "NAK", "SAMPLES", "drain", "expected_texts", "feed",
           "frame", "play", "raw_frame", "session_bytes"]  # fmt: skip


def frame(fn: int, text: bytes, *, final: bool = True) -> bytes:
    """Return a well-formed frame (shorthand for build_frame with ETX by default)."""
    return build_frame(fn, text, final=final)


def raw_frame(number: bytes, text: bytes, *, final: bool = True) -> bytes:
    """Return a frame with a correct checksum but no validation: any FN byte, any text."""
    body = number + text + (ETX if final else ETB)
    return STX + body + checksum(body) + CR + LF


def feed(link: AstmLink, data: bytes, *, now: float = 0.0, commit: bool = True) -> tuple[list[Event], bytes]:
    """Feed ``data`` at ``now`` and :func:`drain` the link; return the events and the output."""
    link.receive_data(data, now)
    return drain(link, commit=commit)


def drain(link: AstmLink, *, commit: bool = True) -> tuple[list[Event], bytes]:
    """Drain events and output from ``link``; like the pump, commit once all messages are read."""
    events: list[Event] = []
    while True:
        while (event := link.next_event()) is not None:
            events.append(event)
        if not (commit and link.state == "AWAITING_COMMIT"):
            return events, link.data_to_send()
        link.message_committed()


def merge_steps(steps: Iterable[Step]) -> list[Step]:
    merged: list[Step] = []
    for direction, data in steps:
        if not data:
            continue
        if merged and merged[-1][0] == direction:
            merged[-1] = (direction, merged[-1][1] + data)
        else:
            merged.append((direction, data))
    return merged


def play(link: AstmLink, script: list[Step], *, now: float = 0.0) -> list[Event]:
    """Run ``script`` against ``link`` and assert the conversation matches; return all events."""
    actual: list[Step] = []
    events: list[Event] = []
    for direction, data in script:
        if direction == ">>":
            actual.append((">>", data))
            new, out = feed(link, data, now=now)
            events += new
            actual.append(("<<", out))
    assert merge_steps(actual) == merge_steps(script)
    return events


def session_bytes(name: str) -> bytes:
    """Return a sample as a full ENQ..EOT session (ENQ/EOT added where the capture lacks them)."""
    data = (SAMPLES / name).read_bytes()
    if ENQ not in data[:2]:
        data = ENQ + data + EOT
    return data


_FRAME_RE = re.compile(rb"\x02[0-7](.*?)[\x03\x17][0-9A-Fa-f]{2}", re.S)


def expected_texts(name: str) -> list[bytes]:
    """Independent oracle: a sample's frame texts joined, then cut after each ``L|`` record."""
    text = b"".join(_FRAME_RE.findall((SAMPLES / name).read_bytes()))
    messages: list[bytes] = []
    start = 0
    for match in re.finditer(rb"(?:^|(?<=\r))L\|[^\r]*\r", text):
        messages.append(text[start : match.end()])
        start = match.end()
    return messages

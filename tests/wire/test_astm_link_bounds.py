"""The link engine's bounds on one transfer (issue #10 item 3) and its ACK confirmation (item 4).

A sender that never sends ETX, or floods tiny frames, meets fixed limits: the transfer is refused
(NAK) past them and memory stays bounded; cutting messages off a transfer is linear in its frames.
"""

from __future__ import annotations

import gc
import time

import pytest
from astm_script import ACK, ENQ, EOT, NAK, drain, feed, frame

from labmw.wire import astm_link
from labmw.wire.astm_events import AckConfirmed, MessageDiscarded, MessageReceived
from labmw.wire.astm_link import CONFIRM_WITHIN, MAX_TRANSFER_MESSAGES, REJECTING, AstmLink

H = b"H|\\^&|||labmw-test\r"
R = b"R|1|^^^ALT|35|U/L||N||F\r"
L = b"L|1|N\r"
MESSAGE = H + R + L


def _frames(count: int, text: bytes, *, first_fn: int = 1) -> bytes:
    return b"".join(frame((first_fn + i) % 8, text, final=False) for i in range(count))


def test_whole_messages_in_etb_frames_are_bounded_by_count() -> None:
    """Complete messages held back for the next ETX stop at MAX_TRANSFER_MESSAGES: NAK, transfer refused."""
    link = AstmLink()
    feed(link, ENQ)
    events, out = feed(link, _frames(MAX_TRANSFER_MESSAGES + 10, MESSAGE))
    assert out.count(ACK) == MAX_TRANSFER_MESSAGES and out.endswith(NAK) and link.state == REJECTING
    assert next(e for e in events if isinstance(e, MessageDiscarded)).reason.startswith("transfer exceeds")
    assert [e for e in events if isinstance(e, MessageReceived)] == []


def test_the_size_limit_counts_the_whole_transfer_not_only_the_open_message() -> None:
    """Messages completed in ETB frames count towards max_message_bytes until they are delivered."""
    link = AstmLink(max_message_bytes=10 * len(MESSAGE))
    feed(link, ENQ)
    _, out = feed(link, _frames(11, MESSAGE))
    assert out == ACK * 10 + NAK and link.state == REJECTING


def test_a_flood_of_empty_frames_is_bounded_by_frame_count() -> None:
    """Empty ETB frames carry no text but cost memory: refused past the frame limit, NAKed thereafter."""
    link = AstmLink(max_message_bytes=64 * 1024)
    feed(link, ENQ)
    limit = 64 * 1024 // 240 + 64
    _, out = feed(link, _frames(limit + 100, b""))
    assert out.count(ACK) == limit and out.endswith(NAK * 100) and link.state == REJECTING
    assert len(link._rx.frames) == 0


def test_cutting_messages_off_a_transfer_is_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivering N complete messages from N ETB frames takes time linear in N, not N squared."""
    monkeypatch.setattr(astm_link, "MAX_TRANSFER_MESSAGES", 10**6)  # timing the cut alone

    def deliver(count: int) -> float:
        link = AstmLink(max_message_bytes=64 * 1024 * 1024)
        feed(link, ENQ)
        feed(link, _frames(count, MESSAGE))
        rx = link._rx
        gc.disable()  # a collection landing in one run would look like superlinear growth
        try:
            begun = time.perf_counter()
            messages = rx.take_messages()
            elapsed = time.perf_counter() - begun
        finally:
            gc.enable()
        assert len(messages) == count and all(m.text == MESSAGE for m in messages)
        assert [m.raw for m in messages[:2]] == [frame(1, MESSAGE, final=False)[:-2],
                                                  frame(2, MESSAGE, final=False)[:-2]]
        return elapsed

    small = min(deliver(400) for _ in range(3))
    large = min(deliver(6400) for _ in range(3))
    # 16x the frames: a quadratic cut takes ~256x as long (the old one did); linear ~16x, plus noise.
    assert large < small * 80, (small, large)


def test_prompt_eot_after_the_commit_ack_confirms_it() -> None:
    """EOT right after our ACK of a committed message: AckConfirmed with the message's token."""
    link = AstmLink()
    feed(link, ENQ, now=0.0)
    feed(link, frame(1, MESSAGE), now=1.0, commit=False)
    link.message_committed(token=42)
    assert link.data_to_send() == ACK
    events, _ = feed(link, EOT, now=1.5)
    assert AckConfirmed(42) in events


def test_a_late_eot_or_a_lost_connection_confirms_nothing() -> None:
    """An EOT after the sender's reply timer (our ACK was lost), or a repeated frame, is no confirmation."""
    link = AstmLink()
    feed(link, ENQ, now=0.0)
    feed(link, frame(1, MESSAGE), now=1.0, commit=False)
    link.message_committed(token=7)
    link.data_to_send()
    events, _ = feed(link, EOT, now=1.0 + CONFIRM_WITHIN + 10)
    assert not [e for e in events if isinstance(e, AckConfirmed)]
    # The repeated completing frame (ACK lost), then a prompt EOT: that ACK did arrive.
    feed(link, ENQ, now=20.0)
    feed(link, frame(1, MESSAGE), now=20.5, commit=False)
    link.message_committed(token=8)
    link.data_to_send()  # this ACK is "lost"
    events, out = feed(link, frame(1, MESSAGE), now=21.0)
    assert out == ACK and not [e for e in events if isinstance(e, AckConfirmed)]
    events, _ = feed(link, EOT, now=21.2)
    assert AckConfirmed(8) in events
    assert drain(link) == ([], b"")

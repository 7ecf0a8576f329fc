"""Property tests for the E1381 link engine: mutated real captures, cut at random points."""

from __future__ import annotations

from astm_script import FRAMED_SAMPLES, expected_texts, session_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labmw.errors import WireError
from labmw.wire.astm_events import (
    BytesIgnored,
    ChecksumMismatchTolerated,
    DuplicateFrame,
    FrameRejected,
    LinkEstablished,
    MessageDiscarded,
    MessageReceived,
    TransferEnded,
)
from labmw.wire.astm_frames import ACK, ENQ, EOT, NAK, RESTRICTED, STX, build_frame
from labmw.wire.astm_link import AWAITING_COMMIT, AstmLink

SESSIONS = {name: session_bytes(name) for name in FRAMED_SAMPLES}
EVENT_TYPES = (LinkEstablished, FrameRejected, DuplicateFrame, ChecksumMismatchTolerated, MessageReceived,
               MessageDiscarded, TransferEnded, BytesIgnored)  # fmt: skip
# Bytes that matter to the framing, so mutations hit the interesting cases often.
SPECIAL = st.sampled_from(b"\x02\x03\x04\x05\x06\x15\x17\r\n|L0123456789AF")
A_BYTE = st.one_of(SPECIAL, st.integers(0, 255))
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A capture (or two back to back) with random byte insertions, deletions and replacements."""
    data = bytearray(b"".join(SESSIONS[n] for n in draw(st.lists(st.sampled_from(FRAMED_SAMPLES), min_size=1,
                                                                   max_size=2))))  # fmt: skip
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(("insert", "delete", "replace", "duplicate")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "insert":
            data[at:at] = bytes(draw(st.lists(A_BYTE, min_size=1, max_size=4)))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "replace" and data:
            data[at] = draw(A_BYTE)
        elif op == "duplicate":  # a repeated span: retransmissions and duplicate frames
            end = at + draw(st.integers(1, 300))
            data[at:at] = data[at:end]
    return bytes(data)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """Split ``data`` at the given points (taken modulo its length, sorted)."""
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(marks, marks[1:], strict=False)]


@FUZZ
@given(data=mutated(), points=st.lists(st.integers(0, 10**6), max_size=12), choices=st.data(),
       policy=st.sampled_from(("strict", "warn", "ignore")))  # fmt: skip
def test_mutated_captures_never_crash(
    data: bytes, points: list[int], choices: st.DataObject, policy: str
) -> None:
    """Whatever arrives, only WireError escapes, replies are ACK/NAK and answer an ENQ or a frame."""
    link = AstmLink(checksum_policy=policy, max_frame_text=2000)
    now, out = 0.0, b""
    try:
        for chunk in cut(data, points):
            now += choices.draw(st.sampled_from((0.0, 1.0, 31.0)))
            link.receive_data(chunk, now)
            if choices.draw(st.booleans()):
                link.handle_timer(now)
            while True:
                while (event := link.next_event()) is not None:
                    assert isinstance(event, EVENT_TYPES)
                    if isinstance(event, MessageReceived):
                        assert not RESTRICTED & set(event.text) and event.raw.startswith(STX)
                if link.state != AWAITING_COMMIT:
                    break
                if choices.draw(st.booleans()):
                    link.message_committed()
                else:
                    link.message_failed("fuzz")
            out += link.data_to_send()
            assert link._reader.buffered <= 2000 + 64 + 4096
    except WireError:
        pass
    assert set(out) <= {ACK[0], NAK[0]}
    assert len(out) <= data.count(STX) + data.count(ENQ)


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(FRAMED_SAMPLES), points=st.lists(st.integers(0, 10**6), max_size=30))
def test_clean_captures_in_random_reads_give_the_oracle(name: str, points: list[int]) -> None:
    """A clean capture in any number of random reads yields exactly the oracle's messages."""
    data = SESSIONS[name]
    link, texts, out = AstmLink(), [], b""
    for chunk in cut(data, points):
        link.receive_data(chunk, 0.0)
        while True:
            while (event := link.next_event()) is not None:
                if isinstance(event, MessageReceived):
                    texts.append(event.text)
            if link.state != AWAITING_COMMIT:
                break
            link.message_committed()
        out += link.data_to_send()
    assert texts == expected_texts(name)
    assert out == ACK * (1 + data.count(STX))


@settings(max_examples=100, deadline=None)
@given(failures=st.integers(0, 5), frames=st.integers(1, 12))
def test_store_failures_never_lose_or_double_a_message(failures: int, frames: int) -> None:
    """However often the store fails, the retransmitted final frame yields the message exactly once."""
    text = b"H|\\^&\r" + b"".join(b"R|%d|^^^T|%d\r" % (i, i) for i in range(frames)) + b"L|1|N\r"
    pieces = [text[i : i + 20] for i in range(0, len(text), 20)]
    raws = [build_frame((i + 1) % 8, p, final=i == len(pieces) - 1) for i, p in enumerate(pieces)]
    link = AstmLink()
    link.receive_data(ENQ + b"".join(raws[:-1]), 0.0)
    delivered: list[bytes] = []
    for fail in [True] * failures + [False]:
        link.receive_data(raws[-1], 1.0)
        while (event := link.next_event()) is not None:
            if isinstance(event, MessageReceived):
                delivered.append(event.text)
        if fail:
            link.message_failed("store down")
            delivered.clear()
        else:
            link.message_committed()
    link.receive_data(raws[-1] + EOT, 2.0)  # a late duplicate: ACKed, not delivered again
    while (event := link.next_event()) is not None:
        assert not isinstance(event, MessageReceived)
    assert delivered == [text]
    assert link.data_to_send() == ACK * len(raws) + NAK * failures + ACK + ACK

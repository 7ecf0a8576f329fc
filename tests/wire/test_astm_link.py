"""Tests for the E1381 receiver link engine (labmw.wire.astm_link), as byte conversations."""

from __future__ import annotations

import re

import pytest
from astm_script import (
    ACK,
    ENQ,
    EOT,
    FRAMED_SAMPLES,
    NAK,
    drain,
    expected_texts,
    feed,
    frame,
    play,
    raw_frame,
    session_bytes,
)

from labmw.errors import LocalProtocolError
from labmw.wire.astm_events import (
    BytesIgnored,
    ChecksumMismatchTolerated,
    DuplicateFrame,
    Event,
    FrameRejected,
    LinkEstablished,
    MessageDiscarded,
    MessageReceived,
    TransferEnded,
)
from labmw.wire.astm_frames import STX, build_frame, build_frames
from labmw.wire.astm_link import (
    AWAITING_COMMIT,
    BIDDING,
    IDLE,
    RECEIVING,
    REJECTING,
    SENDING,
    TRANSITIONS,
    AstmLink,
    Input,
)

H = b"H|\\^&|||labmw-test\r"
P = b"P|1\r"
R = b"R|1|^^^ALT|35|U/L||N||F\r"
L = b"L|1|N\r"
MESSAGE = H + P + R + L


def received(events: list[Event]) -> list[bytes]:
    """The texts of the MessageReceived events in ``events``."""
    return [e.text for e in events if isinstance(e, MessageReceived)]


def run_chunks(data: bytes, chunks: list[bytes]) -> tuple[list[Event], bytes]:
    """Feed ``chunks`` (which join to ``data``) to a fresh link, committing messages; return all."""
    assert b"".join(chunks) == data
    link, events, out = AstmLink(), [], b""
    for chunk in chunks:
        new, sent = feed(link, chunk)
        events += new
        out += sent
    assert link.state == IDLE
    return events, out


@pytest.mark.parametrize("name", FRAMED_SAMPLES)
def test_sample_whole_and_byte_by_byte(name: str) -> None:
    """A capture fed in one read or one byte per read gives the oracle's message and ACKs only."""
    data = session_bytes(name)
    acks = ACK * (1 + data.count(STX))
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        events, out = run_chunks(data, chunks)
        assert received(events) == expected_texts(name)
        assert out == acks
        assert not [e for e in events if isinstance(e, FrameRejected | MessageDiscarded | DuplicateFrame)]


@pytest.mark.parametrize("name", FRAMED_SAMPLES)
def test_sample_at_every_split_point(name: str) -> None:
    """Cutting a capture into two reads at any point changes nothing the peer or the pump sees."""
    data = session_bytes(name)
    want = expected_texts(name)
    acks = ACK * (1 + data.count(STX))
    for cut in range(1, len(data)):
        events, out = run_chunks(data, [data[:cut], data[cut:]])
        assert received(events) == want, cut
        assert out == acks, cut


@pytest.mark.parametrize("name", FRAMED_SAMPLES)
def test_sample_raw_carries_every_frame(name: str) -> None:
    """MessageReceived.raw is the sample's frames, STX through checksum, for the audit trail."""
    data = session_bytes(name)
    (message,) = [e for e in run_chunks(data, [data])[0] if isinstance(e, MessageReceived)]
    assert message.raw == b"".join(re.findall(rb"\x02[0-7][^\x02]*?[\x03\x17][0-9A-F]{2}", data))


def test_worked_example_frame_is_accepted() -> None:
    """The ASTM.md worked example <STX>5L|1|N<CR><ETX>08<CR><LF> completes a message as frame 5."""
    first = [frame(fn, text, final=False) for fn, text in enumerate((H, P, R, R), start=1)]
    script = [(">>", ENQ), ("<<", ACK)] + [s for raw in first for s in ((">>", raw), ("<<", ACK))]
    events = play(AstmLink(), [*script, (">>", b"\x025L|1|N\r\x0308\r\n"), ("<<", ACK)])
    assert received(events) == [H + P + R + R + b"L|1|N\r"]


def test_persist_then_acknowledge() -> None:
    """The final frame's ACK is withheld until message_committed(); other frames are ACKed at once."""
    link = AstmLink()
    assert feed(link, ENQ + frame(1, H + P, final=False))[1] == ACK + ACK
    events, out = feed(link, frame(2, R + L), commit=False)
    assert received(events) == [MESSAGE] and out == b""
    assert link.state == AWAITING_COMMIT and link.get_timer() is None
    link.message_committed()
    assert link.data_to_send() == ACK and link.state == RECEIVING


def test_message_failed_naks_and_retransmission_re_emits() -> None:
    """message_failed() NAKs the final frame; the same frame again re-emits the same message."""
    link = AstmLink()
    feed(link, ENQ + frame(1, H + P, final=False))
    final = frame(2, R + L)
    first, _ = feed(link, final, commit=False)
    link.message_failed("disk full")
    assert link.data_to_send() == NAK
    assert link.next_event() == FrameRejected("message not stored: disk full", 2)
    again, out = feed(link, final)
    assert received(first) == received(again) == [MESSAGE] and out == ACK
    assert feed(link, final)[0] == [DuplicateFrame(2)]


def test_bytes_received_while_awaiting_commit_are_processed_after_commit() -> None:
    """Input that arrives before the commit is buffered, then handled in order after it."""
    link = AstmLink()
    feed(link, ENQ)
    events, out = feed(link, frame(1, MESSAGE) + frame(2, MESSAGE) + EOT, commit=False)
    assert received(events) == [MESSAGE] and out == b""
    link.message_committed()
    events, out = drain(link, commit=False)
    assert received(events) == [MESSAGE] and out == ACK and link.state == AWAITING_COMMIT
    link.message_committed()
    events, out = drain(link, commit=False)
    assert events == [TransferEnded()] and out == ACK and link.state == IDLE


def test_bad_checksum_is_naked_then_retransmission_accepted() -> None:
    """A corrupted checksum gets NAK and keeps the expected FN; the good retransmission gets ACK."""
    good = frame(1, MESSAGE)
    bad = good[:-4] + (b"00" if good[-4:-2] != b"00" else b"01") + b"\r\n"
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", bad), ("<<", NAK), (">>", good), ("<<", ACK)])
    expected, received_sum = good[-4:-2].decode(), bad[-4:-2].decode()
    reason = f"checksum mismatch: expected {expected}, received {received_sum}"
    assert events == [LinkEstablished(), FrameRejected(reason, 1), MessageReceived(MESSAGE, good[:-2])]


def test_lowercase_checksum_is_accepted() -> None:
    """Checksum digits are compared case-insensitively."""
    raw = build_frame(1, b"H|\\^&\r" + b"\xff" * 3 + b"\rL|1\r", final=True)
    assert raw[-4:-2].upper() != raw[-4:-2].lower()
    events = play(AstmLink(), [(">>", ENQ + raw[:-4] + raw[-4:-2].lower() + b"\r\n"), ("<<", ACK + ACK)])
    assert len(received(events)) == 1


def test_duplicate_frame_is_acked_and_not_delivered_twice() -> None:
    """A repeated frame (lost ACK) is ACKed and dropped, in the middle and at the end of a message."""
    first, last = frame(1, H + P, final=False), frame(2, R + L)
    script = [(">>", ENQ), ("<<", ACK)]
    for raw in (first, first, last, last):
        script += [(">>", raw), ("<<", ACK)]
    events = play(AstmLink(), [*script, (">>", EOT)])
    assert received(events) == [MESSAGE]
    assert [e for e in events if isinstance(e, DuplicateFrame)] == [DuplicateFrame(1), DuplicateFrame(2)]


def test_out_of_sequence_frame_is_naked() -> None:
    """A frame number that is neither expected nor the last accepted one gets NAK."""
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", frame(3, MESSAGE)), ("<<", NAK),
                               (">>", frame(1, MESSAGE)), ("<<", ACK)])  # fmt: skip
    assert FrameRejected("unexpected frame number 3 (expected 1)", 3) in events
    assert received(events) == [MESSAGE]


def test_worked_example_frame_out_of_sequence_is_naked() -> None:
    """The worked example frame (FN 5) right after FN 1 is out of sequence and gets NAK."""
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", frame(1, H, final=False)), ("<<", ACK),
                               (">>", b"\x025L|1|N\r\x0308\r\n"), ("<<", NAK)])  # fmt: skip
    assert FrameRejected("unexpected frame number 5 (expected 2)", 5) in events


def test_frame_numbers_wrap_from_7_to_0() -> None:
    """Ten frames numbered 1..7, 0, 1, 2 are all accepted and reassembled."""
    text = H + b"".join(b"R|%d|^^^T%d|%d\r" % (i, i, i) for i in range(1, 40)) + L
    frames = build_frames(text, max_text=len(text) // 10 + 1)
    assert len(frames) == 10 and frames[7][1:2] == b"0"
    script = [(">>", ENQ), ("<<", ACK)] + [s for raw in frames for s in ((">>", raw), ("<<", ACK))]
    assert received(play(AstmLink(), script)) == [text]


def test_etb_reassembly_with_maximum_frame_text() -> None:
    """Frames carrying 63,993 text bytes each are accepted and joined across ETB."""
    text = H + b"M|1|" + b"7" * 150_000 + b"\r" + L
    frames = build_frames(text, max_text=63_993)
    assert len(frames[0]) == 64_000
    script = [(">>", ENQ), ("<<", ACK)] + [s for raw in frames for s in ((">>", raw), ("<<", ACK))]
    assert received(play(AstmLink(), script)) == [text]


def test_frame_text_over_the_limit_is_naked() -> None:
    """A frame with 63,994 text bytes gets one NAK; the link stays ready for the next frame."""
    too_long = build_frame(1, b"x" * 63_994, final=True)
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", too_long), ("<<", NAK),
                               (">>", frame(1, MESSAGE)), ("<<", ACK)])  # fmt: skip
    assert FrameRejected("frame text exceeds 63993 bytes", 1) in events
    assert received(events) == [MESSAGE]


def test_legacy_frame_limit_is_configurable() -> None:
    """With max_frame_text=240 a 241-byte text is NAKed."""
    too_long = build_frame(1, b"x" * 241, final=False)
    play(AstmLink(max_frame_text=240), [(">>", ENQ), ("<<", ACK), (">>", too_long), ("<<", NAK)])


@pytest.mark.parametrize(
    ("raw", "rejection"),
    [
        (raw_frame(b"1", b"H\x11\\^&\r"), FrameRejected("restricted byte 0x11 in frame text", 1)),
        (raw_frame(b"X", b"H|\r"), FrameRejected("frame number 0x58 is not a digit", None)),
        (raw_frame(b"9", b"H|\r"), FrameRejected("frame number 9 is out of range 0..7", None)),
        (STX + b"1H|\r" + STX + b"1", FrameRejected("frame cut short by STX", 1)),
    ],
)
def test_malformed_frames_are_naked(raw: bytes, rejection: FrameRejected) -> None:
    """A restricted byte, a bad FN and a new STX inside a frame each get NAK."""
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", raw), ("<<", NAK)])
    assert events == [LinkEstablished(), rejection]


def test_junk_before_stx_is_ignored() -> None:
    """Noise before a frame is reported as ignored bytes and the frame is still accepted."""
    events = play(AstmLink(), [(">>", ENQ + b"\r\n\x00noise" + frame(1, MESSAGE)), ("<<", ACK + ACK)])
    assert BytesIgnored(8, RECEIVING) in events and received(events) == [MESSAGE]


def test_idle_ignores_everything_but_enq() -> None:
    """In IDLE frames and noise are ignored without reply, and an EOT is ignored silently."""
    link = AstmLink()
    events, out = feed(link, b"xyz" + frame(1, MESSAGE) + ACK + EOT)
    assert out == b"" and link.state == IDLE
    assert all(isinstance(e, BytesIgnored) and e.state == IDLE for e in events)
    assert sum(e.count for e in events if isinstance(e, BytesIgnored)) == 3 + len(frame(1, MESSAGE)) - 2 + 1


def test_empty_session() -> None:
    """ENQ then EOT (a keepalive) is answered with one ACK and nothing else."""
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", EOT)])
    assert events == [LinkEstablished(), TransferEnded()]


def test_erba_eot_before_enq() -> None:
    """An EOT before the ENQ (the Erba capture) is silently ignored."""
    assert feed(AstmLink(), EOT + ENQ) == ([LinkEstablished()], ACK)


def test_two_messages_in_one_session_and_in_one_frame() -> None:
    """Several H..L messages per session are delivered, including two in a single frame."""
    other = MESSAGE.replace(b"35", b"36")
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", frame(1, MESSAGE)), ("<<", ACK),
                               (">>", frame(2, other + other)), ("<<", ACK), (">>", EOT)])  # fmt: skip
    assert received(events) == [MESSAGE, other, other]


def test_text_after_l_waits_for_the_next_message() -> None:
    """Records after the L record stay buffered and start the next message."""
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", frame(1, MESSAGE + H + P)), ("<<", ACK),
                               (">>", frame(2, R + L)), ("<<", ACK)])  # fmt: skip
    assert received(events) == [MESSAGE, MESSAGE]
    messages = [e for e in events if isinstance(e, MessageReceived)]
    assert messages[1].raw == frame(1, MESSAGE + H + P)[:-2] + frame(2, R + L)[:-2]


def test_l_in_etb_frame_waits_for_the_end_frame() -> None:
    """An L record in an intermediate frame ends the message only when an ETX frame follows."""
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", frame(1, MESSAGE, final=False)), ("<<", ACK),
                               (">>", frame(2, b"")), ("<<", ACK)])  # fmt: skip
    (message,) = [e for e in events if isinstance(e, MessageReceived)]
    assert message.text == MESSAGE and message.raw == frame(1, MESSAGE, final=False)[:-2] + frame(2, b"")[:-2]


def test_eot_mid_message_discards_it() -> None:
    """EOT before the L record discards the partial message and is not answered."""
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", frame(1, H + P, final=False)), ("<<", ACK),
                               (">>", EOT)])  # fmt: skip
    assert events[-2:] == [MessageDiscarded("eot", H + P), TransferEnded()]


def test_frame_cut_by_eot_is_dropped_without_reply() -> None:
    """A half frame followed by EOT is ignored (no NAK to an idle peer) and the transfer ends."""
    link = AstmLink()
    feed(link, ENQ)
    events, out = feed(link, frame(1, MESSAGE)[:10] + EOT)
    assert out == b"" and events == [BytesIgnored(10, RECEIVING), TransferEnded()] and link.state == IDLE


def test_new_enq_mid_transfer_restarts() -> None:
    """A new ENQ discards the partial message, is ACKed, and FN 1 is expected again."""
    events = play(AstmLink(), [(">>", ENQ), ("<<", ACK), (">>", frame(1, H, final=False)), ("<<", ACK),
                               (">>", ENQ), ("<<", ACK), (">>", frame(1, MESSAGE)), ("<<", ACK)])  # fmt: skip
    assert MessageDiscarded("new ENQ", H) in events and received(events) == [MESSAGE]


def test_timer_expiry_discards_the_partial_message() -> None:
    """With no frame for 30 s after the last reply the link goes IDLE and drops the partial text."""
    link = AstmLink()
    feed(link, ENQ, now=100.0)
    assert link.get_timer() == 130.0
    feed(link, frame(1, H, final=False), now=110.0)
    assert link.get_timer() == 140.0
    link.handle_timer(139.9)
    assert link.state == RECEIVING and link.next_event() is None
    link.handle_timer(140.0)
    assert link.state == IDLE and link.get_timer() is None
    assert drain(link) == ([MessageDiscarded("timeout", H)], b"")


def test_late_data_is_judged_after_the_timeout() -> None:
    """Bytes that arrive after the deadline meet an IDLE link, even if handle_timer was not called."""
    link = AstmLink(frame_timeout=5.0)
    feed(link, ENQ + frame(1, H, final=False), now=0.0)
    events, out = feed(link, frame(2, L), now=6.0)
    assert out == b"" and events[0] == MessageDiscarded("timeout", H) and link.state == IDLE


def test_timer_restarts_after_commit() -> None:
    """There is no timer while awaiting the commit; the ACK sent on commit restarts it."""
    link = AstmLink()
    feed(link, ENQ, now=0.0)
    feed(link, frame(1, MESSAGE), now=10.0, commit=False)
    assert link.get_timer() is None
    link.message_committed()
    assert link.get_timer() == 40.0


def test_message_over_the_size_limit_is_discarded_and_the_transfer_refused() -> None:
    """A message growing past max_message_bytes is dropped with NAK; its retransmissions get NAK too."""
    link = AstmLink(max_message_bytes=100)
    part = frame(2, b"R|1|" + b"9" * 80 + b"\r", final=False)
    events = play(link, [(">>", ENQ), ("<<", ACK), (">>", frame(1, H, final=False)), ("<<", ACK),
                         (">>", part), ("<<", NAK), (">>", part), ("<<", NAK), (">>", EOT)])  # fmt: skip
    assert MessageDiscarded("transfer exceeds 100 bytes", H) in events
    assert link.state == IDLE and received(events) == []
    again = play(link, [(">>", ENQ), ("<<", ACK), (">>", frame(1, H + L)), ("<<", ACK)])
    assert again[-1] == MessageReceived(H + L, frame(1, H + L)[:-2])


def test_rejecting_state_times_out() -> None:
    """After an over-size message the link still returns to IDLE on the frame timer."""
    link = AstmLink(max_message_bytes=10)
    feed(link, ENQ + frame(1, MESSAGE, final=False), now=0.0)
    assert link.state == REJECTING
    link.handle_timer(30.0)
    assert link.state == IDLE


def test_checksum_policy_warn_and_ignore() -> None:
    """Policy "warn" accepts a bad checksum with an event; "ignore" accepts it silently."""
    good = frame(1, MESSAGE)
    bad = good[:-4] + b"ZZ\r\n"
    warned = play(AstmLink(checksum_policy="warn"), [(">>", ENQ + bad), ("<<", ACK + ACK)])
    assert ChecksumMismatchTolerated(1, good[-4:-2].decode(), "ZZ") in warned
    assert received(warned) == [MESSAGE]
    ignored = play(AstmLink(checksum_policy="ignore"), [(">>", ENQ + bad), ("<<", ACK + ACK)])
    assert received(ignored) == [MESSAGE]
    assert not any(isinstance(e, ChecksumMismatchTolerated) for e in ignored)


def test_never_ending_frame_keeps_memory_bounded() -> None:
    """A 20 MB frame without terminator is NAKed once and the buffer never exceeds ~70 KB."""
    link = AstmLink()
    feed(link, ENQ + STX + b"1")
    chunk = b"z" * 65_536
    out = b""
    for _ in range(20 * 16):
        link.receive_data(chunk, 1.0)
        out += link.data_to_send()
        assert link._reader.buffered < 70_000
        while link.next_event() is not None:
            pass
    assert out == NAK
    assert feed(link, EOT + ENQ)[1] == ACK


def test_buffer_while_awaiting_commit_is_bounded() -> None:
    """A peer that keeps talking while we await a commit cannot grow the buffer past one frame."""
    link = AstmLink(max_frame_text=1000)
    feed(link, ENQ)
    events, _ = feed(link, frame(1, MESSAGE) + b"x" * 100_000, commit=False)
    assert link._reader.buffered <= 1064 + 4096  # one frame's worth, plus the rest of the read slice
    dropped = sum(e.count for e in events if isinstance(e, BytesIgnored) and e.state == AWAITING_COMMIT)
    assert dropped == 100_000 + len(frame(1, MESSAGE)) - len(frame(1, MESSAGE)[:-2]) - link._reader.buffered


def test_api_misuse_is_a_local_protocol_error() -> None:
    """Committing or failing with nothing pending, or bad settings, raise LocalProtocolError."""
    link = AstmLink()
    with pytest.raises(LocalProtocolError):
        link.message_committed()
    with pytest.raises(LocalProtocolError):
        link.message_failed("x")
    for kwargs in ({"checksum_policy": "lax"}, {"max_frame_text": 0}, {"max_message_bytes": 0},
                   {"frame_timeout": 0.0}):  # fmt: skip
        with pytest.raises(LocalProtocolError):
            AstmLink(**kwargs)  # type: ignore[arg-type]


def test_transition_table_is_total_for_wire_inputs() -> None:
    """Every wire input has a transition in every state that reads input; none in AWAITING_COMMIT."""
    unjudged = {Input.ENQ, Input.EOT, Input.ACK, Input.NAK, Input.JUNK, Input.FRAME, Input.FRAME_CUT,
                Input.FRAME_BAD}  # fmt: skip
    judged = unjudged - {Input.FRAME} | {Input.FRAME_GOOD, Input.FRAME_COMPLETES, Input.FRAME_DUPLICATE,
                                        Input.MESSAGE_TOO_LARGE, Input.TIMEOUT}  # fmt: skip
    replies = {Input.ACKED_MORE, Input.ACKED_LAST, Input.REFUSED, Input.REFUSED_LAST, Input.INTERRUPTED,
               Input.TIMEOUT}  # fmt: skip
    assert {i for (s, i) in TRANSITIONS if s == IDLE} == unjudged | {Input.SEND_DUE, Input.TIMEOUT}
    assert {i for (s, i) in TRANSITIONS if s == REJECTING} == unjudged | {Input.TIMEOUT}
    assert {i for (s, i) in TRANSITIONS if s == RECEIVING} == judged
    assert {i for (s, i) in TRANSITIONS if s == AWAITING_COMMIT} == {Input.COMMITTED, Input.FAILED}
    assert {i for (s, i) in TRANSITIONS if s == BIDDING} == unjudged | {Input.TIMEOUT}
    assert {i for (s, i) in TRANSITIONS if s == SENDING} == replies
    assert {t.target for t in TRANSITIONS.values()} <= {IDLE, RECEIVING, AWAITING_COMMIT, REJECTING, BIDDING, SENDING}
    assert all(callable(getattr(AstmLink, t.action, None)) for t in TRANSITIONS.values())

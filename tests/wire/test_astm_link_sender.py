"""Tests for the sender role of the E1381 link engine (labmw.wire.astm_link), as byte conversations.

A script is a list of steps: ``("send", text)`` queues a message, ``("at", t)`` lets the clock reach
``t`` (timers fire), ``(">>", data)`` is what the receiver (an analyzer) sends us, and ``("<<",
data)`` is what the engine must have written since the step before, so a ``<<`` after an ``at``
says *when* it was written. Timers are driven by ``now``: no test sleeps.
"""

from __future__ import annotations

import re

import pytest
from astm_script import ACK, ENQ, EOT, FRAMED_SAMPLES, NAK, expected_texts, frame, merge_steps
from hypothesis import given, settings
from hypothesis import strategies as st

from labmw.errors import LocalProtocolError
from labmw.wire.astm_events import (
    ContentionYielded,
    Event,
    FrameRefused,
    MessageReceived,
    MessageSent,
    SendFailed,
)
from labmw.wire.astm_frames import LEGACY_MAX_TEXT, ControlByte, Frame, FrameReader, frame_texts
from labmw.wire.astm_link import BIDDING, IDLE, RECEIVING, SENDING, AstmLink

H = b"H|\\^&|||host^1|||||c501|TSDWN^REPLY|P|1\r"
P = b"P|1\r"
O = b"O|1|000004|40^0^5^^S1^SC||||||||||||||||||||||Y\r"
L = b"L|1|N\r"
REPLY = H + P + O + L
FRAMES = [frame(1, H), frame(2, P), frame(3, O), frame(4, L)]
RESULT = b"H|\\^&|||c501^1\rP|1\rO|1|S1\rR|1|^^^ALTL|35|U/L||N||F\rL|1|N\r"

Step = tuple[str, object]


def converse(link: AstmLink, script: list[Step]) -> list[Event]:
    """Run ``script`` against ``link`` and assert the conversation matches; return all events.

    Messages the engine receives are committed at once, as the pump does after storing them.
    """
    actual: list[tuple[str, bytes]] = []
    events: list[Event] = []
    now = 0.0
    for kind, value in script:
        if kind == "<<":
            continue
        if kind == "send":
            link.send_message(value)  # type: ignore[arg-type]
        elif kind == "at":
            now = float(value)  # type: ignore[arg-type]
            actual.append(("at", b"%g" % now))
            link.handle_timer(now)
        else:
            actual.append((">>", value))  # type: ignore[arg-type]
            link.receive_data(value, now)  # type: ignore[arg-type]
        while True:
            while (event := link.next_event()) is not None:
                events.append(event)
            if link.state != "AWAITING_COMMIT":
                break
            link.message_committed()
        actual.append(("<<", link.data_to_send()))
    expected = [(k, b"%g" % v if k == "at" else v) for k, v in script if k != "send"]
    assert merge_steps(actual) == merge_steps(expected)  # type: ignore[arg-type]
    return events


def acked(frames: list[bytes]) -> list[Step]:
    """Each frame written by the engine, then ACKed by the receiver."""
    return [s for raw in frames for s in (("<<", raw), (">>", ACK))]


def of(kind: type, events: list[Event]) -> list[Event]:
    """The events of one type."""
    return [e for e in events if isinstance(e, kind)]


# --- the happy path and framing ----------------------------------------------------------------------
def test_message_is_sent_one_record_per_frame_then_eot() -> None:
    """ENQ, ACK, one ETX frame per record numbered from 1, each ACKed, then EOT and MessageSent."""
    link = AstmLink()
    events = converse(link, [("send", REPLY), ("<<", ENQ), (">>", ACK), *acked(FRAMES), ("<<", EOT)])
    assert of(MessageSent, events) == [MessageSent(REPLY)]
    assert link.state == IDLE and link.get_timer() is None and link.pending_messages == ()


def test_checksums_are_uppercase() -> None:
    """Every checksum we send is two uppercase hex digits (ASTM.md §1.4)."""
    text = b"H|\\^&\rR|1|^^^T|\xfe\xfa\xfb\rL|1\r"
    link = AstmLink()
    link.send_message(text)
    link.receive_data(ACK, 0.0)
    raw = link.data_to_send()
    assert re.fullmatch(rb"\x05\x021H\|\\\^&\r\x03[0-9A-F]{2}\r\n", raw)
    link.receive_data(ACK, 0.0)
    assert re.search(rb"\x03([0-9A-F]{2})\r\n$", link.data_to_send())


def test_long_record_is_cut_into_etb_frames_of_at_most_max_send_text() -> None:
    """A record longer than max_send_text goes out in ETB frames, the last piece with ETX."""
    record = b"R|1|^^^ALT|" + b"9" * 40 + b"\r"
    pieces = frame_texts(H + record + L, max_text=20)
    assert all(len(text) <= 20 for text, _ in pieces)
    assert b"".join(text for text, _ in pieces) == H + record + L
    frames = [frame((i + 1) % 8, text, final=final) for i, (text, final) in enumerate(pieces)]
    assert [raw[-5] for raw in frames].count(0x17) == len(pieces) - 3  # H, R end and L end take ETX
    link = AstmLink(max_send_text=20)
    events = converse(link, [("send", H + record + L), ("<<", ENQ), (">>", ACK), *acked(frames), ("<<", EOT)])
    assert of(MessageSent, events) == [MessageSent(H + record + L)]


def test_frame_numbers_wrap_from_7_to_0() -> None:
    """Ten records go out as FN 1..7, 0, 1, 2."""
    records = [H] + [b"R|%d|^^^T|%d\r" % (i, i) for i in range(1, 9)] + [L]
    frames = [frame(i % 8, record) for i, record in enumerate(records, start=1)]
    assert [raw[1:2] for raw in frames] == [b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"0", b"1", b"2"]
    converse(AstmLink(), [("send", b"".join(records)), ("<<", ENQ), (">>", ACK), *acked(frames), ("<<", EOT)])


def test_messages_queued_together_share_one_session() -> None:
    """Two queued messages go in one ENQ..EOT session, FN running on across them."""
    second = REPLY.replace(b"000004", b"000005")
    frames = FRAMES + [frame(5, H), frame(6, P), frame(7, O.replace(b"000004", b"000005")), frame(0, L)]
    link = AstmLink()
    link.send_message(REPLY)
    events = converse(link, [("send", second), ("<<", ENQ), (">>", ACK), *acked(frames), ("<<", EOT)])
    assert of(MessageSent, events) == [MessageSent(REPLY), MessageSent(second)]


def test_bad_messages_are_refused_at_queue_time() -> None:
    """Empty text, a restricted byte or a bad max_send_text raise LocalProtocolError; nothing is queued."""
    link = AstmLink()
    for text in (b"", b"H|\\^&\x02\rL|1\r"):
        with pytest.raises(LocalProtocolError):
            link.send_message(text)
    assert link.pending_messages == () and link.data_to_send() == b""
    for size in (0, 63_994):
        with pytest.raises(LocalProtocolError):
            AstmLink(max_send_text=size)


# --- refusals and retransmission ---------------------------------------------------------------------
def test_nak_and_other_bytes_retransmit_the_same_frame() -> None:
    """A NAK, or any byte other than ACK and EOT, gets the same frame again with the same FN."""
    events = converse(AstmLink(), [
        ("send", REPLY), ("<<", ENQ), (">>", ACK), ("<<", FRAMES[0]), (">>", NAK), ("<<", FRAMES[0]),
        (">>", b"?"), ("<<", FRAMES[0]), (">>", ACK), *acked(FRAMES[1:]), ("<<", EOT)])  # fmt: skip
    assert of(FrameRefused, events) == [FrameRefused(1, "NAK"), FrameRefused(1, "other bytes")]
    assert of(MessageSent, events) == [MessageSent(REPLY)]


def test_sixth_refusal_ends_with_eot_and_requeues_after_ten_seconds() -> None:
    """Six refusals of one frame: EOT, SendFailed(requeued); 10 s later the whole message again from FN 1."""
    refusals = [s for _ in range(5) for s in ((">>", NAK), ("<<", FRAMES[1]))]
    link = AstmLink()
    events = converse(link, [("send", REPLY), ("<<", ENQ), (">>", ACK), *acked(FRAMES[:1]), ("<<", FRAMES[1]),
                             *refusals, (">>", NAK), ("<<", EOT)])  # fmt: skip
    assert len(of(FrameRefused, events)) == 6
    assert of(SendFailed, events) == [SendFailed("frame 2 refused 6 times (last reply: NAK)", REPLY, True)]
    assert link.state == IDLE and link.get_timer() == 10.0 and link.pending_messages == (REPLY,)
    again = converse(link, [("at", 9.9), ("at", 10.0), ("<<", ENQ), (">>", ACK), *acked(FRAMES), ("<<", EOT)])
    assert of(MessageSent, again) == [MessageSent(REPLY)]


def test_refusals_are_counted_per_frame() -> None:
    """Five refusals of each frame, each then ACKed, never reach the limit of six."""
    script: list[Step] = [("send", REPLY), ("<<", ENQ), (">>", ACK)]
    for raw in FRAMES:
        script += [("<<", raw)] + [s for _ in range(5) for s in ((">>", NAK), ("<<", raw))] + [(">>", ACK)]
    events = converse(AstmLink(), [*script, ("<<", EOT)])
    assert len(of(FrameRefused, events)) == 20 and of(MessageSent, events) == [MessageSent(REPLY)]


def test_message_is_dropped_after_six_failed_tries() -> None:
    """Six transfers each refused six times: the last SendFailed says not requeued, and nothing more is sent."""
    link = AstmLink()
    link.send_message(REPLY)
    failures: list[Event] = []
    for attempt in range(6):
        link.handle_timer(attempt * 100.0)
        assert link.data_to_send() == ENQ
        link.receive_data(ACK + NAK * 6, attempt * 100.0)
        assert link.data_to_send() == FRAMES[0] * 6 + EOT
        failures += of(SendFailed, [e for e in iter(link.next_event, None)])
    assert [f.requeued for f in failures] == [True] * 5 + [False]  # type: ignore[attr-defined]
    assert link.pending_messages == () and link.get_timer() is None
    link.handle_timer(10_000.0)
    assert link.data_to_send() == b""


# --- receiver interrupt --------------------------------------------------------------------------
def test_eot_reply_to_the_last_frame_delivers_and_holds_off_fifteen_seconds() -> None:
    """EOT answering the last frame counts it delivered: MessageSent, EOT, and no bid for 15 s."""
    link = AstmLink()
    events = converse(link, [("send", REPLY), ("<<", ENQ), (">>", ACK), *acked(FRAMES[:3]), ("<<", FRAMES[3]),
                             (">>", EOT), ("<<", EOT), ("send", REPLY), ("at", 14.9), ("at", 15.0),
                             ("<<", ENQ)])  # fmt: skip
    assert of(MessageSent, events) == [MessageSent(REPLY)] and not of(SendFailed, events)


def test_receiver_interrupt_mid_message_resends_it_whole_later() -> None:
    """EOT answering a middle frame: EOT, SendFailed(requeued), and after 15 s the message again from FN 1."""
    link = AstmLink()
    events = converse(link, [("send", REPLY), ("<<", ENQ), (">>", ACK), *acked(FRAMES[:1]), ("<<", FRAMES[1]),
                             (">>", EOT), ("<<", EOT), ("at", 14.0), ("at", 15.0), ("<<", ENQ), (">>", ACK),
                             *acked(FRAMES), ("<<", EOT)])  # fmt: skip
    assert of(SendFailed, events) == [SendFailed("receiver interrupt after frame 2", REPLY, True)]
    assert of(MessageSent, events) == [MessageSent(REPLY)]


def test_after_an_interrupt_we_bid_once_the_instruments_session_ends() -> None:
    """The instrument uses the interrupt to send; right after its EOT we bid again."""
    link = AstmLink()
    events = converse(link, [("send", REPLY), ("<<", ENQ), (">>", ACK), ("<<", FRAMES[0]), (">>", EOT), ("<<", EOT),
                             ("at", 1.0), (">>", ENQ), ("<<", ACK), (">>", frame(1, RESULT)), ("<<", ACK),
                             (">>", EOT), ("<<", ENQ)])  # fmt: skip
    assert [e.text for e in of(MessageReceived, events)] == [RESULT]  # type: ignore[attr-defined]


# --- establishment: busy, timeouts, contention ---------------------------------------------------------
def test_nak_to_enq_waits_ten_seconds_and_gives_up_after_six_bids() -> None:
    """A busy receiver: each bid 10 s after the last NAK; after the 6th NAK the message is dropped."""
    script: list[Step] = [("send", REPLY), ("<<", ENQ), (">>", NAK)]
    for bid in range(1, 6):
        script += [("at", bid * 10.0 - 0.01), ("at", bid * 10.0), ("<<", ENQ), (">>", NAK)]
    link = AstmLink()
    events = converse(link, [*script, ("at", 100.0)])
    assert [(e.reason, e.requeued) for e in of(SendFailed, events)] == (  # type: ignore[attr-defined]
        [("receiver busy: NAK to ENQ", True)] * 5 + [("receiver busy: NAK to ENQ", False)])
    assert link.pending_messages == () and link.get_timer() is None


def test_busy_receiver_is_not_asked_again_before_ten_seconds() -> None:
    """After a NAK to ENQ the timer is 10 s away and nothing is sent before it."""
    link = AstmLink()
    converse(link, [("send", REPLY), ("<<", ENQ), (">>", NAK), ("at", 9.99)])
    assert link.get_timer() == 10.0 and link.state == IDLE


def test_no_reply_to_enq_times_out_after_fifteen_seconds() -> None:
    """No answer to our ENQ within 15 s: EOT, SendFailed(requeued), and a new bid 10 s later."""
    link = AstmLink()
    events = converse(link, [("send", REPLY), ("<<", ENQ), ("at", 14.9), ("at", 15.0), ("<<", EOT),
                             ("at", 25.0), ("<<", ENQ)])  # fmt: skip
    assert of(SendFailed, events) == [SendFailed("no reply to ENQ within 15 s", REPLY, True)]
    assert link.state == BIDDING


def test_no_reply_to_a_frame_times_out_after_fifteen_seconds() -> None:
    """No answer to a frame within 15 s of sending it: EOT and SendFailed(requeued)."""
    link = AstmLink()
    link.send_message(REPLY)
    link.receive_data(ACK, 0.0)
    link.receive_data(ACK, 5.0)
    assert link.data_to_send() == ENQ + FRAMES[0] + FRAMES[1] and link.get_timer() == 20.0
    link.handle_timer(20.0)
    assert link.data_to_send() == EOT and link.state == IDLE
    assert of(SendFailed, list(iter(link.next_event, None))) == [
        SendFailed("no reply to frame 2 within 15 s", REPLY, True)]


def test_late_ack_after_the_timeout_is_ignored() -> None:
    """An ACK that arrives after our deadline meets an idle link (EOT was sent) and sends nothing."""
    link = AstmLink()
    converse(link, [("send", REPLY), ("<<", ENQ), (">>", ACK), ("<<", FRAMES[0]), ("at", 15.0), ("<<", EOT),
                    (">>", ACK)])  # fmt: skip
    assert link.state == IDLE and link.get_timer() == 25.0


def test_contention_the_instrument_wins() -> None:
    """An ENQ while we await the answer to ours: we ACK it, receive its message, and bid after its EOT."""
    link = AstmLink()
    events = converse(link, [("send", REPLY), ("<<", ENQ), (">>", ENQ), ("<<", ACK), (">>", frame(1, RESULT)),
                             ("<<", ACK), (">>", EOT), ("<<", ENQ), (">>", ACK), *acked(FRAMES),
                             ("<<", EOT)])  # fmt: skip
    assert ContentionYielded() in events
    assert [e.text for e in of(MessageReceived, events)] == [RESULT]  # type: ignore[attr-defined]
    assert of(MessageSent, events) == [MessageSent(REPLY)] and not of(SendFailed, events)


def test_after_contention_a_silent_instrument_delays_our_bid_twenty_seconds() -> None:
    """We yielded, the instrument sent nothing: the receiver times out, and we bid 20 s after yielding."""
    link = AstmLink(frame_timeout=5.0)
    converse(link, [("send", REPLY), ("<<", ENQ), ("at", 1.0), (">>", ENQ), ("<<", ACK), ("at", 6.0),
                    ("at", 20.9), ("at", 21.0), ("<<", ENQ)])  # fmt: skip


def test_strict_instrument_re_bidding_after_contention_is_acked_again() -> None:
    """An instrument that ignores our ACK and repeats its ENQ a second later is ACKed again (restart)."""
    events = converse(AstmLink(), [("send", REPLY), ("<<", ENQ), (">>", ENQ), ("<<", ACK), ("at", 1.0),
                                   (">>", ENQ), ("<<", ACK), (">>", frame(1, RESULT)), ("<<", ACK)])  # fmt: skip
    assert [e.text for e in of(MessageReceived, events)] == [RESULT]  # type: ignore[attr-defined]


def test_eot_and_noise_while_bidding_are_ignored() -> None:
    """While awaiting the answer to our ENQ, EOT and noise change nothing; the ACK then starts the transfer."""
    link = AstmLink()
    converse(link, [("send", REPLY), ("<<", ENQ), (">>", EOT + b"xx"), (">>", ACK), ("<<", FRAMES[0])])
    assert link.state == SENDING


# --- the sender role next to the receiver role --------------------------------------------------------
def test_a_message_queued_while_receiving_waits_for_the_instruments_eot() -> None:
    """A reply queued during the instrument's session (the host-query flow) goes out right after its EOT."""
    link = AstmLink()
    query = b"H|\\^&|||c501^1|||||host|TSREQ^REAL|P|1\rQ|1|^^000004^40^0^5^^S1^SC||ALL||||||||O\rL|1|N\r"
    events = converse(link, [(">>", ENQ), ("<<", ACK), (">>", frame(1, query)), ("<<", ACK), ("send", REPLY),
                             (">>", EOT), ("<<", ENQ), (">>", ACK), *acked(FRAMES), ("<<", EOT)])  # fmt: skip
    assert [e.text for e in of(MessageReceived, events)] == [query]  # type: ignore[attr-defined]


def test_a_message_queued_while_awaiting_a_commit_waits() -> None:
    """send_message during AWAITING_COMMIT only queues; nothing is written until the receive session ends."""
    link = AstmLink()
    link.receive_data(ENQ + frame(1, RESULT), 0.0)
    assert link.state == "AWAITING_COMMIT"
    link.send_message(REPLY)
    link.message_committed()
    assert link.data_to_send() == ACK + ACK and link.state == RECEIVING
    link.receive_data(EOT, 1.0)
    assert link.data_to_send() == ENQ


def test_send_message_now_fires_an_expired_timer_first() -> None:
    """send_message(now=...) handles a due receiver timeout before queueing, then bids."""
    link = AstmLink(frame_timeout=5.0)
    link.receive_data(ENQ, 0.0)
    link.data_to_send()
    link.send_message(REPLY, now=6.0)
    assert link.data_to_send() == ENQ and link.get_timer() == 21.0


# --- two engines back to back (h11's ConnectionPair) ------------------------------------------------
def shuttle(a: AstmLink, b: AstmLink, *, now: float = 0.0, split: bool = False) -> tuple[list[Event], list[Event]]:
    """Carry bytes between ``a`` and ``b`` (one byte per read when ``split``) until both are quiet."""
    seen: tuple[list[Event], list[Event]] = ([], [])
    for _ in range(100_000):
        moved = False
        for side, (src, dst) in enumerate(((a, b), (b, a))):
            data = src.data_to_send()
            if not data:
                continue
            for chunk in ([data[i : i + 1] for i in range(len(data))] if split else [data]):
                moved = True
                dst.receive_data(chunk, now)
                while (event := dst.next_event()) is not None or dst.state == "AWAITING_COMMIT":
                    if event is None:
                        dst.message_committed()
                    else:
                        seen[1 - side].append(event)
        while (event := a.next_event()) is not None:
            seen[0].append(event)
        if not moved:
            return seen
    raise AssertionError("the engines never went quiet")


@pytest.mark.parametrize("name", FRAMED_SAMPLES)
@pytest.mark.parametrize("size", [LEGACY_MAX_TEXT, 7, 63_993])
def test_every_sample_message_crosses_two_engines(name: str, size: int) -> None:
    """Each sample message queued on a sender arrives unchanged at a receiver, whatever the frame size."""
    sender, receiver = AstmLink(max_send_text=size), AstmLink()
    texts = expected_texts(name)
    for text in texts:
        sender.send_message(text)
    sent, got = shuttle(sender, receiver)
    assert [e.text for e in of(MessageReceived, got)] == texts  # type: ignore[attr-defined]
    assert [e.text for e in of(MessageSent, sent)] == texts  # type: ignore[attr-defined]
    assert sender.state == receiver.state == IDLE and sender.pending_messages == ()


@pytest.mark.parametrize("name", FRAMED_SAMPLES)
def test_sample_messages_cross_byte_by_byte_and_get_a_reply(name: str) -> None:
    """One byte per read both ways: the sample arrives, and the receiver's reply comes back in a new session."""
    analyzer, labmw = AstmLink(), AstmLink()
    texts = expected_texts(name)
    for text in texts:
        analyzer.send_message(text)
    _, got = shuttle(analyzer, labmw, split=True)
    assert [e.text for e in of(MessageReceived, got)] == texts  # type: ignore[attr-defined]
    labmw.send_message(REPLY)
    back, _ = shuttle(analyzer, labmw, split=True)
    assert [e.text for e in of(MessageReceived, back)] == [REPLY]  # type: ignore[attr-defined]


# --- whatever the receiver answers --------------------------------------------------------------------
REPLIES = st.sampled_from([ACK, ACK, ACK, NAK, EOT, ENQ, b"x", b"\r\n"])


@settings(max_examples=300, deadline=None)
@given(replies=st.lists(st.tuples(REPLIES, st.sampled_from([0.0, 1.0, 16.0, 31.0])), max_size=120),
       count=st.integers(1, 3))  # fmt: skip
def test_any_replies_account_for_every_message_once(replies: list[tuple[bytes, float]], count: int) -> None:
    """Whatever comes back, the output is well formed and no message is both sent and dropped, or sent twice."""
    link = AstmLink(frame_timeout=5.0, max_send_text=16)
    texts = [REPLY.replace(b"000004", b"%06d" % i) for i in range(count)]
    for text in texts:
        link.send_message(text)
    now, out, events = 0.0, b"", []
    for data, step in replies:
        now += step
        link.handle_timer(now)
        link.receive_data(data, now)
        while (event := link.next_event()) is not None or link.state == "AWAITING_COMMIT":
            if event is None:
                link.message_committed()
            else:
                events.append(event)
        out += link.data_to_send()
    sent = [e.text for e in of(MessageSent, events)]  # type: ignore[attr-defined]
    dropped = [e.text for e in of(SendFailed, events) if not e.requeued]  # type: ignore[attr-defined]
    assert len(set(sent)) == len(sent) and not set(sent) & set(dropped)
    assert set(sent) | set(dropped) | set(link.pending_messages) == set(texts)
    reader = FrameReader()
    reader.feed(out)
    while (token := reader.next_token()) is not None:
        assert isinstance(token, Frame | ControlByte), token
        if isinstance(token, Frame):
            assert token.checksum_ok and token.received_checksum == token.received_checksum.upper()
            assert len(token.text) <= 16
        else:
            assert token.byte in (ENQ[0], EOT[0], ACK[0], NAK[0])

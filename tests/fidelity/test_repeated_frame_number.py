"""A frame that repeats the previous frame number is a retransmission only when its text is the same.

The shape that exposed it: a Sysmex XN QC capture with two valid, different frames both numbered 2
(and a Horiba stream after NAKed frames). Before, the second was ACKed as a duplicate and its result lost.
"""

from __future__ import annotations

from peers import ACK, ENQ, EOT, NAK, astm_frame

from labmw.wire.astm_events import DuplicateFrame, FrameRejected, MessageReceived
from labmw.wire.astm_link import REPEATED_FN_CHANGED, AstmLink

H = b"H|\\^&|||XN-350^00-22^11001^^^^^AB123||||||||E1394-97\r"
P = b"P|1\r"
ORDER = b"O|1||^^QC-1^B|^^^^WBC\\^^^^RBC|||||||Q\r"
R1 = b"R|1|^^^^WBC^1|6.93|10*3/uL||N||||||20261125090000\r"
R2 = b"R|2|^^^^RBC^1|4.48|10*6/uL||N||||||20261125090000\r"
L = b"L|1|N\r"


def _talk(link: AstmLink, data: bytes, now: float = 0.0) -> tuple[bytes, list[object]]:
    link.receive_data(data, now)
    events = []
    while (event := link.next_event()) is not None:
        events.append(event)
        if isinstance(event, MessageReceived):
            link.message_committed()
    return link.data_to_send(), events


def test_same_frame_number_with_other_text_is_naked_and_named() -> None:
    link = AstmLink()
    assert _talk(link, ENQ)[0] == ACK
    assert _talk(link, astm_frame(1, H + P + ORDER, final=False))[0] == ACK
    assert _talk(link, astm_frame(2, R1, final=False))[0] == ACK
    reply, events = _talk(link, astm_frame(2, R2, final=False))  # the XN capture's second "frame 2"
    assert reply == NAK, "a new frame under a repeated FN is not a retransmission: ACKing it loses R2"
    (rejected,) = [e for e in events if isinstance(e, FrameRejected)]
    assert rejected.fn == 2 and rejected.reason.startswith(REPEATED_FN_CHANGED)
    assert not [e for e in events if isinstance(e, DuplicateFrame)]
    # The sender numbers it right on its next try: accepted, and the message holds both results.
    assert _talk(link, astm_frame(3, R2, final=False))[0] == ACK
    reply, events = _talk(link, astm_frame(4, L))
    assert reply == ACK
    (message,) = [e for e in events if isinstance(e, MessageReceived)]
    assert message.text == H + P + ORDER + R1 + R2 + L
    assert _talk(link, EOT)[0] == b""


def test_true_retransmission_is_still_acked_and_dropped() -> None:
    link = AstmLink()
    _talk(link, ENQ)
    _talk(link, astm_frame(1, H + P + ORDER + R1, final=False))
    reply, events = _talk(link, astm_frame(1, H + P + ORDER + R1, final=False))  # our ACK was lost
    assert reply == ACK and events == [DuplicateFrame(1)]
    reply, events = _talk(link, astm_frame(2, L))
    (message,) = [e for e in events if isinstance(e, MessageReceived)]
    assert reply == ACK and message.text == H + P + ORDER + R1 + L
    # The final frame repeated after the message was stored: a retransmission too, not a new frame.
    reply, events = _talk(link, astm_frame(2, L))
    assert reply == ACK and events == [DuplicateFrame(2)]
    # ... but other text under that FN after the message is still refused.
    reply, events = _talk(link, astm_frame(2, H + L))
    assert reply == NAK and isinstance(events[0], FrameRejected)


def test_yumizen_capture_after_naked_frames_refuses_the_repeated_number() -> None:
    """The Horiba capture: after frames the receiver NAKs (out of sequence), a frame under the last accepted
    FN with other text (R|1) is refused and named, where it used to be ACKed as a duplicate and lost."""
    from samples import ASTM_SAMPLES

    link = AstmLink()
    data = (ASTM_SAMPLES / "horiba_yumizen_h500_1.astm").read_bytes()
    _reply, events = _talk(link, ENQ + data)
    rejected = [e for e in events if isinstance(e, FrameRejected)]
    assert [e.fn for e in rejected] == [1, 1, 1, 4, 5]
    assert rejected[-1].reason.startswith(REPEATED_FN_CHANGED), "R|1 under FN 5 is not a retransmission"
    assert not [e for e in events if isinstance(e, DuplicateFrame)], "nothing is ACKed and dropped"

"""MLLP framing: split and merged blocks, junk between blocks, oversize blocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labmw.wire.mllp import (
    CR,
    FS,
    VT,
    BlockReceived,
    BlockTooLarge,
    FrameEvent,
    JunkDiscarded,
    MllpFramer,
    frame,
)

MSG_1 = b"MSH|^~\\&|A|B|C|D|20240501101500||ORU^R01|1|P|2.5.1\rPID|||P1\r"
MSG_2 = b"MSH|^~\\&|A|B|C|D|20240501101501||ORU^R01|2|P|2.5.1\rOBX|1|NM|X||5\r"


def feed_chunks(framer: MllpFramer, chunks: list[bytes]) -> list[FrameEvent]:
    """Feed every chunk in order and collect all events."""
    events: list[FrameEvent] = []
    for chunk in chunks:
        events.extend(framer.feed(chunk))
    return events


def blocks(events: list[FrameEvent]) -> list[bytes]:
    """Payloads of the BlockReceived events, in order."""
    return [event.payload for event in events if isinstance(event, BlockReceived)]


def junk(events: list[FrameEvent]) -> int:
    """Total count of discarded junk bytes."""
    return sum(event.count for event in events if isinstance(event, JunkDiscarded))


def test_frame_wraps_payload_in_vt_and_fs_cr() -> None:
    """frame() puts VT before and FS CR after the payload, untouched."""
    assert frame(MSG_1) == b"\x0b" + MSG_1 + b"\x1c\r"
    assert (VT, FS, CR) == (b"\x0b", b"\x1c", b"\r")


def test_single_block_in_one_feed() -> None:
    """A whole block in one feed yields exactly one BlockReceived and nothing pending."""
    framer = MllpFramer()
    assert framer.feed(frame(MSG_1)) == [BlockReceived(payload=MSG_1)]
    assert framer.pending_bytes == 0


def test_two_blocks_merged_in_one_feed() -> None:
    """Two blocks in one read come out as two payloads in order."""
    framer = MllpFramer()
    events = framer.feed(frame(MSG_1) + frame(MSG_2))
    assert events == [BlockReceived(payload=MSG_1), BlockReceived(payload=MSG_2)]


def test_split_at_every_byte_boundary() -> None:
    """Cutting a two-block stream into two reads at any offset changes nothing."""
    stream = frame(MSG_1) + frame(MSG_2)
    for cut in range(len(stream) + 1):
        framer = MllpFramer()
        events = feed_chunks(framer, [stream[:cut], stream[cut:]])
        assert events == [BlockReceived(payload=MSG_1), BlockReceived(payload=MSG_2)], cut
        assert framer.pending_bytes == 0


def test_byte_by_byte_feeding() -> None:
    """Feeding one byte at a time (FS and CR in separate reads) still yields both blocks."""
    stream = frame(MSG_1) + frame(MSG_2)
    framer = MllpFramer()
    events = feed_chunks(framer, [stream[i : i + 1] for i in range(len(stream))])
    assert events == [BlockReceived(payload=MSG_1), BlockReceived(payload=MSG_2)]


def test_pending_bytes_counts_unfinished_block() -> None:
    """pending_bytes is the buffered part of an open block and drops to 0 when it completes."""
    framer = MllpFramer()
    assert framer.feed(VT + MSG_1[:10]) == []
    assert framer.pending_bytes == 10
    assert framer.feed(MSG_1[10:] + FS) == []
    assert framer.feed(CR) == [BlockReceived(payload=MSG_1)]
    assert framer.pending_bytes == 0


def test_nul_and_lf_between_blocks_are_discarded() -> None:
    """NUL and LF bytes between pipelined blocks are reported as junk, both blocks survive."""
    framer = MllpFramer()
    events = framer.feed(frame(MSG_1) + b"\x00\x00\n" + frame(MSG_2) + b"\r\n")
    assert events == [
        BlockReceived(payload=MSG_1),
        JunkDiscarded(count=3),
        BlockReceived(payload=MSG_2),
        JunkDiscarded(count=2),
    ]


def test_bytes_before_first_vt_are_junk() -> None:
    """Text before the first VT (a sender without framing) is dropped, then framing resumes."""
    framer = MllpFramer()
    events = framer.feed(b"MSH|garbage\r" + frame(MSG_1))
    assert events == [JunkDiscarded(count=12), BlockReceived(payload=MSG_1)]


def test_stray_lf_after_block_does_not_lose_the_next_one() -> None:
    """The hl7.mllp failure mode (LF after FS CR kills the next frame) does not happen here."""
    framer = MllpFramer()
    events = feed_chunks(framer, [frame(MSG_1) + b"\n", frame(MSG_2)])
    assert blocks(events) == [MSG_1, MSG_2]
    assert junk(events) == 1


def test_new_vt_inside_open_block_abandons_it() -> None:
    """A VT before FS CR means the sender restarted: the partial block becomes junk."""
    framer = MllpFramer()
    events = framer.feed(VT + b"MSH|half" + frame(MSG_2))
    assert events == [JunkDiscarded(count=9), BlockReceived(payload=MSG_2)]


def test_fs_without_cr_stays_in_payload() -> None:
    """Only FS followed by CR ends a block; a lone FS is payload."""
    framer = MllpFramer()
    assert framer.feed(VT + b"a" + FS + b"b" + FS + CR) == [BlockReceived(payload=b"a\x1cb")]


def test_empty_block_is_delivered() -> None:
    """VT FS CR is an (empty) block; judging it is the caller's business."""
    assert MllpFramer().feed(VT + FS + CR) == [BlockReceived(payload=b"")]


def test_block_of_exactly_max_size_is_accepted() -> None:
    """A payload of max_size bytes is accepted even when FS and CR arrive separately."""
    framer = MllpFramer(max_size=8)
    events = feed_chunks(framer, [VT + b"12345678" + FS, CR])
    assert events == [BlockReceived(payload=b"12345678")]


def test_block_one_byte_over_max_size_is_rejected() -> None:
    """A payload of max_size + 1 bytes is reported as too large, not delivered."""
    framer = MllpFramer(max_size=8)
    assert framer.feed(frame(b"123456789")) == [BlockTooLarge(size=9)]


def test_oversize_block_is_bounded_and_next_block_received() -> None:
    """Memory stays bounded while an oversize block streams in, and the next block is received."""
    framer = MllpFramer(max_size=64)
    big = frame(b"X" * 10_000)
    events: list[FrameEvent] = []
    for i in range(0, len(big), 7):
        events.extend(framer.feed(big[i : i + 7]))
        assert framer.pending_bytes <= 64 + 1
    events.extend(framer.feed(frame(MSG_1[:60])))
    assert [type(event) for event in events] == [BlockTooLarge, BlockReceived]
    assert isinstance(events[0], BlockTooLarge) and events[0].size > 64
    assert blocks(events) == [MSG_1[:60]]


def test_oversize_block_in_a_single_feed_is_never_buffered() -> None:
    """One huge read with no end byte is rejected without copying it into the buffer."""
    framer = MllpFramer(max_size=64)
    assert framer.feed(VT + b"Y" * 1_000_000) == [BlockTooLarge(size=1_000_000)]
    assert framer.pending_bytes == 0
    assert framer.feed(b"Y" * 10 + FS + CR + frame(b"ok")) == [BlockReceived(payload=b"ok")]


def test_max_size_must_be_positive() -> None:
    """A framer with a non-positive limit is a programming error."""
    with pytest.raises(ValueError):
        MllpFramer(max_size=0)


STREAM = (
    b"\x00"
    + frame(MSG_1)
    + b"\n"
    + VT
    + b"abandoned"
    + frame(MSG_2)
    + frame(b"Z" * 300)
    + b"\x00\x00"
    + frame(MSG_1)
)


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking_gives_the_same_outcome(cuts: list[int]) -> None:
    """However the stream is cut into reads, the blocks, junk total and rejections are the same."""
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    events = feed_chunks(MllpFramer(max_size=256), chunks)
    assert blocks(events) == [MSG_1, MSG_2, MSG_1]
    assert junk(events) == 1 + 1 + 10 + 2
    assert sum(isinstance(event, BlockTooLarge) for event in events) == 1


def test_oversized_block_cut_between_fs_and_cr_still_counts_following_junk() -> None:
    """Regression (found by hypothesis): a read ending with an oversized block's FS keeps junk counts exact."""
    cut = STREAM.index(b"Z" * 300) + 300 + 1  # just after that block's FS
    events = feed_chunks(MllpFramer(max_size=256), [STREAM[:cut], STREAM[cut:]])
    assert blocks(events) == [MSG_1, MSG_2, MSG_1]
    assert junk(events) == 1 + 1 + 10 + 2

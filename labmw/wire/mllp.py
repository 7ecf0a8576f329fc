"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 1), sans-I/O.

A block is ``VT payload FS CR`` (HL7 "Transport Specification: MLLP", section 2). TCP carries no
message boundaries, so a block may arrive split over many reads, or several blocks (plus junk such
as NUL or LF that pipelining senders put between them) in one read. :class:`MllpFramer` buffers
exactly one unfinished block, reports everything it drops as an event, and resynchronises on the
next VT; it never raises on peer input and never grows beyond ``max_size`` plus one read.

The framer does not decode or validate the payload: HL7 parsing, charsets and ACKs are the
caller's business (see :mod:`labmw.wire.hl7_codec`).
"""

from __future__ import annotations

from dataclasses import dataclass

VT = b"\x0b"  # <SB> start block
FS = b"\x1c"  # <EB> end block
CR = b"\r"  # carriage return that must follow <EB>

_END = FS + CR
_VT_BYTE = VT[0]
_FS_BYTE = FS[0]
_CR_BYTE = CR[0]

DEFAULT_MAX_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockReceived:
    """A complete block arrived; ``payload`` is the bytes between VT and FS CR."""

    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class JunkDiscarded:
    """``count`` bytes were dropped outside a block (or an unfinished block was abandoned)."""

    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockTooLarge:
    """A block grew past ``max_size`` and was dropped; ``size`` is how many bytes had been seen.

    The rest of that block is skipped silently up to its FS CR (or a new VT); nothing of it is
    kept in memory.
    """

    size: int


FrameEvent = BlockReceived | JunkDiscarded | BlockTooLarge


def frame(payload: bytes) -> bytes:
    """Wrap one HL7 message in an MLLP block.

    Input: the encoded message (segments ending in CR, no framing bytes).
    Output: ``VT + payload + FS + CR``.
    Raises: nothing; the payload is not inspected (the HL7 encoder escapes control characters).
    """
    return VT + bytes(payload) + _END


class MllpFramer:
    """Turn a stream of bytes into MLLP blocks.

    States: *hunting* (outside a block, looking for VT), *in block* (buffering until FS CR) and
    *skipping* (dropping the tail of an oversized block up to its FS CR or the next VT).
    """

    __slots__ = ("_buffer", "_fs_pending", "_max_size", "_state")

    _HUNTING = "hunting"
    _IN_BLOCK = "in-block"
    _SKIPPING = "skipping"

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        """Create a framer that accepts payloads of at most ``max_size`` bytes.

        Raises: ``ValueError`` when ``max_size`` is not positive.
        """
        if max_size < 1:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self._max_size = max_size
        self._buffer = bytearray()
        self._state = self._HUNTING
        self._fs_pending = False  # skipping: the previous chunk ended with FS

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished block held in memory (0 between blocks)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Consume ``data`` (any chunk of the stream) and return what it completed, in order.

        Input: bytes as read from the transport; empty input is allowed.
        Output: ``BlockReceived`` for every finished block, ``JunkDiscarded`` for bytes dropped
        outside a block, ``BlockTooLarge`` when a block passed ``max_size``.
        Raises: nothing; bad peer input becomes events, never exceptions.
        """
        events: list[FrameEvent] = []
        view = bytes(data)
        pos = 0
        # A FS at the end of the previous chunk may be completed by a CR starting this one.
        if self._state == self._IN_BLOCK and view and self._buffer.endswith(FS):
            if view[0] == _CR_BYTE:
                del self._buffer[-1]
                events.append(BlockReceived(payload=bytes(self._buffer)))
                self._buffer.clear()
                self._state = self._HUNTING
                pos = 1
        while pos < len(view):
            if self._state == self._HUNTING:
                pos = self._hunt(view, pos, events)
            elif self._state == self._SKIPPING:
                pos = self._skip(view, pos)
            else:
                pos = self._collect(view, pos, events)
        return events

    # --- states ---------------------------------------------------------------------------------

    def _hunt(self, view: bytes, pos: int, events: list[FrameEvent]) -> int:
        # Anything outside a block is junk (NUL/LF between pipelined frames, connect#249); we
        # drop it and resynchronise on the next start byte (HL7.md "Spec nuggets" 1).
        start = view.find(VT, pos)
        end = len(view) if start < 0 else start
        if end > pos:
            events.append(JunkDiscarded(count=end - pos))
        if start < 0:
            return len(view)
        self._state = self._IN_BLOCK
        return start + 1

    def _skip(self, view: bytes, pos: int) -> int:
        # The oversized block was already reported by BlockTooLarge: drop the rest of it
        # silently up to its FS CR (after which we hunt as usual) or up to a new VT.
        if self._fs_pending and view[pos] == _CR_BYTE:
            self._fs_pending = False
            self._state = self._HUNTING
            return pos + 1
        self._fs_pending = False
        end = view.find(_END, pos)
        restart = view.find(VT, pos)
        if restart >= 0 and (end < 0 or restart < end):
            self._state = self._IN_BLOCK
            return restart + 1
        if end >= 0:
            self._state = self._HUNTING
            return end + 2
        self._fs_pending = view.endswith(FS)
        return len(view)

    def _collect(self, view: bytes, pos: int, events: list[FrameEvent]) -> int:
        end = view.find(_END, pos)
        restart = view.find(VT, pos)
        if restart >= 0 and (end < 0 or restart < end):
            # A new VT inside an open block: the sender gave up on the previous block (a VT
            # cannot occur in HL7 data, control characters must be escaped). Abandon the
            # partial block, counting its VT too, and start over at the new one.
            events.append(JunkDiscarded(count=1 + len(self._buffer) + restart - pos))
            self._buffer.clear()
            return restart + 1
        if end >= 0:
            size = len(self._buffer) + end - pos
            if size > self._max_size:
                events.append(BlockTooLarge(size=size))
            else:
                self._buffer += view[pos:end]
                events.append(BlockReceived(payload=bytes(self._buffer)))
            self._buffer.clear()
            self._state = self._HUNTING
            return end + 2
        # No end in this chunk. A trailing FS may still become FS CR, so it does not count
        # towards the payload size yet.
        size = len(self._buffer) + len(view) - pos
        payload_size = size - 1 if view.endswith(FS) else size
        if payload_size > self._max_size:
            events.append(BlockTooLarge(size=size))
            self._buffer.clear()
            self._state = self._SKIPPING
            # The chunk may end with the FS of this very block: its CR comes next.
            self._fs_pending = view.endswith(FS)
        else:
            self._buffer += view[pos:]
        return len(view)

"""Events emitted by :class:`labmw.wire.astm_link.AstmLink`.

Frozen, slotted dataclasses named in the past tense (STYLE.md §7.2). The engine never logs; the
pump logs these events (STYLE.md §7.1). Fields are positional so that ``match`` patterns such as
``case MessageReceived(text, raw):`` work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class LinkEstablished:
    """We received ENQ and answered ACK: a transfer phase begins, expected FN = 1 (ASTM.md §1.3)."""


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """We answered a frame with NAK; ``reason`` says why, ``fn`` is its frame number if readable."""

    reason: str
    fn: int | None


@dataclass(frozen=True, slots=True)
class DuplicateFrame:
    """A retransmission of the last accepted frame (our ACK was lost): ACKed and discarded."""

    fn: int


@dataclass(frozen=True, slots=True)
class ChecksumMismatchTolerated:
    """Checksum policy "warn": a frame with a wrong checksum was accepted anyway."""

    fn: int
    expected: str
    received: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete H..L message arrived; its final frame is not ACKed until the pump commits.

    ``text`` is the reassembled frame text (records each ending with CR); ``raw`` is the bytes of
    the frames that carried it, STX through the checksum, for the audit trail.
    """

    text: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class MessageDiscarded:
    """An incomplete (or too large) message was dropped; ``reason`` is e.g. "eot" or "timeout"."""

    reason: str
    text: bytes


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """The sender sent EOT: the link is idle again (we never answer EOT, ASTM.md §1.8)."""


@dataclass(frozen=True, slots=True)
class BytesIgnored:
    """``count`` bytes meant nothing in link state ``state`` and were dropped."""

    count: int
    state: str


# --- sender role (ASTM.md §1.3, §1.5, §1.7) ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MessageSent:
    """Every frame of a queued message was accepted (ACK, or EOT as a receiver interrupt)."""

    text: bytes


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A try to send a queued message failed; ``reason`` says how.

    ``requeued`` True: the message stays first in the queue and is bid for again after a hold-off.
    False: the engine gave up on it (6 failed tries, ASTM.md §1.3 and §1.5) and dropped it.
    """

    reason: str
    text: bytes
    requeued: bool


@dataclass(frozen=True, slots=True)
class FrameRefused:
    """The receiver answered our frame ``fn`` with ``reply`` (NAK or another byte): it is sent again."""

    fn: int
    reply: str


@dataclass(frozen=True, slots=True)
class ContentionYielded:
    """The instrument bid (ENQ) while we awaited the reply to ours: we ACKed it and now receive."""


@dataclass(frozen=True, slots=True)
class AckConfirmed:
    """The sender went on (EOT or its next frame) promptly after our ACK of a committed message.

    So that ACK arrived: an identical message later on this link is a new one, not a resend of a
    message whose final ACK was lost (ASTM.md 5.4). ``token`` is what the pump passed to
    :meth:`AstmLink.message_committed` (the stored message's id).
    """

    token: int


#: Any event :meth:`AstmLink.next_event` can return.
Event: TypeAlias = (
    LinkEstablished
    | FrameRejected
    | DuplicateFrame
    | ChecksumMismatchTolerated
    | MessageReceived
    | MessageDiscarded
    | TransferEnded
    | BytesIgnored
    | MessageSent
    | SendFailed
    | FrameRefused
    | ContentionYielded
    | AckConfirmed
)

"""Connection accounting for listeners: per-connection activity, eviction order, refusal aggregation.

Pure bookkeeping (the clock comes in as ``now``); the endpoints and the service act on it.

* :class:`Activity` is one connection's record: when it opened, when it last sent a byte, how
  many bytes and messages, and why it ended.
* :func:`eviction_victim` picks which connection a full listener closes to let a new one in: the
  idle ones that never delivered a message go first, oldest activity first, so a flood of silent
  connections cannot lock a real analyzer out (issue #10 "connection slots").
* :class:`RefusalLog` turns refused connections into one audit row per peer host and reason per
  interval, so thousands of refusals cost a handful of rows (issue #17).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: A connection that sent a byte within this many seconds is busy, not idle: never evicted.
IDLE_GRACE = 2.0
#: Refusals of one peer host are audited at most once per this many seconds (with their count).
REFUSAL_INTERVAL = 60.0


@dataclass(slots=True)
class Activity:
    """One live connection's counters (monotonic times in seconds)."""

    peer: str
    opened_at: float
    last_at: float
    bytes_in: int = 0
    messages: int = 0
    #: Set by whoever ends the connection on purpose (eviction, stop); else the pump says how.
    ended: str = ""

    def saw(self, count: int, now: float) -> None:
        if count:
            self.bytes_in += count
            self.last_at = now

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"peer": self.peer, "seconds": round(now - self.opened_at, 3), "bytes": self.bytes_in,
                "messages": self.messages}


def eviction_victim(connections: Iterable[Activity], now: float) -> Activity | None:
    """The connection to close for a newcomer, or None when every one is busy.

    Idle means no byte for :data:`IDLE_GRACE` seconds, or none ever. Those that never delivered a
    message go first, then those that never sent a byte, then the least recently active.
    """
    idle = [c for c in connections if not c.ended and (c.bytes_in == 0 or now - c.last_at >= IDLE_GRACE)]
    if not idle:
        return None
    return min(idle, key=lambda c: (c.messages > 0, c.bytes_in > 0, c.last_at))


@dataclass(slots=True)
class _Refusals:
    reason: str
    first_at: float
    count: int = 0
    peers: set[str] = field(default_factory=set)


class RefusalLog:
    """Aggregates refused connections per (host, reason): the first is reported at once, the rest
    once per :data:`REFUSAL_INTERVAL` as a count."""

    def __init__(self, interval: float = REFUSAL_INTERVAL) -> None:
        self.interval = interval
        self._open: dict[tuple[str, str], _Refusals] = {}

    def refused(self, peer: str, reason: str, now: float) -> list[dict[str, Any]]:
        """Note one refusal; returns the audit records due now (the first of an interval, and any
        interval that has run out)."""
        host = peer.rsplit(":", 1)[0]
        due = self.due(now)
        key = (host, reason)
        if key not in self._open:
            self._open[key] = _Refusals(reason=reason, first_at=now)
            due.append({"peer": peer, "host": host, "reason": reason, "count": 1, "first": True})
            return due
        entry = self._open[key]
        entry.count += 1
        if len(entry.peers) < 5:
            entry.peers.add(peer)
        return due

    def due(self, now: float, *, flush: bool = False) -> list[dict[str, Any]]:
        """The counts of intervals that have run out (all of them when ``flush``)."""
        records = []
        for key, entry in list(self._open.items()):
            if flush or now - entry.first_at >= self.interval:
                del self._open[key]
                if entry.count:
                    records.append({"host": key[0], "reason": entry.reason, "count": entry.count,
                                    "seconds": round(now - entry.first_at, 3), "sample_peers": sorted(entry.peers)})
        return records

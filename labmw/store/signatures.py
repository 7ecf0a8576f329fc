"""Second-person release (issue 15): the first signature on a held result that needs two people.

The row is written by the first user's release (still held) and completed in the same transaction as
the second user's release or anyone's rejection; both steps are audit events as well.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from labmw.errors import StoreError


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseSignature:
    result_id: int
    needs: tuple[str, ...]  # why two people are needed (CRITICAL, QC_FAILED, ...)
    first_actor: str
    first_reason: str
    first_at: str
    second_actor: str = ""
    second_reason: str = ""
    completed_at: str = ""
    outcome: str = "pending"  # pending, released, rejected

    def as_dict(self) -> dict[str, Any]:
        return {"result_id": self.result_id, "needs": list(self.needs), "first_actor": self.first_actor,
                "first_reason": self.first_reason, "first_at": self.first_at, "second_actor": self.second_actor,
                "second_reason": self.second_reason, "completed_at": self.completed_at or None,
                "outcome": self.outcome}


def get(conn: sqlite3.Connection, result_id: int) -> ReleaseSignature | None:
    row = conn.execute("SELECT * FROM release_signatures WHERE result_id = ?", (result_id,)).fetchone()
    if row is None:
        return None
    return ReleaseSignature(result_id=row["result_id"], needs=tuple(json.loads(row["needs"])),
                            first_actor=row["first_actor"], first_reason=row["first_reason"],
                            first_at=row["first_at"], second_actor=row["second_actor"],
                            second_reason=row["second_reason"], completed_at=row["completed_at"] or "",
                            outcome=row["outcome"])


def add_first(conn: sqlite3.Connection, result_id: int, *, needs: tuple[str, ...], actor: str, reason: str,
              now: datetime) -> ReleaseSignature:
    """Record the first signature; StoreError when the result already has one."""
    existing = get(conn, result_id)
    if existing is not None:
        raise StoreError(f"result {result_id} already has a release request by {existing.first_actor} "
                         f"({existing.first_at[:19]})")
    conn.execute("INSERT INTO release_signatures (result_id, needs, first_actor, first_reason, first_at)"
                 " VALUES (?, ?, ?, ?, ?)", (result_id, json.dumps(list(needs)), actor, reason, now.isoformat()))
    found = get(conn, result_id)
    assert found is not None
    return found


def complete(conn: sqlite3.Connection, result_id: int, *, outcome: str, actor: str, reason: str,
             now: datetime) -> None:
    conn.execute("UPDATE release_signatures SET second_actor = ?, second_reason = ?, completed_at = ?, outcome = ?"
                 " WHERE result_id = ? AND outcome = 'pending'", (actor, reason, now.isoformat(), outcome, result_id))

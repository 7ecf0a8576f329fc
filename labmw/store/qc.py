"""QC storage: control runs and their results (tables of migration 5), behind the Store/Tx interface.

:class:`QcTx` works inside a pipeline transaction (``tx.qc``); :class:`QcStore` is the CLI's and the
daemon status's view (``store.qc``), with the one write a person makes: a documented override.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from labmw.errors import StoreError

if TYPE_CHECKING:
    from labmw.store.sqlite import Store


@dataclass(frozen=True, slots=True, kw_only=True)
class QcResultRow:
    material: str
    level: int
    lot: str
    specimen: str
    test_code: str
    raw_value: str
    value: Decimal | None
    units: str
    mean: Decimal
    sd: Decimal
    z: Decimal | None
    completed_at: str

    def as_dict(self) -> dict[str, Any]:
        return {"material": self.material, "level": self.level, "lot": self.lot, "specimen": self.specimen,
                "test_code": self.test_code, "value": self.raw_value, "units": self.units, "mean": str(self.mean),
                "sd": str(self.sd), "z": None if self.z is None else str(self.z), "completed_at": self.completed_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class QcRun:
    id: int
    message_id: int
    analyzer: str
    method: str
    received_at: str
    status: str  # "accepted" or "rejected"
    violated: tuple[str, ...]
    warnings: tuple[str, ...]
    override_reason: str
    override_actor: str
    overridden_at: str
    results: tuple[QcResultRow, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "message_id": self.message_id, "analyzer": self.analyzer, "method": self.method,
                "received_at": self.received_at, "status": self.status, "accepted": self.accepted,
                "rules_violated": list(self.violated), "warnings": list(self.warnings),
                "override": None if not self.override_actor else {
                    "reason": self.override_reason, "actor": self.override_actor, "at": self.overridden_at},
                "results": [r.as_dict() for r in self.results]}


class QcTx:
    """QC writes and reads inside one pipeline transaction."""

    def __init__(self, conn: sqlite3.Connection, now: datetime) -> None:
        self._conn = conn
        self._now = now

    def add_run(self, *, message_id: int, analyzer: str, method: str, violated: tuple[str, ...],
                warnings: tuple[str, ...]) -> int:
        cur = self._conn.execute(
            "INSERT INTO qc_runs (message_id, analyzer, method, received_at, status, violated, warnings)"
            " VALUES (?,?,?,?,?,?,?)",
            (message_id, analyzer, method, self._now.isoformat(), "rejected" if violated else "accepted",
             json.dumps(list(violated)), json.dumps(list(warnings))))
        return int(cur.lastrowid or 0)

    def add_result(self, *, run_id: int, material: str, level: int, lot: str, specimen: str, test_code: str,
                   raw_value: str, value: Decimal | None, units: str, mean: Decimal, sd: Decimal,
                   z: Decimal | None, completed_at: datetime | None) -> int:
        cur = self._conn.execute(
            "INSERT INTO qc_results (run_id, material, level, lot, specimen, test_code, raw_value, value, units,"
            " mean, sd, z, completed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, material, level, lot, specimen, test_code, raw_value, None if value is None else str(value),
             units, str(mean), str(sd), None if z is None else str(z),
             completed_at.isoformat() if completed_at else None))
        return int(cur.lastrowid or 0)

    def history(self, *, analyzer: str, method: str, limit: int = 20) -> list[tuple[int, Decimal]]:
        """(level, z) of the latest ``limit`` observations of accepted runs, oldest first."""
        rows = self._conn.execute(
            "SELECT q.level, q.z FROM qc_results q JOIN qc_runs r ON r.id = q.run_id WHERE r.analyzer = ?"
            " AND r.method = ? AND r.status = 'accepted' AND q.z IS NOT NULL ORDER BY q.id DESC LIMIT ?",
            (analyzer, method, limit)).fetchall()
        return [(int(row[0]), Decimal(row[1])) for row in reversed(rows)]

    def latest(self, *, analyzer: str, method: str) -> tuple[QcRun | None, QcRun | None]:
        """(the latest run, the latest accepted run) of ``analyzer`` x ``method``."""
        return _latest(self._conn, analyzer, method)

    def mark_control(self, result_id: int) -> None:
        """Mark a stored result as a control (held QC_UNKNOWN_MATERIAL): review can never release it."""
        self._conn.execute("UPDATE results SET role = 'qc' WHERE id = ?", (result_id,))


class QcStore:
    """QC reads for the CLI and `labmw status`, and the documented override."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._conn: sqlite3.Connection = store._conn

    def runs(self, *, analyzer: str | None = None, method: str | None = None, since: datetime | None = None,
             level: int | None = None) -> list[QcRun]:
        """Runs oldest first, with their results (only those of ``level`` when given)."""
        where, args = ["1=1"], []
        for column, value in (("analyzer", analyzer), ("method", method)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("received_at >= ?")
            args.append(since.isoformat())
        try:
            rows = self._conn.execute(f"SELECT * FROM qc_runs WHERE {' AND '.join(where)} ORDER BY id",
                                      args).fetchall()
            runs = [_run(self._conn, row) for row in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read QC runs: {exc}") from exc
        if level is not None:
            runs = [_with_level(run, level) for run in runs]
            runs = [run for run in runs if run.results]
        return runs

    def run(self, run_id: int) -> QcRun:
        row = self._conn.execute("SELECT * FROM qc_runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no QC run with id {run_id}")
        return _run(self._conn, row)

    def pairs(self) -> list[tuple[str, str]]:
        """Every analyzer x method that has had a QC run."""
        return [(r[0], r[1]) for r in self._conn.execute(
            "SELECT DISTINCT analyzer, method FROM qc_runs ORDER BY analyzer, method")]

    def latest(self, analyzer: str, method: str) -> tuple[QcRun | None, QcRun | None]:
        return _latest(self._conn, analyzer, method)

    def accept(self, run_id: int, *, reason: str, actor: str, now: datetime) -> QcRun:
        """Accept a rejected run as a documented override (audited with the OS user and the reason).

        Raises:
            StoreError: no such run, or it is accepted already.
        """
        with self._store.transaction(now) as tx:
            run = self.run(run_id)
            if run.accepted:
                raise StoreError(f"QC run {run_id} is already accepted")
            self._conn.execute("UPDATE qc_runs SET status = 'accepted', override_reason = ?, override_actor = ?,"
                               " overridden_at = ? WHERE id = ?", (reason, actor, now.isoformat(), run_id))
            tx.audit("qc_run_accepted", actor=actor, analyzer=run.analyzer, ref=str(run_id),
                     data={"run_id": run_id, "method": run.method, "reason": reason,
                           "rules_violated": list(run.violated), "override": True})
        return self.run(run_id)

    def impact(self, run_id: int) -> list[dict[str, Any]]:
        """Patient results of the run's analyzer x method released between the last accepted run before
        it and the run itself (the ones a laboratory re-runs after a failed control)."""
        run = self.run(run_id)
        previous = self._conn.execute(
            "SELECT message_id FROM qc_runs WHERE analyzer = ? AND method = ? AND status = 'accepted' AND id < ?"
            " ORDER BY id DESC LIMIT 1", (run.analyzer, run.method, run_id)).fetchone()
        start = int(previous[0]) if previous else 0
        rows = self._conn.execute(
            "SELECT r.id, r.specimen, r.patient_id, r.test_code, r.raw_value, r.units, r.state, m.received_at"
            " FROM results r JOIN messages m ON m.id = r.message_id WHERE r.analyzer = ? AND r.method = ?"
            " AND r.role != 'qc' AND r.message_id >= ? AND r.message_id < ?"
            " AND r.state IN ('queued', 'delivered', 'dead') ORDER BY r.id",
            (run.analyzer, run.method, start, run.message_id)).fetchall()
        return [{"result_id": r[0], "specimen": r[1], "patient": r[2], "test_code": r[3], "value": r[4],
                 "units": r[5], "state": r[6], "received_at": r[7]} for r in rows]


def _latest(conn: sqlite3.Connection, analyzer: str, method: str) -> tuple[QcRun | None, QcRun | None]:
    last = conn.execute("SELECT * FROM qc_runs WHERE analyzer = ? AND method = ? ORDER BY id DESC LIMIT 1",
                        (analyzer, method)).fetchone()
    accepted = conn.execute("SELECT * FROM qc_runs WHERE analyzer = ? AND method = ? AND status = 'accepted'"
                            " ORDER BY id DESC LIMIT 1", (analyzer, method)).fetchone()
    return (_run(conn, last, results=False) if last else None,
            _run(conn, accepted, results=False) if accepted else None)


def _run(conn: sqlite3.Connection, row: sqlite3.Row, *, results: bool = True) -> QcRun:
    rows = conn.execute("SELECT * FROM qc_results WHERE run_id = ? ORDER BY id", (row["id"],)).fetchall() \
        if results else []
    return QcRun(id=row["id"], message_id=row["message_id"], analyzer=row["analyzer"], method=row["method"],
                 received_at=row["received_at"], status=row["status"], violated=tuple(json.loads(row["violated"])),
                 warnings=tuple(json.loads(row["warnings"])), override_reason=row["override_reason"],
                 override_actor=row["override_actor"], overridden_at=row["overridden_at"] or "",
                 results=tuple(_result(r) for r in rows))


def _result(row: sqlite3.Row) -> QcResultRow:
    return QcResultRow(material=row["material"], level=row["level"], lot=row["lot"], specimen=row["specimen"],
                       test_code=row["test_code"], raw_value=row["raw_value"],
                       value=None if row["value"] is None else Decimal(row["value"]), units=row["units"],
                       mean=Decimal(row["mean"]), sd=Decimal(row["sd"]),
                       z=None if row["z"] is None else Decimal(row["z"]), completed_at=row["completed_at"] or "")


def _with_level(run: QcRun, level: int) -> QcRun:
    from dataclasses import replace

    return replace(run, results=tuple(r for r in run.results if r.level == level))

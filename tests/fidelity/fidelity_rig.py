"""A real store and the real intake (pipeline + HL7 intake) in-process, and what reached the outbox, read back
with python-hl7 (an independent parser) — for replaying traffic shapes and captures quickly."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import hl7

from labmw.config import AnalyzerSettings, LisSettings, Settings, parse_endpoint
from inline_runner import make_intake, receive

from labmw.daemon.pipeline import Pipeline
from labmw.model import Outcome
from labmw.model import Method, RangeRule
from labmw.store import Store

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
ALT = Method(name="ALT-T", analyte="ALT", units="U/L", loinc="1743-4",
             ranges=(RangeRule(low=Decimal(9), high=Decimal(59), sex="M"),))


def astm_analyzer(name: str = "an1", **kw: object) -> AnalyzerSettings:
    """An ASTM analyzer whose unmapped codes are forwarded: these tests are about what reaches the LIS
    as sent; the METHOD_UNKNOWN hold has tests of its own (tests/rules/test_gates.py)."""
    kw.setdefault("specimen_field", "O-3")
    kw.setdefault("unmapped", "forward")
    return AnalyzerSettings(name=name, protocol="astm", transport="tcp-server", **kw)  # type: ignore[arg-type]


def hl7_analyzer(name: str = "hx1", **kw: object) -> AnalyzerSettings:
    kw.setdefault("unmapped", "forward")
    return AnalyzerSettings(name=name, protocol="hl7", transport="tcp-server", encoding="utf-8", **kw)  # type: ignore[arg-type]


class Rig:
    """One store file, one pipeline and intake with a fixed clock, any analyzers."""

    def __init__(self, tmp_path: Path, *analyzers: AnalyzerSettings, group: str = "specimen",
                 methods: dict[str, Method] | None = None) -> None:
        self.path = tmp_path / "rig.sqlite3"
        self.store = Store.open(self.path)
        lis = LisSettings(connect=parse_endpoint("127.0.0.1:2575"), group=group)
        self.settings = Settings(path=tmp_path / "lab.toml", data_dir=tmp_path, lis=lis,
                                 methods=methods if methods is not None else {"ALT-T": ALT},
                                 analyzers={a.name: a for a in analyzers})
        self.pipeline = Pipeline(self.settings, self.store, clock=lambda: T0)
        self.intakes = {a.name: make_intake(self.settings, self.store, a, clock=lambda: T0) for a in analyzers}

    def close(self) -> None:
        self.store.close()

    def astm(self, name: str, text: bytes) -> Outcome:
        """One ASTM message text through the analyzer's real intake (as the link engine hands it over)."""
        return receive(self.intakes[name], text, "127.0.0.1:1", text=text)

    def hl7(self, name: str, payload: bytes) -> bytes:
        """The answer (ACK, RSP) the intake gives for one HL7 payload."""
        return receive(self.intakes[name], payload, "127.0.0.1:1").answer

    def query(self, sql: str, *args: object) -> list[sqlite3.Row]:
        with sqlite3.connect(self.path) as db:
            db.row_factory = sqlite3.Row
            return list(db.execute(sql, args))

    def sent(self) -> list[hl7.Message]:
        """Every queued ORU, parsed by python-hl7, in queue order."""
        rows = self.query("SELECT payload FROM outbox ORDER BY id")
        return [hl7.parse(bytes(r["payload"]).decode("utf-8")) for r in rows]

    def obx(self) -> list[hl7.Segment]:
        return [seg for message in self.sent() for seg in message.segments("OBX")]

    def held(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM results WHERE state='held' ORDER BY id")

    def events(self, event: str) -> list[dict[str, object]]:
        rows = self.query("SELECT * FROM audit WHERE event=?", event)
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]


def text(segment: hl7.Segment, number: int) -> str:
    """A whole field as sent (escapes included)."""
    return str(segment[number])


def with_map(analyzer: AnalyzerSettings, **mapping: str) -> AnalyzerSettings:
    return replace(analyzer, map=mapping)

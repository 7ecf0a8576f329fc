"""`labmw demo`: a self-contained run on loopback — the real service, a simulated ASTM analyzer and a
simulated LIS — playing a handful of ALT results through the shipped method library.

Nothing here is a shortcut around the product: the analyzer speaks E1381 frames over TCP, the
service stores, judges and forwards as in production, and the LIS answers MLLP ACKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import hl7
from tomlkit.toml_document import TOMLDocument

from labmw import config_edit
from labmw.config import Settings, load
from labmw.daemon.app import Service
from labmw.store import Store
from labmw.wire.astm_frames import ACK, ENQ, EOT, build_frames
from labmw.wire.hl7_codec import build_ack
from labmw.wire.mllp import BlockReceived, MllpFramer, frame


@dataclass(frozen=True, slots=True)
class DemoCase:
    specimen: str
    patient: str
    sex: str
    birth: str
    value: str
    collected: str
    story: str


CASES = (
    DemoCase("DEMO-1", "PAT-A", "M", "19800315", "38", "20261120080000", "adult man, normal"),
    DemoCase("DEMO-2", "PAT-A", "M", "19800315", "85", "20261123080000", "same man 3 days later: high, rising"),
    DemoCase("DEMO-3", "PAT-B", "F", "19750101", "45", "20261123090000", "adult woman, high"),
    DemoCase("DEMO-4", "PAT-C", "M", "19600101", "650", "20261123100000", "adult man, 15.9 x ULN"),
    DemoCase("DEMO-5", "PAT-D", "F", "19900101", "<5", "20261123110000", "below the measuring range"),
    DemoCase("DEMO-6", "PAT-E", "", "", "40", "20261123120000", "no sex or birth date sent: held for a person"),
    DemoCase("DEMO-7", "PAT-F", "M", "19700101", "1250", "20261123130000",
             "above the measuring range 5-700: held for dilution"),
)


@dataclass(frozen=True, slots=True)
class Row:
    case: DemoCase
    flags: str
    applied_range: str
    notes: tuple[str, ...]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _message(case: DemoCase) -> bytes:
    records = [
        r"H|\^&|||demo-c501^1|||||labmw|RSUPL^REAL|P|1",
        f"P|1||{case.patient}||DEMO^PATIENT||{case.birth}|{case.sex}",
        f"O|1|{case.specimen}||^^^ALTL|R||{case.collected}||||N||||1||||||||||F",
        f"R|1|^^^ALTL|{case.value}|U/L||N||F||^System||{case.collected[:8]}090000|P1",
        "L|1|N",
    ]
    return "".join(r + "\r" for r in records).encode("latin-1")


async def _analyzer(port: int, cases: tuple[DemoCase, ...]) -> None:
    """An E1381 sender: ENQ, one frame per record (ACK each), EOT; one session per message."""
    for case in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for chunk in (ENQ, *build_frames(_message(case), max_text=240)):
                writer.write(chunk)
                await writer.drain()
                reply = await asyncio.wait_for(reader.read(1), 10)
                if reply != ACK:
                    raise RuntimeError(f"analyzer got {reply!r} instead of ACK")
            writer.write(EOT)
            await writer.drain()
        finally:
            writer.close()


class _Lis:
    """An MLLP LIS that ACKs AA and keeps what it received."""

    def __init__(self) -> None:
        self.received: list[hl7.Message] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = MllpFramer()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for event in framer.feed(data):
                    if isinstance(event, BlockReceived):
                        self.received.append(hl7.parse(event.payload.decode("utf-8")))
                        writer.write(frame(build_ack(event.payload, "AA", control_id=f"LIS{len(self.received)}",
                                                     now=datetime.now(UTC))))
                        await writer.drain()
        writer.close()


def _configure(workdir: Path, lis_port: int, analyzer_port: int) -> Path:
    path = workdir / "demo.toml"
    config_edit.init_config(path, data_dir="data", force=True)

    def wire(doc: TOMLDocument) -> None:
        config_edit.table_at(doc, "lis")["connect"] = f"127.0.0.1:{lis_port}"
        analyzer = config_edit.table_at(doc, "analyzers", "c501")
        analyzer["protocol"], analyzer["transport"] = "astm", "tcp-server"
        analyzer["listen"] = f"127.0.0.1:{analyzer_port}"
        config_edit.table_at(doc, "analyzers", "c501", "map")["ALTL"] = "ALT-NOP5P"

    config_edit.edit(path, "demo", "analyzers", wire)
    return path


async def run_demo(workdir: Path, timeout: float = 30.0) -> list[Row]:
    """Run the scenario in ``workdir``; returns what the LIS received, case by case."""
    lis_port, analyzer_port = _free_port(), _free_port()
    settings = load(_configure(workdir, lis_port, analyzer_port))
    lis = _Lis()
    held: dict[str, str] = {}
    lis_server = await asyncio.start_server(lis.handle, "127.0.0.1", lis_port)
    service = Service(settings)
    await service.start()
    try:
        await _analyzer(analyzer_port, CASES)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(lis.received) + len(held) < len(CASES) and loop.time() < deadline:
            await asyncio.sleep(0.05)
            held = _held(settings)
    finally:
        await service.close()
        lis_server.close()
    by_specimen = {str(m.segment("OBR")[3]): m for m in lis.received}
    rows = []
    for case in CASES:
        message = by_specimen.get(case.specimen)
        if message is None:
            gates = held.get(case.specimen)
            rows.append(Row(case, f"(held for review: {gates})" if gates else "(not received)", "", ()))
            continue
        obx = message.segment("OBX")
        notes = tuple(str(seg[3]).removeprefix("labmw: ") for seg in message if str(seg[0]) == "NTE")
        rows.append(Row(case, str(obx[8]), str(obx[7]), notes))
    return rows


def _held(settings: Settings) -> dict[str, str]:
    """Specimen -> the gates that hold it (autoverification fails closed: these wait for a person)."""
    store = Store.open(settings.db_path)
    try:
        return {h.specimen: ", ".join(h.gates) or "held" for h in store.held_results()}
    finally:
        store.close()


def demo(keep: Path | None = None) -> list[Row]:
    """Run the demo in ``keep`` (kept afterwards) or in a temporary directory."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run_demo(keep))
    with tempfile.TemporaryDirectory(prefix="labmw-demo-") as tmp:
        return asyncio.run(run_demo(Path(tmp)))

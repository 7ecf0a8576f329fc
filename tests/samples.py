"""The sample corpus (byte-exact copies of the shared captures; SOURCES.md beside each set) and an
independent, test-only reader of framed ASTM samples used as an oracle by codec and mapping tests."""

from __future__ import annotations

import re
from pathlib import Path

from labmw.wire.astm_records import split_unframed

DATA = Path(__file__).resolve().parent / "data"
ASTM_SAMPLES = DATA / "astm"
HL7_SAMPLES = DATA / "hl7"

# STX FN text ETX|ETB C1 C2: written from E1381 directly, not from labmw's frame parser.
_FRAME_FOR_TESTS = re.compile(rb"\x02([0-7])([^\x02\x03\x17]*)([\x03\x17])([0-9A-Fa-f]{2})", re.DOTALL)


def frame_text_for_tests(data: bytes) -> bytes:
    """The concatenated text of every frame in ``data``, each checksum verified."""
    texts = []
    for match in _FRAME_FOR_TESTS.finditer(data):
        fn, text, end, checksum = match.groups()
        assert sum(fn + text + end) % 256 == int(checksum, 16), "sample checksum"
        texts.append(text)
    assert texts, "no frames found"
    return b"".join(texts)


def astm_sample_texts() -> list[bytes]:
    """The message text of every ASTM sample (framed ones unframed, the PSM record stream split)."""
    texts = []
    for path in sorted(ASTM_SAMPLES.glob("*.astm")):
        data = path.read_bytes()
        if b"\x02" not in data:  # record streams: Roche PSM (frame digits), MAGLUMI (none)
            texts.extend(split_unframed(data, frame_numbers=data[:1].isdigit()))
        else:
            texts.append(frame_text_for_tests(data))
    return texts

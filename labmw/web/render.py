"""Helpers for showing stored data on a page: raw protocol bytes made visible, times from a form."""

from __future__ import annotations

from datetime import UTC, datetime

from labmw.errors import UsageError

# ASTM E1381 / HL7 MLLP control bytes, shown by name so a reader sees the framing as it arrived.
_NAMES = {0x02: "<STX>", 0x03: "<ETX>", 0x04: "<EOT>", 0x05: "<ENQ>", 0x06: "<ACK>", 0x0B: "<VT>",
          0x15: "<NAK>", 0x17: "<ETB>", 0x1C: "<FS>", 0x0D: "<CR>\n", 0x0A: "<LF>"}


def show_bytes(raw: bytes, encoding: str = "utf-8") -> str:
    """The bytes as text with every control byte named (``<STX>``, ``<CR>`` and a line break, ``<0x1F>``).

    Runs of printable bytes are decoded together so multi-byte characters survive; undecodable
    bytes show as U+FFFD rather than failing the page.
    """
    out: list[str] = []
    run = bytearray()
    for byte in raw:
        if byte in _NAMES or byte < 0x20 or byte == 0x7F:
            out.append(run.decode(encoding, "replace"))
            run.clear()
            out.append(_NAMES.get(byte, f"<0x{byte:02X}>"))
        else:
            run.append(byte)
    out.append(run.decode(encoding, "replace"))
    return "".join(out)


def parse_form_time(text: str, name: str) -> datetime | None:
    """An ISO date or date-time from a search form (naive = UTC), None when empty; UsageError otherwise."""
    if not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{name}: expected an ISO date or date-time such as 2026-11-25T08:00, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)

"""Protocol bytes made readable for a person: control bytes named, a line per record or frame.

One rendering for the CLI (`labmw message show`) and the review workstation, so both show the
framing exactly as it arrived: ``<STX>1H|...<CR><ETX>A7<CR><LF>`` is one frame on one line.
"""

from __future__ import annotations

# ASTM E1381 / HL7 MLLP control bytes, by name.
NAMES = {0x02: "<STX>", 0x03: "<ETX>", 0x04: "<EOT>", 0x05: "<ENQ>", 0x06: "<ACK>", 0x0A: "<LF>", 0x0B: "<VT>",
         0x0D: "<CR>", 0x15: "<NAK>", 0x17: "<ETB>", 0x1C: "<FS>"}
_CR, _LF, _STX = 0x0D, 0x0A, 0x02
# A CR followed by these does not end the line: the frame's ETX/ETB and checksum, or the LF, go with it.
_CR_CONTINUES = (0x03, 0x17, _LF)


def show_bytes(raw: bytes, encoding: str = "utf-8") -> str:
    """``raw`` as text: control bytes named (``<STX>``, ``<0x1F>``), a line break after each record's CR
    and after each LF, and before an STX that does not start a line (frames sent without CR LF).

    Runs of printable bytes are decoded together, so multi-byte characters survive; undecodable
    bytes show as U+FFFD. Raises nothing.
    """
    out: list[str] = []
    run = bytearray()
    line_start = True
    for index, byte in enumerate(raw):
        if byte in NAMES or byte < 0x20 or byte == 0x7F:
            if run:
                out.append(run.decode(encoding, "replace"))
                run.clear()
                line_start = False
            if byte == _STX and not line_start:
                out.append("\n")
            out.append(NAMES.get(byte, f"<0x{byte:02X}>"))
            following = raw[index + 1] if index + 1 < len(raw) else None
            line_start = byte == _LF or (byte == _CR and following not in _CR_CONTINUES)
            if line_start:
                out.append("\n")
        else:
            run.append(byte)
    out.append(run.decode(encoding, "replace"))
    return "".join(out)

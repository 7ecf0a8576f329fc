"""The raw relay floor: what any ASTM-to-MLLP middleware must at least do, with nothing else.

Run as its own process, like the daemon: ``python relay.py LIS_PORT PORT...``; prints ``ready`` once
listening. Per analyzer connection it ACKs every ENQ and frame at once (no checksum check, no
decoding, no rules, no storage), and for every R frame it queues one MLLP block; one forwarder sends
the queue to the LIS with one block in flight, waiting for each ACK -- the same exchanges labmw
makes (E1381 ACK per frame, one ORU^R01 per result), minus all of labmw's work. Stdlib only.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

ENQ, ACK, EOT, LF = 0x05, b"\x06", 0x04, 0x0A
VT, FS_CR = b"\x0b", b"\x1c\r"


async def serve_analyzer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, queue: asyncio.Queue[bytes],
                         ids: itertools.count[int]) -> None:
    buf = b""
    while data := await reader.read(65536):
        buf += data
        while buf:
            if buf[0] in (ENQ, EOT):
                if buf[0] == ENQ:
                    writer.write(ACK)
                buf = buf[1:]
                continue
            end = buf.find(b"\n")  # a frame ends CR LF: that is all the "parsing" there is
            if end < 0:
                break
            frame, buf = buf[: end + 1], buf[end + 1 :]
            writer.write(ACK)
            if frame[2:3] == b"R":
                msh = b"MSH|^~\\&|RELAY||LIS||20261125000000||ORU^R01^ORU_R01|%d|P|2.5.1\r" % next(ids)
                queue.put_nowait(VT + msh + frame[2:-5] + FS_CR)
    writer.close()


async def forward(lis_port: int, queue: asyncio.Queue[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lis_port)
    buf = b""
    while True:
        writer.write(await queue.get())
        while (end := buf.find(FS_CR)) < 0:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("LIS closed the connection")
            buf += data
        buf = buf[end + 2 :]


async def main(lis_port: int, ports: list[int]) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    ids = itertools.count(1)
    servers = [await asyncio.start_server(lambda r, w: serve_analyzer(r, w, queue, ids), "127.0.0.1", port)
               for port in ports]
    print("ready", flush=True)
    try:
        await forward(lis_port, queue)
    finally:
        for server in servers:
            server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), [int(p) for p in sys.argv[2:]]))

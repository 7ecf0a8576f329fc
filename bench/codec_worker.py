"""One timed decoding loop in a fresh process: ``python codec_worker.py MODE CORPUS.json SECONDS``.

Prints one JSON object: ``{"frames": .., "records": .., "messages": .., "seconds": .., "passes": ..}`` for
the best of three rounds (each round decodes the whole corpus as many times as fit in SECONDS / 3).

Modes (the interpreter decides what can be imported: the python-astm mode runs in bench/.venv-astm):

- ``labmw``: labmw's receive path for frames and records: ``FrameReader`` over the byte stream,
  ``frame_problem`` and the checksum of each frame, ``scan_records`` for message ends, then
  ``decode_message`` (records split into fields; repeats and components are split on access).
- ``labmw-full``: the same, then every field of every record split into repeats and components, so
  the output is as deep as python-astm's nested lists (a like-for-like comparison). One
  ``Record.split_fields()`` call per record, as ``astm.codec.decode`` hands back each record whole:
  walking ``components(n, r)`` field by field and repeat by repeat would time the walk too (about a
  quarter of python-astm's whole decode with a do-nothing accessor), which python-astm's side never
  pays because nothing walks its output.
- ``python-astm``: python-astm 0.5.0's own receive path (``astm.server.RequestHandler.handle_message``):
  ``is_chunked_message`` per frame, ``join`` of ETB chunks, then ``astm.codec.decode`` (checksum and
  records split into fields, repeats and components).
- ``hl7``: ``hl7.parse`` (python-hl7) of each HL7 message.
- ``labmw-hl7``: labmw's inbound HL7 mapping, ``labmw.mapping.hl7_inbound.map_hl7``, bytes to
  ``Result`` objects, on the samples it maps (those it rejects by design are counted as skipped).

Stdlib only at import time, so the same file runs under either interpreter.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

Decoder = Callable[[list[Any]], tuple[int, int]]


def labmw_decoder(full: bool) -> Decoder:
    from labmw.wire.astm_frames import DEFAULT_DELIMITER, Frame, FrameReader, frame_problem, scan_records
    from labmw.wire.astm_records import decode_message

    def decode(streams: list[bytes]) -> tuple[int, int]:
        frames = records = 0
        for stream in streams:
            reader = FrameReader()
            reader.feed(stream)
            text, head, delimiter = bytearray(), b"", DEFAULT_DELIMITER
            while (token := reader.next_token()) is not None:
                if not isinstance(token, Frame):
                    continue
                if frame_problem(token) is not None or not token.checksum_ok:
                    raise ValueError(f"bad frame in corpus: {token.raw[:20]!r}")
                frames += 1
                scan = scan_records(token.text, head=head, delimiter=delimiter, final=token.final)
                head, delimiter = scan.head, scan.delimiter
                start = 0
                for end in scan.ends:  # each end closes one message: decode it
                    text += token.text[start:end]
                    decoded = decode_message(bytes(text))
                    records += len(decoded)
                    if full:  # every field into repeats and components, as astm.codec.decode returns them
                        for record in decoded:
                            record.split_fields()
                    text.clear()
                    start = end
                text += token.text[start:]
        return frames, records

    return decode


def python_astm_decoder() -> Decoder:
    from astm.codec import decode, is_chunked_message, join

    def decode_all(messages: list[list[bytes]]) -> tuple[int, int]:
        frames = records = 0
        for message in messages:
            chunks: list[bytes] = []
            for frame in message:  # RequestHandler.handle_message, astm/server.py
                frames += 1
                if is_chunked_message(frame):
                    chunks.append(frame)
                elif chunks:
                    chunks.append(frame)
                    records += len(decode(join(chunks)))
                    chunks = []
                else:
                    records += len(decode(frame))
        return frames, records

    return decode_all


def hl7_decoder() -> Decoder:
    import hl7

    def parse_all(messages: list[str]) -> tuple[int, int]:
        segments = 0
        for text in messages:
            segments += len(hl7.parse(text))
        return 0, segments

    return parse_all


def labmw_hl7_decoder(messages: list[str]) -> tuple[Decoder, list[bytes], int]:
    from labmw.errors import LabmwError
    from labmw.mapping.hl7_inbound import map_hl7

    def map_all(payloads: list[bytes]) -> tuple[int, int]:
        results = 0
        for payload in payloads:
            results += len(map_hl7(payload, analyzer="bench", encoding="utf-8", specimen_field="SPM-2",
                                   lf_segments=False).results)
        return 0, results

    mappable = []
    for text in messages:
        try:
            map_all([text.encode("utf-8")])
            mappable.append(text.encode("utf-8"))
        except LabmwError:
            pass
    return map_all, mappable, len(messages) - len(mappable)


def load(mode: str, corpus: dict[str, Any]) -> tuple[Decoder, list[Any], int, int]:
    """The decoder for ``mode``, its input, how many messages that holds, and how many were skipped."""
    frames = [[bytes.fromhex(f) for f in message] for message in corpus["astm"]]
    if mode in ("labmw", "labmw-full"):
        return labmw_decoder(mode == "labmw-full"), [b"".join(m) for m in frames], len(frames), 0
    if mode == "python-astm":
        return python_astm_decoder(), frames, len(frames), 0
    if mode == "hl7":
        return hl7_decoder(), corpus["hl7"], len(corpus["hl7"]), 0
    if mode == "labmw-hl7":
        decoder, payloads, skipped = labmw_hl7_decoder(corpus["hl7"])
        return decoder, payloads, len(payloads), skipped
    raise SystemExit(f"unknown mode {mode!r}")


def main(mode: str, corpus_path: str, seconds: float) -> None:
    with open(corpus_path, encoding="utf-8") as fh:
        corpus = json.load(fh)
    decoder, data, messages, skipped = load(mode, corpus)
    frames, records = decoder(data)  # warm-up, and the per-pass counts
    best: dict[str, float] = {}
    for _ in range(3):
        passes, start = 0, time.perf_counter()
        while True:
            decoder(data)
            passes += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 3:
                break
        if not best or passes / elapsed > best["passes"] / best["seconds"]:
            best = {"passes": passes, "seconds": elapsed}
    print(json.dumps({"frames": frames * best["passes"], "records": records * best["passes"],
                      "messages": messages * best["passes"], "seconds": best["seconds"], "passes": best["passes"],
                      "skipped": skipped}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))

"""Tests for E1381 frames: checksum, building, the stream reader and record scanning."""

from __future__ import annotations

import pytest
from astm_script import FRAMED_SAMPLES, SAMPLES

from labmw.errors import LocalProtocolError
from labmw.wire.astm_frames import (
    ACK,
    ACK_BYTE,
    CR,
    DEFAULT_DELIMITER,
    ENQ,
    ENQ_BYTE,
    EOT,
    EOT_BYTE,
    ETB,
    ETX,
    LF,
    NAK,
    NAK_BYTE,
    RESTRICTED,
    STX,
    STX_BYTE,
    BrokenFrame,
    ControlByte,
    Frame,
    FrameReader,
    Junk,
    Token,
    build_frame,
    build_frames,
    checksum,
    frame_problem,
    scan_records,
)


def read_all(reader: FrameReader) -> list[Token]:
    """Return every token the reader can produce from what it holds."""
    tokens = []
    while (token := reader.next_token()) is not None:
        tokens.append(token)
    return tokens


def tokens_of(data: bytes, *, chunk: int | None = None, max_text: int = 63_993) -> list[Token]:
    """Feed ``data`` whole or in ``chunk``-sized pieces; return tokens with junk runs merged."""
    reader = FrameReader(max_text=max_text)
    tokens: list[Token] = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
        tokens += read_all(reader)
    merged: list[Token] = []
    for token in tokens:
        if isinstance(token, Junk) and merged and isinstance(merged[-1], Junk):
            merged[-1] = Junk(merged[-1].count + token.count)
        else:
            merged.append(token)
    return merged


def test_checksum_worked_example() -> None:
    """The ASTM.md worked example: <STX>5L|1|N<CR><ETX> has checksum 08."""
    assert checksum(b"5L|1|N\r\x03") == b"08"
    assert build_frame(5, b"L|1|N\r", final=True) == b"\x025L|1|N\r\x0308\r\n"


def test_checksum_is_uppercase_hex_of_sum_mod_256() -> None:
    """The checksum is the byte sum mod 256 written as two uppercase hex digits."""
    assert checksum(bytes([0xAB])) == b"AB"
    assert checksum(bytes([0xFF, 0x02])) == b"01"
    assert checksum(b"") == b"00"


def test_build_frame_intermediate_uses_etb() -> None:
    """An intermediate frame ends with ETB and its checksum covers the ETB."""
    raw = build_frame(2, b"abc", final=False)
    assert raw == STX + b"2abc" + ETB + checksum(b"2abc" + ETB) + CR + LF


def test_build_frame_rejects_bad_number_and_restricted_text() -> None:
    """Building a frame with FN 8 or a restricted byte in the text is a local error."""
    with pytest.raises(LocalProtocolError):
        build_frame(8, b"x", final=True)
    with pytest.raises(LocalProtocolError):
        build_frame(1, b"a\nb", final=True)


def test_build_frames_cuts_text_and_wraps_frame_numbers() -> None:
    """Ten frames of 240 bytes number 1..7, 0, 1, 2; all but the last end with ETB."""
    text = bytes(range(32, 127)) * 25  # 2,375 bytes -> 10 frames of at most 240
    frames = build_frames(text)
    assert [raw[1] - 0x30 for raw in frames] == [1, 2, 3, 4, 5, 6, 7, 0, 1, 2]
    assert all(raw[-5:-4] == ETB for raw in frames[:-1]) and frames[-1][-5:-4] == ETX
    assert b"".join(raw[2:-5] for raw in frames) == text
    assert max(len(raw) for raw in frames) == 247


def test_build_frames_edge_cases() -> None:
    """Empty text gives one empty end frame; first_fn and max_text are honoured and checked."""
    assert build_frames(b"") == [build_frame(1, b"", final=True)]
    assert build_frames(b"abcd", max_text=2, first_fn=7) == [build_frame(7, b"ab", final=False),
                                                             build_frame(0, b"cd", final=True)]  # fmt: skip
    with pytest.raises(LocalProtocolError):
        build_frames(b"x", max_text=0)
    with pytest.raises(LocalProtocolError):
        build_frames(b"x", first_fn=8)


def test_restricted_set_matches_the_standard() -> None:
    """RESTRICTED holds exactly SOH STX ETX EOT ENQ ACK DLE NAK SYN ETB LF DC1-DC4, never CR."""
    assert RESTRICTED == {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x15, 0x16, 0x17, 0x0A,
                          0x11, 0x12, 0x13, 0x14}  # fmt: skip
    assert CR[0] not in RESTRICTED


@pytest.mark.parametrize("name", FRAMED_SAMPLES)
def test_every_sample_frame_parses_with_a_valid_checksum(name: str) -> None:
    """Every frame of every framed capture comes out whole, well-formed and with a valid checksum."""
    data = (SAMPLES / name).read_bytes()
    frames = [t for t in tokens_of(data) if isinstance(t, Frame)]
    assert len(frames) == data.count(STX) > 0
    assert all(fr.checksum_ok and frame_problem(fr) is None for fr in frames)


@pytest.mark.parametrize("name", FRAMED_SAMPLES)
def test_reader_tokens_do_not_depend_on_chunking(name: str) -> None:
    """Byte-by-byte and 7-byte reads give the same tokens as one read of the whole capture."""
    data = (SAMPLES / name).read_bytes()
    whole = tokens_of(data)
    assert tokens_of(data, chunk=1) == whole
    assert tokens_of(data, chunk=7) == whole


def test_trailer_may_be_crlf_lf_or_missing() -> None:
    """A frame ends after C1 C2: CR LF, a lone LF, a lone CR or nothing may follow."""
    body = b"1H|\\^&\r" + ETX
    core = STX + body + checksum(body)
    for trailer in (CR + LF, LF, CR, b""):
        tokens = tokens_of((core + trailer) * 2 + ENQ)
        assert tokens == [Frame(core, len(body)), Frame(core, len(body)), ControlByte(ENQ_BYTE)]


def test_junk_and_control_bytes_between_frames() -> None:
    """Noise before STX is one junk run; ENQ, EOT, ACK and NAK between frames are control tokens."""
    raw = build_frame(1, b"L|1\r", final=True)
    tokens = tokens_of(b"noise" + raw + CR + LF + ACK + NAK + EOT)
    assert tokens == [Junk(5), Frame(raw[:-2], len(raw) - 5), Junk(2),
                      ControlByte(ACK_BYTE), ControlByte(NAK_BYTE), ControlByte(EOT_BYTE)]  # fmt: skip


def test_frame_cut_by_stx_enq_or_eot() -> None:
    """A control byte inside a frame (text or checksum) breaks it and is then read itself."""
    good = build_frame(2, b"R|1\r", final=True)
    assert tokens_of(STX + b"1abc" + good)[0] == BrokenFrame("frame cut short by STX", 1, 5, STX_BYTE)
    assert tokens_of(STX + b"1abc" + good)[1] == Frame(good[:-2], len(good) - 5)
    assert tokens_of(STX + b"3ab" + ETX + b"4" + EOT) == [
        BrokenFrame("frame cut short by EOT", 3, 6, EOT_BYTE), ControlByte(EOT_BYTE)]  # fmt: skip
    assert tokens_of(STX + b"x" + ENQ)[0] == BrokenFrame("frame cut short by ENQ", None, 2, ENQ_BYTE)


def test_text_of_exactly_max_text_is_a_frame_and_one_more_byte_is_not() -> None:
    """With max_text 10, 10 text bytes make a frame; 11 make one broken frame, then junk."""
    ok = build_frame(1, b"x" * 10, final=True)
    assert isinstance(tokens_of(ok, max_text=10)[0], Frame)
    long = build_frame(1, b"x" * 11, final=True)
    for chunk in (None, 1, 3):
        tokens = tokens_of(long + ENQ, max_text=10, chunk=chunk)
        assert tokens == [BrokenFrame("frame text exceeds 10 bytes", 1, 13, None), Junk(len(long) - 13),
                          ControlByte(ENQ_BYTE)]  # fmt: skip


def test_frame_that_never_ends_keeps_the_buffer_bounded() -> None:
    """A 1 MB frame without terminator is dropped once and never held beyond max_text + 3 bytes."""
    reader = FrameReader(max_text=1000)
    reader.feed(STX + b"1")
    tokens: list[Token] = []
    for _ in range(256):
        reader.feed(b"y" * 4096)
        tokens += read_all(reader)
        assert reader.buffered <= 1003
    assert sum(isinstance(t, BrokenFrame) for t in tokens) == 1
    reader.feed(ENQ)
    assert read_all(reader) == [ControlByte(ENQ_BYTE)]


def test_frame_accessors() -> None:
    """Frame exposes FN, text, kind and both checksums; lowercase C1 C2 still validate."""
    raw = build_frame(6, b"O|1|abc\r", final=False)
    lower = raw[:-4] + raw[-4:-2].lower()
    fr = Frame(lower, len(raw) - 5)
    assert (fr.fn, fr.text, fr.final, fr.number) == (6, b"O|1|abc\r", False, b"6")
    assert fr.expected_checksum == raw[-4:-2] and fr.checksum_ok
    assert not Frame(raw[:-4] + b"ZZ", len(raw) - 5).checksum_ok


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (STX + b"A" + ETX + b"00", "frame number 0x41 is not a digit"),
        (STX + b"8x" + ETX + b"00", "frame number 8 is out of range 0..7"),
        (STX + ETX + b"00", "missing frame number"),
        (STX + b"1a\x10b" + ETX + b"00", "restricted byte 0x10 in frame text"),
        (STX + b"1a\nb" + ETX + b"00", "restricted byte 0x0A in frame text"),
        (STX + b"1a\tb\r" + ETX + b"00", None),
    ],
)
def test_frame_problem(raw: bytes, problem: str | None) -> None:
    """frame_problem names a bad FN or a restricted byte and accepts TAB and CR in text."""
    assert frame_problem(Frame(raw, raw.index(ETX))) == problem


def test_scan_records_finds_l_records_across_cuts() -> None:
    """An L record split between two frames is found once its CR arrives."""
    first = scan_records(b"H|\\^&\rP|1\rL", head=b"", delimiter=DEFAULT_DELIMITER, final=False)
    assert (first.ends, first.head) == ((), b"L")
    second = scan_records(b"|1|N\rH|", head=first.head, delimiter=first.delimiter, final=False)
    assert (second.ends, second.head) == ((5,), b"H|")


def test_scan_records_uses_the_h_delimiter_and_exact_l() -> None:
    """With H's delimiter '!' only 'L!' or a bare 'L' ends a message; 'L|' and 'LX' do not."""
    scan = scan_records(b"H!\\^&\rLX!1\rL|1\rL!1\rL\r", head=b"", delimiter=DEFAULT_DELIMITER, final=True)
    assert scan.ends == (19, 21)
    assert scan.delimiter == DEFAULT_DELIMITER  # reset after the message ends


def test_scan_records_end_frame_closes_an_l_without_cr() -> None:
    """In an end frame the last record ends with the text, so 'L|1|N' without CR ends the message."""
    assert scan_records(b"H|\rL|1|N", head=b"", delimiter=DEFAULT_DELIMITER, final=True).ends == (8,)
    open_record = scan_records(b"H|\rR|1", head=b"", delimiter=DEFAULT_DELIMITER, final=True)
    assert (open_record.ends, open_record.head) == ((), b"R|")


def test_control_byte_constants() -> None:
    """The 1-byte constants carry the ASCII control codes."""
    assert (STX, ETX, EOT, ENQ, ACK, NAK, ETB, CR, LF) == (
        b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x15", b"\x17", b"\r", b"\n")  # fmt: skip

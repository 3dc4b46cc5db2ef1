"""LineReader: a byte stream into lines, with a hard limit (netchat/protocol/stream.py).

As in h11's test_receivebuffer.py, every reader is fed its input whole, one byte at a
time and cut at arbitrary points chosen by hypothesis; the lines must not depend on
where TCP happened to split the stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.errors import FrameTooLarge
from netchat.protocol.limits import MAX_FRAME_BYTES
from netchat.protocol.stream import LineReader

SETTINGS = settings(max_examples=300, deadline=None)

TOO_LARGE = "TOO_LARGE"


def drain(reader: LineReader) -> list[bytes | str]:
    """Every line available now; an oversized line shows up as TOO_LARGE."""
    out: list[bytes | str] = []
    for _ in range(100_000):  # bounded: a reader must hit None long before this
        try:
            line = reader.next_line()
        except FrameTooLarge:
            out.append(TOO_LARGE)
            continue
        if line is None:
            return out
        out.append(line)
    raise AssertionError("next_line never returned None")


def feed_chunks(chunks: Iterable[bytes], max_line: int = MAX_FRAME_BYTES) -> list[bytes | str]:
    reader = LineReader(max_line)
    out: list[bytes | str] = []
    for chunk in chunks:
        reader.feed(chunk)
        out += drain(reader)
        assert reader.held <= max(max_line, 0) + len(chunk)
    return out


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points)]


def chunkings(data: bytes) -> list[list[bytes]]:
    """The input whole, one byte at a time, and cut after its first byte."""
    return [[data], [bytes([b]) for b in data], [data[:1], data[1:]]]


# Lines: arbitrary bytes without \n, and UTF-8 text (multi-byte characters to cut through).
LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")) | st.text(max_size=20).map(
    lambda s: s.replace("\n", "").encode("utf-8", "surrogatepass")
)
# The reader strips one \r before \n, so a line that itself ends in \r is written
# with \r\n and comes back without it; keep the original lines \r-free at the end.
LINES = st.lists(LINE.map(lambda b: b.rstrip(b"\r")), max_size=15)


@SETTINGS
@given(LINES, st.lists(st.integers(0, 10_000), max_size=20))
def test_lines_survive_any_chunking(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    assert feed_chunks(split_at(data, cuts)) == lines


@settings(max_examples=100, deadline=None)
@given(LINES)
def test_lines_whole_and_byte_by_byte(lines: list[bytes]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    for chunks in chunkings(data):
        assert feed_chunks(chunks) == lines


@SETTINGS
@given(LINES, st.lists(st.integers(0, 10_000), max_size=20), st.lists(st.booleans()))
def test_crlf_and_lf_mixed(lines: list[bytes], cuts: list[int], crlf: list[bool]) -> None:
    ends = [b"\r\n" if i < len(crlf) and crlf[i] else b"\n" for i in range(len(lines))]
    data = b"".join(line + end for line, end in zip(lines, ends, strict=True))
    assert feed_chunks(split_at(data, cuts)) == lines


def test_crlf_details() -> None:
    assert feed_chunks([b"a\r\n", b"\r\n", b"b\r\r\n", b"c\rd\n", b"\r", b"\n"]) == [
        b"a",
        b"",
        b"b\r",  # only one \r belongs to the line ending
        b"c\rd",
        b"",
    ]
    # \r and \n in separate chunks: still one line ending.
    assert feed_chunks([b"hi\r", b"\nthere\r", b"\n"]) == [b"hi", b"there"]


def test_incomplete_line_is_held_back() -> None:
    reader = LineReader()
    reader.feed(b"hel")
    assert reader.next_line() is None
    assert reader.held == 3
    reader.feed(b"lo\nwor")
    assert reader.next_line() == b"hello"
    assert reader.next_line() is None
    assert reader.held == 3
    reader.feed(b"ld\n")
    assert reader.next_line() == b"world"
    assert reader.next_line() is None
    assert reader.held == 0


def test_utf8_character_cut_in_half_is_reassembled() -> None:
    data = "Привет 👋\n".encode()
    for i in range(1, len(data)):
        assert feed_chunks([data[:i], data[i:]]) == ["Привет 👋".encode()]


# --- the size limit -------------------------------------------------------------


@pytest.mark.parametrize("max_line", [1, 2, 10, 100])
def test_limit_counts_the_newline(max_line: int) -> None:
    fits = b"x" * (max_line - 1)
    assert feed_chunks([fits + b"\n"], max_line) == [fits]
    assert feed_chunks([fits + b"x\n"], max_line) == [TOO_LARGE]


@SETTINGS
@given(
    before=LINES,
    after=LINES,
    extra=st.integers(1, 300),
    cuts=st.lists(st.integers(0, 100_000), max_size=30),
)
def test_oversized_line_raises_once_and_is_discarded(
    before: list[bytes], after: list[bytes], extra: int, cuts: list[int]
) -> None:
    max_line = 64
    short = [line[: max_line - 2] for line in before + after]  # all fit, even with \r\n
    before, after = short[: len(before)], short[len(before) :]
    huge = b"y" * (max_line + extra)
    data = b"".join(line + b"\n" for line in [*before, huge, *after])
    for chunks in [split_at(data, cuts), [data], [bytes([b]) for b in data]]:
        assert feed_chunks(chunks, max_line) == [*before, TOO_LARGE, *after]


def test_oversized_line_with_crlf_and_next_line() -> None:
    assert feed_chunks([b"z" * 20 + b"\r\nok\r\n"], 10) == [TOO_LARGE, b"ok"]
    assert feed_chunks([b"z" * 20, b"z" * 20, b"\r", b"\nok\n"], 10) == [TOO_LARGE, b"ok"]


def test_two_oversized_lines_raise_twice() -> None:
    assert feed_chunks([b"a" * 50 + b"\n" + b"b" * 50 + b"\nc\n"], 10) == [
        TOO_LARGE,
        TOO_LARGE,
        b"c",
    ]
    assert feed_chunks([b"a" * 50, b"\n", b"b" * 50, b"\n", b"c\n"], 10) == [
        TOO_LARGE,
        TOO_LARGE,
        b"c",
    ]


@settings(max_examples=50, deadline=None)
@given(chunk=st.integers(1, 5000), rounds=st.integers(1, 200))
def test_memory_stays_bounded_on_an_endless_line(chunk: int, rounds: int) -> None:
    max_line = 1024
    reader = LineReader(max_line)
    errors = 0
    for _ in range(rounds):
        reader.feed(b"x" * chunk)
        errors += drain(reader).count(TOO_LARGE)
        assert reader.held <= max_line
        assert len(reader._buffer) <= max_line  # nothing hidden behind _start either
    assert errors == (1 if chunk * rounds > max_line else 0)
    reader.feed(b"tail\nnext\n")
    total = chunk * rounds + len(b"tail\n")
    if errors:
        assert drain(reader) == [b"next"]  # the tail of the endless line is dropped silently
    elif total > max_line:
        assert drain(reader) == [TOO_LARGE, b"next"]
    else:
        assert drain(reader) == [b"x" * (chunk * rounds) + b"tail", b"next"]


def test_default_limit_is_the_frame_limit() -> None:
    assert LineReader().max_line == MAX_FRAME_BYTES
    assert feed_chunks([b"a" * (MAX_FRAME_BYTES - 1) + b"\n"]) == [b"a" * (MAX_FRAME_BYTES - 1)]
    assert feed_chunks([b"a" * MAX_FRAME_BYTES + b"\n"]) == [TOO_LARGE]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.binary(max_size=50), max_size=20),
    st.integers(1, 40),
)
def test_any_bytes_any_chunking_only_raise_frame_too_large(chunks: list[bytes], limit: int) -> None:
    reader = LineReader(limit)
    for chunk in chunks:
        reader.feed(chunk)
        for line in drain(reader):
            if line != TOO_LARGE:
                assert isinstance(line, bytes)
                assert b"\n" not in line
                assert len(line) < limit
        assert reader.held <= limit + len(chunk)


def test_many_lines_in_one_chunk_are_linear() -> None:
    # 20,000 lines in one feed: the reader must not copy the buffer per line (O(n^2)).
    data = b"line\n" * 20_000
    reader = LineReader()
    reader.feed(data)
    assert drain(reader) == [b"line"] * 20_000
    assert reader.held == 0

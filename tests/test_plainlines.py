"""Splitting a foreign server's byte stream into display lines (sans-I/O, no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netchat.protocol.plainlines import PlainLineSplitter, datagram_lines
from netchat.protocol.stream import complete_utf8_length


def test_newlines_end_lines_and_crlf_is_one_ending() -> None:
    splitter = PlainLineSplitter()
    assert splitter.feed(b"alice: hi\r\nbob: hello\nhalf", 0.0) == ["alice: hi", "bob: hello"]
    assert splitter.held == 4
    assert splitter.feed(b" a line\n", 0.01) == ["half a line"]


def test_a_pause_ends_a_line_without_newline() -> None:
    # The typical lab client: sock.send("bob: hi".encode()), no newline ever.
    splitter = PlainLineSplitter(idle_gap=0.15)
    assert splitter.feed(b"bob: hi", 10.0) == []
    assert splitter.idle_deadline() == pytest.approx(10.15)
    assert splitter.flush_idle(10.1) == []
    assert splitter.flush_idle(10.15) == ["bob: hi"]
    assert splitter.idle_deadline() is None
    assert splitter.feed(b"bob: again", 11.0) == []
    assert splitter.flush_idle(11.2) == ["bob: again"]


def test_more_bytes_before_the_gap_extend_the_line() -> None:
    splitter = PlainLineSplitter(idle_gap=0.15)
    splitter.feed(b"bob: he", 1.0)
    splitter.feed(b"llo", 1.1)
    assert splitter.flush_idle(1.2) == []  # the gap counts from the last bytes
    assert splitter.flush_idle(1.25) == ["bob: hello"]


def test_a_character_split_by_the_pause_waits_for_its_bytes() -> None:
    data = "bob: Привет".encode()
    splitter = PlainLineSplitter(idle_gap=0.1)
    splitter.feed(data[:-1], 0.0)  # the last byte of "т" is missing
    assert splitter.flush_idle(1.0) == ["bob: Приве"]
    assert splitter.held == 1
    splitter.feed(data[-1:], 1.0)
    assert splitter.flush_idle(2.0) == ["т"]


def test_blank_lines_are_not_shown() -> None:
    splitter = PlainLineSplitter()
    assert splitter.feed(b"\n\r\n   \nx\n", 0.0) == ["x"]
    splitter.feed(b"  ", 0.0)
    assert splitter.flush_idle(1.0) == []


def test_a_line_never_grows_past_the_bound() -> None:
    splitter = PlainLineSplitter(max_line=16)
    lines = splitter.feed(b"a" * 40, 0.0)
    assert lines == ["a" * 16, "a" * 16]
    assert splitter.held == 8


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert PlainLineSplitter().feed(b"bad \xff\xfe here\n", 0.0) == ["bad \ufffd\ufffd here"]


def test_flush_takes_everything_at_the_end() -> None:
    splitter = PlainLineSplitter()
    splitter.feed("последняя".encode()[:-1], 0.0)
    assert splitter.flush() == ["последня\ufffd"]
    assert splitter.held == 0


def test_datagram_lines() -> None:
    assert datagram_lines("bob: Привет".encode()) == ["bob: Привет"]
    assert datagram_lines(b"one\r\ntwo\n\n") == ["one", "two"]
    assert datagram_lines(b"") == []


def test_complete_utf8_length() -> None:
    euro = "€".encode()  # 3 bytes
    assert complete_utf8_length(b"ab" + euro) == 5
    assert complete_utf8_length(b"ab" + euro[:2]) == 2
    assert complete_utf8_length(b"ab" + euro[:1]) == 2
    assert complete_utf8_length(b"\x80\x80") == 2  # invalid: counted in, replaced later
    assert complete_utf8_length(b"") == 0


texts = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n")).filter(
        lambda t: t.strip() != ""
    ),
    max_size=6,
)


@given(texts, st.lists(st.integers(min_value=1, max_value=7), max_size=40))
def test_any_chunking_gives_the_lines_of_the_whole(lines: list[str], cuts: list[int]) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    splitter = PlainLineSplitter()
    got: list[str] = []
    position = 0
    for cut in cuts:
        got += splitter.feed(data[position : position + cut], 0.0)  # no pause between
        position += cut
    got += splitter.feed(data[position:], 0.0)
    assert got == lines
    assert splitter.held == 0


@given(st.text(st.characters(codec="utf-8")), st.integers(1, 12))
def test_pauses_never_cut_a_character(text: str, cut: int) -> None:
    data = text.replace("\n", " ").encode()
    splitter = PlainLineSplitter(idle_gap=1.0)
    shown = splitter.feed(data[:cut], 0.0) + splitter.flush_idle(5.0)
    shown += splitter.feed(data[cut:], 5.0) + splitter.flush_idle(10.0)
    assert "\ufffd" not in "".join(shown)
    # Only whitespace-only pieces are left out; every character arrives, in order.
    assert "".join("".join(shown).split()) == "".join(text.split())

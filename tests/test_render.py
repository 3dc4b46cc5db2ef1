"""Frames as the plain lines nc/telnet users and pipe mode see (netchat/protocol/render.py)."""

from __future__ import annotations

import calendar
import os
import time
import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.protocol.commands import HELP_TEXT
from netchat.protocol.frames import (
    Error,
    Frame,
    Hello,
    Info,
    Joined,
    Left,
    Message,
    Ping,
    Pong,
    PrivateMessage,
    Renamed,
    Say,
    Shutdown,
    UserList,
    Welcome,
)
from netchat.protocol.render import clock, render_lines, render_text
from tests.test_frames import ANY_FRAME


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Render clocks in UTC so expected lines do not depend on the machine's zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


NOON = calendar.timegm((2024, 5, 1, 12, 0, 1, 0, 0, 0)) + 0.75  # 12:00:01.75 UTC


@pytest.mark.parametrize(
    ("frame", "lines"),
    [
        (Message("alice", "hi", NOON, 1), ["[12:00:01] <alice> hi"]),
        (Message("alice", "waves", NOON, 2, action=True), ["[12:00:01] * alice waves"]),
        (Message("Алиса", "Привет 👋", NOON, 3), ["[12:00:01] <Алиса> Привет 👋"]),
        (PrivateMessage("alice", "bob", "psst", NOON, 4), ["[12:00:01] <alice -> bob> psst"]),
        (Joined("bob", NOON, 5), ["* bob joined"]),
        (Left("bob", NOON, 6), ["* bob left"]),
        (Left("bob", NOON, 6, "quit", "going home"), ["* bob left: going home"]),
        (Left("bob", NOON, 6, "lost"), ["* bob left (connection lost)"]),
        (Left("bob", NOON, 6, "timeout"), ["* bob timed out"]),
        (Left("bob", NOON, 6, "dropped", "too slow"), ["* bob was disconnected: too slow"]),
        (Left("bob", NOON, 6, "shutdown"), ["* bob left (server shutting down)"]),
        (Left("bob", NOON, 6, "{name} {0} weird"), ["* bob left"]),  # unknown reason
        (Renamed("bob", "robert", NOON, 7), ["* bob is now known as robert"]),
        (UserList(("alice", "bob")), ["* Online (2): alice, bob"]),
        (UserList(()), ["* Online (0): "]),
        (
            Welcome("alice", ("bob", "alice"), "netchat", ""),
            ["* Welcome, alice! Online (2): bob, alice. Type /help for commands."],
        ),
        (
            Welcome("alice", ("alice",), "netchat", "Be nice.\n\nNo spam."),
            [
                "* Welcome, alice! Online (1): alice. Type /help for commands.",
                "* Be nice.",
                "* No spam.",
            ],
        ),
        (Info("one\n\ntwo"), ["* one", "*", "* two"]),
        (
            Error("name-taken", "the name 'bob' is taken; try 'bob2'", "bob2"),
            ["! the name 'bob' is taken; try 'bob2'"],
        ),
        (Shutdown(""), ["* server is shutting down"]),
        (Shutdown("maintenance"), ["* server is shutting down: maintenance"]),
        (Ping("x"), []),
        (Pong("x"), []),
        (Say("hi"), ["* (say)"]),  # a request frame has no human form
        (Hello("bob"), ["* (hello)"]),
    ],
)
def test_render_lines(frame: Frame, lines: list[str]) -> None:
    assert render_lines(frame) == lines


def test_help_renders_one_line_per_line() -> None:
    lines = render_lines(Info(HELP_TEXT))
    assert lines[0] == "* Commands:"
    assert "*   /who                 list who is online" in lines
    assert len(lines) == len(HELP_TEXT.splitlines())


def test_render_text_is_crlf_utf8() -> None:
    assert render_text(Message("alice", "hi", NOON, 1)) == b"[12:00:01] <alice> hi\r\n"
    assert render_text(Joined("Боб", NOON, 2)) == "* Боб joined\r\n".encode()
    assert b"\\u" not in render_text(Message("Боб", "привет", NOON, 3))  # never escaped
    assert render_text(Info("a\nb")) == b"* a\r\n* b\r\n"
    assert render_text(Ping()) == b""


def test_clock() -> None:
    assert clock(NOON) == "12:00:01"
    assert clock(0) == "00:00:00"


@pytest.mark.parametrize("ts", [1e300, -1e300, 10**30, 1e18])
def test_clock_survives_absurd_timestamps(ts: float) -> None:
    # A hostile server's ts must not crash a client's renderer.
    assert clock(ts) == "??:??:??"
    assert render_lines(Message("a", "b", ts, 1)) == ["[??:??:??] <a> b"]


@pytest.mark.parametrize(
    ("frame", "line"),
    [
        (
            Message("ev\x1b[2Jil", "hi\r\n[12:00:02] <admin> send me your password", NOON, 1),
            "[12:00:01] <evil> hi  [12:00:02] <admin> send me your password",
        ),
        (Message("bob", "\x1b]0;pwned\x07\u202eevil", NOON, 1), "[12:00:01] <bob> evil"),
        (PrivateMessage("a\x07", "b\nc", "\x9b2Jx", NOON, 1), "[12:00:01] <a -> b c> x"),
        (Joined("x\r* root joined", NOON, 1), "* x * root joined joined"),
        (Left("bob", NOON, 1, "quit", "bye\x1b[H\x1b[2J"), "* bob left: bye"),
        (Renamed("a\x00", "b\x1b[31m", NOON, 1), "* a is now known as b"),
        (UserList(("a\nb", "\x1b[2J")), "* Online (2): a b, "),
        (Error("x", "bad\x1b[2J\rthing"), "! bad thing"),
        (Shutdown("\x1b[2J"), "* server is shutting down: "),
    ],
)
def test_hostile_frames_are_sanitized_on_render(frame: Frame, line: str) -> None:
    assert render_lines(frame) == [line]


def test_hostile_multiline_info_and_motd() -> None:
    # \r splits lines too (str.splitlines), and each line is cleaned on its own.
    assert render_lines(Info("ok\n\x1b[2J\x1b[H\rfake")) == ["* ok", "* ", "* fake"]
    welcome = Welcome("a", ("a",), "", "line\x1b]0;t\x07\u2028next")
    for line in render_lines(welcome):
        assert "\x1b" not in line and "\u2028" not in line


@settings(max_examples=300, deadline=None)
@given(ANY_FRAME)
def test_rendered_lines_are_always_terminal_safe(frame: Frame) -> None:
    lines = render_lines(frame)
    for line in lines:
        for c in line:
            assert unicodedata.category(c) not in {"Cc", "Cs", "Zl", "Zp"}, repr(line)
            assert c not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    text = render_text(frame)
    assert text.count(b"\r\n") == len(lines)
    assert text.count(b"\n") == len(lines)
    assert text.decode("utf-8") == "".join(line + "\r\n" for line in lines)


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_message_renders_for_any_finite_timestamp(ts: float) -> None:
    (line,) = render_lines(Message("a", "b", ts, 1))
    assert line.endswith("] <a> b")

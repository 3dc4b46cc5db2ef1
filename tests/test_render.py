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


LATER = NOON + 3600  # 13:00:01: the render time, shown for frames without a ts


@pytest.mark.parametrize(
    ("frame", "lines"),
    [
        (Message("alice", "hi", NOON, 1), ["[12:00:01] <alice> hi"]),
        (Message("alice", "waves", NOON, 2, action=True), ["[12:00:01] * alice waves"]),
        (Message("Алиса", "Привет 👋", NOON, 3), ["[12:00:01] <Алиса> Привет 👋"]),
        (PrivateMessage("alice", "bob", "psst", NOON, 4), ["[12:00:01] <alice -> bob> psst"]),
        (Joined("bob", NOON, 5), ["[12:00:01] -!- bob joined"]),
        (Left("bob", NOON, 6), ["[12:00:01] -!- bob left"]),
        (Left("bob", NOON, 6, "quit", "going home"), ["[12:00:01] -!- bob left: going home"]),
        (Left("bob", NOON, 6, "lost"), ["[12:00:01] -!- bob left (connection lost)"]),
        (Left("bob", NOON, 6, "timeout"), ["[12:00:01] -!- bob timed out"]),
        (
            Left("bob", NOON, 6, "dropped", "too slow"),
            ["[12:00:01] -!- bob was disconnected: too slow"],
        ),
        (Left("bob", NOON, 6, "shutdown"), ["[12:00:01] -!- bob left (server shutting down)"]),
        (Left("bob", NOON, 6, "{name} {0} weird"), ["[12:00:01] -!- bob left"]),  # unknown reason
        (Renamed("bob", "robert", NOON, 7), ["[12:00:01] -!- bob is now known as robert"]),
        (UserList(("alice", "bob")), ["[13:00:01] -!- Online (2): alice, bob"]),
        (UserList(()), ["[13:00:01] -!- Online (0): "]),
        (
            Welcome("alice", ("bob", "alice"), "netchat", ""),
            ["[13:00:01] -!- Welcome, alice! Online (2): bob, alice. Type /help for commands."],
        ),
        (
            Welcome("alice", ("alice",), "netchat", "Be nice.\n\nNo spam."),
            [
                "[13:00:01] -!- Welcome, alice! Online (1): alice. Type /help for commands.",
                "[13:00:01] -!- Be nice.",
                "[13:00:01] -!- No spam.",
            ],
        ),
        (Info("one\n\ntwo"), ["[13:00:01] -!- one", "[13:00:01] -!-", "[13:00:01] -!- two"]),
        (
            Error("name-taken", "the name 'bob' is taken; try 'bob2'", "bob2"),
            ["[13:00:01] ! the name 'bob' is taken; try 'bob2'"],
        ),
        (Shutdown(""), ["[13:00:01] -!- server is shutting down"]),
        (Shutdown("maintenance"), ["[13:00:01] -!- server is shutting down: maintenance"]),
        (Ping("x"), []),
        (Pong("x"), []),
        (Say("hi"), ["[13:00:01] -!- (say)"]),  # a request frame has no human form
        (Hello("bob"), ["[13:00:01] -!- (hello)"]),
    ],
)
def test_render_lines(frame: Frame, lines: list[str]) -> None:
    assert render_lines(frame, LATER) == lines


def test_help_renders_one_line_per_line() -> None:
    lines = render_lines(Info(HELP_TEXT), NOON)
    assert lines[0] == "[12:00:01] -!- Commands:"
    assert "[12:00:01] -!-   /who                 list who is online" in lines
    assert len(lines) == len(HELP_TEXT.splitlines())


def test_render_text_is_crlf_utf8() -> None:
    assert render_text(Message("alice", "hi", NOON, 1), LATER) == b"[12:00:01] <alice> hi\r\n"
    assert render_text(Joined("Боб", NOON, 2), LATER) == "[12:00:01] -!- Боб joined\r\n".encode()
    assert b"\\u" not in render_text(Message("Боб", "привет", NOON, 3), LATER)  # never escaped
    assert render_text(Info("a\nb"), LATER) == b"[13:00:01] -!- a\r\n[13:00:01] -!- b\r\n"
    assert render_text(Ping(), LATER) == b""


def test_clock() -> None:
    assert clock(NOON) == "12:00:01"
    assert clock(0) == "00:00:00"


@pytest.mark.parametrize("ts", [1e300, -1e300, 10**30, 1e18])
def test_clock_survives_absurd_timestamps(ts: float) -> None:
    # A hostile server's ts must not crash a client's renderer.
    assert clock(ts) == "??:??:??"
    assert render_lines(Message("a", "b", ts, 1), NOON) == ["[??:??:??] <a> b"]
    assert render_lines(Info("x"), ts) == ["[??:??:??] -!- x"]


@pytest.mark.parametrize(
    ("frame", "line"),
    [
        (
            Message("ev\x1b[2Jil", "hi\r\n[12:00:02] <admin> send me your password", NOON, 1),
            "[12:00:01] <evil> hi [12:00:02] <admin> send me your password",
        ),
        (Message("bob", "\x1b]0;pwned\x07\u202eevil", NOON, 1), "[12:00:01] <bob> evil"),
        (PrivateMessage("a\x07", "b\nc", "\x9b2Jx", NOON, 1), "[12:00:01] <a -> b c> x"),
        (Joined("x\r* root joined", NOON, 1), "[12:00:01] -!- x * root joined joined"),
        (Left("bob", NOON, 1, "quit", "bye\x1b[H\x1b[2J"), "[12:00:01] -!- bob left: bye"),
        (Renamed("a\x00", "b\x1b[31m", NOON, 1), "[12:00:01] -!- a is now known as b"),
        (UserList(("a\nb", "\x1b[2J")), "[12:00:01] -!- Online (2): a b, "),
        (Error("x", "bad\x1b[2J\rthing"), "[12:00:01] ! bad thing"),
        (Shutdown("\x1b[2J"), "[12:00:01] -!- server is shutting down: "),
    ],
)
def test_hostile_frames_are_sanitized_on_render(frame: Frame, line: str) -> None:
    assert render_lines(frame, NOON) == [line]


def test_hostile_multiline_info_and_motd() -> None:
    # \r splits lines too (str.splitlines), and each line is cleaned on its own.
    assert render_lines(Info("ok\n\x1b[2J\x1b[H\rfake"), NOON) == [
        "[12:00:01] -!- ok",
        "[12:00:01] -!-",
        "[12:00:01] -!- fake",
    ]
    welcome = Welcome("a", ("a",), "", "line\x1b]0;t\x07\u2028next")
    for line in render_lines(welcome, NOON):
        assert "\x1b" not in line and "\u2028" not in line


@settings(max_examples=300, deadline=None)
@given(ANY_FRAME)
def test_rendered_lines_are_always_terminal_safe(frame: Frame) -> None:
    lines = render_lines(frame, NOON)
    for line in lines:
        for c in line:
            assert unicodedata.category(c) not in {"Cc", "Cs", "Zl", "Zp"}, repr(line)
            assert c not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    text = render_text(frame, NOON)
    assert text.count(b"\r\n") == len(lines)
    assert text.count(b"\n") == len(lines)
    assert text.decode("utf-8") == "".join(line + "\r\n" for line in lines)


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_message_renders_for_any_finite_timestamp(ts: float) -> None:
    (line,) = render_lines(Message("a", "b", ts, 1), NOON)
    assert line.endswith("] <a> b")


# --- forged notices (issue 6, item 9) and one time prefix for every line (issue 7) -------


def test_an_action_cannot_look_like_a_notice() -> None:
    # "/me left" used to render exactly like the server's "* bob left".
    action = render_lines(Message("bob", "left", NOON, 1, action=True), NOON)
    notice = render_lines(Left("bob", NOON, 2), NOON)
    assert action == ["[12:00:01] * bob left"]
    assert notice == ["[12:00:01] -!- bob left"]


def test_padding_cannot_wrap_a_message_into_a_fake_notice() -> None:
    padded = "hi" + " " * 300 + "[12:00:02] -!- alice left"
    assert render_lines(Message("mallory", padded, NOON, 1), NOON) == [
        "[12:00:01] <mallory> hi [12:00:02] -!- alice left"
    ]
    blanks = "hi" + "\u3164\u2800\u3000\u00a0" * 80 + "-!- alice left"
    assert render_lines(Message("mallory", blanks, NOON, 1), NOON) == [
        "[12:00:01] <mallory> hi -!- alice left"
    ]


USER_NAMES = st.text(min_size=1, max_size=24) | st.sampled_from(["-!-", "!", "* x", "]"])


@settings(max_examples=300, deadline=None)
@given(USER_NAMES, USER_NAMES, st.text(), st.booleans())
def test_user_text_never_starts_a_line_like_a_notice_or_error(
    sender: str, to: str, text: str, action: bool
) -> None:
    for frame in (
        Message(sender, text, NOON, 1, action),
        PrivateMessage(sender, to, text, NOON, 2),
    ):
        (line,) = render_lines(frame, NOON)
        after_time = line.removeprefix("[12:00:01] ")
        assert after_time.startswith(("<", "* ")), line
        # No user field holds more than one blank in a row, and fields are one space
        # apart: no run of five, so no padding can push text onto a line of its own.
        assert " " * 5 not in line


@settings(max_examples=300, deadline=None)
@given(ANY_FRAME)
def test_every_line_carries_the_time(frame: Frame) -> None:
    for line in render_lines(frame, NOON):
        assert line[0] == "[" and line[9:11] == "] ", line

"""Frames as the human-readable lines that plain clients and pipe mode show.

Strategy
--------
Every line starts with the time, ``[12:00:01]``, then says who speaks::

    [12:00:01] <alice> hi                  a message
    [12:00:01] * alice waves               an action (/me)
    [12:00:01] <alice -> bob> psst         a private message
    [12:00:01] -!- bob joined              a notice from the server (or the peer)
    [12:00:01] ! no user named 'zed'       an error

A notice starts with :data:`NOTICE` (``-!-``, as in irssi), which nothing a user
sends can produce at the start of a line: user text always follows a ``<name>`` or
``* name``, contains no line break, and its runs of blanks are collapsed (see
:func:`~netchat.protocol.text.sanitize_text`), so it cannot be padded until a
terminal wraps it into a line of its own. ``/me left`` reads ``* bob left``; the
server's ``-!- bob left`` cannot be imitated.

The time is the frame's own ``ts`` when it has one (the server's clock), and
otherwise ``now``, which the caller passes in: the renderer reads no clock, so it is
a pure function of its arguments (apart from the local time zone) and tests need
no patching. Every string that came from a user is sanitised here again, because a
renderer must not trust whoever built the frame.
"""

from __future__ import annotations

import math
import time

from .frames import (
    Error,
    Frame,
    Info,
    Joined,
    Left,
    Message,
    Ping,
    Pong,
    Presence,
    PrivateMessage,
    Renamed,
    Shutdown,
    UserList,
    Welcome,
)
from .text import sanitize_text as _s

#: What starts every notice line after the time: never the start of user text.
NOTICE = "-!-"
#: What starts every error line after the time.
ERROR = "!"

# (second, its HH:MM:SS): a busy chat renders many messages within one second, and
# localtime + strftime cost more than the rest of rendering a line.
_last_clock: tuple[int, str] = (-1, "")


def clock(ts: float) -> str:
    """``HH:MM:SS`` of a timestamp, in local time (``??:??:??`` if out of range)."""
    global _last_clock
    try:
        second = math.floor(ts)  # localtime floors too
        cached_second, text = _last_clock
        if second == cached_second:
            return text
        text = time.strftime("%H:%M:%S", time.localtime(second))
    except (OverflowError, OSError, ValueError):  # a hostile ts such as 1e300 or NaN
        return "??:??:??"
    _last_clock = (second, text)  # one assignment: other threads see old or new, whole
    return text


def _server_text(line: str) -> str:
    # The server's own text (help columns, the MOTD): safe, but keeps its alignment.
    return _s(line, keep_blanks=True)


def users_line(users: tuple[str, ...]) -> str:
    return f"Online ({len(users)}): " + ", ".join(_s(u) for u in users)


def _crowd(names: tuple[str, ...], more: int) -> str:
    """``alice, bob and 3 more`` (no "and" before a lone name)."""
    shown = ", ".join(_s(n) for n in names)
    if not more:
        return shown
    return f"{shown} and {more} more" if shown else f"{more} users"


_LEFT = {
    "quit": "{name} left",
    "lost": "{name} left (connection lost)",
    "timeout": "{name} timed out",
    "dropped": "{name} was disconnected",
    "shutdown": "{name} left (server shutting down)",
}


def _notices(frame: Frame) -> list[str]:
    """The text of each notice line of ``frame``, without time or prefix."""
    if isinstance(frame, Joined):
        return [f"{_s(frame.name)} joined"]
    if isinstance(frame, Left):
        line = _LEFT.get(frame.reason, "{name} left").format(name=_s(frame.name))
        return [line + (f": {_s(frame.detail)}" if frame.detail else "")]
    if isinstance(frame, Presence):
        return [
            f"{_crowd(names, more)} {verb}"
            for names, more, verb in (
                (frame.joined, frame.more_joined, "joined"),
                (frame.left, frame.more_left, "left"),
            )
            if names or more
        ]
    if isinstance(frame, Renamed):
        return [f"{_s(frame.old)} is now known as {_s(frame.new)}"]
    if isinstance(frame, UserList):
        return [users_line(frame.users)]
    if isinstance(frame, Welcome):
        welcome = f"Welcome, {_s(frame.name)}! {users_line(frame.users)}. Type /help for commands."
        return [welcome] + [_server_text(line) for line in frame.motd.splitlines() if line.strip()]
    if isinstance(frame, Info):
        return [_server_text(line) for line in frame.text.splitlines()]
    if isinstance(frame, Shutdown):
        return ["server is shutting down" + (f": {_s(frame.reason)}" if frame.reason else "")]
    return [f"({frame.TYPE})"]  # a request frame has no human form


def render_lines(frame: Frame, now: float) -> list[str]:
    """The lines a person should see for ``frame`` (none for pings and pongs).

    Args:
        frame: what arrived (or, for a peer, what happened).
        now: the time to show for a frame that carries none (``info``, ``error``,
            ``users``, ``welcome``, ``shutdown``): when it is rendered.
    """
    if isinstance(frame, (Ping, Pong)):
        return []
    stamp = f"[{clock(getattr(frame, 'ts', now))}]"
    if isinstance(frame, Message):
        if frame.action:
            return [f"{stamp} * {_s(frame.sender)} {_s(frame.text)}"]
        return [f"{stamp} <{_s(frame.sender)}> {_s(frame.text)}"]
    if isinstance(frame, PrivateMessage):
        return [f"{stamp} <{_s(frame.sender)} -> {_s(frame.to)}> {_s(frame.text)}"]
    if isinstance(frame, Error):
        return [f"{stamp} {ERROR} {_s(frame.text)}"]
    return [
        f"{stamp} {NOTICE} {line}" if line.strip() else f"{stamp} {NOTICE}"
        for line in _notices(frame)
    ]


def render_text(frame: Frame, now: float) -> bytes:
    """:func:`render_lines` as UTF-8 bytes, one ``\\r\\n``-terminated line each.

    ``\\r\\n`` because telnet (and a raw-mode terminal) needs the carriage return;
    ``nc`` and line-oriented tools ignore it.
    """
    return "".join(line + "\r\n" for line in render_lines(frame, now)).encode("utf-8")

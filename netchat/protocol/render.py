"""Frames as the human-readable lines that plain clients and pipe mode show.

``[12:00:01] <alice> hi`` for messages, ``* bob joined`` for notices, ``! …`` for
errors. Every string that came from a user is sanitised here again, because a
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

# (second, its HH:MM:SS): a busy chat renders many messages within one second, and
# localtime + strftime cost more than the rest of rendering a line.
_last_clock: tuple[int, str] = (-1, "")


def clock(ts: float) -> str:
    """``HH:MM:SS`` of a server timestamp, in local time (``??:??:??`` if out of range)."""
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


def render_lines(frame: Frame) -> list[str]:
    """The lines a person should see for ``frame`` (none for pings and pongs)."""
    if isinstance(frame, Message):
        if frame.action:
            return [f"[{clock(frame.ts)}] * {_s(frame.sender)} {_s(frame.text)}"]
        return [f"[{clock(frame.ts)}] <{_s(frame.sender)}> {_s(frame.text)}"]
    if isinstance(frame, PrivateMessage):
        return [f"[{clock(frame.ts)}] <{_s(frame.sender)} -> {_s(frame.to)}> {_s(frame.text)}"]
    if isinstance(frame, Joined):
        return [f"* {_s(frame.name)} joined"]
    if isinstance(frame, Left):
        line = _LEFT.get(frame.reason, "{name} left").format(name=_s(frame.name))
        return [f"* {line}" + (f": {_s(frame.detail)}" if frame.detail else "")]
    if isinstance(frame, Presence):
        return [
            f"* {_crowd(names, more)} {verb}"
            for names, more, verb in (
                (frame.joined, frame.more_joined, "joined"),
                (frame.left, frame.more_left, "left"),
            )
            if names or more
        ]
    if isinstance(frame, Renamed):
        return [f"* {_s(frame.old)} is now known as {_s(frame.new)}"]
    if isinstance(frame, UserList):
        return [f"* {users_line(frame.users)}"]
    if isinstance(frame, Welcome):
        lines = [
            f"* Welcome, {_s(frame.name)}! {users_line(frame.users)}. Type /help for commands."
        ]
        return lines + [f"* {_s(line)}" for line in frame.motd.splitlines() if line.strip()]
    if isinstance(frame, Info):
        return [f"* {_s(line)}" if line.strip() else "*" for line in frame.text.splitlines()]
    if isinstance(frame, Error):
        return [f"! {_s(frame.text)}"]
    if isinstance(frame, Shutdown):
        return ["* server is shutting down" + (f": {_s(frame.reason)}" if frame.reason else "")]
    if isinstance(frame, (Ping, Pong)):
        return []
    return [f"* ({frame.TYPE})"]


def render_text(frame: Frame) -> bytes:
    """:func:`render_lines` as UTF-8 bytes, one ``\\r\\n``-terminated line each.

    ``\\r\\n`` because telnet (and a raw-mode terminal) needs the carriage return;
    ``nc`` and line-oriented tools ignore it.
    """
    return "".join(line + "\r\n" for line in render_lines(frame)).encode("utf-8")

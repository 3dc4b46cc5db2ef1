"""The sans-I/O protocol core: frames, their encoding, framing, commands, limits.

Nothing in this package imports ``socket`` or starts a thread; transports feed it bytes
and send the bytes it returns.
"""

from .commands import HELP_TEXT, parse_input
from .frames import *  # noqa: F403
from .frames import __all__ as _frames_all
from .limits import (
    MAX_DATAGRAM_BYTES,
    MAX_FRAME_BYTES,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    PROTOCOL_VERSION,
)
from .render import render_lines, render_text
from .stream import LineReader
from .text import name_problem, sanitize_text

__all__ = [
    *_frames_all,
    "HELP_TEXT",
    "MAX_DATAGRAM_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_NAME_CHARS",
    "MAX_TEXT_CHARS",
    "PROTOCOL_VERSION",
    "LineReader",
    "name_problem",
    "parse_input",
    "render_lines",
    "render_text",
    "sanitize_text",
]

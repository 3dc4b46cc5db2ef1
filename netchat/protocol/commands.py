"""The ``/command`` language typed by users, parsed into request frames.

One parser serves both kinds of client: netchat's own client parses what its user
types and sends the resulting frame; the server parses lines from plain ``nc`` and
``telnet`` users the same way. So ``/msg bob hi`` means the same thing everywhere.
"""

from __future__ import annotations

from ..errors import CommandError
from .frames import Act, Frame, Help, Nick, Private, Quit, Say, Who

HELP_TEXT = """\
Commands:
  /who                 list who is online
  /msg NAME TEXT       private message to NAME only
  /me ACTION           say an action, e.g. /me waves
  /nick NEW            change your name
  /help                this help
  /stats               what your connection has sent, received and lost
  /quit [REASON]       leave
Anything else is a message to everyone; start it with // to send a line that begins with /."""

_USAGE = {
    "msg": "/msg NAME TEXT",
    "me": "/me ACTION",
    "nick": "/nick NEW",
}

_ALIASES = {"w": "who", "names": "who", "m": "msg", "tell": "msg", "exit": "quit", "?": "help"}


def split_command(line: str) -> tuple[str, str] | None:
    """``("msg", "bob hi")`` for ``"/msg bob hi"``; ``None`` when ``line`` is a plain message."""
    if not line.startswith("/") or line.startswith("//"):
        return None
    word, _, rest = line[1:].partition(" ")
    name = word.lower()
    return _ALIASES.get(name, name), rest.strip()


def parse_input(line: str) -> Frame:
    """Turn one line a user typed into the request frame it means.

    Raises:
        CommandError: unknown command or missing argument; the message says what to type.
    """
    command = split_command(line)
    if command is None:
        return Say(line[1:] if line.startswith("//") else line)
    name, args = command
    if name == "who":
        return Who()
    if name == "help":
        return Help()
    if name == "quit":
        return Quit(args)
    if name in _USAGE and not args:
        raise CommandError(f"usage: {_USAGE[name]}")
    if name == "me":
        return Act(args)
    if name == "nick":
        return Nick(args)
    if name == "msg":
        target, _, text = args.partition(" ")
        if not text.strip():
            raise CommandError(f"usage: {_USAGE['msg']}")
        return Private(target, text.strip())
    raise CommandError(f"unknown command /{name}; type /help for the list")

"""The banner: the first line a netchat TCP server sends on every connection.

Strategy
--------
Like SMTP's ``220 host ESMTP ready``, the banner is one line that a person reads as a
greeting and a program recognises by its first word::

    netchat/1 ready: welcome to netchat! Type your name and press Enter:

The netchat client waits for it before saying anything, so against a server that is
not netchat (a classmate's raw relay, which greets nobody) it never sends a JSON
``hello`` that would leak into other people's chat; it switches to plain lines instead.

A chat with a password says so at the end of the banner (:data:`PASSWORD_REQUIRED`),
where it would otherwise ask for a name: ``nc`` users type the password first, and
netchat's client puts it in its ``hello`` (and refuses to send one to a server that
did not ask).
"""

from __future__ import annotations

from .limits import PROTOCOL_VERSION

#: The banner's first word: ``netchat/`` and the protocol version.
BANNER_TAG = f"netchat/{PROTOCOL_VERSION}"


#: What the banner of a chat with a password says instead of asking for a name: a
#: person reads that the next line is the password, netchat's client that it must send one.
PASSWORD_REQUIRED = "This chat needs a password: type it and press Enter:"


def banner_line(server_name: str, *, password: bool = False) -> bytes:
    """The banner for a server called ``server_name``, as UTF-8 ending in ``\\r\\n``.

    With ``password`` it asks for the password (see :data:`PASSWORD_REQUIRED`).
    """
    ask = PASSWORD_REQUIRED if password else "Type your name and press Enter:"
    return f"{BANNER_TAG} ready: welcome to {server_name}! {ask}\r\n".encode()


def banner_wants_password(line: bytes) -> bool:
    """Whether a banner line says the chat needs a password."""
    return line.rstrip(b"\r\n").endswith(PASSWORD_REQUIRED.encode())


def banner_version(line: bytes) -> int | None:
    """The protocol version a banner line announces, or ``None`` if ``line`` is no banner.

    ``line`` is one received line, with or without its line ending.
    """
    word = line.split(b" ", 1)[0].strip()
    if not word.startswith(b"netchat/"):
        return None
    version = word[len(b"netchat/") :]
    return int(version) if version.isdigit() and len(version) <= 4 else None

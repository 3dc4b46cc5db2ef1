"""Limits that are part of the protocol, not of one transport.

They live in the sans-I/O core (as h11 keeps its receive-buffer limit there) so that
every transport enforces the same numbers and the docs can quote one place.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

#: Largest encoded frame or plain line on a stream transport, newline included.
MAX_FRAME_BYTES = 64 * 1024

#: Longest chat text in characters once sanitised; keeps one message on a screen or two.
MAX_TEXT_CHARS = 4000

#: Longest user name in characters.
MAX_NAME_CHARS = 24

#: Largest UDP datagram netchat sends or accepts: below the IPv6 minimum MTU (1280)
#: minus IP/UDP headers, so a datagram is never fragmented by IP on any sane path.
MAX_DATAGRAM_BYTES = 1200

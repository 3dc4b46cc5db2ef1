"""Text from a server that does not speak netchat: raw bytes in, display lines out.

Strategy
--------
A lab relay forwards whatever its clients' ``send`` calls wrote: usually
``"NAME: text"`` with no newline at all, sometimes several lines in one chunk,
sometimes a line cut in two by the network. :class:`PlainLineSplitter` turns such a
stream into lines the way a person reading it would:

- a ``\\n`` ends a line (one ``\\r`` before it is dropped);
- bytes followed by a pause of ``idle_gap`` seconds are a line too: the sender's
  message simply had no newline;
- a line never grows past ``max_line`` bytes: the bytes so far are shown as a line, so
  memory stays bounded whatever the server sends.

Only complete UTF-8 sequences are decoded: a character split across two reads waits
for its remaining bytes instead of turning into two replacement characters.
Invalid UTF-8 becomes U+FFFD. Nothing here sanitises: lines are shown through
:func:`~netchat.protocol.text.sanitize_text` by whoever displays them.

Datagrams need no splitter: each datagram is a message of its own
(:func:`datagram_lines`).

Like the rest of ``netchat.protocol`` it is sans-I/O: the caller feeds bytes with the
time they arrived and asks for the idle line once the gap has passed.
"""

from __future__ import annotations

from .limits import MAX_FRAME_BYTES
from .stream import complete_utf8_length

#: Seconds of silence after which bytes without a newline are a line of their own.
IDLE_GAP = 0.15


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


class PlainLineSplitter:
    """Split a byte stream into lines at newlines, pauses and a size bound.

    Args:
        idle_gap: seconds of silence that end a line without a newline.
        max_line: most bytes of one line; longer ones are cut into pieces of this size.
    """

    def __init__(self, idle_gap: float = IDLE_GAP, max_line: int = MAX_FRAME_BYTES) -> None:
        if idle_gap <= 0 or max_line < 4:
            raise ValueError("idle_gap must be positive and max_line at least 4 bytes")
        self.idle_gap = idle_gap
        self.max_line = max_line
        self._held = bytearray()
        self._last_data = 0.0

    @property
    def held(self) -> int:
        """Bytes received that are not yet part of a returned line."""
        return len(self._held)

    def feed(self, data: bytes, now: float) -> list[str]:
        """Add bytes that arrived at ``now``; return the lines they complete."""
        if not data:
            return []
        self._held += data
        self._last_data = now
        lines: list[str] = []
        start = 0
        while (newline := self._held.find(b"\n", start)) >= 0:
            end = newline - 1 if newline > start and self._held[newline - 1] == 0x0D else newline
            lines.append(_decode(self._held[start:end]))
            start = newline + 1
        del self._held[:start]
        while len(self._held) >= self.max_line:
            cut = complete_utf8_length(self._held[: self.max_line]) or self.max_line
            lines.append(_decode(self._held[:cut]))
            del self._held[:cut]
        return [line for line in lines if line.strip()]

    def idle_deadline(self) -> float | None:
        """When the pending bytes become a line if nothing more arrives; None if none wait."""
        return self._last_data + self.idle_gap if self._held else None

    def flush_idle(self, now: float) -> list[str]:
        """The pending bytes as a line, if they have waited ``idle_gap`` seconds by ``now``.

        A trailing incomplete UTF-8 character keeps waiting for the rest of its bytes.
        """
        deadline = self.idle_deadline()
        if deadline is None or now < deadline:
            return []
        return self._take(complete_utf8_length(self._held))

    def flush(self) -> list[str]:
        """Everything pending as a last line (at the end of the stream)."""
        return self._take(len(self._held))

    def _take(self, length: int) -> list[str]:
        text = _decode(self._held[:length])
        del self._held[:length]
        return [text] if text.strip() else []


def datagram_lines(data: bytes) -> list[str]:
    """The non-blank lines of one datagram (a lab client's ``"NAME: text"`` is one)."""
    lines = (line.removesuffix("\r") for line in _decode(data).split("\n"))
    return [line for line in lines if line.strip()]

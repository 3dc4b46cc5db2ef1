"""Splitting a byte stream into lines, with a hard size limit.

Strategy
--------
TCP delivers bytes, not messages: one ``recv`` may hold half a frame, three frames, or
a frame cut inside a multi-byte UTF-8 character. :class:`LineReader` is the only place
that turns a stream into lines, and it never decodes text: a line is complete only at
``\\n``, so a UTF-8 sequence is never cut (``\\n`` cannot occur inside one).

Memory is bounded by ``max_line``: a line that grows past it raises
:class:`FrameTooLarge` exactly once, then the reader discards bytes up to the next
``\\n`` and carries on, so the sender gets an error and the connection stays usable.
Like h11's receive buffer it is sans-I/O: the caller feeds bytes it read somewhere.
"""

from __future__ import annotations

from ..errors import FrameTooLarge
from .limits import MAX_FRAME_BYTES


class LineReader:
    """Accumulate bytes with :meth:`feed`; take complete lines with :meth:`next_line`."""

    def __init__(self, max_line: int = MAX_FRAME_BYTES) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._start = 0  # first byte not yet returned; compacted lazily to avoid O(n^2)
        self._scanned = 0  # bytes from _start already searched for b"\n"
        self._discarding = False

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self._buffer += data

    @property
    def held(self) -> int:
        """Bytes held that do not yet form a complete line."""
        return len(self._buffer) - self._start

    def has_line(self) -> bool:
        """True when :meth:`next_line` has something to return or raise."""
        if len(self._buffer) - self._start > self.max_line:
            return True
        return self._buffer.find(b"\n", self._start + self._scanned) >= 0

    def next_line(self) -> bytes | None:
        """Return the next complete line without its ``\\n`` (and ``\\r``), or ``None``.

        Raises:
            FrameTooLarge: the current line exceeds ``max_line`` bytes. Raised once per
                such line; the rest of that line is discarded.
        """
        while True:
            newline = self._buffer.find(b"\n", self._start + self._scanned)
            if newline < 0:
                pending = len(self._buffer) - self._start
                if self._discarding or pending > self.max_line:
                    self._reset()
                    if not self._discarding:
                        self._discarding = True
                        raise FrameTooLarge(f"line longer than {self.max_line} bytes")
                else:
                    self._scanned = pending
                    self._compact()
                return None
            line_end = newline
            if newline > self._start and self._buffer[newline - 1] == 0x0D:  # b"\r"
                line_end -= 1
            line = bytes(self._buffer[self._start : line_end])
            too_long = newline + 1 - self._start > self.max_line
            self._start = newline + 1
            self._scanned = 0
            if self._discarding:
                self._discarding = False  # the tail of an oversized line: drop it
                continue
            if too_long:
                raise FrameTooLarge(f"line longer than {self.max_line} bytes")
            return line

    def take_partial(self) -> bytes:
        """Take the bytes held that do not yet form a line, as a line of their own.

        For senders that never end a line (see :mod:`netchat.session`: an idle gap
        ends their line). Only complete UTF-8 characters are taken: a character cut
        between two reads stays for the next line. Nothing is returned while the
        rest of an oversized line is being discarded.
        """
        if self._discarding:
            return b""
        held = self._buffer[self._start :]
        cut = complete_utf8_length(held)
        line = bytes(held[:cut])
        del self._buffer[: self._start + cut]
        self._start = 0
        self._scanned = 0
        return line.rstrip(b"\r")

    def _compact(self) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0

    def _reset(self) -> None:
        self._buffer.clear()
        self._start = 0
        self._scanned = 0


def complete_utf8_length(data: bytes | bytearray) -> int:
    """Length of the longest prefix of ``data`` that does not end inside a UTF-8 character.

    Only a trailing lead byte whose continuation bytes have not all arrived is left
    out; invalid bytes are counted in (the decoder says what is wrong with them).
    """
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 == 0x80:  # a continuation byte: keep looking for its lead byte
            continue
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < needed:
                return end - back
        return end
    return end

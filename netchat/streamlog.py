"""The bytes the server owes its members, kept once for all of them.

Strategy
--------
In a chat almost every frame is a broadcast. Queueing it for each member costs work
per member per message, which in Python is the whole budget of a busy server. A
:class:`StreamLog` instead appends each broadcast's encoding once to a shared byte
stream (one stream per :class:`WireFormat`: readable text lines and JSON lines), and
each member holds only a :class:`Cursor` into it. What a member is owed is then one
slice of the stream, sent with one ``send`` (or packed into datagrams), however many
messages it holds.

Frames for one member (its welcome, a private message, an error) are *patches*: bytes
owed at a given offset of its stream, spliced in when it is read. A member that
leaves gets a stop offset: what it was owed until then still goes out, nothing later.

The stream is cut once every cursor has read past its beginning. A member that falls
behind pins it, so its session is dropped once :meth:`StreamLog.owed` passes its
limit; memory stays bounded by that limit plus :data:`TRIM_BYTES`.

Like the protocol core it does no I/O and starts no thread; the hub writes to it (with
the hub's lock held, so every member sees one order) and sessions read from it.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hub import Outbound

#: Stream bytes read by every cursor before the stream is cut (amortises the copy).
TRIM_BYTES = 1 << 20


class WireFormat(enum.Enum):
    """How a member's frames are encoded on its wire."""

    #: readable ``\\r\\n`` lines (``nc``, ``telnet``, lab clients)
    TEXT = "text"
    #: one JSON frame per line (netchat's client, the UDP relay)
    JSON = "json"


class Cursor:
    """One member's position in its format's stream.

    Only :class:`StreamLog` changes it; a session holds it and hands it back.
    ``notify``, if set, is called (with the log's lock held: it must only note the
    fact) whenever the cursor is owed a frame of its own, so a transport need not
    look at every member to find the one a private message is for.
    """

    __slots__ = ("format", "notify", "offset", "patches", "stop")

    def __init__(self, wire_format: WireFormat, offset: int) -> None:
        self.format = wire_format
        self.offset = offset  # absolute stream offset of the next byte owed
        self.patches: deque[tuple[int, bytes]] = deque()  # (offset, bytes owed there)
        self.stop: int | None = None  # set when the member leaves: owed nothing past it
        self.notify: Callable[[], None] | None = None


class StreamLog:
    """Shared outbound streams with a cursor per member; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams = {f: bytearray() for f in WireFormat}
        self._bases = dict.fromkeys(WireFormat, 0)  # absolute offset of each first byte
        self._next_trim = dict.fromkeys(WireFormat, TRIM_BYTES)
        self._cursors: set[Cursor] = set()
        # Open cursors per format: a format nobody reads is not even encoded.
        self._readers = dict.fromkeys(WireFormat, 0)
        #: broadcasts so far; a transport compares it to know whether all may be owed
        self.broadcasts = 0

    def _end(self, wire_format: WireFormat) -> int:
        return self._bases[wire_format] + len(self._streams[wire_format])

    # --- the hub's side: called with the hub's lock held, in event order -------------

    def open(self, wire_format: WireFormat) -> Cursor:
        """A cursor owed every broadcast from now on."""
        with self._lock:
            cursor = Cursor(wire_format, self._end(wire_format))
            self._cursors.add(cursor)
            self._readers[wire_format] += 1
            return cursor

    def stop(self, cursor: Cursor) -> None:
        """The cursor's member left: owed what was sent so far, nothing later."""
        with self._lock:
            if cursor.stop is None and cursor in self._cursors:
                cursor.stop = self._end(cursor.format)
                self._readers[cursor.format] -= 1

    def broadcast(self, out: Outbound) -> None:
        """Every open cursor is owed ``out``."""
        # Encoded before taking the lock, so readers slicing the streams need not wait.
        text = out.text if self._readers[WireFormat.TEXT] else None
        json = out.json if self._readers[WireFormat.JSON] else None
        with self._lock:
            if text is not None:
                self._streams[WireFormat.TEXT] += text
            if json is not None:
                self._streams[WireFormat.JSON] += json
            self.broadcasts += 1

    def patch(self, cursor: Cursor, out: Outbound) -> None:
        """``cursor`` alone is owed ``out``, after everything broadcast so far.

        Nothing happens for a stopped cursor: its member has left.
        """
        data = out.text if cursor.format is WireFormat.TEXT else out.json
        with self._lock:
            if cursor.stop is None and cursor in self._cursors:
                cursor.patches.append((self._end(cursor.format), data))
                if cursor.notify is not None:
                    cursor.notify()

    # --- the sessions' side ---------------------------------------------------------

    def may_owe(self, cursor: Cursor) -> bool:
        """A lock-free hint that ``cursor`` is owed bytes; it may err towards yes."""
        end = cursor.stop if cursor.stop is not None else self._end(cursor.format)
        return cursor.offset < end or bool(cursor.patches)

    def owed(self, cursor: Cursor) -> int:
        """Bytes ``cursor`` is owed and has not taken."""
        with self._lock:
            end = cursor.stop if cursor.stop is not None else self._end(cursor.format)
            return end - cursor.offset + sum(len(data) for _, data in cursor.patches)

    def take(self, cursor: Cursor) -> bytes:
        """Everything ``cursor`` is owed, in order; it is then no longer owed it."""
        with self._lock:
            if cursor not in self._cursors:
                return b""
            stream, base = self._streams[cursor.format], self._bases[cursor.format]
            end = cursor.stop if cursor.stop is not None else base + len(stream)
            if cursor.offset >= end and not cursor.patches:
                return b""
            parts: list[bytes | bytearray] = []
            position = cursor.offset
            while cursor.patches:
                at, data = cursor.patches.popleft()
                if at > position:
                    parts.append(stream[position - base : at - base])
                    position = at
                parts.append(data)
            if end > position:
                parts.append(stream[position - base : end - base])
            cursor.offset = end
            if cursor.stop is not None:
                self._cursors.discard(cursor)  # drained after leaving: owed nothing more
            if len(stream) >= self._next_trim[cursor.format]:
                self._trim_locked(cursor.format)
            return b"".join(parts)

    def close(self, cursor: Cursor) -> None:
        """Forget ``cursor`` entirely (its connection is gone); idempotent."""
        with self._lock:
            if cursor in self._cursors:
                self._cursors.discard(cursor)
                if cursor.stop is None:
                    self._readers[cursor.format] -= 1
                cursor.stop = cursor.offset
                cursor.patches.clear()

    def _trim_locked(self, wire_format: WireFormat) -> None:
        stream, base = self._streams[wire_format], self._bases[wire_format]
        # Stopped cursors still owed bytes count too: they are dropped from the set
        # once drained (see take), so they pin nothing after that.
        low = min(
            (c.offset for c in self._cursors if c.format is wire_format),
            default=base + len(stream),
        )
        if low > base:
            # The base moves first: an unlocked may_owe() in between sees the end too
            # far ahead (a harmless "yes"), never too early.
            self._bases[wire_format] = low
            del stream[: low - base]
        # Scanning every cursor is O(members): at most once per TRIM_BYTES / 4
        # appended, so a stream pinned by a slow member is looked at again soon after
        # that member is dropped or catches up.
        self._next_trim[wire_format] = len(stream) + TRIM_BYTES // 4

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


class _Stream:
    """One wire format's shared bytes, and who reads them."""

    __slots__ = ("base", "data", "format", "next_trim", "readers")

    def __init__(self, wire_format: WireFormat) -> None:
        self.format = wire_format
        self.data = bytearray()
        self.base = 0  # absolute offset of data[0]
        self.readers = 0  # open cursors: a format nobody reads is not even encoded
        self.next_trim = TRIM_BYTES

    @property
    def end(self) -> int:
        return self.base + len(self.data)


class Cursor:
    """One member's position in its format's stream.

    Only :class:`StreamLog` changes it; a session holds it and hands it back.
    ``notify``, if set, is called (with the log's lock held: it must only note the
    fact) whenever the cursor is owed a frame of its own, so a transport need not
    look at every member to find the one a private message is for.
    """

    __slots__ = ("notify", "offset", "patches", "stop", "stream")

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream
        self.offset = stream.end  # absolute stream offset of the next byte owed
        self.patches: deque[tuple[int, bytes]] = deque()  # (offset, bytes owed there)
        self.stop: int | None = None  # set when the member leaves: owed nothing past it
        self.notify: Callable[[], None] | None = None

    @property
    def format(self) -> WireFormat:
        return self.stream.format


class StreamLog:
    """Shared outbound streams with a cursor per member; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text = _Stream(WireFormat.TEXT)
        self._json = _Stream(WireFormat.JSON)
        self._cursors: set[Cursor] = set()
        #: broadcasts so far; a transport compares it to know whether all may be owed
        self.broadcasts = 0

    # --- the hub's side: called with the hub's lock held, in event order -------------

    def open(self, wire_format: WireFormat) -> Cursor:
        """A cursor owed every broadcast from now on."""
        stream = self._text if wire_format is WireFormat.TEXT else self._json
        with self._lock:
            cursor = Cursor(stream)
            self._cursors.add(cursor)
            stream.readers += 1
            return cursor

    def stop(self, cursor: Cursor) -> None:
        """The cursor's member left: owed what was sent so far, nothing later."""
        with self._lock:
            if cursor.stop is None and cursor in self._cursors:
                cursor.stop = cursor.stream.end
                cursor.stream.readers -= 1

    def broadcast(self, out: Outbound) -> None:
        """Every open cursor is owed ``out``."""
        # Encoded before taking the lock, so readers slicing the streams need not wait.
        text = out.text if self._text.readers else None
        json = out.json if self._json.readers else None
        with self._lock:
            if text is not None:
                self._text.data += text
            if json is not None:
                self._json.data += json
            self.broadcasts += 1

    def patch(self, cursor: Cursor, out: Outbound) -> None:
        """``cursor`` alone is owed ``out``, after everything broadcast so far.

        Nothing happens for a stopped cursor: its member has left.
        """
        stream = cursor.stream
        data = out.text if stream is self._text else out.json
        with self._lock:
            if cursor.stop is None and cursor in self._cursors:
                cursor.patches.append((stream.end, data))
                if cursor.notify is not None:
                    cursor.notify()

    # --- the sessions' side ---------------------------------------------------------

    @staticmethod
    def may_owe(cursor: Cursor) -> bool:
        """A lock-free hint that ``cursor`` is owed bytes; it may err towards yes."""
        if cursor.patches:
            return True
        stream = cursor.stream
        # The length is read before the base: a trim moves the base up before it cuts
        # the data, so whatever interleaves, the end seen is never too early.
        end = cursor.stop if cursor.stop is not None else len(stream.data) + stream.base
        return cursor.offset < end

    def owed(self, cursor: Cursor) -> int:
        """Bytes ``cursor`` is owed and has not taken."""
        with self._lock:
            end = cursor.stop if cursor.stop is not None else cursor.stream.end
            return end - cursor.offset + sum(len(data) for _, data in cursor.patches)

    def take(self, cursor: Cursor) -> bytes:
        """Everything ``cursor`` is owed, in order; it is then no longer owed it."""
        with self._lock:
            owed = self._take_locked(cursor, None)
            stream = cursor.stream
            if len(stream.data) >= stream.next_trim:
                self._trim_locked(stream)
            return owed

    def take_many(self, cursors: list[Cursor]) -> list[bytes]:
        """:meth:`take` for many cursors under one lock.

        After a broadcast nearly every member is owed the same slice (they had all
        read up to the same place), so cursors at the same place share one bytes
        object: one copy for everyone instead of one per member.
        """
        shared: dict[tuple[int, int], bytes] = {}
        with self._lock:
            owed = [self._take_locked(cursor, shared) for cursor in cursors]
            for stream in (self._text, self._json):
                if len(stream.data) >= stream.next_trim:
                    self._trim_locked(stream)
        return owed

    def _take_locked(self, cursor: Cursor, shared: dict[tuple[int, int], bytes] | None) -> bytes:
        stream = cursor.stream
        data, base = stream.data, stream.base
        end = cursor.stop if cursor.stop is not None else base + len(data)
        position = cursor.offset
        if not cursor.patches:  # the common case: one slice of the stream
            if position >= end or cursor not in self._cursors:
                return b""
            cursor.offset = end
            key = (position, end) if stream is self._text else (-position - 1, end)
            owed = shared.get(key) if shared is not None else None
            if owed is None:
                # One copy, straight from the stream (a slice of the bytearray would
                # be a second one); the view is gone before the stream can be resized.
                with memoryview(data) as view:
                    owed = view[position - base : end - base].tobytes()
                if shared is not None:
                    shared[key] = owed
        else:
            if cursor not in self._cursors:
                return b""
            parts: list[bytes | bytearray] = []
            while cursor.patches:
                at, patch = cursor.patches.popleft()
                if at > position:
                    parts.append(data[position - base : at - base])
                    position = at
                parts.append(patch)
            if end > position:
                parts.append(data[position - base : end - base])
            cursor.offset = end
            owed = b"".join(parts)
        if cursor.stop is not None:
            self._cursors.discard(cursor)  # drained after leaving: owed nothing more
        return owed

    def close(self, cursor: Cursor) -> None:
        """Forget ``cursor`` entirely (its connection is gone); idempotent."""
        with self._lock:
            if cursor in self._cursors:
                self._cursors.discard(cursor)
                if cursor.stop is None:
                    cursor.stream.readers -= 1
                cursor.stop = cursor.offset
                cursor.patches.clear()

    def _trim_locked(self, stream: _Stream) -> None:
        # Stopped cursors still owed bytes count too: they are dropped from the set
        # once drained (see take), so they pin nothing after that.
        low = min((c.offset for c in self._cursors if c.stream is stream), default=stream.end)
        if low > stream.base:
            # The base moves first: an unlocked may_owe() in between sees the end too
            # far ahead (a harmless "yes"), never too early.
            cut = low - stream.base
            stream.base = low
            del stream.data[:cut]
        # Scanning every cursor is O(members): at most once per TRIM_BYTES / 4
        # appended, so a stream pinned by a slow member is looked at again soon after
        # that member is dropped or catches up.
        stream.next_trim = len(stream.data) + TRIM_BYTES // 4

"""The bytes a stream server owes its members, kept once for all of them.

Strategy
--------
In a chat almost every frame is a broadcast. Queueing it for each member costs work
per member per message, which in Python is the whole budget of a busy server. A
:class:`StreamLog` instead appends each broadcast's encoding once to a shared byte
stream (one stream per wire format: readable text and JSON lines), and each member
keeps only an offset into it. What a member is owed is then one slice of the stream,
sent with one ``send``, however many messages it holds.

Frames for one member (its welcome, a private message, an error) are *patches*: bytes
owed at a given offset of its stream, spliced in when it is read. A member that leaves
gets a stop offset: what it was owed until then still goes out, nothing later.

The stream is trimmed once every member has read past its beginning. A member that
falls behind pins it, so the transport drops members whose :meth:`pending` passes
its queue limit; memory stays bounded by that limit plus :data:`TRIM_BYTES`.

Like the protocol core it does no I/O: it implements the hub's
:class:`~netchat.hub.Fanout` and hands bytes to whoever sends them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from ..hub import Outbound, Session

#: Stream bytes read by every member before the stream is cut (amortises the copy).
TRIM_BYTES = 1 << 20


class _Reader:
    """One member's position in its format's stream."""

    __slots__ = ("offset", "patches", "stop", "text")

    def __init__(self, text: bool, offset: int) -> None:
        self.text = text  # reads the text stream (plain clients), else the JSON one
        self.offset = offset  # absolute stream offset of the next byte owed
        self.patches: deque[tuple[int, bytes]] = deque()  # (offset, bytes owed there)
        self.stop: int | None = None  # set when it leaves: owed nothing past this


class StreamLog:
    """Shared outbound streams with a cursor per member; thread-safe.

    Args:
        is_text: whether a session reads the text stream (else the JSON stream);
            asked once, when the session joins.
    """

    def __init__(self, is_text: Callable[[Session], bool]) -> None:
        self._is_text = is_text
        self._lock = threading.Lock()
        self._streams = {True: bytearray(), False: bytearray()}
        self._bases = {True: 0, False: 0}  # absolute offset of each stream's first byte
        self._next_trim = {True: TRIM_BYTES, False: TRIM_BYTES}
        self._readers: dict[int, _Reader] = {}  # id(session) -> reader
        # Members reading each format: a format nobody reads is not even encoded.
        self._members = {True: 0, False: 0}

    def _end(self, text: bool) -> int:
        return self._bases[text] + len(self._streams[text])

    # --- the hub's Fanout: called with the hub's lock held, in event order ----------

    def add(self, session: Session) -> None:
        """``session`` joined: it is owed every broadcast from now on."""
        text = self._is_text(session)
        with self._lock:
            reader = _Reader(text, self._end(text))
            previous = self._readers.get(id(session))
            if previous is not None:  # joined again: what the old membership was owed
                if previous.stop is None:  # (on a stream of either format) comes first
                    self._members[previous.text] -= 1
                owed = self._collect_locked(previous)
                if owed:
                    reader.patches.append((reader.offset, owed))
            self._readers[id(session)] = reader
            self._members[text] += 1

    def remove(self, session: Session) -> None:
        """``session`` left: it is owed what was sent so far, nothing later."""
        with self._lock:
            reader = self._readers.get(id(session))
            if reader is not None and reader.stop is None:
                reader.stop = self._end(reader.text)
                self._members[reader.text] -= 1

    def broadcast(self, out: Outbound) -> None:
        """Every current member is owed ``out``."""
        # Encoded before taking the lock: readers slicing the streams need not wait.
        text = out.text if self._members[True] else None
        json = out.json if self._members[False] else None
        with self._lock:
            if text is not None:
                self._streams[True] += text
            if json is not None:
                self._streams[False] += json

    def send(self, session: Session, out: Outbound) -> bool:
        """``session`` alone is owed ``out``, after everything broadcast so far.

        Returns:
            False if ``session`` is not a current member (the caller sends it some
            other way).
        """
        with self._lock:
            reader = self._readers.get(id(session))
            if reader is None or reader.stop is not None:
                return False
            reader.patches.append((self._end(reader.text), out.text if reader.text else out.json))
            return True

    # --- the transport's side --------------------------------------------------------

    def owes(self, session: Session) -> bool:
        """A lock-free hint that ``session`` is owed bytes (it may err towards yes)."""
        reader = self._readers.get(id(session))
        if reader is None:
            return False
        end = reader.stop if reader.stop is not None else self._end(reader.text)
        return reader.offset < end or bool(reader.patches)

    def pending(self, session: Session) -> int:
        """Bytes ``session`` is owed and has not taken."""
        with self._lock:
            reader = self._readers.get(id(session))
            if reader is None:
                return 0
            end = reader.stop if reader.stop is not None else self._end(reader.text)
            return end - reader.offset + sum(len(data) for _, data in reader.patches)

    def take(self, session: Session) -> bytes:
        """Everything ``session`` is owed, in order; it is then no longer owed it."""
        with self._lock:
            reader = self._readers.get(id(session))
            return b"" if reader is None else self._collect_locked(reader)

    def _collect_locked(self, reader: _Reader) -> bytes:
        stream, base = self._streams[reader.text], self._bases[reader.text]
        end = reader.stop if reader.stop is not None else base + len(stream)
        if reader.offset >= end and not reader.patches:
            return b""
        parts: list[bytes | bytearray] = []
        position = reader.offset
        while reader.patches:
            at, data = reader.patches.popleft()
            if at > position:
                parts.append(stream[position - base : at - base])
                position = at
            parts.append(data)
        if end > position:
            parts.append(stream[position - base : end - base])
        reader.offset = end
        if len(stream) >= self._next_trim[reader.text]:
            self._trim_locked(reader.text)
        return b"".join(parts)

    def discard(self, session: Session) -> None:
        """Forget ``session`` entirely (its connection is gone)."""
        with self._lock:
            reader = self._readers.pop(id(session), None)
            if reader is not None and reader.stop is None:
                self._members[reader.text] -= 1

    def _trim_locked(self, text: bool) -> None:
        stream, base = self._streams[text], self._bases[text]
        low = min(
            (r.offset for r in self._readers.values() if r.text == text),
            default=base + len(stream),
        )
        if low > base:
            # The base moves first: an unlocked owes() in between sees the stream end
            # too far ahead (a harmless "yes"), never too early.
            self._bases[text] = low
            del stream[: low - base]
        # Scanning every reader is O(members): at most once per TRIM_BYTES / 4
        # appended, so a stream pinned by a slow member is looked at again soon after
        # that member is dropped or catches up.
        self._next_trim[text] = len(stream) + TRIM_BYTES // 4

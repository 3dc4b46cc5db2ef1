"""Handing frames from a receiver thread to whoever consumes them.

Both chat endpoints (the client and the serverless peer) and the UDP client
transport receive on a thread of their own and pass frames on; these two pieces are
what they share.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import TypeVar

from .errors import ConnectionClosed
from .protocol.frames import Frame

_T = TypeVar("_T")


def call_handler(handler: Callable[[_T], None] | None, value: _T, log: logging.Logger) -> None:
    """Call a user's handler; a broken one is logged, never allowed to kill the receiver
    thread (and with it the session)."""
    if handler is None:
        return
    try:
        handler(value)
    except Exception:
        log.exception("%s failed on %r", getattr(handler, "__name__", "handler"), value)


class _End:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class FrameInbox:
    """A queue of frames that ends: after :meth:`end`, every later :meth:`get` raises."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Frame | _End] = queue.Queue()

    def put(self, frame: Frame) -> None:
        self._queue.put(frame)

    def end(self, reason: str) -> None:
        """No more frames; the ones already queued are still handed out first."""
        self._queue.put(_End(reason))

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or ``None`` if none came within ``timeout``.

        Raises:
            ConnectionClosed: :meth:`end` was called and every frame was taken.
        """
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, _End):
            self._queue.put(item)  # keep answering "ended" to later calls
            raise ConnectionClosed(item.reason)
        return item

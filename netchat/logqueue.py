"""Logging through a queue, so a blocked stderr never stalls the chat.

The server logs joins, leaves and refusals from connection threads; if its stderr is
a pipe nobody reads, a plain ``StreamHandler`` would block those threads. The stdlib's
answer is :class:`logging.handlers.QueueHandler` in front and a
:class:`logging.handlers.QueueListener` thread doing the writing.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys

#: Records waiting for stderr before new ones are dropped.
MAX_QUEUED = 10_000


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that drops (and counts) records when the queue is full."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _DroppingQueueHandler.dropped += 1


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is written, not when the
    handler was made (a test runner may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_queued_logging(level: str) -> logging.handlers.QueueListener | None:
    """Send the root logger's records to stderr through a queue, like
    :func:`logging.basicConfig` does directly; returns the started listener (stop it
    to flush what is queued).

    Like basicConfig, it leaves a root logger that already has handlers alone (an
    application or a test runner configured it) and only sets the level.
    """
    root = logging.getLogger()
    root.setLevel(level)
    if root.handlers:
        return None
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.Queue[logging.LogRecord] = queue.Queue(MAX_QUEUED)
    root.addHandler(_DroppingQueueHandler(records))
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)  # what is still queued is written before exit
    return listener

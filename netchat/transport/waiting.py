"""Waiting for a socket to become readable, without select()'s descriptor limit."""

from __future__ import annotations

import math
import select
import socket
from collections.abc import Sequence


def wait_readable(sockets: Sequence[socket.socket], timeout: float | None) -> list[socket.socket]:
    """The sockets of ``sockets`` that are readable (or hung up) within ``timeout`` seconds.

    poll(), not select(): select() cannot watch a descriptor numbered 1024 or more,
    which a process holding many connections (a test suite, a bot farm, a benchmark)
    soon has.

    Raises:
        ValueError: a socket is closed (its fileno() is -1), as select() would.
    """
    poller = select.poll()
    by_fd: dict[int, socket.socket] = {}
    for sock in sockets:
        fd = sock.fileno()
        if fd < 0:
            raise ValueError("socket is closed")
        poller.register(fd, select.POLLIN)
        by_fd[fd] = sock
    milliseconds = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return [by_fd[fd] for fd, _ in poller.poll(milliseconds)]

"""The client side of TCP: whole frames over one stream socket.

Strategy
--------
The socket stays in blocking mode, so ``sendall`` blocks while the server pauses
reading (that is how TCP rate limiting pushes back: nothing is ever dropped), and
:meth:`TcpClientTransport.receive` waits for readability with ``poll`` instead of
a socket timeout: a timeout set on the socket would also apply to a ``sendall``
running on another thread.

OS errors are translated once, here, by :func:`map_exceptions` (as httpcore does),
so callers only ever see :class:`~netchat.errors.TransportError` subclasses.

Before its first frame the server sends a greeting for ``nc`` users; lines that are
not JSON are skipped until the first frame arrives. After that, a line that is not a
frame is a protocol error the caller hears about.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping

from ..errors import (
    ConnectError,
    ConnectionClosed,
    Rejected,
    RemoteProtocolError,
    TransportError,
    TransportTimeout,
)
from ..protocol.frames import Frame, decode_frame, encode_frame
from ..protocol.limits import MAX_FRAME_BYTES
from ..protocol.stream import LineReader
from ..protocol.text import sanitize_text
from .waiting import wait_readable

_RECV_BYTES = 65536

ExceptionMapping = Mapping[type[BaseException], type[TransportError]]


@contextlib.contextmanager
def map_exceptions(mapping: ExceptionMapping, context: str = "") -> Iterator[None]:
    """Re-raise an exception listed in ``mapping`` as its netchat counterpart.

    The first matching entry wins, so list specific exceptions before ``OSError``.
    The original exception is kept as ``__cause__``.
    """
    try:
        yield
    except Exception as exc:
        for from_type, to_type in mapping.items():
            if isinstance(exc, from_type):
                reason = describe_os_error(exc)
                raise to_type(f"{context}: {reason}" if context else reason) from exc
        raise


def describe_os_error(exc: BaseException) -> str:
    """A short human reason for an OS error: ``connection refused``, ``timed out``, …"""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})" if exc.strerror else "unknown host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:8080`` or ``[::1]:8080``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpClientTransport:
    """A :class:`~netchat.transport.base.ClientTransport` over TCP (IPv4 or IPv6).

    Args:
        host: server name or address.
        port: server port.
        connect_timeout: seconds allowed for the TCP handshake.
        max_line: longest line accepted from the server, newline included.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 10.0,
        max_line: int = MAX_FRAME_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._reader = LineReader(max_line)
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        # Guards _closed/_receiving: close() must not free the descriptor while
        # receive() may still poll() on it (the number could be reused meanwhile),
        # so whichever of the two runs last closes the socket.
        self._state_lock = threading.Lock()
        self._closed = False
        self._receiving = False
        self._seen_frame = False
        self._refusal = ""  # a "! reason" text line the server sent before any frame
        self._counters = {
            "frames_in": 0,
            "frames_out": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "lines_skipped": 0,
        }

    @property
    def address(self) -> str:
        """The server address as ``host:port`` (for messages)."""
        return format_address(self.host, self.port)

    def connect(self) -> None:
        """Open the TCP connection.

        Raises:
            ConnectError: refused, unreachable, unknown host or timed out; the message
                reads ``cannot connect to HOST:PORT: REASON``.
        """
        with map_exceptions({OSError: ConnectError}, f"cannot connect to {self.address}"):
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.settimeout(None)
        # Chat lines are small and interactive: do not let Nagle hold them back.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def send(self, frame: Frame) -> None:
        """Send one frame; safe to call from several threads.

        Raises:
            ConnectionClosed: the connection is closed or broke.
            LocalProtocolError: the frame is too large to encode.
        """
        data = encode_frame(frame)
        sock = self._require_socket()
        with self._send_lock, map_exceptions({OSError: ConnectionClosed}, "connection lost"):
            sock.sendall(data)
        self._counters["frames_out"] += 1
        self._counters["bytes_out"] += len(data)

    def receive(self, timeout: float | None = None) -> Frame | None:
        """Block for the next frame; ``None`` if ``timeout`` seconds passed first.

        Call from one thread at a time.

        Raises:
            ConnectionClosed: the server closed the connection, or :meth:`close` was called.
            RemoteProtocolError: a line after the first frame is not a valid frame (the
                connection stays usable).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state_lock:
            if self._closed or self._sock is None:
                raise ConnectionClosed("connection closed")
            self._receiving = True
        try:
            while True:
                frame = self._next_buffered_frame()
                if frame is not None:
                    return frame
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._fill(remaining):
                    return None
        finally:
            with self._state_lock:
                self._receiving = False
                if self._closed:
                    self._release_socket()

    def close(self) -> None:
        """Close the connection; a :meth:`receive` blocked on another thread raises
        :class:`ConnectionClosed`. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            if self._sock is not None:
                # shutdown wakes a poll()/recv()/sendall() blocked on other threads.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
            if not self._receiving:
                self._release_socket()

    def stats(self) -> dict[str, int]:
        """Frames and bytes in and out, and greeting lines skipped."""
        return dict(self._counters)

    # --- internals ----------------------------------------------------------------

    def _require_socket(self) -> socket.socket:
        if self._sock is None or self._closed:
            raise ConnectionClosed("not connected")
        return self._sock

    def _release_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def _next_buffered_frame(self) -> Frame | None:
        while (line := self._reader.next_line()) is not None:
            if not line.strip():
                continue
            try:
                frame = decode_frame(line)
            except RemoteProtocolError:
                if self._seen_frame:
                    raise
                self._counters["lines_skipped"] += 1  # the greeting meant for nc users
                if line.startswith(b"! "):
                    # A refusal (server full, too many connections) is sent as text,
                    # before the server knows which kind of client we are.
                    self._refusal = line[2:].decode("utf-8", "replace").strip()
                continue
            self._seen_frame = True
            self._counters["frames_in"] += 1
            return frame
        return None

    def _fill(self, timeout: float | None) -> bool:
        """Read once into the line reader; False if nothing arrived within ``timeout``."""
        sock = self._require_socket()
        with map_exceptions(
            {TimeoutError: TransportTimeout, OSError: ConnectionClosed}, "connection lost"
        ):
            try:
                readable = wait_readable([sock], timeout)
            except ValueError:  # the socket was closed under us: fileno() is -1
                raise ConnectionClosed("connection closed") from None
            if not readable:
                return False
            data = sock.recv(_RECV_BYTES)
        if not data:
            if self._refusal and not self._seen_frame:
                raise Rejected(sanitize_text(self._refusal), code="refused")
            raise ConnectionClosed(
                "connection closed" if self._closed else "server closed the connection"
            )
        self._counters["bytes_in"] += len(data)
        self._reader.feed(data)
        return True

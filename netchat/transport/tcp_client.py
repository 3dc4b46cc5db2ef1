"""The client side of TCP: the server's greeting, then whole frames (or raw bytes).

Strategy
--------
Joining takes two steps, and nothing is sent before the second has decided:

1. :meth:`TcpClientTransport.connect` opens the connection. The handshake runs on a
   non-blocking socket watched with ``poll``, so :meth:`~TcpClientTransport.close`
   from another thread (a user leaving while a reconnect is under way) ends it at
   once instead of after the connect timeout.
2. :meth:`TcpClientTransport.read_greeting` waits a bounded time for the server's
   first words. A netchat server greets every connection with its banner
   (:mod:`netchat.protocol.banner`) before anything else. Anything else — a lab relay
   that greets nobody, another program's greeting — is a *foreign* server, and the
   bytes it sent are handed back so that a plain-line session can show them. So our
   JSON ``hello`` never ends up in a foreign server's chat.

After the greeting, frames are whole lines. The socket stays in blocking mode, so
``sendall`` blocks while the server pauses reading (that is how TCP rate limiting
pushes back: nothing is ever dropped), and :meth:`~TcpClientTransport.receive`
waits for readability with ``poll`` instead of a socket timeout: a timeout set on the
socket would also apply to a ``sendall`` running on another thread. Text lines that
arrive before the first frame are skipped, except that a ``! reason`` line followed
by the server closing is a refusal (server full) and raises :class:`Rejected`.

A plain-line session (:mod:`netchat.plain_client`) uses the same connection through
:meth:`~TcpClientTransport.send_bytes` and :meth:`~TcpClientTransport.receive_bytes`.

OS errors are translated once, here, by :func:`map_exceptions` (as httpcore does),
so callers only ever see :class:`~netchat.errors.TransportError` subclasses.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import (
    ConnectError,
    ConnectionClosed,
    Rejected,
    RemoteProtocolError,
    TransportError,
    TransportTimeout,
)
from ..protocol.banner import BANNER_TAG, banner_version, banner_wants_password
from ..protocol.frames import Frame, decode_frame, encode_frame
from ..protocol.limits import MAX_FRAME_BYTES, PROTOCOL_VERSION
from ..protocol.stream import LineReader
from ..protocol.text import sanitize_text
from .waiting import wait_readable

_RECV_BYTES = 65536

#: Seconds a server has to greet us before it is taken for a foreign one.
GREETING_TIMEOUT = 2.0
#: A first line longer than this without a newline cannot be a banner.
_LONGEST_BANNER = 4096
#: How a banner starts, before its version number: ``netchat/``.
_BANNER_PREFIX = BANNER_TAG.rpartition("/")[0].encode() + b"/"

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


GreetingKind = Literal["netchat", "refusal", "foreign", "undecided"]


# A server line starts with its time (``[12:00:01] ``); a refusal then says ``! reason``.
_STAMP = re.compile(rb"\[\d\d:\d\d:\d\d\] ")
_STAMP_SHAPE = b"[00:00:00] "


def refusal_reason(line: bytes) -> str | None:
    """The reason of a ``[time] ! reason`` refusal line (the time is optional), or None."""
    stamp = _STAMP.match(line)
    rest = line[stamp.end() :] if stamp else line
    if not rest.startswith(b"! "):
        return None
    return rest[2:].decode("utf-8", "replace").strip()


def _may_become_refusal(line: bytes) -> bool:
    """Whether an incomplete first line could still turn out to be a refusal."""
    shape = bytes(0x30 if 0x30 <= c <= 0x39 else c for c in line[: len(_STAMP_SHAPE)])
    if shape == _STAMP_SHAPE[: len(shape)]:
        return len(line) <= len(_STAMP_SHAPE) or line[len(_STAMP_SHAPE) :].startswith(
            b"! "[: len(line) - len(_STAMP_SHAPE)]
        )
    return b"! ".startswith(line[:2])


def classify_greeting(data: bytes) -> GreetingKind:
    """What the bytes a server sent first say about it.

    ``netchat``: the first line is a banner. ``refusal``: the first line is a
    ``! reason`` (a netchat server refusing at accept time closes right after it).
    ``foreign``: anything else. ``undecided``: the first line is incomplete and could
    still become a banner or a refusal.
    """
    line, newline, _ = data.partition(b"\n")
    if newline:
        if banner_version(line) is not None:
            return "netchat"
        return "refusal" if refusal_reason(line.rstrip(b"\r")) is not None else "foreign"
    if len(line) > _LONGEST_BANNER:
        return "foreign"
    shared = min(len(line), len(_BANNER_PREFIX))
    if line[:shared] == _BANNER_PREFIX[:shared] or _may_become_refusal(line):
        return "undecided"
    return "foreign"


@dataclass(frozen=True)
class Greeting:
    """What a server said first.

    ``version`` is the netchat protocol version its banner announced, or ``None`` for
    a foreign server, whose bytes so far are in ``data`` (to be shown to the user).
    ``password``: the banner said the chat needs a password.
    """

    version: int | None
    data: bytes = b""
    password: bool = False

    @property
    def netchat(self) -> bool:
        return self.version is not None


def _wait_writable(sock: socket.socket, timeout: float) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    poller.poll(max(0, math.ceil(timeout * 1000)))


def kernel_rtt_us(sock: socket.socket) -> int | None:
    """The kernel's smoothed round-trip time of ``sock`` in microseconds (Linux), else None.

    ``tcpi_rtt`` sits at byte offset 68 of ``struct tcp_info``
    (``linux/tcp.h``: 8 one-byte fields, then 15 ``__u32`` before it).
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None or not sys.platform.startswith("linux"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    except OSError:
        return None
    if len(info) < 72:
        return None
    return int(struct.unpack_from("I", info, 68)[0])


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
        # Guards _closed/_polling: close() must not free the descriptor while
        # connect() or receive() may still poll() on it (the number could be reused
        # meanwhile), so whichever of them runs last closes the socket.
        self._state_lock = threading.Lock()
        self._closed = False
        self._polling = False
        self._seen_frame = False
        self._refusal = ""  # a "! reason" text line the server sent before any frame
        self._handshake_us = 0
        self._bytes_in = 0
        self._bytes_out = 0

    @property
    def address(self) -> str:
        """The server address as ``host:port`` (for messages)."""
        return format_address(self.host, self.port)

    def connect(self) -> None:
        """Open the TCP connection; :meth:`close` from another thread aborts it.

        Raises:
            ConnectError: refused, unreachable, unknown host or timed out; the message
                reads ``cannot connect to HOST:PORT: REASON``.
            ConnectionClosed: :meth:`close` was called meanwhile.
        """
        context = f"cannot connect to {self.address}"
        with map_exceptions({OSError: ConnectError}, context):
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        deadline = time.monotonic() + self.connect_timeout
        failure: OSError = TimeoutError("timed out")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            with self._state_lock:
                if self._closed:
                    sock.close()
                    raise ConnectionClosed("connection closed")
                self._sock = sock
                self._polling = True
            error = self._handshake(sock, address, deadline)
            with self._state_lock:
                self._polling = False
                if self._closed:
                    sock.close()
                    raise ConnectionClosed("connection closed")
                if error is None:
                    return
                self._sock = None
            sock.close()
            failure = error
        with map_exceptions({OSError: ConnectError}, context):
            raise failure

    def read_greeting(self, timeout: float = GREETING_TIMEOUT) -> Greeting:
        """Wait up to ``timeout`` seconds for the server's first words; see the module doc.

        A netchat server's banner is consumed; what follows it is kept for
        :meth:`receive`. A foreign server's bytes are returned, not kept.

        Raises:
            Rejected: the server refused us with a ``! reason`` line and closed.
            ConnectError: the server announced a netchat protocol version we do not speak.
            ConnectionClosed: the server closed the connection before saying anything.
        """
        deadline = time.monotonic() + timeout
        data = b""
        while True:
            kind = classify_greeting(data)
            if kind == "netchat":
                break
            if kind == "foreign":
                return Greeting(None, data)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Greeting(None, data)
            chunk = self._recv(remaining)
            if chunk is None:
                continue
            if not chunk:
                if kind == "refusal":
                    reason = refusal_reason(data.split(b"\n", 1)[0].rstrip(b"\r")) or ""
                    raise Rejected(sanitize_text(reason), code="refused")
                if data:
                    return Greeting(None, data)
                raise ConnectionClosed("the server closed the connection without a word")
            data += chunk
        line, _, rest = data.partition(b"\n")
        version = banner_version(line)
        if version != PROTOCOL_VERSION:
            raise ConnectError(
                f"{self.address} speaks netchat protocol version {version}; this client"
                f" speaks version {PROTOCOL_VERSION} (upgrade netchat, or use --plain)"
            )
        self._reader.feed(rest)
        return Greeting(version, password=banner_wants_password(line))

    def send(self, frame: Frame) -> None:
        """Send one frame; safe to call from several threads.

        Raises:
            ConnectionClosed: the connection is closed or broke.
            LocalProtocolError: the frame is too large to encode.
        """
        self.send_bytes(encode_frame(frame))

    def send_bytes(self, data: bytes) -> None:
        """Send raw bytes (a plain-line session's text); safe from several threads.

        Raises:
            ConnectionClosed: the connection is closed or broke.
        """
        sock = self._require_socket()
        with self._send_lock, map_exceptions({OSError: ConnectionClosed}, "connection lost"):
            sock.sendall(data)
            self._bytes_out += len(data)

    def receive(self, timeout: float | None = None) -> Frame | None:
        """Block for the next frame; ``None`` if ``timeout`` seconds passed first.

        Call from one thread at a time.

        Raises:
            ConnectionClosed: the server closed the connection, or :meth:`close` was called.
            Rejected: the server refused us with a ``! reason`` line before any frame.
            RemoteProtocolError: a line after the first frame is not a valid frame (the
                connection stays usable).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._next_buffered_frame()
            if frame is not None:
                return frame
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            data = self._recv(remaining)
            if data is None:
                return None
            if not data:
                if self._refusal and not self._seen_frame:
                    raise Rejected(sanitize_text(self._refusal), code="refused")
                raise ConnectionClosed(
                    "connection closed" if self._closed else "server closed the connection"
                )
            self._reader.feed(data)

    def receive_bytes(self, timeout: float | None = None) -> bytes | None:
        """Block for raw bytes; ``None`` if ``timeout`` seconds passed first.

        Raises:
            ConnectionClosed: the server closed the connection, or :meth:`close` was called.
        """
        data = self._recv(timeout)
        if data is not None and not data:
            raise ConnectionClosed(
                "connection closed" if self._closed else "server closed the connection"
            )
        return data

    def finish_sending(self) -> None:
        """Tell the server we have nothing more to say (a TCP FIN); we keep reading."""
        with self._state_lock:
            if self._sock is not None and not self._closed:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close the connection; a :meth:`connect` or :meth:`receive` blocked on another
        thread raises :class:`ConnectionClosed`. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            if self._sock is not None:
                # shutdown wakes a poll()/recv()/sendall() blocked on other threads,
                # and a connect() still waiting for the server's answer.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
            if not self._polling:
                self._release_socket()

    def stats(self) -> dict[str, int]:
        """``bytes_in``, ``bytes_out`` and ``rtt_us``: the round-trip time in microseconds,
        the kernel's smoothed estimate on Linux, else the time the TCP handshake took."""
        counters = {"bytes_in": self._bytes_in, "bytes_out": self._bytes_out}
        rtt = None
        with self._state_lock:
            if self._sock is not None and not self._closed:
                rtt = kernel_rtt_us(self._sock)
        counters["rtt_us"] = rtt if rtt is not None else self._handshake_us
        return counters

    # --- internals ----------------------------------------------------------------

    def _handshake(self, sock: socket.socket, address: Any, deadline: float) -> OSError | None:
        """Connect ``sock`` by ``deadline``; the error, or None once connected."""
        started = time.monotonic()
        sock.setblocking(False)
        try:
            sock.connect(address)
        except BlockingIOError:
            pass
        except OSError as exc:
            return exc
        while True:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                return OSError(error, os.strerror(error))  # OSError picks the subclass
            try:
                sock.getpeername()
                break
            except OSError:
                pass  # not connected yet
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return TimeoutError("timed out")
            _wait_writable(sock, remaining)
        self._handshake_us = int((time.monotonic() - started) * 1_000_000)
        sock.setblocking(True)
        # Chat lines are small and interactive: do not let Nagle hold them back.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return None

    def _require_socket(self) -> socket.socket:
        if self._sock is None or self._closed:
            raise ConnectionClosed("not connected")
        return self._sock

    def _release_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def _recv(self, timeout: float | None) -> bytes | None:
        """One read: the bytes, ``b""`` at the end of the stream, None after ``timeout``."""
        with self._state_lock:
            if self._closed or self._sock is None:
                raise ConnectionClosed("connection closed")
            sock = self._sock
            self._polling = True
        try:
            with map_exceptions(
                {TimeoutError: TransportTimeout, OSError: ConnectionClosed}, "connection lost"
            ):
                if not wait_readable([sock], timeout):
                    return None
                data = sock.recv(_RECV_BYTES)
        finally:
            with self._state_lock:
                self._polling = False
                if self._closed:
                    self._release_socket()
        self._bytes_in += len(data)
        return data

    def _next_buffered_frame(self) -> Frame | None:
        while (line := self._reader.next_line()) is not None:
            if not line.strip():
                continue
            try:
                frame = decode_frame(line)
            except RemoteProtocolError:
                if self._seen_frame:
                    raise
                reason = refusal_reason(line)
                if reason is not None:
                    # A refusal (server full, too many connections) is sent as text,
                    # before the server knows which kind of client we are.
                    self._refusal = reason
                continue  # other text before the first frame is meant for nc users
            self._seen_frame = True
            return frame
        return None

"""The threaded TCP server: a reader and a writer thread for every connection.

Strategy
--------
Each accepted connection gets two threads. The *reader* owns ``recv``: it splits the
stream into lines with :class:`LineReader`, turns lines into request frames and hands
them to the hub. Sending is arranged so that a broadcast costs as little as possible
per member and a slow member costs only itself:

- The hub sends through the server's :class:`StreamLog` (its ``Fanout``): a
  broadcast is encoded once per wire format and appended once to a shared stream;
  each member only has an offset into it. Frames for one member are spliced in at
  their place. So a message costs no work per member when it is sent.
- After each batch of input, a reader *flushes* (:meth:`TcpServer.flush_all`): every
  member that is owed bytes gets one slice of its stream in one non-blocking send,
  however many messages it holds, and no thread is woken.
- When a member's kernel buffer is full, what is left goes to its *writer* thread,
  which blocks in ``sendall`` so that nobody else has to. The writer also sends the
  goodbyes when a connection closes. Frames for a connection that is not a member
  (the greeting, a refusal) go through its own small queue.

What a member is owed is bounded (``max_queue`` bytes): past it the member is dropped
as too slow and its socket is shut down at once, which wakes its blocked writer. The
shared streams are cut once every member has read past their start, so server memory
stays bounded by about ``max_queue`` plus a megabyte per stream, plus per-connection
leftovers of at most ``max_queue`` each.

Two kinds of client share the port. The server greets every connection with a text
line; a first line that is a JSON ``hello`` frame makes the connection *structured*
(JSON frames both ways), anything else makes it *plain* (``nc``/``telnet``: the first
line is the name, later lines are messages or ``/commands``, and the server sends
readable UTF-8 lines). Both end up as the same frames at the hub.

Liveness: a structured member silent for ``ping_interval`` is pinged and dropped
after three silent intervals. Plain members cannot answer pings, so TCP keepalive
detects their dead peers; a blocked send times out after ``ping_interval``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Literal

from ..errors import CommandError, FrameTooLarge, ProtocolError, Rejected
from ..hub import Hub, Outbound
from ..protocol.banner import banner_line
from ..protocol.commands import parse_input
from ..protocol.frames import Error, Frame, Hello, Ping, Pong, Shutdown, decode_frame
from ..protocol.ratelimit import TokenBucket
from ..protocol.stream import LineReader
from .base import ServerConfig
from .streamlog import StreamLog

log = logging.getLogger("netchat.tcp")

Mode = Literal["unknown", "plain", "structured"]

_RECV_BYTES = 65536
_SHUTDOWN_GRACE = 3.0  # seconds the writers get to flush goodbyes on shutdown
_MISSED_PINGS_ALLOWED = 2  # dropped on the third silent interval
# Lines a reader handles between flushes: one flush carries many messages to each
# member, yet a huge burst cannot pile up past a member's max_queue before it leaves.
_FLUSH_EVERY = 64


def _greeting(config: ServerConfig) -> bytes:
    # One complete line: a structured client reads lines and skips non-JSON ones
    # before its welcome, so the greeting must never leave a partial line behind.
    return banner_line(config.server_name)


class TcpConnection:
    """One client connection: the hub's :class:`~netchat.hub.Session` for TCP."""

    def __init__(self, server: TcpServer, sock: socket.socket, address: tuple[str, int]):
        self.server = server
        self.sock = sock
        self.ip = address[0]
        self.peer = (
            f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        )
        self.mode: Mode = "unknown"
        # Frames (or raw bytes) for this connection alone, not yet encoded: the
        # greeting, refusals, pings, errors before joining. deque.append and popleft
        # are atomic, so appending takes no lock.
        self._queue: deque[Outbound | bytes] = deque()
        # The Session's deliver(): members get their frames through the stream log;
        # the hub delivers here only to a connection that has not joined (an error
        # before the welcome). Encoding and sending happen in flush().
        self.deliver: Callable[[Outbound], None] = self._queue.append
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._backlog: list[bytes] = []  # the unsent rest of a partial send
        self._queued = 0  # bytes in _backlog plus bytes a sender took but has not sent
        self._closing = False
        self._overflowed = False
        self._aborted = False
        self._max_queue = server.config.max_queue
        # True while one thread (a flushing reader or the writer) sends bytes taken
        # from _backlog; only one may, or the byte order would break.
        self._sending = False
        # A non-blocking twin of the socket for flush(): the main socket has a
        # timeout, and CPython polls (and may wait) before sending on such a socket.
        self._direct = socket.socket(
            sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno())
        )
        self._direct.setblocking(False)
        self.reader = threading.Thread(
            target=self._read_loop, name=f"netchat-read-{self.peer}", daemon=True
        )
        self.writer = threading.Thread(
            target=self._write_loop, name=f"netchat-write-{self.peer}", daemon=True
        )

    # --- Session interface ---------------------------------------------------------

    def close(self, reason: str) -> None:
        if self._overflowed:
            # The peer stopped reading: nothing queued can reach it, so do not wait.
            log.warning("%s: disconnecting: %s", self.peer, reason)
            self.abort()
            return
        with self._cond:
            self._closing = True
            self._cond.notify()

    # --- plumbing --------------------------------------------------------------------

    def start(self) -> None:
        self.writer.start()
        self.reader.start()

    def send_bytes(self, data: bytes) -> None:
        """Queue raw bytes (the greeting, a refusal) in order with the frames."""
        self._queue.append(data)

    def _take_locked(self) -> bytes:
        """Everything owed, in order: unsent leftovers, then frames queued on this
        connection, then what the shared stream log holds for it."""
        if not self._queue and not self._backlog:  # the common case, once per flush
            data = self.server.stream_log.take(self)
            self._queued += len(data)
            return data
        popleft = self._queue.popleft
        items = [popleft() for _ in range(len(self._queue))]  # more may arrive meanwhile
        if self.mode == "structured":
            fresh = [i if isinstance(i, bytes) else i.json for i in items]
        else:
            fresh = [i if isinstance(i, bytes) else i.text for i in items]
        logged = self.server.stream_log.take(self)
        if logged:
            fresh.append(logged)
        self._queued += sum(map(len, fresh))  # leftovers were counted already
        parts, self._backlog = self._backlog + fresh, []
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _keeps_up_locked(self, untaken: int) -> bool:
        """False (and marked) once what the member is owed passes ``max_queue``.

        ``untaken``: bytes it is owed beyond those counted in ``_queued``.
        """
        if self._queued + untaken > self._max_queue:
            self._overflowed = True
        return not self._overflowed

    def flush(self) -> bool:
        """Send what is owed with non-blocking sends on the calling thread.

        Never blocks: when the kernel buffer is full, the rest is left to the writer
        thread. Returns False when the member cannot keep up (what it is owed passed
        ``max_queue``); the caller then drops it.
        """
        with self._lock:
            if self._closing:
                return True  # the writer sends the goodbyes
            if self._sending:  # the thread that is sending takes the rest next
                return self._keeps_up_locked(self.server.stream_log.pending(self))
            data = self._take_locked()  # counts what it takes in _queued
            if not self._keeps_up_locked(0):
                return False
            if not data:
                return True
            self._sending = True
        while True:
            try:
                sent = self._direct.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = len(data)  # the connection is dead; its reader cleans up
            with self._lock:
                self._queued -= sent
                if sent < len(data) or self._closing:
                    if sent < len(data):
                        self._backlog.insert(0, data[sent:])
                    self._sending = False
                    self._cond.notify()  # the writer takes over what is left
                    return True
                # More may have come while we sent. The hint is cheap and never misses
                # bytes appended before it; later ones come with a new flush request.
                data = self._take_locked() if self._owed_locked() else b""
                if not data:
                    self._sending = False
                    return True

    def send_frame(self, frame: Frame) -> None:
        self.deliver(Outbound(frame))

    def abort(self) -> None:
        """Shut the socket down now: wakes a reader blocked in recv and a writer in send."""
        with self._cond:
            self._closing = True
            self._aborted = True
            self._backlog.clear()
            self._queue.clear()
            self._cond.notify()
        with contextlib.suppress(OSError):  # already disconnected
            self.sock.shutdown(socket.SHUT_RDWR)

    def _owed_locked(self) -> bool:
        return bool(self._backlog or self._queue) or self.server.stream_log.owes(self)

    def _write_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closing and (self._sending or not self._owed_locked()):
                        self._cond.wait()
                    if self._aborted:
                        return
                    if self._sending:  # closing while a reader flushes: let it finish
                        self._cond.wait(0.05)
                        continue
                    # Past max_queue this only grows the count; the next reader flush
                    # drops the member (dropping needs the hub, outside our locks).
                    data = self._take_locked()
                    if not data:
                        if self._closing:
                            break  # everything has been sent
                        continue
                    self._sending = True
                try:
                    self.sock.sendall(data)  # may block: that is what this thread is for
                finally:
                    with self._cond:
                        self._queued -= len(data)
                        self._sending = False
        except OSError as exc:
            log.debug("%s: send failed: %s", self.peer, exc)
        finally:
            # Shutting down (rather than closing) wakes the reader; it closes the socket.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def _read_loop(self) -> None:
        hub = self.server.hub
        leave_reason, detail = "lost", ""
        try:
            leave_reason, detail = self._converse()
        except Exception:
            log.exception("%s: unexpected error; disconnecting", self.peer)
            leave_reason, detail = "lost", "server error"
        finally:
            hub.leave(self, leave_reason, detail)
            self.server.flush_all()  # the departure notice
            self.close(detail or leave_reason)
            self.writer.join(timeout=_SHUTDOWN_GRACE)
            if self.writer.is_alive():
                self.abort()
                self.writer.join(timeout=_SHUTDOWN_GRACE)
            self._direct.close()
            self.sock.close()
            self.server._forget(self)

    def _converse(self) -> tuple[str, str]:
        """Run the connection; return the (reason, detail) of its end for the hub."""
        config = self.server.config
        lines = LineReader()
        bucket = TokenBucket(config.rate_limit, config.burst)
        joined = False
        missed_pings = 0
        # A deadline, not just a socket timeout: a client dripping one byte every few
        # seconds must not hold a connection slot forever without joining.
        registration_deadline = time.monotonic() + config.registration_timeout
        self.send_bytes(_greeting(config))
        while True:
            self.server.flush_all()  # what this thread queued goes out before it may block
            if not joined:
                self.sock.settimeout(max(0.001, registration_deadline - time.monotonic()))
            try:
                data = self.sock.recv(_RECV_BYTES)
            except TimeoutError:
                if not joined:
                    self._refuse("registration-timeout", "no name received in time; goodbye")
                    return "lost", "registration timeout"
                if self.mode == "plain":
                    continue  # a quiet nc user is fine; keepalive catches dead peers
                missed_pings += 1
                if missed_pings > _MISSED_PINGS_ALLOWED:
                    return "timeout", ""
                self.send_frame(Ping(str(missed_pings)))
                continue
            except OSError as exc:
                return "lost", "" if exc.errno in (errno.ECONNRESET, errno.EPIPE) else str(exc)
            if not data:
                return "quit", ""  # an orderly close (Ctrl-D in nc) is a plain goodbye
            missed_pings = 0
            lines.feed(data)
            for handled in itertools.count(1):
                if handled % _FLUSH_EVERY == 0:
                    self.server.flush_all()
                try:
                    line = lines.next_line()
                except FrameTooLarge as exc:
                    self._error(
                        exc.code, f"line dropped: longer than {lines.max_line} bytes", joined
                    )
                    continue
                if line is None:
                    break
                if not joined:
                    joined = self._register(line)
                    if joined:
                        self.sock.settimeout(config.ping_interval)
                    elif time.monotonic() > registration_deadline:
                        self._refuse("registration-timeout", "no name received in time; goodbye")
                        return "lost", "registration timeout"
                    continue
                frame = self._parse(line)
                if frame is None:
                    continue
                if not isinstance(frame, (Ping, Pong)):
                    # Pausing the reader (not dropping) is how TCP rate limiting
                    # pushes back: the kernel buffers fill and the sender slows down.
                    pause = bucket.wait_time()
                    if pause > 0:
                        self.server.flush_all()
                        time.sleep(pause)
                    bucket.try_take()
                self.server.hub.handle(self, frame)
                if self._closing:
                    return "quit", ""

    def _register(self, line: bytes) -> bool:
        """Handle a line from a connection that has not joined; True once it has."""
        if self.mode == "unknown":
            self.mode = "plain"
            if line.startswith(b"{"):
                try:
                    frame = decode_frame(line)
                except ProtocolError:
                    frame = None
                if isinstance(frame, Hello):
                    self.mode = "structured"
                    return self._join(frame.name)
        if self.mode == "structured":
            frame = self._parse(line)
            if isinstance(frame, Hello):
                return self._join(frame.name)
            if frame is not None:
                self._error("not-joined", "join first: send a hello frame", False)
            return False
        try:
            name = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.send_bytes(b"! that name is not valid UTF-8; type your name again:\r\n")
            return False
        if not name:
            self.send_bytes(b"Type your name and press Enter:\r\n")
            return False
        return self._join(name)

    def _join(self, name: str) -> bool:
        try:
            self.server.hub.join(self, name)
        except Rejected as exc:
            if self.mode == "structured":
                self.send_frame(Error(exc.code, str(exc), exc.suggestion or ""))
            else:
                self.send_bytes(f"! {exc}. Type another name:\r\n".encode())
            return False
        return True

    def _parse(self, line: bytes) -> Frame | None:
        """The request frame a joined member's line means, or None (error sent)."""
        if self.mode == "structured":
            if not line.strip():
                return None
            try:
                return decode_frame(line)
            except ProtocolError as exc:
                self._error(exc.code, f"frame dropped: {exc}", True)
                return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._error(
                "bad-utf8", "line dropped: not valid UTF-8 (set your terminal to UTF-8)", True
            )
            return None
        if not text.strip():
            return None
        try:
            return parse_input(text)
        except CommandError as exc:
            self._error("bad-command", str(exc), True)
            return None

    def _error(self, code: str, text: str, joined: bool) -> None:
        if joined:
            self.server.hub.report_error(self, code, text)
        else:
            self.send_frame(Error(code, text))

    def _refuse(self, code: str, text: str) -> None:
        self.send_frame(Error(code, text))
        self.close(text)


class TcpServer:
    """The TCP transport: accepts connections and runs each on its own threads.

    Args:
        hub: where requests go.
        config: address, limits and timeouts.
    """

    def __init__(self, hub: Hub, config: ServerConfig) -> None:
        self.hub = hub
        self.config = config
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self._listener = socket.create_server(
            (config.host, config.port), family=family, backlog=1024
        )
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._connections: set[TcpConnection] = set()
        # An immutable snapshot for flush_all(), replaced on every change, so the hot
        # path iterates without taking the lock.
        self._connection_list: tuple[TcpConnection, ...] = ()
        self._flush_lock = threading.Lock()
        self._flush_requested = False
        # Broadcasts are kept once, in one stream per wire format, for all members.
        self.stream_log = StreamLog(
            lambda session: (
                not (isinstance(session, TcpConnection) and session.mode == "structured")
            )
        )
        hub.fanout = self.stream_log
        self._per_address: Counter[str] = Counter()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._shutdown_reason = ""
        self._serving_thread: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def serve_forever(self) -> None:
        self._serving_thread = threading.get_ident()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._listener, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._stop.is_set():
                    for key, _ in selector.select():
                        if key.fileobj is self._listener:
                            self._accept_ready()
        finally:
            self._teardown()
            self._stopped.set()

    def shutdown(self, reason: str = "") -> None:
        """Stop serving; from another thread, wait until everything is released."""
        self._shutdown_reason = reason
        self._stop.set()
        with contextlib.suppress(OSError):  # already torn down
            self._wake_w.send(b"x")
        if self._serving_thread is not None and self._serving_thread != threading.get_ident():
            self._stopped.wait(timeout=3 * _SHUTDOWN_GRACE)

    def flush_all(self) -> None:
        """Flush every connection with queued frames; drop members that cannot keep up.

        Readers call this after each batch of input and before they block, so bytes
        queued by a broadcast leave promptly without waking any thread. One reader
        flushes at a time, for everyone: a reader that finds a flush under way only
        leaves a request and goes back to reading, and the flushing one makes another
        pass while requests keep coming. Fewer, fuller passes mean fewer sends, and
        ten readers do not queue up behind each other's connection locks.
        """
        self._flush_requested = True
        # Re-checked after releasing the lock: a request made while we were finishing
        # our last pass must not be left for nobody.
        while self._flush_requested and self._flush_lock.acquire(blocking=False):
            try:
                while self._flush_requested:
                    self._flush_requested = False
                    self._flush_pass()
            finally:
                self._flush_lock.release()

    def _flush_pass(self) -> None:
        owes = self.stream_log.owes
        too_slow = [
            c
            for c in self._connection_list
            if (c._queue or c._overflowed or owes(c)) and not c.flush()
        ]
        for connection in too_slow:
            log.warning(
                "%s: dropped: outbound backlog over %d bytes",
                connection.peer,
                connection._max_queue,
            )
            self.hub.leave(connection, "dropped", "too slow")
            connection.abort()
        if too_slow:
            self._flush_requested = True  # the departure notices; each member drops once

    def _accept_ready(self) -> None:
        # Accept everything pending: under a connection storm one select per accept
        # would leave the backlog full.
        for _ in range(256):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: log, and back off instead of spinning on a
                # listener that stays readable.
                log.error("accept failed: %s", exc)
                time.sleep(0.1)
                return
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setblocking(True)
        _tune(sock)
        refusal = None
        with self._lock:
            if len(self._connections) >= self.config.max_clients:
                refusal = (
                    f"server full (at most {self.config.max_clients} connections); try again later"
                )
            elif 0 < self.config.max_per_address <= self._per_address[address[0]]:
                refusal = f"too many connections from {address[0]} (at most {self.config.max_per_address})"
            else:
                connection = TcpConnection(self, sock, address)
                self._connections.add(connection)
                self._connection_list = (*self._connection_list, connection)
                self._per_address[address[0]] += 1
        if refusal is not None:
            log.warning("refused %s: %s", address[0], refusal)
            _send_and_close(sock, f"! {refusal}\r\n".encode())
            return
        log.debug("accepted %s", connection.peer)
        connection.start()

    def _forget(self, connection: TcpConnection) -> None:
        self.stream_log.discard(connection)
        with self._lock:
            self._connections.discard(connection)
            self._connection_list = tuple(self._connections)
            self._per_address[connection.ip] -= 1
            if self._per_address[connection.ip] <= 0:
                del self._per_address[connection.ip]

    def _teardown(self) -> None:
        self._listener.close()
        self.hub.shutdown(self._shutdown_reason)
        with self._lock:
            connections = list(self._connections)
        goodbye = Outbound(Shutdown(self._shutdown_reason))
        for connection in connections:  # those that never joined are not hub members
            connection.deliver(goodbye)
            connection.close("server shutting down")
        deadline = time.monotonic() + _SHUTDOWN_GRACE
        for connection in connections:
            connection.reader.join(timeout=max(0.0, deadline - time.monotonic()))
        for connection in connections:
            if connection.reader.is_alive():
                connection.abort()
                connection.reader.join(timeout=1.0)
        self._wake_r.close()
        self._wake_w.close()


def _tune(sock: socket.socket) -> None:
    # Chat lines are small and latency matters; the writer already coalesces.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()

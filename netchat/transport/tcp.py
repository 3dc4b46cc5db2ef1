"""The threaded TCP server: one thread per connection pumps bytes through its session.

Strategy
--------
Everything a connection means lives in its :class:`~netchat.session.ServerSession`;
this module only moves bytes and time in and out of it. Each accepted connection
runs on a thread of its own (the lab's threading model) that ``recv``\\ s, feeds the
session, and asks it when to wake up. The kernel keeps the time: the socket stays in
blocking mode with ``SO_RCVTIMEO`` set to the session's next deadline, so waiting
costs no extra system call.

Sending is arranged so that a broadcast costs as little as possible per member and a
slow member costs only itself:

- The hub keeps each broadcast once in its stream log; a member's session hands out
  one slice of it (:meth:`~netchat.session.ServerSession.data_to_send`).
- After each batch of input, a connection's thread *flushes* for everyone
  (:meth:`TcpServer.flush_all`): every member that is owed bytes gets one slice in one
  non-blocking ``send(..., MSG_DONTWAIT)``, however many messages it holds. One
  thread flushes at a time; the others leave a request and go back to reading.
- A member whose kernel buffer is full is *stalled*: what it could not take waits in
  its connection (at most one slice) and the server's single :class:`Drainer` thread
  sends it when ``poll`` says there is room. The rest stays in the stream log, where
  the session drops the member once it is owed more than ``max_queue``.

So threads never block on someone else's socket, memory per member is bounded, and
the server holds one thread per connection plus two (accept, drain).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable

from ..admission import Admission, RefusalLog
from ..errors import Rejected
from ..hub import Hub
from ..protocol.frames import Error
from ..protocol.render import render_text
from ..protocol.seal import PasswordVerifier
from ..session import LIVE_PHASES, Phase, ServerSession, SessionPolicy, data_to_send_many
from .base import ServerConfig

log = logging.getLogger("netchat.tcp")

_RECV_BYTES = 65536
#: Seconds closing connections get to send their goodbyes (server shutdown, /quit).
CLOSE_GRACE = 3.0
#: Seconds a connection's thread sleeps at most between looks at its session.
_MAX_WAIT = 1.0
#: Below this, a receive timeout is not worth a system call to change.
_TIMEOUT_STEP = 0.01
#: Dead peers are detected within about a minute: unacknowledged data for this long
#: (TCP_USER_TIMEOUT), or keepalive probes unanswered after an idle minute.
USER_TIMEOUT_MS = 60_000
_KEEPALIVE = (("TCP_KEEPIDLE", 45), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))


def format_peer(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpConnection:
    """One client connection: a socket, its session, and the thread that pumps them."""

    def __init__(
        self, server: TcpServer, sock: socket.socket, peer: str, session: ServerSession
    ) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.session = session
        #: the client's kernel buffer was full: the drainer sends when there is room
        self.stalled = False
        self._unsent = b""  # what a partial send left, sent before anything newer
        self._send_lock = threading.Lock()  # one sender at a time keeps bytes in order
        self._missed = False  # a flush found the lock taken: look again after release
        self._receive_timeout = -1.0
        #: why a send failed: the connection is dead, whatever recv says next
        self.send_error: OSError | None = None
        self.thread = threading.Thread(target=self.run, name=f"netchat-{peer}", daemon=True)

    # --- the connection's thread ---------------------------------------------------------

    def run(self) -> None:
        try:
            self._pump()
        except Exception:
            log.exception("%s: unexpected error; disconnecting", self.peer)
            self.session.connection_lost("server error")
        finally:
            self._close()

    def _pump(self) -> None:
        session, sock = self.session, self.sock
        flush = self.flush_with_everyone
        flush()  # the banner
        while session.phase in LIVE_PHASES:
            now = time.monotonic()
            paused = session.paused_until
            if paused is not None:
                # Over its rate: read nothing, so TCP pushes back on the sender.
                time.sleep(min(max(0.0, paused - now), _MAX_WAIT))
                session.tick(time.monotonic())
                flush()
                continue
            self._set_receive_timeout(session.next_deadline(), now)
            try:
                data = sock.recv(_RECV_BYTES)
            except BlockingIOError:  # SO_RCVTIMEO expired: the session's deadline came
                session.tick(time.monotonic())
                flush()
                continue
            except OSError as exc:  # TimeoutError included: keepalive or TCP_USER_TIMEOUT
                session.connection_lost(_loss_detail(exc))
                return
            if not data and self.send_error is not None:
                # The kernel reports a connection's error once, to the first call that
                # asks: when a send took it (a reset, a TCP_USER_TIMEOUT), recv sees
                # only an end of file, which is no goodbye.
                session.connection_lost(_loss_detail(self.send_error))
                return
            if not data and _was_reset(sock):
                # A reset can read as an end of input (Linux returns 0 once the socket
                # is closed): that is a lost connection, not a goodbye.
                session.connection_lost("")
                return
            # Joins and closes need nothing from here: the loop follows the phase.
            now = time.monotonic()
            session.receive_data(data, now)
            deadline = session.next_deadline()
            if deadline is not None and deadline <= now:
                session.tick(now)
            flush()  # what the session did is owed to someone
        self._send_goodbyes()

    def flush_with_everyone(self) -> None:
        """This connection's session did something: its own output, and whatever it
        caused for the others, goes out now."""
        self.server.dirty.append(self)
        self.server.flush_all()

    def _set_receive_timeout(self, deadline: float | None, now: float) -> None:
        # No deadline: wait for data however long it takes (0 means no timeout), so
        # a thousand idle members cost no wake-ups; a shutdown wakes us with SHUT_RD.
        if deadline is None:
            wait = 0.0
        else:
            wait = min(_MAX_WAIT, max(0.0, deadline - now))
            wait = max(_TIMEOUT_STEP, round(wait / _TIMEOUT_STEP) * _TIMEOUT_STEP)
        if abs(wait - self._receive_timeout) >= _TIMEOUT_STEP / 2:
            seconds = int(wait)
            timeval = struct.pack("ll", seconds, int((wait - seconds) * 1_000_000))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            self._receive_timeout = wait

    def _send_goodbyes(self) -> None:
        """The session is closing: send what it is still owed (bounded), then FIN."""
        session = self.session
        if session.abort:
            return
        self.server.flush_all()  # the departure notice, for everyone else
        deadline = time.monotonic() + CLOSE_GRACE
        if not self._send_lock.acquire(timeout=CLOSE_GRACE):
            return
        try:
            data = self._unsent + session.data_to_send()
            self._unsent = b""
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            if data:
                self.sock.sendall(data)
            self.sock.shutdown(socket.SHUT_WR)
            # Read until the client closes too, so the kernel does not answer late
            # input with a reset that could destroy the goodbye on its way.
            while time.monotonic() < deadline and self.sock.recv(_RECV_BYTES):
                pass
        except OSError as exc:
            log.debug("%s: goodbye not delivered: %s", self.peer, exc)
        finally:
            self._send_lock.release()

    def _close(self) -> None:
        self.session.finished()
        self.server.forget(self)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.flush_all()  # the departure notice, however the connection ended

    # --- sending, from whichever thread flushes -------------------------------------------

    def flush(self) -> None:
        """Send what the session owes without blocking; a full kernel buffer stalls
        the connection and hands the rest to the drainer.

        Never waits for another sender: if one is busy, it looks for new output
        after it lets go, so nothing is left behind.
        """
        lock = self._send_lock
        while True:
            if not lock.acquire(blocking=False):
                # Someone is sending: ask them to look again when they let go, then
                # make sure they had not already let go before we asked.
                self._missed = True
                if not lock.acquire(blocking=False):
                    break
            try:
                self._missed = False
                if not self.stalled and (not self._unsent or self._send(self._unsent)):
                    data = self.session.data_to_send()
                    if data:
                        self._send(data)
            finally:
                lock.release()
            if not self._missed or self.stalled:
                break
        if self.session.abort:
            self.abort()

    def hold(self) -> bool:
        """Take the send lock without waiting, for a flush pass (see :meth:`flush`);
        False if another thread is sending (it looks again when it lets go)."""
        lock = self._send_lock
        if not lock.acquire(blocking=False):
            self._missed = True
            if not lock.acquire(blocking=False):
                return False
        self._missed = False
        return True

    def send_held(self, data: bytes) -> None:
        """Send ``data`` now (the send lock held, nothing unsent before it)."""
        if not self._unsent:
            self._send(data)
        else:  # pragma: no cover - a connection with unsent bytes is stalled, not held
            self._unsent += data

    def release_hold(self) -> None:
        self._send_lock.release()
        if self._missed and not self.stalled:
            self.flush()

    def _send(self, data: bytes) -> bool:
        """Send without blocking (the send lock held); False if the client's buffer
        filled: the rest waits in ``_unsent`` for the drainer."""
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._unsent = b""  # the connection is dead; its thread finds out on recv
            self.send_error = exc
            return True
        self._unsent = data[sent:] if sent < len(data) else b""
        if self._unsent:
            self.stalled = True
            self.server.drainer.watch(self)
            return False
        return True

    def mark_dirty(self) -> None:
        """Another thread gave this connection's member a frame of its own."""
        self.server.dirty.append(self)

    def abort(self) -> None:
        """Close now, without sending what is owed: wakes the connection's thread."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def wake(self) -> None:
        """Wake the connection's thread from ``recv`` so it looks at its session."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)


class Drainer:
    """The server's one thread that sends to stalled connections when they have room.

    Only connections whose client stopped reading fast enough are watched, so the
    ``poll`` set stays small; a connection leaves it as soon as it has caught up.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new: list[TcpConnection] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="netchat-drain", daemon=True)

    def watch(self, connection: TcpConnection) -> None:
        with self._lock:
            self._new.append(connection)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self.thread.join(timeout=CLOSE_GRACE)
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        watched: dict[int, TcpConnection] = {}
        while not self._stop:
            with self._lock:
                new, self._new = self._new, []
            for connection in new:
                try:
                    fd = connection.sock.fileno()
                except OSError:
                    fd = -1
                if fd < 0:
                    connection.stalled = False
                    continue
                watched[fd] = connection
                poller.register(fd, select.POLLOUT)
            for fd, _ in poller.poll(_MAX_WAIT * 1000):
                if fd == self._wake_r.fileno():
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                connection = watched.pop(fd)
                poller.unregister(fd)
                connection.stalled = False
                try:
                    connection.flush()  # may stall again and come back through watch()
                except Exception:
                    log.exception("%s: send failed", connection.peer)
            for fd, connection in list(watched.items()):
                if connection.session.phase is Phase.CLOSED:
                    del watched[fd]
                    with contextlib.suppress(KeyError, ValueError):
                        poller.unregister(fd)


class TcpServer:
    """The TCP transport: accepts connections and runs each on a thread of its own.

    Args:
        hub: the chat.
        config: address, limits and timeouts.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, hub: Hub, config: ServerConfig) -> None:
        self.hub = hub
        self.config = config
        self.policy = SessionPolicy(
            server_name=config.server_name,
            stream=True,
            max_queue=config.max_queue,
            rate_limit=config.rate_limit,
            burst=config.burst,
            registration_timeout=config.registration_timeout,
            ping_interval=config.ping_interval,
            line_gap=config.line_gap,
            password=PasswordVerifier(config.password) if config.password else None,
        )
        self.admission = Admission(config.max_clients, config.max_per_address, config.max_pending)
        self.refusals = RefusalLog(log)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self._listener = socket.create_server(
            (config.host, config.port), family=family, backlog=4096
        )
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._connections: set[TcpConnection] = set()
        # An immutable snapshot for flush_all(), replaced on every change, so the hot
        # path iterates without taking the lock.
        self._snapshot: tuple[TcpConnection, ...] = ()
        #: connections owed something no broadcast explains (deque: appends and pops
        #: are atomic, so any thread may add without a lock)
        self.dirty: deque[TcpConnection] = deque()
        self._flushed_broadcasts = -1
        self._flush_lock = threading.Lock()
        self._flush_requested = False
        self.drainer = Drainer()
        # One descriptor kept in reserve: at the process's open-files limit, accept()
        # fails and the connection would wait in the backlog with no word; freeing
        # this one lets us accept it and say why we cannot serve it.
        self._spare: int | None = _reserve_descriptor()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._shutdown_reason = ""
        self._serving_thread: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        """Accept and serve until :meth:`shutdown`; then say goodbye and release all."""
        self._serving_thread = threading.get_ident()
        self.drainer.thread.start()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._listener, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._stop.is_set():
                    due = self.hub.presence_due()
                    timeout = None if due is None else max(0.0, due - time.monotonic())
                    for key, _ in selector.select(timeout):
                        if key.fileobj is self._listener:
                            self._accept_ready()
                        else:
                            with contextlib.suppress(OSError):
                                self._wake_r.recv(64)
                    if due is not None:
                        self.hub.tick(time.monotonic())
                        self.flush_all()
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
            self._stopped.wait(timeout=3 * CLOSE_GRACE)

    def flush_all(self) -> None:
        """Send every connection what it is owed; drop members that cannot keep up.

        One thread flushes at a time, for everyone: a thread that finds a flush under
        way leaves a request and returns to its own socket, and the flushing one makes
        another pass while requests keep coming. Fewer, fuller passes mean fewer
        sends.
        """
        self._flush_requested = True
        # Re-checked after releasing the lock: a request made while we were finishing
        # our last pass must not be left for nobody.
        while self._flush_requested and self._flush_lock.acquire(blocking=False):
            try:
                # Let the threads already woken by other messages (a burst arrives on
                # several connections at once) add them first: one pass then carries
                # them all, one send per member instead of one per message.
                time.sleep(0)
                while self._flush_requested:
                    self._flush_requested = False
                    self._flush_pass()
            finally:
                self._flush_lock.release()

    def _flush_pass(self) -> None:
        # After a broadcast everyone may be owed something; otherwise only the
        # connections that said so. A storm of joins (welcomes, not broadcasts) then
        # costs O(1) per join instead of a look at every connection.
        broadcasts = self.hub.broadcasts
        candidates: Iterable[TcpConnection]
        if broadcasts != self._flushed_broadcasts:
            self._flushed_broadcasts = broadcasts
            self.dirty.clear()
            candidates = self._snapshot
        else:
            dirty = self.dirty
            candidates = [dirty.popleft() for _ in range(len(dirty))]
        held: list[TcpConnection] = []
        for connection in candidates:
            if connection.stalled:
                if not connection.session.check_backlog():  # too slow: dropped
                    connection.abort()
                    self._flush_requested = True  # its departure notice
            elif connection.hold():
                held.append(connection)
        # One take for everyone held: a broadcast is one slice shared by all members.
        owed = data_to_send_many([c.session for c in held])
        for connection, data in zip(held, owed, strict=True):
            if data:
                connection.send_held(data)
            connection.release_hold()
            if connection.session.abort:
                connection.abort()
                self._flush_requested = True  # its departure notice

    # --- accepting -------------------------------------------------------------------------

    def _accept_ready(self) -> None:
        # Accept everything pending: under a connection storm one select per accept
        # would leave the backlog full.
        for _ in range(256):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: refuse one waiting connection with the reserved
                # descriptor, log, and back off instead of spinning on a listener
                # that stays readable.
                log.error("accept failed: %s", exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._refuse_with_spare()
                time.sleep(0.1)
                return
            try:
                self._admit(sock, address)
            except Exception as exc:
                # Out of threads or descriptors for this one connection: refuse it
                # and keep serving everyone else.
                log.error("could not serve %s: %s", format_peer(address), exc)
                _refuse(sock, "the server is out of resources; try again later")

    def _refuse_with_spare(self) -> None:
        if self._spare is None:
            return
        os.close(self._spare)
        self._spare = None
        try:
            sock, address = self._listener.accept()
        except OSError:
            pass
        else:
            log.warning("refused %s: out of file descriptors", format_peer(address))
            _refuse(sock, "the server has too many open connections; try again later")
        finally:
            self._spare = _reserve_descriptor()

    def _admit(self, sock: socket.socket, address: tuple[str, int]) -> None:
        peer = format_peer(address)
        try:
            ticket = self.admission.admit(address[0])
        except Rejected as exc:
            self.refusals.note(peer, str(exc))
            _refuse(sock, str(exc))
            return
        try:
            sock.setblocking(True)
            _tune(sock)
            now = time.monotonic()
            session = ServerSession(
                self.hub,
                self.policy,
                peer=peer,
                now=now,
                admission=(self.admission, ticket),
                registration_timeout=self.admission.registration_timeout(
                    self.config.registration_timeout
                ),
            )
            connection = TcpConnection(self, sock, peer, session)
            session.on_output = connection.mark_dirty
            ticket.evict = connection.abort
            with self._lock:
                self._connections.add(connection)
                self._snapshot = (*self._snapshot, connection)
            connection.thread.start()
        except BaseException:
            self.admission.release(ticket)
            self._discard(locals().get("connection"))
            raise
        log.debug("accepted %s", peer)

    def forget(self, connection: TcpConnection) -> None:
        """``connection`` has ended: its admission place is free again."""
        ticket = connection.session.admission
        if ticket is not None:
            self.admission.release(ticket[1])
        self._discard(connection)

    def _discard(self, connection: object) -> None:
        if not isinstance(connection, TcpConnection):
            return
        with self._lock:
            self._connections.discard(connection)
            self._snapshot = tuple(self._connections)

    def _teardown(self) -> None:
        self._listener.close()
        self.hub.shutdown(self._shutdown_reason)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.session.close("server shutting down")
            connection.wake()
        self.flush_all()
        deadline = time.monotonic() + CLOSE_GRACE
        for connection in connections:
            connection.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for connection in connections:
            if connection.thread.is_alive():
                connection.abort()
                connection.thread.join(timeout=1.0)
        self.drainer.stop()
        self._wake_r.close()
        self._wake_w.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None


_TCP_CLOSE = 7  # tcpi_state after a reset; an orderly end leaves CLOSE_WAIT (8)


def _was_reset(sock: socket.socket) -> bool:
    """Whether a connection whose recv() just returned nothing was reset, not closed."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET:
            return True
        if hasattr(socket, "TCP_INFO"):
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE
    except OSError:
        return False
    return False


def _reserve_descriptor() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _tune(sock: socket.socket) -> None:
    # Chat lines are small and latency matters; flushes already coalesce.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in _KEEPALIVE:
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        # While a chat is active, unacknowledged data keeps keepalive from ever
        # probing: this bounds how long a vanished peer is retransmitted to.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


def _loss_detail(exc: OSError) -> str:
    """What a lost connection's departure says: nothing for the usual ways to die."""
    if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
        return ""
    return (exc.strerror or str(exc)).lower()


def _refuse(sock: socket.socket, reason: str) -> None:
    """Tell a connection we will not serve it why, in one readable line, and close."""
    try:
        sock.settimeout(1.0)
        sock.sendall(render_text(Error("refused", reason), time.time()))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()

"""The netchat client: joins a server and turns its frames into events.

Strategy
--------
:meth:`Client.start` does the whole handshake on the caller's thread (connect, send
``hello``, wait a bounded time for ``welcome``) so that a refused name or an absent
server is an exception the caller can report. After that, exactly one receiver
thread reads frames, answers pings, follows our own renames, and hands every frame to
``on_event``; when the session ends it calls ``on_closed`` exactly once.

With ``reconnect=True`` a lost connection is retried with exponential backoff and
jitter, a bounded number of times, rejoining under the same name; the user is told
through ``info`` frames.

For bots and tests, :meth:`Client.connect` returns a started client whose events
are queued for :meth:`Client.next_event`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from .errors import (
    ConnectError,
    ConnectionClosed,
    NetchatError,
    ProtocolError,
    Rejected,
    TransportError,
)
from .events import FrameInbox, call_handler
from .protocol.commands import parse_input, split_command
from .protocol.frames import (
    Error,
    Frame,
    Hello,
    Info,
    Ping,
    Pong,
    Quit,
    Renamed,
    Say,
    Shutdown,
    Welcome,
)
from .transport.base import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ClientTransport,
    ClosedHandler,
    EventHandler,
    Proto,
)

log = logging.getLogger("netchat.client")

CLIENT_ID = "netchat/0.1"

#: Seconds a server has to answer our hello.
WELCOME_TIMEOUT = 10.0
#: Seconds close() waits for the server to confirm a /quit by closing the connection.
QUIT_GRACE = 2.0

#: Server codes after which rejoining cannot help.
_FATAL_REJECTIONS = frozenset({"bad-name"})


def make_client_transport(
    proto: Proto, host: str, port: int, *, connect_timeout: float = 10.0
) -> ClientTransport:
    """A transport for ``proto``, not yet connected."""
    if Proto(proto) is Proto.udp:
        from .transport.udp_client import UdpClientTransport

        return UdpClientTransport(host, port)
    from .transport.tcp_client import TcpClientTransport

    return TcpClientTransport(host, port, connect_timeout=connect_timeout)


class Client:
    """A chat client: a :class:`~netchat.transport.base.ChatEndpoint` over TCP or UDP.

    Args:
        name: the name to join under.
        host: server host name or address.
        port: server port.
        proto: transport to use.
        reconnect: rejoin automatically when the connection is lost.
        transport: a ready-made (unconnected) transport, e.g. for tests; by default
            one is made for ``proto``.
        welcome_timeout: seconds the server has to answer our hello.
        reconnect_attempts: how many times to try rejoining after each loss.
        backoff: first delay between reconnect attempts, in seconds; it doubles (with
            jitter) up to ``max_backoff``.
        max_backoff: longest delay between reconnect attempts.

    Example::

        with Client.connect("bot", "127.0.0.1", 8080) as client:
            client.say("hello")
            frame = client.next_event(timeout=5)
    """

    def __init__(
        self,
        name: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        proto: Proto = Proto.tcp,
        *,
        reconnect: bool = False,
        transport: ClientTransport | None = None,
        welcome_timeout: float = WELCOME_TIMEOUT,
        reconnect_attempts: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port
        self.proto = Proto(proto)
        self.reconnect = reconnect
        self.welcome_timeout = welcome_timeout
        self.reconnect_attempts = reconnect_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.welcome: Welcome | None = None
        self._name = name
        self._transport = transport
        self._given_transport = transport is not None
        self._on_event: EventHandler | None = None
        self._on_closed: ClosedHandler | None = None
        self._receiver: threading.Thread | None = None
        self._lock = threading.Lock()
        self._quitting = False  # we sent /quit or close(): a closing server is expected
        self._ended = threading.Event()
        self._stop = threading.Event()  # interrupts reconnect backoff sleeps
        self._shutdown_reason: str | None = None
        self._reconnects = 0
        self._events: FrameInbox | None = None

    # --- ChatEndpoint ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name we are known by now (it follows ``/nick``)."""
        return self._name

    def start(self, on_event: EventHandler, on_closed: ClosedHandler) -> None:
        """Connect, join, and start the receiver thread.

        The ``welcome`` frame is the first frame handed to ``on_event``.

        Args:
            on_event: called on the receiver thread for every frame.
            on_closed: called once when the session ends: ``None`` after ``/quit`` or
                :meth:`close`, else a one-line reason.

        Raises:
            ConnectError: the server could not be reached or did not welcome us.
            Rejected: the server refused the join (``code`` and ``suggestion`` say why).
        """
        if self._receiver is not None:
            raise NetchatError("client already started")
        self._on_event = on_event
        self._on_closed = on_closed
        transport, welcome, early = self._join()
        self._transport = transport
        self._receiver = threading.Thread(
            target=self._receive_loop,
            args=([welcome, *early],),
            name=f"netchat-client-{self._name}",
            daemon=True,
        )
        self._receiver.start()

    def send_line(self, line: str) -> None:
        """Send what the user typed: a message or a ``/command``.

        ``/stats`` is answered locally with an ``info`` event; every other command
        goes to the server (``/help`` included, so the list matches the server).

        Raises:
            CommandError: unknown command or missing argument.
            TransportError: not connected.
        """
        command = split_command(line)
        if command is not None and command[0] == "stats":
            self._emit(Info(self._stats_text()))
            return
        self.send(parse_input(line))

    def send(self, frame: Frame) -> None:
        """Send one request frame.

        Raises:
            TransportError: not connected (the session ended, or a reconnect is under way).
        """
        if isinstance(frame, Quit):
            self._quitting = True
        transport = self._transport
        if transport is None or self._receiver is None:
            raise ConnectionClosed("not connected")
        transport.send(frame)

    def say(self, text: str) -> None:
        """Send ``text`` to everyone, verbatim (even if it starts with ``/``)."""
        self.send(Say(text))

    def stats(self) -> dict[str, int]:
        """Transport counters plus ``reconnects``."""
        counters = self._transport.stats() if self._transport is not None else {}
        return {**counters, "reconnects": self._reconnects}

    def close(self) -> None:
        """Leave politely: send ``/quit`` if still connected, wait briefly for the
        server to confirm, then close the connection and stop the receiver. Idempotent."""
        already_quitting = self._quitting
        self._quitting = True
        self._stop.set()
        transport = self._transport
        if transport is not None and not self._ended.is_set():
            if not already_quitting and self._receiver is not None:
                # Already gone: nothing to be polite to.
                with contextlib.suppress(TransportError, ProtocolError):
                    transport.send(Quit())
            if self._receiver not in (None, threading.current_thread()):
                self._ended.wait(QUIT_GRACE)
            transport.close()
        receiver = self._receiver
        if receiver is not None and receiver is not threading.current_thread():
            receiver.join(timeout=QUIT_GRACE + 1)
        if receiver is None:
            self._ended.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the session has ended; True if it has."""
        return self._ended.wait(timeout)

    # --- bots and tests ----------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        name: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        proto: Proto = Proto.tcp,
        **options: object,
    ) -> Client:
        """A started client whose events are queued for :meth:`next_event`.

        Use it as a context manager to leave on exit. ``options`` are passed to
        :class:`Client`.

        Raises:
            ConnectError: the server could not be reached.
            Rejected: the server refused the join.
        """
        client = cls(name, host, port, proto, **options)  # type: ignore[arg-type]
        events = FrameInbox()
        client._events = events
        client.start(events.put, lambda reason: events.end(reason or "session ended"))
        return client

    def next_event(self, timeout: float | None = None) -> Frame | None:
        """The next received frame, or ``None`` if none arrived within ``timeout``.

        Only for clients made by :meth:`connect`.

        Raises:
            ConnectionClosed: the session has ended and every event was taken.
        """
        if self._events is None:
            raise NetchatError("next_event() needs a client made by Client.connect()")
        return self._events.get(timeout)

    def events(self, *, max_events: int = 0, duration: float = 0) -> Iterator[Frame]:
        """Received frames, for a bot's main loop; ``0`` means no bound.

        Stops after ``max_events`` frames or ``duration`` seconds, whichever comes
        first. Only for clients made by :meth:`connect`.

        Raises:
            ConnectionClosed: the session ended (the server went away, or we quit).
        """
        deadline = time.monotonic() + duration if duration else None
        for _ in itertools.count() if not max_events else range(max_events):
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                frame = self.next_event(timeout=remaining)
                if frame is not None:
                    break
            yield frame

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------

    def _new_transport(self) -> ClientTransport:
        if self._given_transport and self._transport is not None:
            return self._transport
        return make_client_transport(self.proto, self.host, self.port)

    def _join(self) -> tuple[ClientTransport, Welcome, list[Frame]]:
        """Connect and handshake; returns the transport, the welcome and any frames
        that arrived before it (other than pings, which are answered)."""
        transport = self._new_transport()
        transport.connect()
        try:
            transport.send(Hello(self._name, client=CLIENT_ID))
            welcome, early = self._await_welcome(transport)
        except BaseException:
            transport.close()
            raise
        self._name = welcome.name
        self.welcome = welcome
        return transport, welcome, early

    def _await_welcome(self, transport: ClientTransport) -> tuple[Welcome, list[Frame]]:
        deadline = time.monotonic() + self.welcome_timeout
        early: list[Frame] = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                frame = transport.receive(timeout=remaining)
            except ConnectionClosed as exc:
                raise ConnectError(
                    f"the server closed the connection before welcoming us ({exc})"
                ) from exc
            except ProtocolError as exc:
                raise ConnectError(f"the server does not speak netchat: {exc}") from exc
            if isinstance(frame, Welcome):
                return frame, early
            if isinstance(frame, Error):
                raise Rejected(frame.text, code=frame.code, suggestion=frame.suggestion or None)
            if isinstance(frame, Ping):
                transport.send(Pong(frame.token))
            elif frame is not None:
                early.append(frame)
        raise ConnectError(f"no welcome from the server within {self.welcome_timeout:g} s")

    def _receive_loop(self, first_frames: list[Frame]) -> None:
        for early in first_frames:
            self._emit(early)
        reason: str | None = None
        while True:
            transport = self._transport
            assert transport is not None
            try:
                frame = transport.receive()
            except ConnectionClosed as exc:
                reason = self._closed_reason(exc)
                transport.close()  # release the old socket before a rejoin makes a new one
                if reason is not None and self.reconnect and self._rejoin(reason):
                    continue
                break
            except ProtocolError as exc:
                log.warning("ignoring a bad frame from the server: %s", exc)
                continue
            except TransportError as exc:
                reason = f"connection lost: {exc}"
                transport.close()
                if self.reconnect and self._rejoin(reason):
                    continue
                break
            if frame is not None:
                self._handle(transport, frame)
        self._finish(reason)

    def _handle(self, transport: ClientTransport, frame: Frame) -> None:
        if isinstance(frame, Ping):
            # A broken connection is reported by the receive that follows.
            with contextlib.suppress(TransportError, ProtocolError):
                transport.send(Pong(frame.token))
            return
        if isinstance(frame, Renamed) and frame.old == self._name:
            self._name = frame.new
        elif isinstance(frame, Shutdown):
            self._shutdown_reason = frame.reason
        self._emit(frame)

    def _closed_reason(self, exc: ConnectionClosed) -> str | None:
        if self._quitting:
            return None
        if self._shutdown_reason is not None:
            why = self._shutdown_reason
            return "the server shut down" + (f": {why}" if why else "")
        return str(exc)

    def _rejoin(self, reason: str) -> bool:
        """Try to rejoin after ``reason``; True once joined again (the new welcome has
        been emitted), False when giving up or closing."""
        delay = self.backoff
        for attempt in range(1, self.reconnect_attempts + 1):
            # Full jitter around the exponential delay, so a restarted server is not
            # hit by every client at the same instant.
            pause = random.uniform(delay / 2, delay)
            self._emit(
                Info(
                    f"{reason}; reconnecting in {pause:.1f} s"
                    f" (attempt {attempt}/{self.reconnect_attempts})"
                )
            )
            if self._stop.wait(pause):
                return False
            try:
                transport, welcome, early = self._join()
            except Rejected as exc:
                if exc.code in _FATAL_REJECTIONS:
                    self._emit(Info(f"cannot rejoin: {exc}"))
                    return False
                reason = f"rejoin refused: {exc}"
            except (TransportError, ProtocolError) as exc:
                reason = f"reconnect failed: {exc}"
            else:
                with self._lock:
                    if self._stop.is_set():
                        transport.close()
                        return False
                    self._transport = transport
                self._reconnects += 1
                self._shutdown_reason = None
                self._emit(Info(f"reconnected to {self.host}:{self.port} as {self._name}"))
                for frame in [welcome, *early]:
                    self._emit(frame)
                return True
            delay = min(delay * 2, self.max_backoff)
        self._emit(Info(f"giving up after {self.reconnect_attempts} reconnect attempts"))
        return False

    def _finish(self, reason: str | None) -> None:
        if self._quitting:
            reason = None  # closed on purpose (perhaps while reconnecting): no failure
        transport = self._transport
        if transport is not None:
            transport.close()
        call_handler(self._on_closed, reason, log)
        # Set last, so whoever wait()s sees the effects of on_closed.
        self._ended.set()

    def _emit(self, frame: Frame) -> None:
        call_handler(self._on_event, frame, log)

    def _stats_text(self) -> str:
        stats = self.stats()
        return "stats: " + ", ".join(f"{key}={value}" for key, value in sorted(stats.items()))

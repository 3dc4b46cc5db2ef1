"""The netchat client: joins a server and turns its frames into events.

Strategy
--------
:meth:`Client.start` does the whole handshake on the caller's thread, so that a
refused name or an absent server is an exception the caller can report: connect;
over TCP, wait for the server's greeting; send ``hello``; wait a bounded time for
``welcome``. After that exactly one receiver thread reads frames, answers pings,
follows our own renames and hands every frame to ``on_event``; when the session ends
it calls ``on_closed`` exactly once.

A netchat TCP server greets with its banner before anything else. A server that does
not (a classmate's relay greets nobody) is told so once and gets a plain-line session
(:mod:`netchat.plain_client`): our JSON ``hello`` is never sent to it. ``plain=True``
chooses plain-line mode from the start, over TCP or UDP (a UDP server never speaks
first, so there is nothing to recognise it by).

With ``reconnect=True`` a lost connection is retried with exponential backoff and
jitter, a bounded number of times, rejoining under the same name; the user is told
through ``info`` frames. The transport being joined is registered under the client's
lock, and a finished join is adopted under it too, so :meth:`Client.close` during any
phase of a rejoin (the backoff, the TCP handshake, the wait for the welcome) aborts
it at once: either close() finds the new connection and closes it, or the rejoin
finds close() was called and closes it itself. Nothing leaks, and ``on_closed`` runs
once.

With a password the client joins only a chat that asks for one: over TCP it sends
it in its ``hello`` once the banner has asked (and refuses a server whose banner does
not, or one that is not netchat at all); over UDP the transport seals every
datagram (:mod:`netchat.transport.udp_client`). A refusal is a
:class:`~netchat.errors.Rejected` with code ``needs-password``, ``bad-password`` or
``no-password``, which no rejoin can cure.

For bots, :meth:`Client.connect` returns a started client whose events are queued
for :meth:`Client.events` (or :meth:`Client.next_event`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from .errors import (
    CommandError,
    ConnectError,
    ConnectionClosed,
    ForeignServer,
    LocalProtocolError,
    NetchatError,
    ProtocolError,
    Rejected,
    TransportError,
)
from .events import FrameInbox, call_handler
from .plain_client import PlainChat, RawTransport, plural, size_text
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
from .protocol.limits import MAX_FRAME_BYTES
from .transport.base import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ClientTransport,
    ClosedHandler,
    EventHandler,
    Proto,
)
from .transport.registry import is_stream, make_client_transport
from .transport.tcp_client import GREETING_TIMEOUT, Greeting, TcpClientTransport, format_address
from .transport.udp_client import PlainUdpTransport

log = logging.getLogger("netchat.client")

CLIENT_ID = "netchat/0.1"

#: Seconds a server has to answer our hello.
WELCOME_TIMEOUT = 10.0
#: Seconds close() waits for the server to confirm a /quit by closing the connection.
QUIT_GRACE = 2.0

#: What a user sees for a line too long for the protocol.
TOO_LONG = (
    f"message not sent: longer than {MAX_FRAME_BYTES} bytes, the most one line may hold; shorten it"
)

#: Server codes after which rejoining cannot help.
_FATAL_REJECTIONS = frozenset({"bad-name", "needs-password", "bad-password", "no-password"})
#: Transport counters that add up over the connections of a session.
_CUMULATIVE = ("lost", "duplicates", "reordered", "bytes_in", "bytes_out")
#: Transport counters of a sealed session (this connection's only).
_SEALED = ("forged", "replayed")


@dataclass(frozen=True)
class _Foreign:
    """A TCP server that did not greet with netchat's banner, and what it said."""

    transport: TcpClientTransport
    data: bytes


class Client:
    """A chat client: a :class:`~netchat.transport.base.ChatEndpoint` over TCP or UDP.

    Args:
        name: the name to join under.
        host: server host name or address.
        port: server port.
        proto: transport to use.
        reconnect: rejoin automatically when the connection is lost.
        plain: plain-line mode from the start, for a server that does not speak
            netchat (a TCP one that does not greet with netchat's banner gets it anyway).
        welcome_timeout: seconds the server has to answer our hello.
        greeting_timeout: seconds a TCP server has to greet us before it is taken for
            one that does not speak netchat.
        reconnect_attempts: how many times to try rejoining after each loss.
        backoff: first delay between reconnect attempts, in seconds; it doubles (with
            jitter) up to ``max_backoff``.
        max_backoff: longest delay between reconnect attempts.
        password: the chat's password (None or empty: an open chat). Only a chat that
            asks for one is joined with it, and it cannot be used in plain-line mode.

    Example::

        with Client.connect("bot", "127.0.0.1", 8080) as client:
            client.say("hello")
            for frame in client.events(duration=5):
                print(frame)
    """

    def __init__(
        self,
        name: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        proto: Proto = Proto.tcp,
        *,
        reconnect: bool = False,
        plain: bool = False,
        welcome_timeout: float = WELCOME_TIMEOUT,
        greeting_timeout: float = GREETING_TIMEOUT,
        reconnect_attempts: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 15.0,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.proto = Proto(proto)
        self.reconnect = reconnect
        self.plain = plain
        self.welcome_timeout = welcome_timeout
        self.greeting_timeout = greeting_timeout
        self.reconnect_attempts = reconnect_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._password = password or None
        self._name = name
        self._on_event: EventHandler | None = None
        self._on_closed: ClosedHandler | None = None
        self._receiver: threading.Thread | None = None
        self._plain: PlainChat | None = None
        # Guards _transport, _connecting, _closing and _finished (see the module doc).
        self._lock = threading.Lock()
        self._transport: ClientTransport | None = None  # the joined connection
        self._connecting: ClientTransport | None = None  # a (re)join under way
        self._closing = False
        self._finished = False
        self._quitting = False  # we sent /quit or close(): a closing server is expected
        self._ended = threading.Event()
        self._stop = threading.Event()  # interrupts reconnect backoff sleeps
        self._shutdown_reason: str | None = None
        self._reconnects = 0
        self._sent = 0
        self._received = 0
        self._earlier_connections: Counter[str] = Counter()
        self._events: FrameInbox | None = None

    # --- ChatEndpoint ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name we are known by now (it follows ``/nick``)."""
        return self._plain.name if self._plain is not None else self._name

    def start(self, on_event: EventHandler, on_closed: ClosedHandler) -> None:
        """Connect, join, and start the receiver thread.

        The ``welcome`` frame is the first frame handed to ``on_event``; in plain-line
        mode it is an ``info`` frame saying so.

        Args:
            on_event: called on the receiver thread for every frame.
            on_closed: called once when the session ends: ``None`` after ``/quit`` or
                :meth:`close`, else a one-line reason.

        Raises:
            ConnectError: the server could not be reached or did not welcome us
                (:class:`~netchat.errors.ForeignServer`: a UDP server answered, but
                not in netchat).
            Rejected: the server refused the join (``code`` and ``suggestion`` say why).
        """
        if self._receiver is not None or self._plain is not None:
            raise NetchatError("client already started")
        if self.plain and self._password is not None:
            raise ConnectError("plain-line mode cannot give a password; leave one of them out")
        self._on_event = on_event
        self._on_closed = on_closed
        if self.plain:
            transport: RawTransport
            if is_stream(self.proto):
                transport = TcpClientTransport(self.host, self.port)
            else:
                transport = PlainUdpTransport(self.host, self.port)
            notice = f"plain-line mode: what you type is sent to {self._where} as '{{name}}: text'"
            self._start_plain(transport, notice, b"", connected=False)
            return
        joined = self._join(allow_foreign=True)
        if isinstance(joined, _Foreign):
            notice = (
                f"{self._where} does not speak netchat (it did not greet us as a netchat"
                " server does); switching to plain-line mode: what you type is sent as"
                " '{name}: text'"
            )
            self._start_plain(joined.transport, notice, joined.data, connected=True)
            return
        self._receiver = threading.Thread(
            target=self._receive_loop,
            args=(joined,),
            name=f"netchat-client-{self._name}",
            daemon=True,
        )
        self._receiver.start()

    def send_line(self, line: str) -> None:
        """Send what the user typed: a message or a ``/command``.

        ``/stats`` is answered locally with an ``info`` event; every other command
        goes to the server (``/help`` included, so the list matches the server). A
        message too large to send is not sent: an ``error`` event says so.

        Raises:
            CommandError: unknown command or missing argument.
            TransportError: not connected.
        """
        if self._plain is not None:
            self._plain.send_line(line)
            return
        command = split_command(line)
        if command is not None and command[0] == "stats":
            self._emit(Info(self._stats_text()))
            return
        frame = parse_input(line)
        try:
            self.send(frame)
        except LocalProtocolError as exc:
            text = TOO_LONG if exc.code == "too-large" else f"message not sent: {exc}"
            self._emit(Error(exc.code, text))

    def send(self, frame: Frame) -> None:
        """Send one request frame.

        In plain-line mode only ``say`` and ``quit`` have a meaning.

        Raises:
            TransportError: not connected (the session ended, or a reconnect is under way).
            LocalProtocolError: the frame is too large to send.
            CommandError: plain-line mode cannot send this frame.
        """
        if self._plain is not None:
            if isinstance(frame, Say):
                self._plain.say(frame.text)
            elif isinstance(frame, Quit):
                self._plain.quit()
            else:
                raise CommandError(
                    f"a server that does not speak netchat takes no {frame.TYPE} frame"
                )
            return
        if isinstance(frame, Quit):
            self._quitting = True
        transport = self._transport
        if transport is None or self._receiver is None:
            raise ConnectionClosed("not connected")
        transport.send(frame)
        self._sent += 1

    def say(self, text: str) -> None:
        """Send ``text`` to everyone, verbatim (even if it starts with ``/``)."""
        self.send(Say(text))

    def stats(self) -> dict[str, int]:
        """What ``/stats`` shows, as numbers.

        ``sent`` (messages and commands), ``received`` (messages and notices),
        ``lost``, ``duplicates``, ``reordered`` (UDP; TCP never shows any),
        ``bytes_in``, ``bytes_out``, ``rtt_us`` (round-trip time in microseconds,
        0 if not measured yet) and ``reconnects``; in a sealed UDP chat also ``forged``
        and ``replayed`` (datagrams dropped because they did not open); over rudp also
        the reliability counters of each direction, ``up_*`` (what we send) and
        ``down_*`` (what we receive; see :meth:`RudpClientTransport.stats
        <netchat.transport.rudp_client.RudpClientTransport.stats>`). In plain-line mode:
        ``sent`` and ``received`` lines, bytes and ``rtt_us``.
        """
        if self._plain is not None:
            return self._plain.stats()
        transport = self._transport
        current = transport.stats() if transport is not None else {}
        counters = {
            key: self._earlier_connections[key] + current.get(key, 0) for key in _CUMULATIVE
        }
        stats = {
            "sent": self._sent,
            "received": self._received,
            **counters,
            "rtt_us": current.get("rtt_us", 0),
            "reconnects": self._reconnects,
            # rudp's per-direction counters: of the current connection only.
            **{
                key: value
                for key, value in current.items()
                if key.startswith(("up_", "down_", "server_report"))
            },
        }
        for key in _SEALED:  # a sealed chat: datagrams that did not open
            if key in current:
                stats[key] = current[key]
        return stats

    def close(self) -> None:
        """Leave politely: send ``/quit`` if still connected, wait briefly for the
        server to confirm, then close the connection and stop the receiver. A join or
        rejoin under way is aborted at once. Idempotent."""
        with self._lock:
            first_call = not self._closing
            self._closing = True
            already_quitting = self._quitting
            self._quitting = True
            self._stop.set()
            transport = self._transport
            connecting = self._connecting
        if self._plain is not None:
            self._plain.close()
            return
        if connecting is not None:
            connecting.close()  # its connect() or receive() raises ConnectionClosed now
        receiver = self._receiver
        waits = receiver is not None and receiver is not threading.current_thread()
        if transport is not None and first_call and waits and not self._ended.is_set():
            said_goodbye = already_quitting
            if not already_quitting:
                # A connection already lost (a rejoin under way) refuses: no goodbye.
                with contextlib.suppress(TransportError, ProtocolError):
                    transport.send(Quit())
                    said_goodbye = True
            if said_goodbye:
                self._ended.wait(QUIT_GRACE)  # the server confirms by closing
        if transport is not None:
            transport.close()
        if receiver is not None and waits:
            receiver.join(timeout=QUIT_GRACE + 1)
        if receiver is None:
            self._ended.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the session has ended; True if it has."""
        if self._plain is not None:
            return self._plain.wait(timeout)
        return self._ended.wait(timeout)

    # --- bots --------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        name: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        proto: Proto = Proto.tcp,
        **options: object,
    ) -> Client:
        """A started client whose events are queued for :meth:`events`.

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

    # --- joining ---------------------------------------------------------------------

    @property
    def _where(self) -> str:
        address = format_address(self.host, self.port)
        return address if is_stream(self.proto) else f"{self.proto.value}://{address}"

    def _new_transport(self) -> ClientTransport:
        # A datagram transport seals with the password; over TCP it goes in the hello.
        password = None if is_stream(self.proto) else self._password
        return make_client_transport(self.proto, self.host, self.port, password=password)

    def _join(self, *, allow_foreign: bool) -> list[Frame] | _Foreign:
        """Connect and handshake, and make the connection ours.

        Returns the welcome and any frames that arrived before it (other than pings,
        which are answered) — or, with ``allow_foreign``, a TCP server that does not
        speak netchat, connected and untouched.

        Raises:
            ConnectionClosed: close() was called meanwhile.
            ConnectError, Rejected: as :meth:`start`.
        """
        transport = self._new_transport()
        with self._lock:
            if self._stop.is_set():
                raise ConnectionClosed("the client was closed")
            self._connecting = transport
        adopted: ClientTransport | _Foreign = transport
        try:
            transport.connect()
            password = ""
            if isinstance(transport, TcpClientTransport):
                greeting = self._greeting(transport)
                if not greeting.netchat:
                    if self._password is not None:
                        raise ConnectError(
                            f"{self._where} does not speak netchat, so it cannot check a"
                            " password (plain-line mode is for servers without one)"
                        )
                    if not allow_foreign:
                        raise ForeignServer(f"{self._where} no longer speaks netchat")
                    adopted = _Foreign(transport, greeting.data)
                elif self._password is not None:
                    if not greeting.password:
                        raise Rejected(
                            f"{self._where} does not ask for a password: anyone who can"
                            " reach it can read and write this chat; join it without one",
                            code="no-password",
                        )
                    password = self._password
            if not isinstance(adopted, _Foreign):
                transport.send(Hello(self._name, client=CLIENT_ID, password=password))
                first_frames = self._await_welcome(transport)
        except BaseException:
            with self._lock:
                self._connecting = None
            transport.close()
            raise
        with self._lock:
            self._connecting = None
            if self._stop.is_set():
                transport.close()
                raise ConnectionClosed("the client was closed")
            if isinstance(adopted, _Foreign):
                return adopted
            previous, self._transport = self._transport, transport
        if previous is not None:
            self._earlier_connections.update(
                {key: previous.stats().get(key, 0) for key in _CUMULATIVE}
            )
        welcome = first_frames[0]
        assert isinstance(welcome, Welcome)
        self._name = welcome.name
        return first_frames

    def _greeting(self, transport: TcpClientTransport) -> Greeting:
        """What the server said first (a foreign server's bytes, or netchat's banner)."""
        try:
            return transport.read_greeting(self.greeting_timeout)
        except ConnectionClosed as exc:
            if self._stop.is_set():
                raise
            raise ConnectError(f"{self._where} closed the connection at once ({exc})") from exc

    def _await_welcome(self, transport: ClientTransport) -> list[Frame]:
        deadline = time.monotonic() + self.welcome_timeout
        early: list[Frame] = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                frame = transport.receive(timeout=remaining)
            except ConnectionClosed as exc:
                if self._stop.is_set():
                    raise
                raise ConnectError(
                    f"the server closed the connection before welcoming us ({exc})"
                ) from exc
            except ProtocolError as exc:
                raise ConnectError(f"the server does not speak netchat: {exc}") from exc
            if isinstance(frame, Welcome):
                self._received += 1 + len(early)
                return [frame, *early]
            if isinstance(frame, Error):
                raise Rejected(frame.text, code=frame.code, suggestion=frame.suggestion or None)
            if isinstance(frame, Ping):
                transport.send(Pong(frame.token))
            elif frame is not None:
                early.append(frame)
        raise ConnectError(f"no welcome from the server within {self.welcome_timeout:g} s")

    def _start_plain(
        self, transport: RawTransport, notice: str, received: bytes, *, connected: bool
    ) -> None:
        plain = PlainChat(
            self._name,
            transport,
            datagrams=not is_stream(self.proto),
            notice=notice.format(name=self._name),
            received=received,
            connected=connected,
        )
        assert self._on_event is not None and self._on_closed is not None
        try:
            plain.start(self._on_event, self._on_closed)
        except BaseException:
            transport.close()
            raise
        self._plain = plain

    # --- the session -----------------------------------------------------------------

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
            except (TransportError, Rejected) as exc:
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
        self._received += 1
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
            if self._stop.is_set():
                return False
            self._emit(
                Info(
                    f"{reason}; reconnecting in {pause:.1f} s"
                    f" (attempt {attempt}/{self.reconnect_attempts})"
                )
            )
            if self._stop.wait(pause):
                return False
            try:
                joined = self._join(allow_foreign=False)
            except Rejected as exc:
                if exc.code in _FATAL_REJECTIONS:
                    self._emit(Info(f"cannot rejoin: {exc}"))
                    return False
                reason = f"rejoin refused: {exc}"
            except (TransportError, ProtocolError) as exc:
                if self._stop.is_set():
                    return False  # close() aborted the attempt
                reason = f"reconnect failed: {exc}"
            else:
                assert not isinstance(joined, _Foreign)
                self._reconnects += 1
                self._shutdown_reason = None
                self._emit(Info(f"reconnected to {self._where} as {self._name}"))
                for frame in joined:
                    self._emit(frame)
                return True
            delay = min(delay * 2, self.max_backoff)
        self._emit(Info(f"giving up after {plural(self.reconnect_attempts, 'reconnect attempt')}"))
        return False

    def _finish(self, reason: str | None) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            transport = self._transport
        if self._quitting:
            reason = None  # closed on purpose (perhaps while reconnecting): no failure
        if transport is not None:
            transport.close()
        call_handler(self._on_closed, reason, log)
        # Set last, so whoever wait()s sees the effects of on_closed.
        self._ended.set()

    def _emit(self, frame: Frame) -> None:
        call_handler(self._on_event, frame, log)

    def _stats_text(self) -> str:
        stats = self.stats()
        if "up_sent" in stats:
            return _reliable_stats_text(self.proto, stats)
        text = (
            f"stats ({self.proto.value}): {plural(stats['sent'], 'message')} sent,"
            f" {stats['received']} received; {stats['lost']} lost,"
            f" {plural(stats['duplicates'], 'duplicate')}, {stats['reordered']} reordered;"
            f" {size_text(stats['bytes_out'])} out, {size_text(stats['bytes_in'])} in"
        )
        if stats["rtt_us"]:
            text += f"; round trip {stats['rtt_us'] / 1000:.2f} ms"
        if stats["reconnects"]:
            text += f"; reconnected {plural(stats['reconnects'], 'time')}"
        refused = stats.get("forged", 0) + stats.get("replayed", 0)
        if refused:
            text += f"; {plural(refused, 'forged or replayed datagram')} dropped"
        return text


def _ms(microseconds: int) -> str:
    return (
        f"{microseconds / 1000:.1f} ms"
        if microseconds >= 10_000
        else f"{microseconds / 1000:.2f} ms"
    )


def _sending(stats: dict[str, int], prefix: str) -> str:
    """A sender's end of a direction: ``12 sent, 2 retransmitted, … window 1/64 in use``."""
    srtt = stats[f"{prefix}srtt_us"]
    return (
        f"{stats[f'{prefix}sent']} sent, {stats[f'{prefix}retransmitted']} retransmitted,"
        f" {stats[f'{prefix}acknowledged']} acknowledged; RTO {_ms(stats[f'{prefix}rto_us'])},"
        f" smoothed RTT {_ms(srtt) if srtt else 'not measured yet'};"
        f" window {stats[f'{prefix}window_in_use']}/{stats[f'{prefix}window']} in use"
    )


def _receiving(stats: dict[str, int], prefix: str) -> str:
    """A receiver's end of a direction: ``31 received, 1 duplicate discarded, …``."""
    return (
        f"{stats[f'{prefix}received']} received,"
        f" {plural(stats[f'{prefix}duplicates'], 'duplicate')} discarded,"
        f" {stats[f'{prefix}held_back']} held back for ordering"
    )


def _reliable_stats_text(proto: Proto, stats: dict[str, int]) -> str:
    """``/stats`` over rudp: the totals, then both ends of each direction (the
    server's as its latest heartbeat answer reported them)."""
    reported = "server_report_age_ms" in stats
    up = f"you → server: {_sending(stats, 'up_')}"
    if stats["up_backlog"]:
        up += f", {stats['up_backlog']} waiting"
    down = "server → you: "
    if reported:
        up += f"; the server: {_receiving(stats, 'up_server_')}"
        down += f"{_sending(stats, 'down_server_')}; you: "
    down += _receiving(stats, "down_")
    if stats["down_buffered"]:
        down += f" ({stats['down_buffered']} waiting now)"
    down += f"; {plural(stats['down_acks_sent'], 'ACK')} sent"
    lines = [
        f"stats ({proto.value}): {plural(stats['sent'], 'message')} sent,"
        f" {stats['received']} received; {size_text(stats['bytes_out'])} out,"
        f" {size_text(stats['bytes_in'])} in"
        + (f"; reconnected {plural(stats['reconnects'], 'time')}" if stats["reconnects"] else ""),
        up,
        down,
        f"(the server's figures are from its last heartbeat answer,"
        f" {stats['server_report_age_ms'] / 1000:.1f} s ago)"
        if reported
        else "(the server's figures come with its first heartbeat answer)",
    ]
    return "\n".join(lines)

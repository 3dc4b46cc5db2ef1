"""The server's side of one client connection, with no I/O: netchat's ``h11.Connection``.

Strategy
--------
A transport owns a socket and nothing else. It feeds a :class:`ServerSession` what
arrives (:meth:`~ServerSession.receive_data` for a byte stream,
:meth:`~ServerSession.receive_unit` for one frame of a datagram) and the time
(:meth:`~ServerSession.tick`), sends what :meth:`~ServerSession.data_to_send`
returns, and closes the socket when :attr:`~ServerSession.phase` says so. Everything
a connection *means* is decided here, once for every transport, and tested byte by
byte without sockets (``tests/test_session.py``):

- **mode**: what the first line says the client is. A JSON ``hello`` makes it
  ``STRUCTURED`` (JSON frames both ways); anything else ``PLAIN`` (``nc``, telnet and
  the lab's own clients: text lines, ``/commands``, readable lines back).
- **phase**: (``AUTHENTICATING`` →) ``REGISTERING`` → ``JOINED`` → ``CLOSING`` →
  ``CLOSED``. The legal moves are one table, :data:`PHASE_MOVES`; anything else
  raises :class:`~netchat.errors.LocalProtocolError` naming the mode and phase it
  was in.
- **password**: a chat with one (:attr:`SessionPolicy.password`) starts in
  ``AUTHENTICATING``. The banner asks for the password instead of a name; a plain
  client's first line is the password, a structured client's ``hello`` carries it.
  The check is :class:`~netchat.protocol.seal.PasswordVerifier`'s (constant time);
  after a wrong one the stream is paused for :attr:`SessionPolicy.password_delay`,
  and after :attr:`SessionPolicy.password_attempts` the connection is closed with
  the reason. Nothing of the chat — not even who is in it — reaches a client
  before it has given the password: the session joins no hub before that.
- **framing**: lines end at ``\\n``. A plain client that has never sent a newline (a
  lab client calling ``send(text.encode())``) ends a line by pausing for
  :attr:`SessionPolicy.line_gap`; one newline makes it line-framed for good, so a slow
  ``nc`` line split by the network is never cut in two.
- **registration**: a plain first line is a name, or ``NAME: text`` (a lab client
  that never registers: NAME becomes its name and ``text`` its first message). A
  deadline bounds it; when it passes the client is told the truth (no name, or bytes
  but no end of line).
- **liveness**: structured stream clients are pinged after ``ping_interval`` of
  silence and time out on the third silent interval; datagram members time out after
  ``silence_timeout``; plain stream clients cannot answer pings, so the kernel's
  keepalive and user timeout detect their dead peers.
- **limits**: every non-empty line costs a token of the member's bucket, replies and
  errors included. A stream over its budget is *paused* (the transport stops
  reading, so TCP pushes back and nothing is lost); a datagram member's excess is
  dropped and it is told so. Identical errors are said once and then summarised.
  A member owed more than ``max_queue`` bytes is dropped as too slow.
- **goodbyes**: a member leaving, by ``/quit`` or because the server shuts down,
  gets everything it was owed first and exactly one goodbye after it.

Thread safety: one transport thread calls the ``receive_*``, ``tick`` and ``close``
methods; :meth:`~ServerSession.data_to_send` and :meth:`~ServerSession.check_backlog`
may run on another thread at the same time (whichever is flushing). Phase moves take
a lock; output queues are deques, whose appends and pops are atomic.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .admission import Admission, Ticket, plural
from .errors import CommandError, FrameTooLarge, LocalProtocolError, ProtocolError, Rejected
from .hub import Hub, Member, Outbound
from .protocol.banner import banner_line
from .protocol.commands import parse_input, split_command
from .protocol.frames import (
    Error,
    Frame,
    Hello,
    Help,
    Info,
    Ping,
    Quit,
    Shutdown,
    Who,
    decode_frame,
)
from .protocol.ratelimit import TokenBucket
from .protocol.stream import LineReader
from .protocol.text import name_problem, sanitize_text
from .streamlog import WireFormat

if TYPE_CHECKING:
    from .protocol.seal import PasswordVerifier

log = logging.getLogger("netchat.session")

__all__ = [
    "LIVE_PHASES",
    "PHASE_MOVES",
    "Decision",
    "ErrorDigest",
    "JoinedChat",
    "Mode",
    "Phase",
    "ServerSession",
    "SessionPolicy",
    "WantsClose",
    "data_to_send_many",
]


class Mode(enum.Enum):
    """What kind of client is on the other end."""

    UNKNOWN = "unknown"  # nothing said yet: the first line decides
    PLAIN = "plain"  # text lines both ways (nc, telnet, lab clients)
    STRUCTURED = "structured"  # JSON frames both ways (netchat's client)


class Phase(enum.Enum):
    """Where a connection is in its life."""

    AUTHENTICATING = "authenticating"  # a chat with a password: it has not given it yet
    REGISTERING = "registering"
    JOINED = "joined"
    CLOSING = "closing"  # no more input is handled; what is owed still goes out
    CLOSED = "closed"


class Move(enum.Enum):
    """What makes a phase change."""

    AUTHENTICATE = "authenticate"  # the right password
    JOIN = "join"
    CLOSE = "close"  # quit, timeout, too slow, shutdown, end of input
    FINISH = "finish"  # everything was sent (or the connection died)


#: The only legal phase changes. Closing twice is allowed (two reasons can race: a
#: shutdown and a quit); joining twice or reviving a closed session is not.
PHASE_MOVES: dict[tuple[Phase, Move], Phase] = {
    (Phase.AUTHENTICATING, Move.AUTHENTICATE): Phase.REGISTERING,
    (Phase.AUTHENTICATING, Move.CLOSE): Phase.CLOSING,
    (Phase.AUTHENTICATING, Move.FINISH): Phase.CLOSED,
    (Phase.REGISTERING, Move.JOIN): Phase.JOINED,
    (Phase.REGISTERING, Move.CLOSE): Phase.CLOSING,
    (Phase.REGISTERING, Move.FINISH): Phase.CLOSED,
    (Phase.JOINED, Move.CLOSE): Phase.CLOSING,
    (Phase.JOINED, Move.FINISH): Phase.CLOSED,
    (Phase.CLOSING, Move.CLOSE): Phase.CLOSING,
    (Phase.CLOSING, Move.FINISH): Phase.CLOSED,
    (Phase.CLOSED, Move.CLOSE): Phase.CLOSED,
    (Phase.CLOSED, Move.FINISH): Phase.CLOSED,
}

#: Phases in which input is handled (a transport keeps reading).
LIVE_PHASES = frozenset({Phase.AUTHENTICATING, Phase.REGISTERING, Phase.JOINED})
#: Phases before joining, bounded by the registration deadline.
_UNJOINED = frozenset({Phase.AUTHENTICATING, Phase.REGISTERING})


# What the session decided, for its transport: the receive and tick methods return
# them (usually none). A transport that only follows ``phase`` may ignore them.


@dataclass(frozen=True)
class JoinedChat:
    """Decision: the client joined the chat as ``name``."""

    name: str


@dataclass(frozen=True)
class WantsClose:
    """Decision: the session is closing; send what :meth:`ServerSession.data_to_send`
    still returns, then close (or, when ``abort``, close at once)."""

    reason: str
    abort: bool = False


Decision = JoinedChat | WantsClose


@dataclass(frozen=True)
class SessionPolicy:
    """How a transport wants its sessions to behave; built from a ServerConfig.

    Attributes:
        server_name: named in the banner.
        stream: True for a byte stream (TCP): sessions greet, frame lines and pause on
            excess; False for datagrams: one unit per frame, excess dropped.
        max_queue: bytes a member may be owed before it is dropped as too slow.
        rate_limit: lines per second per client (0 = unlimited), ``burst`` at once.
        registration_timeout: seconds a stream client has to join.
        ping_interval: seconds of silence before a structured stream member is
            pinged (dropped on the third silent interval); None: never.
        silence_timeout: seconds of silence after which a member has timed out
            (datagram members, whose transport sends heartbeats); None: never.
        line_gap: seconds of quiet that end a line for a plain stream client that
            has never sent a newline.
        plain_first_line: what a plain first line without a ``NAME:`` prefix is:
            ``"name"`` (TCP: the client types its name first) or ``"message"``
            (plain datagrams: the sender is named ``guestN``).
        error_window: seconds during which repeats of one error are counted, not said.
        password: checks the chat's password (None: an open chat); a stream client
            must give it before anything else.
        password_attempts: wrong passwords after which the connection is closed.
        password_delay: seconds a stream is not read after a wrong password.
    """

    server_name: str = "netchat"
    stream: bool = True
    max_queue: int = 1024 * 1024
    rate_limit: float = 20.0
    burst: int = 100
    registration_timeout: float = 30.0
    ping_interval: float | None = 30.0
    silence_timeout: float | None = None
    line_gap: float = 0.15
    plain_first_line: str = "name"
    error_window: float = 10.0
    password: PasswordVerifier | None = field(default=None, repr=False)
    password_attempts: int = 3
    password_delay: float = 1.0


#: Pings a structured member may leave unanswered; it is dropped on the next one due.
MISSED_PINGS_ALLOWED = 2
#: Requests whose only effect is a reply to the sender.
_REPLY_REQUESTS = (Help, Ping, Who)
#: ``NAME: text``, as the lab's clients send it.
_NAME_PREFIX = re.compile(r"([^\s:]+): (.*)", re.DOTALL)


class ErrorDigest:
    """Say an error once, then count identical repeats for ``window`` seconds and say
    how many there were: a client sending the same junk gets one line a window, not
    one a line. Memory is bounded: at most :data:`MAX_DISTINCT` errors are tracked."""

    MAX_DISTINCT = 32

    def __init__(self, window: float) -> None:
        self.window = window
        # (code, text) -> (since, repeats); insertion order is age order
        self._open: dict[tuple[str, str], tuple[float, int]] = {}

    def admit(self, code: str, text: str, now: float) -> bool:
        """True when this error should be said now; False when it was counted."""
        key = (code, text)
        entry = self._open.get(key)
        if entry is not None and now - entry[0] < self.window:
            self._open[key] = (entry[0], entry[1] + 1)
            return False
        if entry is None and len(self._open) >= self.MAX_DISTINCT:
            return True  # too many kinds to track: said, but not remembered
        if entry is None or not entry[1]:
            self._open[key] = (now, 0)
        return True

    def due(self, now: float) -> list[tuple[str, int, str]]:
        """(code, repeats, text) of every window that closed with repeats in it."""
        summaries = []
        for (code, text), (since, repeats) in list(self._open.items()):
            if now - since >= self.window:
                del self._open[(code, text)]
                if repeats:
                    summaries.append((code, repeats, text))
        return summaries

    def next_deadline(self) -> float | None:
        return min((since + self.window for since, _ in self._open.values()), default=None)


def data_to_send_many(sessions: list[ServerSession]) -> list[bytes]:
    """:meth:`ServerSession.data_to_send` of many sessions of one hub at once.

    A transport that flushes everyone after a broadcast calls this instead of asking
    each session in turn: the members' slices are taken under one lock and shared
    between members that were at the same place in the stream.
    """
    out: list[bytes] = []
    streaming: list[tuple[int, ServerSession, Member]] = []
    for index, session in enumerate(sessions):
        member = session.streaming_member()
        if member is None:
            out.append(session.data_to_send())
        else:
            streaming.append((index, session, member))
            out.append(b"")
    if streaming:
        hub = streaming[0][1].hub
        owed = hub.take_many([member for _, _, member in streaming])
        for (index, session, _), data in zip(streaming, owed, strict=True):
            out[index] = session.took(data)
    return out


class ServerSession:
    """One client connection, from greeting to goodbye, as the server sees it.

    Args:
        hub: the chat to join.
        policy: the transport's limits and timings.
        peer: the client's address, for logs (``127.0.0.1:5000``).
        now: monotonic time of the connection's start.
        admission: the transport's caps and this connection's ticket: joining
            claims a member place (refused when the server is full).
        registration_timeout: overrides the policy's (shorter under pressure).
        on_output: called (it must only take note) when another thread gives this
            session's member a frame of its own (a private message, a ping): output
            that no broadcast explains (see :attr:`~netchat.streamlog.Cursor.notify`).
    """

    def __init__(
        self,
        hub: Hub,
        policy: SessionPolicy,
        *,
        peer: str,
        now: float,
        admission: tuple[Admission, Ticket] | None = None,
        registration_timeout: float | None = None,
        on_output: Callable[[], None] | None = None,
    ) -> None:
        self.hub = hub
        self.admission = admission
        self.on_output = on_output
        self.policy = policy
        self.peer = peer
        self.mode = Mode.UNKNOWN
        self.phase = Phase.AUTHENTICATING if policy.password is not None else Phase.REGISTERING
        self._wrong_passwords = 0
        self.member: Member | None = None
        #: why the session is closing or closed ("" while it is not)
        self.close_reason = ""
        #: close without sending what is owed (the client stopped reading)
        self.abort = False
        #: the stream transport should not read before this time (rate limit)
        self.paused_until: float | None = None
        self._lock = threading.Lock()
        self._now = now
        self._lines = LineReader()
        self._lines_seen = 0
        self._newline_seen = not policy.stream  # datagram units are whole lines
        self._bucket = TokenBucket(policy.rate_limit, policy.burst, clock=lambda: self._now)
        self._started = now
        self._last_heard = now
        self._last_data = now
        self._pings_sent = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._said = 0  # chat lines the client sent that the hub carried
        #: lines dropped over the rate limit (datagrams), errors said and summarised
        self.counters: Counter[str] = Counter()
        self._registration_deadline = now + (
            policy.registration_timeout if registration_timeout is None else registration_timeout
        )
        self._name_prefix = ""  # "alice: " once alice registered that way
        self._digest = ErrorDigest(policy.error_window)
        #: replies the datagram being handled may still draw (None: no such bound)
        self._replies_left: int | None = None
        self._decisions: list[Decision] = []
        self._max_queue = policy.max_queue
        # Output that is not the member's stream: before it joined (the banner,
        # prompts, refusals) and after it left (a goodbye line).
        self._before: deque[bytes] = deque()
        self._after: deque[bytes] = deque()
        if policy.stream:
            self._before.append(
                banner_line(policy.server_name, password=policy.password is not None)
            )

    # --- input -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Decision]:
        """Bytes from a stream; ``b""`` means the client closed its side."""
        self._now = now
        if self.phase not in LIVE_PHASES:
            return self._take_decisions()
        if not data:
            self._close("quit", leave_reason="quit")
            return self._take_decisions()
        self._heard(now)
        self._bytes_in += len(data)
        self._last_data = now
        if not self._newline_seen and b"\n" in data:
            self._newline_seen = True
        self._lines.feed(data)
        self._handle_buffered_lines()
        return self._take_decisions()

    def receive_unit(self, unit: bytes, now: float) -> list[Decision]:
        """One frame (or plain line) that arrived whole, in a datagram."""
        self._now = now
        if self.phase in LIVE_PHASES:
            self._heard(now)
            self._bytes_in += len(unit)
            self._handle_line(unit.rstrip(b"\r\n"))
        return self._take_decisions()

    def receive_datagram(self, units: Iterable[bytes], now: float) -> list[Decision]:
        """The units of one datagram, each as :meth:`receive_unit` would take it; all
        together they draw at most one reply (an error, a pong, ``who``, ``help``).

        netchat's clients send one request per datagram; a datagram packed with
        requests must not make the server send many times what it received, to the
        sender or to whoever's address it forged.
        """
        decisions: list[Decision] = []
        self._replies_left = 1
        try:
            for unit in units:
                decisions += self.receive_unit(unit, now)
        finally:
            self._replies_left = None
        return decisions

    def heard(self, now: float) -> None:
        """The client proved it is alive without sending a line (a datagram heartbeat)."""
        self._heard(now)

    def tick(self, now: float) -> list[Decision]:
        """Let time pass: deadlines, pings, summaries, the end of a rate-limit pause."""
        self._now = now
        if self.phase in _UNJOINED and now >= self._registration_deadline:
            self._registration_timed_out()
        elif self.phase in LIVE_PHASES:
            if self.paused_until is not None and now >= self.paused_until:
                self.paused_until = None
                self._handle_buffered_lines()
            if self._gap_ended_line(now) and self._may_take_line():
                self._handle_line(self._lines.take_partial())
            self._check_liveness(now)
        for code, repeats, text in self._digest.due(now):
            times = "time" if repeats == 1 else "times"
            self._send_error(Error(code, f"{text} (repeated {repeats} more {times})"))
        return self._take_decisions()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (monotonic time), or ``None``."""
        moments: list[float] = []
        if self.phase in _UNJOINED:
            moments.append(self._registration_deadline)
        if self.phase in LIVE_PHASES:
            if self.paused_until is not None:
                moments.append(self.paused_until)
            if not self._newline_seen and self._lines.held:
                moments.append(self._last_data + self.policy.line_gap)
            if self.member is not None:
                liveness = self._liveness_deadline()
                if liveness is not None:
                    moments.append(liveness)
        summary = self._digest.next_deadline()
        if summary is not None:
            moments.append(summary)
        return min(moments, default=None)

    def close(self, reason: str) -> list[Decision]:
        """The server is shutting down: after what it is owed, the client gets one
        goodbye and the session closes.

        Call :meth:`Hub.shutdown` first: it ends every member's stream with the
        shutdown notice. A client that has not joined gets it from here.
        """
        if self.phase in LIVE_PHASES:
            if self.member is None:
                self._before.append(self._encode(Shutdown(reason)))
            self._close(reason, leave_reason="shutdown")
        return self._take_decisions()

    def connection_lost(self, detail: str = "") -> None:
        """The connection died (reset, error, the transport gave up): nothing more
        can be sent. The others are told the member's connection was lost."""
        with self._lock:
            member, self.member = self.member, None
            if not self.close_reason:
                self.close_reason = f"connection lost{': ' + detail if detail else ''}"
            self._move(Move.FINISH)
        if member is not None:
            self.hub.leave(member, "lost", detail)
            self.hub.release(member)

    def finished(self) -> None:
        """The transport sent what it could and closed the connection."""
        with self._lock:
            member, self.member = self.member, None
            self._move(Move.FINISH)
        if member is not None:
            self.hub.leave(member, "quit")  # a no-op unless it left without saying so
            self.hub.release(member)

    def undeliverable(self, reason: str, detail: str) -> list[Decision]:
        """The transport can no longer deliver to the client (an rudp sender heard no
        acknowledgement for too long, or what waits for one passed ``max_queue``).

        A joined member leaves with ``reason`` (``"timeout"`` or ``"dropped"``) and
        ``detail``; nothing more is owed to the client (:attr:`abort` is set).
        """
        with self._lock:
            if self.abort or self.phase is Phase.CLOSED:
                return self._take_decisions()
            self.abort = True
            if not self.close_reason:
                self.close_reason = detail
            self._move(Move.CLOSE)
            member = self.member
        if member is not None:
            self.hub.leave(member, reason, detail)
            self.hub.release(member)
        self._decisions.append(WantsClose(self.close_reason, abort=True))
        return self._take_decisions()

    def refuse(self, error: Error) -> None:
        """Tell the client about something its transport refused (an oversized
        datagram), summarised with the session's own errors."""
        self._error(error)

    # --- output --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Every byte owed to the client, in order; it is then no longer owed.

        A member owed more than ``max_queue`` is dropped as too slow instead: the
        result is empty and :attr:`abort` is set.
        """
        member = self.member
        before, after = self._before, self._after
        if member is not None and not before and not after and not self.abort:
            # The fan-out hot path, once per member per flush: one slice of the log.
            owed = self.hub.take(member)
            if len(owed) > self._max_queue and member.present:
                self._drop_too_slow(member)
                return b""
            self._bytes_out += len(owed)
            return owed
        if self.abort or self.phase is Phase.CLOSED:
            return b""
        parts: list[bytes] = []
        while before:
            parts.append(before.popleft())
        if member is not None:
            owed = self.hub.take(member)
            if len(owed) > self._max_queue and member.present:
                self._drop_too_slow(member)
                return b""
            parts.append(owed)
        while after:
            parts.append(after.popleft())
        data = b"".join(parts)
        self._bytes_out += len(data)
        return data

    def streaming_member(self) -> Member | None:
        """The member, when all this session owes is its member's slice of the stream
        (nothing of its own queued, not dropped): what :func:`data_to_send_many` takes
        in bulk. ``None`` otherwise."""
        member = self.member
        if member is None or self._before or self._after or self.abort:
            return None
        return member

    def took(self, owed: bytes) -> bytes:
        """Account for ``owed``, taken in bulk for :meth:`streaming_member`; what to
        send (nothing if that much makes the member too slow: it is dropped)."""
        member = self.member
        if len(owed) > self._max_queue and member is not None and member.present:
            self._drop_too_slow(member)
            return b""
        self._bytes_out += len(owed)
        return owed

    def has_output(self) -> bool:
        """A cheap hint that :meth:`data_to_send` would return something."""
        if self.abort or self.phase is Phase.CLOSED:
            return False
        member = self.member
        return bool(self._before or self._after) or (
            member is not None and self.hub.may_owe(member)
        )

    def check_backlog(self) -> bool:
        """For a transport that cannot take (the client's buffer is full): drop the
        member if it is owed more than ``max_queue``. Returns False if dropped."""
        member = self.member
        if member is not None and member.present and self.hub.owed(member) > self.policy.max_queue:
            self._drop_too_slow(member)
            return False
        return not self.abort

    # --- lines -----------------------------------------------------------------------------

    def _may_take_line(self) -> bool:
        """False (and paused) when a stream client is over its rate: the next line
        waits, unread input stays in the kernel, and the sender's TCP window closes.
        A datagram client's excess is dropped in :meth:`_handle_line` instead."""
        if not self.policy.stream or self.paused_until is not None:
            return self.paused_until is None
        if self._bucket.unlimited:
            return True
        wait = self._bucket.wait_time()
        if wait > 0:
            self.paused_until = self._now + wait
            return False
        return True

    def _handle_buffered_lines(self) -> None:
        lines = self._lines
        # Without a rate limit (or a pause) there is no token to wait for: skip
        # asking, per line.
        limited = not self._bucket.unlimited
        while self.phase in LIVE_PHASES:
            if (
                (limited or self.paused_until is not None)
                and lines.has_line()
                and not self._may_take_line()
            ):
                return
            try:
                line = lines.next_line()
            except FrameTooLarge:
                self._error(Error("too-large", f"line dropped: longer than {lines.max_line} bytes"))
                continue
            if line is None:
                return
            self._handle_line(line)

    def _handle_line(self, line: bytes) -> None:
        if not line or line.isspace():
            return
        self._lines_seen += 1
        bucket = self._bucket
        if not bucket.unlimited and not bucket.try_take():  # only datagrams get here
            self.counters["rate_limited"] += 1
            limit = f"{self.policy.rate_limit:g}"
            self._error(
                Error(
                    "rate-limited", f"you are sending too fast (limit {limit}/s); message dropped"
                )
            )
            return
        if self.mode is Mode.UNKNOWN:
            self._decide_mode(line)
        if self.phase is Phase.AUTHENTICATING:
            self._authenticate(line)
        elif self.phase is Phase.REGISTERING:
            if self.mode is Mode.STRUCTURED:
                self._register_structured(line)
            else:
                self._register_plain(line)
        elif self.mode is Mode.STRUCTURED:
            self._chat_structured(line)
        else:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                self._decode_plain(line)  # says why
                return
            self._chat_plain_text(text)

    def _decide_mode(self, line: bytes) -> None:
        self.mode = Mode.PLAIN
        if line.startswith(b"{"):
            try:
                frame = decode_frame(line)
            except ProtocolError:
                return
            if isinstance(frame, Hello):
                self.mode = Mode.STRUCTURED

    def _authenticate(self, line: bytes) -> None:
        """The password, before anything else: a structured client's ``hello`` carries
        it (and its name), a plain client's line is nothing but the password."""
        if self.mode is Mode.STRUCTURED:
            frame = self._hello_from(line)
            if frame is None:
                return
            if not frame.password:
                self._error(Error("needs-password", "this chat needs a password"))
            elif self._password_accepted(frame.password):
                self._join(frame.name)
            return
        text = self._decode_plain(line)
        if text is not None and self._password_accepted(text):
            self._before.append(
                self._encode(Info("password accepted. Type your name and press Enter:"))
            )

    def _password_accepted(self, candidate: str) -> bool:
        """Check a password; a wrong one is said, counted, and paused after (closed
        after the last attempt). Never logs or repeats what was typed."""
        verifier = self.policy.password
        if verifier is not None and verifier.check(candidate):
            with self._lock:
                self._move(Move.AUTHENTICATE)
            return True
        self._wrong_passwords += 1
        attempts = self.policy.password_attempts
        left = attempts - self._wrong_passwords
        log.info("%s: wrong password (%d of %d)", self.peer, self._wrong_passwords, attempts)
        if left <= 0:
            self._send_error(Error("bad-password", f"wrong password {attempts} times; goodbye"))
            self._close(f"{plural(attempts, 'wrong password')}", leave_reason="quit")
            return False
        again = "" if self.mode is Mode.STRUCTURED else ". Type the password:"
        tries = "1 try" if left == 1 else f"{left} tries"
        self._send_error(Error("bad-password", f"wrong password ({tries} left){again}"))
        if self.policy.stream:
            # As OpenSSH does: a pause after each failure slows a guesser down.
            self.paused_until = self._now + self.policy.password_delay
        return False

    def _register_structured(self, line: bytes) -> None:
        frame = self._hello_from(line)
        if frame is not None:
            self._join(frame.name)

    def _hello_from(self, line: bytes) -> Hello | None:
        """The ``hello`` a structured client sent before joining; anything else is
        answered with an error (and ``None``)."""
        try:
            frame = decode_frame(line)
        except ProtocolError as exc:
            self._error(Error(exc.code, f"frame dropped: {exc}"))
            return None
        if not isinstance(frame, Hello):
            self._error(Error("not-joined", "join first: send a hello frame"))
            return None
        return frame

    def _register_plain(self, line: bytes) -> None:
        text = self._decode_plain(line)
        if text is None:
            return
        text = text.strip()
        prefixed = _NAME_PREFIX.fullmatch(text)
        if prefixed is not None and name_problem(prefixed.group(1)) is None:
            name, first_message = prefixed.groups()
            if self._join(name, quiet=self.policy.plain_first_line == "message"):
                self._name_prefix = f"{name}: "
                if first_message.strip():
                    self._chat_plain_text(first_message)
            elif self.policy.plain_first_line == "message":
                self._join_as_guest(text)
            return
        if self.policy.plain_first_line == "message":
            self._join_as_guest(text)
        else:
            self._join(text)

    def _join_as_guest(self, first_message: str) -> None:
        for number in range(1, len(self.hub) + 2):
            if self._join(f"guest{number}", quiet=True):
                self._chat_plain_text(first_message)
                return

    def _join(self, name: str, *, quiet: bool = False) -> bool:
        """Join as ``name``; True if joined, else the client was told why (unless quiet)."""
        wire_format = WireFormat.JSON if self.mode is Mode.STRUCTURED else WireFormat.TEXT
        if self.admission is not None:
            admission, ticket = self.admission
            try:
                admission.claim_member(ticket)
            except Rejected as exc:
                self._send_error(Error(exc.code, str(exc)))
                self._close(str(exc), leave_reason="quit")
                return False
        try:
            member = self.hub.join(name, peer=self.peer, wire_format=wire_format)
        except Rejected as exc:
            if self.admission is not None:
                self.admission[0].unclaim_member(self.admission[1])
            if not quiet:
                self._refuse_name(exc)
            return False
        with self._lock:
            if self.phase is not Phase.REGISTERING:  # closed meanwhile (shutdown)
                self.hub.leave(member, "quit")
                self.hub.release(member)
                return False
            member.cursor.notify = self.on_output
            self.member = member
            self._move(Move.JOIN)
        self._pings_sent = 0
        self._decisions.append(JoinedChat(member.name))
        return True

    def _refuse_name(self, exc: Rejected) -> None:
        error = Error(exc.code, str(exc), exc.suggestion or "")
        if self.mode is Mode.STRUCTURED or not self.policy.stream:
            self._send_error(error)
        else:
            self._before.append(self._encode(Error(exc.code, f"{exc}. Type another name:")))
            self.hub.report_error(None, self.peer, error)

    def _chat_structured(self, line: bytes) -> None:
        try:
            frame = decode_frame(line)
        except ProtocolError as exc:
            self._error(Error(exc.code, f"frame dropped: {exc}"))
            return
        self._request(frame)

    def _chat_plain_text(self, text: str) -> None:
        member = self.member
        if ": " in text:  # a lab client names itself every time
            if member is not None and text.startswith(member.name + ": "):
                text = text[len(member.name) + 2 :]
            elif self._name_prefix and text.startswith(self._name_prefix):
                text = text[len(self._name_prefix) :]
        if not text or text.isspace():
            return
        if text[0] == "/":
            command = split_command(text)
            if command is not None and command[0] == "stats":
                if self._may_reply():
                    self._send(Info(self._stats_text()))
                return
        try:
            frame = parse_input(text)
        except CommandError as exc:
            self._error(Error("bad-command", str(exc)))
            return
        self._request(frame)

    def _request(self, frame: Frame) -> None:
        member = self.member
        if member is None:
            return
        if isinstance(frame, Quit):
            self._quit(frame.reason)
            return
        if isinstance(frame, _REPLY_REQUESTS) and not self._may_reply():
            return
        error = self.hub.handle(member, frame)
        if error is not None:
            self._error(error)
        else:
            self._said += 1

    def _decode_plain(self, line: bytes) -> str | None:
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            what = {Phase.AUTHENTICATING: "that password", Phase.REGISTERING: "that name"}.get(
                self.phase, "line dropped:"
            )
            self._error(
                Error("bad-utf8", f"{what} not valid UTF-8 (set your terminal to UTF-8)"),
            )
            return None

    # --- leaving -----------------------------------------------------------------------------

    def _quit(self, reason: str) -> None:
        member = self.member
        detail = sanitize_text(reason).strip()[:200]
        if member is not None and self.mode is Mode.PLAIN:
            # nc users see a goodbye, then the connection closes without them pressing
            # Enter again.
            self._after.append(self._encode(Info(f"Goodbye, {member.name}!")))
        self._close("quit", leave_reason="quit", detail=detail)

    def _close(self, reason: str, *, leave_reason: str, detail: str = "") -> None:
        with self._lock:
            if self.phase is Phase.CLOSED:
                return
            if not self.close_reason:
                self.close_reason = reason
            self._move(Move.CLOSE)
            member = self.member
        if member is not None:
            self.hub.leave(member, leave_reason, detail)
        self._decisions.append(WantsClose(self.close_reason, self.abort))

    def _drop_too_slow(self, member: Member) -> None:
        with self._lock:
            if self.abort:
                return
            self.abort = True
            if not self.close_reason:
                self.close_reason = "too slow: outbound backlog over its limit"
            self._move(Move.CLOSE)
        self.hub.leave(member, "dropped", "too slow")
        self.hub.release(member)

    def _registration_timed_out(self) -> None:
        wanted = "password" if self.phase is Phase.AUTHENTICATING else "name"
        if not self._bytes_in:
            truth = f"no {wanted} received in time"
        elif not self._lines_seen:
            bytes_ = "byte" if self._bytes_in == 1 else "bytes"
            truth = f"received {self._bytes_in} {bytes_} but no end of line"
        else:
            truth = f"no valid {wanted} received in time"
        log.info("%s: registration timed out: %s", self.peer, truth)
        self._send_error(Error("registration-timeout", f"{truth}; goodbye"))
        self._close(f"registration timeout: {truth}", leave_reason="quit")

    # --- liveness ------------------------------------------------------------------------------

    def _heard(self, now: float) -> None:
        self._last_heard = now
        self._pings_sent = 0

    def _liveness_deadline(self) -> float | None:
        policy = self.policy
        if policy.silence_timeout is not None:
            return self._last_heard + policy.silence_timeout
        if policy.ping_interval is not None and self.mode is Mode.STRUCTURED:
            return self._last_heard + policy.ping_interval * (self._pings_sent + 1)
        return None

    def _check_liveness(self, now: float) -> None:
        member = self.member
        deadline = self._liveness_deadline()
        if member is None or deadline is None or now < deadline:
            return
        if self.policy.silence_timeout is not None or self._pings_sent >= MISSED_PINGS_ALLOWED:
            self._close("timed out", leave_reason="timeout")
            return
        self._pings_sent += 1
        self.hub.send(member, Ping(str(self._pings_sent)))

    def _gap_ended_line(self, now: float) -> bool:
        return (
            not self._newline_seen
            and self.mode is not Mode.STRUCTURED
            and self._lines.held > 0
            and now - self._last_data >= self.policy.line_gap
        )

    # --- replies ---------------------------------------------------------------------------------

    def _may_reply(self) -> bool:
        """Whether one more reply fits the datagram's budget; counts it if not."""
        if self._replies_left is None:
            return True
        if self._replies_left <= 0:
            self.counters["replies_suppressed"] += 1
            return False
        self._replies_left -= 1
        return True

    def _error(self, error: Error) -> None:
        if not self._may_reply():
            return
        if self._digest.admit(error.code, error.text, self._now):
            self._send_error(error)
        else:
            self.counters["errors_summarised"] += 1

    def _send_error(self, error: Error) -> None:
        member = self.member
        if member is not None and member.present:
            self.hub.report_error(member, self.peer, error)
        else:
            self._before.append(self._encode(error))
            self.hub.report_error(None, self.peer, error)

    def _send(self, frame: Frame) -> None:
        member = self.member
        if member is not None:
            self.hub.send(member, frame)
        else:
            self._before.append(self._encode(frame))

    def _encode(self, frame: Frame) -> bytes:
        out = Outbound(frame, self.hub.now())
        return out.json if self.mode is Mode.STRUCTURED else out.text

    def _stats_text(self) -> str:
        minutes, seconds = divmod(int(self._now - self._started), 60)
        return (
            f"stats: connected {minutes}m{seconds:02d}s, you sent {plural(self._said, 'message')};"
            f" {self._bytes_in} bytes received from you, {self._bytes_out} bytes sent to you"
        )

    # --- state -----------------------------------------------------------------------------------

    def _move(self, move: Move) -> None:
        """Change phase by the table (the caller holds the lock)."""
        try:
            self.phase = PHASE_MOVES[(self.phase, move)]
        except KeyError:
            raise LocalProtocolError(
                f"can't {move.value} when mode={self.mode.value} and phase={self.phase.value}"
            ) from None

    def _take_decisions(self) -> list[Decision]:
        if not self._decisions:
            return []
        decisions, self._decisions = self._decisions, []
        return decisions

    def __repr__(self) -> str:
        name = self.member.name if self.member is not None else "-"
        return f"<ServerSession {self.peer} {name} mode={self.mode.value} phase={self.phase.value}>"

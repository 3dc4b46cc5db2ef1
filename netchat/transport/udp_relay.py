"""The UDP relay server: one socket and one thread pumping datagrams through sessions.

Strategy
--------
The relay learns each member's address from the datagrams it receives, but only
after a join handshake has proved that the sender can receive at that address (a
stateless cookie, see :mod:`netchat.protocol.datagram`). Until then a source gets
nothing bigger than what it sent, never chat traffic, and creates no state: its
replies are rate-limited in a fixed-size table.

With ``accept_plain`` the relay also takes the lab's own UDP clients, which send
``NAME: text`` as plain UTF-8 datagrams and print whatever comes back: a plain
datagram from a new source makes it a member at once (named from the prefix, or
``guestN``), and it gets the chat as readable lines, one datagram each. That skips
the cookie, so a spoofed source could aim the chat at a victim: plain members are
only taken from loopback, private and link-local addresses unless
``accept_plain_anywhere`` widens it, they are rate-limited like everyone, and they
expire after :data:`PLAIN_SILENCE` seconds without a word. Without the option a
plain datagram gets at most a short hint (never bigger than itself) and the log
says once how to let such clients in.

A validated member is a :class:`~netchat.session.ServerSession` (the same one TCP
uses, in its datagram policy) plus the datagram layer's state: the address, the
replay window for its sequence numbers, the next number of ours and its
:class:`~netchat.protocol.envelope.Envelope`. In a chat with a password every
member's datagrams are sealed and opened at the socket edge by its envelope, and a
stranger's join goes through :class:`~netchat.protocol.envelope.RelayKeys` (the
relay still keeps nothing for a source until its cookie verifies, and nothing for a
HELLO that does not prove the password); anything that does not open is dropped
and counted (``forged``, ``replayed``, ``bad_password``), never shown. The relay
hands every unit of a DATA datagram to the session and sends what the session owes
in as few datagrams as the size limit allows
(:func:`~netchat.protocol.datagram.pack_data`); the hub's stream log keeps a
broadcast's JSON once for everyone, so per member the relay only prepends a header.

One thread does everything: it drains the datagrams waiting on the socket, then
flushes every member once, and between batches ticks the sessions (timeouts,
summaries) and the hub (gathered presence notices). Nothing is shared between
threads but the stop flag, so counters and tables need no lock. The socket is
non-blocking: a full send buffer drops a datagram (which the member reports as
lost) instead of stalling the relay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..admission import Admission
from ..errors import AuthenticationFailed, Rejected, RemoteProtocolError, ReplayedDatagram
from ..hub import Hub
from ..protocol import datagram as dg
from ..protocol.envelope import CLEAR, Envelope, RelayKeys, is_layout
from ..protocol.frames import Error, Hello, decode_frame, encode_frame
from ..protocol.limits import MAX_DATAGRAM_BYTES
from ..protocol.seal import SEALED_VERSION, HelloFields
from ..session import JoinedChat, Phase, ServerSession, SessionPolicy
from .base import ServerConfig
from .registry import Proto
from .waiting import wait_readable

log = logging.getLogger("netchat.udp")

Address = tuple[str, int]

#: Heartbeat interval clients are told to use, unless the config asks for less.
DEFAULT_HEARTBEAT = 5.0
#: A member silent for this many heartbeat intervals is expired.
MISSED_HEARTBEATS = 3
#: Most datagrams taken off the socket before the members are flushed.
RECEIVE_BATCH = 64
#: Seconds a plain member may stay silent (it sends no heartbeats: only its lines).
PLAIN_SILENCE = 600.0
#: Least seconds between two PONGs a member's dropped DATA draws (see _nudge).
NUDGE_INTERVAL = 1.0
#: What a plain datagram gets back when plain clients are not accepted.
PLAIN_HINT = b"! netchat: plain clients are off (--accept-plain)\n"
#: Payload room in one DATA datagram, and its header.
_ROOM = MAX_DATAGRAM_BYTES - dg.DATA_HEADER_BYTES
_DATA_HEADER = dg.HEADERS[dg.Kind.DATA]


def format_address(address: Address) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wrong_proto(served: str, spoken: str) -> Error:
    """The refusal of a client speaking ``spoken`` by a relay serving ``served``."""
    known = spoken in {proto.value for proto in Proto}  # never echo arbitrary text
    return Error(
        "wrong-proto",
        f"this server speaks --proto {served}"
        + (f", not {spoken}" if known else "")
        + f": join with netchat --proto {served} client",
    )


def plain_source_allowed(host: str, *, anywhere: bool) -> bool:
    """Whether a plain client at ``host`` may join: loopback, private and link-local
    addresses (a classroom's LAN), or any with ``anywhere``."""
    if anywhere:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


class UdpMember:
    """A validated address: its session and the datagram layer's state for it."""

    __slots__ = (
        "accept",
        "address",
        "bye_sent",
        "envelope",
        "ephemeral",
        "name",
        "needs_accept",
        "next_seq",
        "nudged_at",
        "plain",
        "pong",
        "replay",
        "session",
    )

    def __init__(self, address: Address, session: ServerSession, *, plain: bool = False) -> None:
        self.address = address
        self.session = session
        #: a lab client speaking plain text datagrams, not netchat's datagram layer
        self.plain = plain
        self.name = session.member.name if session.member is not None else ""
        self.next_seq = 1
        self.replay = dg.ReplayWindow()
        self.needs_accept = not plain
        self.pong: int | None = None  # the nonce of a PING to answer
        self.nudged_at = float("-inf")  # when a dropped DATA last drew a PONG
        self.bye_sent = False
        #: the ACCEPT, kept to be resent as it is if the client's HELLO comes again
        self.accept = b""
        #: how its datagrams travel (sealed in a chat with a password)
        self.envelope: Envelope = CLEAR
        #: the client ephemeral of its sealed HELLO (a retry repeats it)
        self.ephemeral = b""


class UdpRelayServer:
    """A :class:`~netchat.transport.base.ServerTransport` over UDP, bound on construction.

    Args:
        hub: the chat the members join.
        config: address, limits (``max_clients``, ``max_per_address``,
            ``max_queue``, ``rate_limit``/``burst``) and ``ping_interval``.
        heartbeat_interval: seconds between client heartbeats; by default
            ``min(config.ping_interval, 5)``. A member silent for three intervals is
            expired; tests pass a small value.
        cookie_lifetime: seconds per cookie time bucket (a cookie lives 1-2 buckets).
        clock: monotonic time source.

    Raises:
        OSError: the address cannot be bound.
    """

    #: The ``--proto`` this relay serves; a hello naming another one is refused.
    PROTO = "udp"

    def __init__(
        self,
        hub: Hub,
        config: ServerConfig,
        *,
        heartbeat_interval: float | None = None,
        cookie_lifetime: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub = hub
        self.config = config
        self.heartbeat_interval = (
            heartbeat_interval
            if heartbeat_interval is not None
            else min(config.ping_interval, DEFAULT_HEARTBEAT)
        )
        self.policy = SessionPolicy(
            server_name=config.server_name,
            stream=False,
            max_queue=config.max_queue,
            rate_limit=config.rate_limit,
            burst=config.burst,
            registration_timeout=config.registration_timeout,
            ping_interval=None,  # clients send heartbeats; silence is what counts
            silence_timeout=MISSED_HEARTBEATS * self.heartbeat_interval,
        )
        self.plain_policy = dataclasses.replace(
            self.policy, silence_timeout=PLAIN_SILENCE, plain_first_line="message"
        )
        self.admission = Admission(config.max_clients, config.max_per_address, config.max_pending)
        #: a chat with a password: joins prove it, every datagram is sealed
        self.keys = RelayKeys(config.password) if config.password else None
        sealing = self.keys.overhead if self.keys is not None else 0
        self._room = _ROOM - sealing
        self._plain_knock_logged = False
        self._clock = clock
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
            self._sock.bind((config.host, config.port))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._wake_r, self._wake_w = socket.socketpair()
        self._cookies = dg.CookieJar(cookie_lifetime)
        self._limiter = dg.SourceLimiter()
        self._members: dict[Address, UdpMember] = {}
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._serving_thread: threading.Thread | None = None
        self._shutdown_reason = ""
        self._closed = False
        self._next_tick = 0.0
        self.counters: Counter[str] = Counter()

    # --- ServerTransport ------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def serve_forever(self) -> None:
        """Receive and relay until :meth:`shutdown`; then say goodbye and close."""
        self._serving_thread = threading.current_thread()
        try:
            while not self._stopping.is_set():
                self._serve_once()
        finally:
            self._stopping.set()
            self._finish()

    def shutdown(self, reason: str = "") -> None:
        """Stop serving: members get a ``shutdown`` frame and a BYE.

        Safe from a signal handler on the serving thread (it only sets a flag there);
        from any other thread it waits, bounded, for the server to finish.
        """
        self._shutdown_reason = reason
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._serving_thread is None:
            self._finish()
        elif threading.current_thread() is not self._serving_thread:
            # (On the serving thread, i.e. in a signal handler, waiting would never end.)
            self._stopped.wait(timeout=5)

    def stats(self) -> dict[str, int]:
        """Server counters: datagrams and bytes in and out, units (frames) sent,
        members, cookies issued, notices, bad datagrams, rate-limited frames, …"""
        totals = Counter(self.counters)
        for member in list(self._members.values()):
            totals.update(member.session.counters)
        return {**totals, "sessions": len(self._members)}

    # --- the one thread ------------------------------------------------------------------

    def _next_wakeup(self) -> float:
        """When the loop must run though nothing arrives (a subclass adds its timers)."""
        return self._next_tick

    def _serve_once(self) -> None:
        now = self._clock()
        try:
            readable = wait_readable(
                [self._sock, self._wake_r], max(0.0, min(self._next_wakeup() - now, 1.0))
            )
        except (OSError, ValueError):
            self._stopping.set()
            return
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(64)
        if self._sock in readable:
            self._receive_batch()
        now = self._clock()
        if now >= self._next_tick:
            self._tick(now)
        self._flush()

    def _tick(self, now: float) -> None:
        self._next_tick = now + max(0.01, min(1.0, self.heartbeat_interval / 4))
        for member in list(self._members.values()):
            before = member.session.phase
            member.session.tick(now)
            if before is Phase.JOINED and member.session.phase is not Phase.JOINED:
                self.counters["expired"] += 1
        self.hub.tick(now)
        due = self.hub.presence_due()
        if due is not None:
            self._next_tick = min(self._next_tick, due)

    def _receive_batch(self) -> None:
        for _ in range(RECEIVE_BATCH):
            try:
                data, address = self._sock.recvfrom(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                self.counters["receive_errors"] += 1
                log.debug("recvfrom failed: %s", exc)
                break
            try:
                self._on_datagram(data, address[:2], self._clock())
            except Exception:
                # One bad datagram (or a bug it triggers) must not take the relay down.
                self.counters["handler_errors"] += 1
                log.exception("error handling a datagram from %s", address)

    def _on_datagram(self, data: bytes, address: Address, now: float) -> None:
        self.counters["datagrams_in"] += 1
        self.counters["bytes_in"] += len(data)
        member = self._members.get(address)
        if member is not None and member.plain:
            self._from_plain_member(member, data, now)
            return
        if self.keys is not None:
            if member is None:
                self._from_sealed_stranger(self.keys, data, address, now)
                return
            opened = self._open_sealed(member, data)
            if opened is None:
                return
            data = opened
        try:
            datagram = dg.decode_datagram(data)
        except RemoteProtocolError as exc:
            self.counters["bad_datagrams"] += 1
            if member is not None and exc.code == "too-large":
                member.session.heard(now)
                member.session.refuse(Error("too-large", str(exc)))
            elif exc.code == "magic" and member is None:
                self._plain_knock(data, address, now)
            elif exc.code != "magic":
                self._notice(address, exc.code, len(data), now)
            return
        if member is None:
            self._from_stranger(datagram, address, len(data), now)
        else:
            member.session.heard(now)
            self._from_member(member, datagram, now)

    # --- plain clients (the lab's own UDP programs) --------------------------------------

    def _plain_knock(self, data: bytes, address: Address, now: float) -> None:
        """A datagram that is not netchat, from a source that is not a member."""
        if self.config.accept_plain and plain_source_allowed(
            address[0], anywhere=self.config.accept_plain_anywhere
        ):
            self._join_plain(data, address, now)
            return
        self.counters["plain_refused"] += 1
        if not self._plain_knock_logged:
            self._plain_knock_logged = True
            why = (
                "start the server with --accept-plain to let them in"
                if not self.config.accept_plain
                else f"{address[0]} is not a local address; --accept-plain-anywhere takes any"
            )
            log.warning("plain UDP clients are knocking (first from %s): %s", address[0], why)
        self._reply_stateless(address, PLAIN_HINT, len(data), now)

    def _join_plain(self, data: bytes, address: Address, now: float) -> None:
        try:
            ticket = self.admission.admit(address[0])
        except Rejected as exc:
            self.counters["rejects"] += 1
            self._reply_stateless(address, f"! {exc}\n".encode(), len(data), now)
            return
        session = ServerSession(
            self.hub,
            self.plain_policy,
            peer=format_address(address),
            now=now,
            admission=(self.admission, ticket),
        )
        member = UdpMember(address, session, plain=True)
        self._members[address] = member
        self.counters["plain_joins"] += 1
        self._from_plain_member(member, data, now)
        if session.member is None:  # nothing it said could make it a member
            self._end(member)
        else:
            member.name = session.member.name

    def _from_plain_member(self, member: UdpMember, data: bytes, now: float) -> None:
        member.session.receive_datagram(data.splitlines() or [b""], now)

    def _flush_plain(self, member: UdpMember) -> tuple[int, int]:
        """A plain member's lines, one datagram each; the datagrams and bytes sent."""
        session = member.session
        data = session.data_to_send()
        sent = sent_bytes = 0
        for line in data.splitlines():
            for start in range(0, max(len(line), 1), MAX_DATAGRAM_BYTES - 1):
                datagram = line[start : start + MAX_DATAGRAM_BYTES - 1] + b"\n"
                if self._send_counted(datagram, member.address):
                    sent += 1
                    sent_bytes += len(datagram)
        if session.abort or session.phase is not Phase.JOINED:
            self._end(member)
        return sent, sent_bytes

    def _reply_stateless(self, address: Address, reply: bytes, received: int, now: float) -> None:
        """Send ``reply`` to an unvalidated source: never larger than what it sent us,
        and within its (fixed-table) rate limit."""
        if len(reply) > received or not self._limiter.allow(address[0], now):
            self.counters["replies_suppressed"] += 1
            return
        self._send(reply, address)

    def _notice(self, address: Address, code: str, received: int, now: float) -> None:
        self.counters["notices"] += 1
        self._reply_stateless(address, dg.encode_notice(code), received, now)

    def _from_stranger(
        self, datagram: dg.Datagram, address: Address, received: int, now: float
    ) -> None:
        if isinstance(datagram, dg.Hello):
            host, port = address
            if datagram.payload and self._cookies.verify(datagram.cookie, host, port, now):
                self._join(address, datagram.payload, now)
            else:
                self.counters["cookies"] += 1
                cookie = self._cookies.issue(host, port, now)
                self._reply_stateless(address, dg.encode_cookie(cookie), received, now)
        elif isinstance(datagram, (dg.Data, dg.Ping)):
            self._notice(address, "not-joined", received, now)
        else:  # a BYE from a forgotten member, or a server-bound kind: nothing to say
            self.counters["bad_datagrams"] += 1

    # --- a chat with a password: sealed at the edge ---------------------------------------

    def _open_sealed(self, member: UdpMember, data: bytes) -> bytes | None:
        """A member's datagram opened (layout 1), or None: dropped and counted."""
        if is_layout(data, SEALED_VERSION, dg.Kind.HELLO):
            # Its HELLO again: our ACCEPT was lost. The same bytes go back (they are
            # sealed under the session's keys); any other HELLO is not this member's.
            try:
                same = RelayKeys.hello_fields(data).client_ephemeral == member.ephemeral
            except RemoteProtocolError:
                same = False
            if same:
                member.needs_accept = True
            else:
                self.counters["bad_datagrams"] += 1
            return None
        try:
            return member.envelope.open(data)
        except AuthenticationFailed:
            self.counters["forged"] += 1
        except ReplayedDatagram:
            self.counters["replayed"] += 1
        except RemoteProtocolError:
            self.counters["bad_datagrams"] += 1
        return None

    def _from_sealed_stranger(
        self, keys: RelayKeys, data: bytes, address: Address, now: float
    ) -> None:
        """A datagram from a source that has not joined a chat with a password: a
        cookie request, a sealed HELLO, or something we can only say a word about."""
        host, port = address
        received = len(data)
        if not is_layout(data, SEALED_VERSION):
            self.counters["bad_datagrams"] += 1
            if is_layout(data, dg.DATAGRAM_VERSION):
                self._notice(address, "needs-password", received, now)  # netchat, no password
            elif data[:2] == dg.MAGIC:
                self._notice(address, "version", received, now)
            else:
                self._plain_knock(data, address, now)
            return
        if keys.is_cookie_request(data):
            self.counters["cookies"] += 1
            cookie = self._cookies.issue(host, port, now)
            self._reply_stateless(address, keys.cookie(cookie), received, now)
            return
        try:
            fields = keys.hello_fields(data)
        except RemoteProtocolError as exc:
            # A sealed DATA or PING from a member we no longer know (we restarted).
            self.counters["bad_datagrams"] += 1
            lost = data[3] in (dg.Kind.DATA, dg.Kind.PING)
            self._notice(address, "not-joined" if lost else exc.code, received, now)
            return
        if not self._cookies.verify(fields.cookie, host, port, now):
            self.counters["cookies"] += 1
            cookie = self._cookies.issue(host, port, now)
            self._reply_stateless(address, keys.cookie(cookie), received, now)
            return
        try:
            plain = keys.open_hello(data, fields, now)
            hello = dg.decode_datagram(plain)
        except AuthenticationFailed:
            self.counters["bad_password"] += 1
            log.debug("%s: a join with the wrong password", format_address(address))
            self._notice(address, "bad-password", received, now)
            return
        except ReplayedDatagram:
            self.counters["replayed"] += 1
            return
        except RemoteProtocolError:
            self.counters["bad_datagrams"] += 1
            return
        assert isinstance(hello, dg.Hello)
        self._join(address, hello.payload, now, fields)

    # --- joining -------------------------------------------------------------------------

    def _join(
        self, address: Address, payload: bytes, now: float, sealed: HelloFields | None = None
    ) -> None:
        """A cookie-validated HELLO: the address is proven, so a REJECT may be sent
        (sealed, when the HELLO was)."""
        try:
            hello = decode_frame(payload)
        except RemoteProtocolError as exc:
            self._reject(address, Error(exc.code, f"bad hello: {exc}"), sealed)
            return
        if not isinstance(hello, Hello):
            self._reject(address, Error("not-joined", "join first: send a hello frame"), sealed)
            return
        if (hello.proto or "udp") != self.PROTO:  # "": a udp client older than the field
            self._reject(address, wrong_proto(self.PROTO, hello.proto or "udp"), sealed)
            return
        try:
            ticket = self.admission.admit(address[0])
        except Rejected as exc:
            self._reject(address, Error(exc.code, str(exc)), sealed)
            return
        session = ServerSession(
            self.hub,
            self.policy,
            peer=format_address(address),
            now=now,
            admission=(self.admission, ticket),
        )
        decisions = session.receive_unit(payload, now)
        if not any(isinstance(decision, JoinedChat) for decision in decisions):
            refusal = session.data_to_send().split(b"\n", 1)[0]
            session.finished()
            self.admission.release(ticket)
            try:
                error = decode_frame(refusal)
            except RemoteProtocolError:
                error = Error("rejected", "the join was refused")
            self._reject(
                address, error if isinstance(error, Error) else Error("rejected", ""), sealed
            )
            return
        member = self._new_member(address, session)
        member.accept = dg.encode_accept(1, int(self.heartbeat_interval * 1000), member.name)
        if sealed is not None and self.keys is not None:
            member.accept, member.envelope = self.keys.answer(sealed, member.accept)
            member.ephemeral = sealed.client_ephemeral
        self._members[address] = member
        self.counters["joins"] += 1

    def _new_member(self, address: Address, session: ServerSession) -> UdpMember:
        """The record of a member that just joined (a subclass adds its own state)."""
        return UdpMember(address, session)

    def _reject(self, address: Address, error: Error, sealed: HelloFields | None = None) -> None:
        self.counters["rejects"] += 1
        body = encode_frame(Error(error.code, error.text[:300], error.suggestion))
        reply = dg.encode_reject(body)
        if sealed is not None and self.keys is not None:
            reply, _ = self.keys.answer(sealed, reply)
        self._send(reply, address)

    def _from_member(self, member: UdpMember, datagram: dg.Datagram, now: float) -> None:
        session = member.session
        if isinstance(datagram, dg.Data):
            replayed = member.replay.duplicates
            if not member.replay.check(datagram.seq, len(datagram.units)):
                self.counters["duplicates_in"] += 1  # or an implausible sequence number
                if member.replay.duplicates > replayed:
                    self._nudge(member, now)
                return
            if datagram.more or datagram.cont:
                session.refuse(
                    Error(
                        "too-large",
                        f"a message must fit in one datagram of {MAX_DATAGRAM_BYTES} bytes",
                    )
                )
                return
            session.receive_datagram(datagram.units, now)
        elif isinstance(datagram, dg.Ping):
            member.pong = datagram.nonce
        elif isinstance(datagram, dg.Hello):
            member.needs_accept = True  # our ACCEPT was lost and the client retried
        elif isinstance(datagram, dg.Bye):
            session.receive_data(b"", now)  # the client left
        else:
            self.counters["bad_datagrams"] += 1

    def _nudge(self, member: UdpMember, now: float) -> None:
        """A DATA from ``member``'s address fell behind its replay window: tell the
        address at once (a PONG carries the highest number we accepted), at most once
        a second. If someone forged that address and ran the numbers ahead, only the
        real member receives this, and its client sees numbers it never sent
        (issue 6 #11)."""
        if member.pong is None and now - member.nudged_at >= NUDGE_INTERVAL:
            member.nudged_at = now
            member.pong = 0  # not a nonce the client chose: it only reads the numbers
            self.counters["nudges"] += 1

    # --- sending ----------------------------------------------------------------------

    def _flush(self) -> None:
        """Send every member what it is owed, in order, packed into few datagrams."""
        sendto = self._sock.sendto
        pack_header = _DATA_HEADER.pack
        room = self._room
        sealed = self.keys is not None
        datagrams_out = bytes_out = units_out = 0
        for member in list(self._members.values()):
            session = member.session
            if member.plain:
                if session.has_output() or session.phase is not Phase.JOINED:
                    sent, sent_bytes = self._flush_plain(member)
                    datagrams_out += sent
                    bytes_out += sent_bytes
                continue
            if member.needs_accept or member.pong is not None or session.phase is not Phase.JOINED:
                sent, sent_bytes, units = self._flush_member(member)
                datagrams_out += sent
                bytes_out += sent_bytes
                units_out += units
                continue
            if not session.has_output():
                continue
            data = session.data_to_send()
            if session.abort:
                self._end(member)
                continue
            units = data.count(b"\n")
            if len(data) > room or not units:
                sent, sent_bytes, units = self._flush_member(member, data)
                datagrams_out += sent
                bytes_out += sent_bytes
                units_out += units
                continue
            # The fan-out hot path: what a member is owed fits one datagram.
            seq = member.next_seq
            member.next_seq = seq + units
            datagram = pack_header(dg.MAGIC, dg.DATAGRAM_VERSION, dg.Kind.DATA, seq, 0) + data
            if sealed:
                datagram = member.envelope.seal(datagram)
            try:
                sendto(datagram, member.address)
            except OSError as exc:
                self._count_send_error(exc, member.address)
            else:
                datagrams_out += 1
                bytes_out += len(datagram)
            units_out += units
        counters = self.counters
        counters["datagrams_out"] += datagrams_out
        counters["bytes_out"] += bytes_out
        counters["units_out"] += units_out

    def _flush_member(self, member: UdpMember, data: bytes | None = None) -> tuple[int, int, int]:
        """The general case: ACCEPT, frames (batched or fragmented), PONG, BYE, in that
        order. Returns datagrams, bytes and units sent."""
        session = member.session
        if data is None:
            data = session.data_to_send()
        envelope = member.envelope
        datagrams: list[bytes] = []
        if member.needs_accept:
            member.needs_accept = False
            datagrams.append(member.accept)  # sealed already in a chat with a password
        units = 0
        plain: list[bytes] = []
        if data and not session.abort:
            frames = [line + b"\n" for line in data.split(b"\n")[:-1]]
            units = len(frames)
            room = MAX_DATAGRAM_BYTES - envelope.overhead
            packed, member.next_seq = dg.pack_data(member.next_seq, frames, room)
            plain += packed
        if member.pong is not None:
            plain.append(dg.encode_pong(member.pong, member.next_seq, member.replay.highest))
            member.pong = None
        if session.phase is not Phase.JOINED:
            plain.append(dg.encode_bye(session.close_reason or "closed"))
            member.bye_sent = True
        datagrams += [envelope.seal(datagram) for datagram in plain]
        sent = sent_bytes = 0
        for datagram in datagrams:
            if self._send_counted(datagram, member.address):
                sent += 1
                sent_bytes += len(datagram)
        if member.bye_sent:
            self._end(member)
        return sent, sent_bytes, units

    def _end(self, member: UdpMember) -> None:
        if self._members.get(member.address) is member:
            del self._members[member.address]
            self.counters.update(member.session.counters)
        member.session.finished()
        ticket = member.session.admission
        if ticket is not None:
            self.admission.release(ticket[1])

    def _count_send_error(self, exc: OSError, address: Address) -> None:
        if isinstance(exc, BlockingIOError):
            self.counters["send_dropped"] += 1  # the member will report it as lost
        else:
            self.counters["send_errors"] += 1
            log.debug("sendto %s failed: %s", address, exc)

    def _send_counted(self, datagram: bytes, address: Address) -> bool:
        try:
            self._sock.sendto(datagram, address)
        except OSError as exc:
            self._count_send_error(exc, address)
            return False
        return True

    def _send(self, datagram: bytes, address: Address) -> None:
        if self._send_counted(datagram, address):
            self.counters["datagrams_out"] += 1
            self.counters["bytes_out"] += len(datagram)

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.hub.shutdown(self._shutdown_reason)
            for member in list(self._members.values()):
                member.session.close("server shutting down")
            self._flush()
        finally:
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()
            self._stopped.set()

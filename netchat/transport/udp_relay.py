"""The UDP relay server: one socket, a receive thread and a housekeeping thread.

Strategy
--------
The relay learns each peer's address from the datagrams it receives, but only
after a join handshake has proved that the sender can receive at that address (a
stateless cookie, see :mod:`netchat.protocol.datagram`). Until then a source gets
nothing bigger than what it sent, never chat traffic, and creates no state: its
replies are rate-limited in a fixed-size table. Validated peers become
:class:`UdpSession` objects, the hub's view of a connection.

Sending is decoupled from routing exactly as on TCP: the hub calls
:meth:`UdpSession.deliver` under its lock, which only appends to the session's
outbox. The receive thread drains every datagram already waiting on the socket,
hands them to the hub, and then flushes all outboxes once. So under load each
peer's backlog is packed into as few datagrams as the size limit allows
(:func:`~netchat.protocol.datagram.pack_data`), in order, and the JSON of a
broadcast frame is encoded once for all peers. All sending happens under one lock,
so each peer's sequence numbers leave in order; the socket is non-blocking, so a
full send buffer drops a datagram (which the peer reports as lost) instead of
stalling the relay.

The housekeeping thread expires peers whose heartbeats stopped (telling the others
``* bob timed out``) and flushes what that produced.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..errors import Rejected, RemoteProtocolError
from ..hub import Hub, Outbound
from ..protocol import datagram as dg
from ..protocol.frames import (
    Act,
    Error,
    Hello,
    Nick,
    Private,
    Say,
    decode_frame,
    encode_frame,
)
from ..protocol.limits import MAX_DATAGRAM_BYTES
from ..protocol.ratelimit import TokenBucket
from .base import ServerConfig
from .waiting import wait_readable

log = logging.getLogger("netchat.udp")

Address = tuple[str, int]

#: Heartbeat interval clients are told to use, unless the config asks for less.
DEFAULT_HEARTBEAT = 5.0
#: A peer silent for this many heartbeat intervals is expired.
MISSED_HEARTBEATS = 3
#: Most datagrams taken off the socket before the outboxes are flushed.
RECEIVE_BATCH = 64
#: Seconds between two "you are sending too fast" errors to one peer.
RATE_WARNING_INTERVAL = 1.0
#: Payload room in one DATA datagram, and its header.
_ROOM = MAX_DATAGRAM_BYTES - dg.DATA_HEADER_BYTES
_DATA_HEADER = dg.HEADERS[dg.Kind.DATA]
#: Frames that cost the other users something, and so count against ``rate_limit``.
_RATE_LIMITED = (Say, Act, Private, Nick)


class UdpSession:
    """One validated peer: the :class:`~netchat.hub.Session` the hub sees."""

    __slots__ = (
        "_server",
        "address",
        "bucket",
        "closing",
        "control",
        "dirty",
        "ended",
        "last_heard",
        "needs_accept",
        "next_seq",
        "pending",
        "pong_nonce",
        "queued_bytes",
        "rate_warned_at",
        "replay",
        "welcome_name",
    )

    def __init__(self, server: UdpRelayServer, address: Address, now: float) -> None:
        self._server = server
        self.address = address
        self.last_heard = now
        self.next_seq = 1
        self.pending: list[Outbound] = []
        self.queued_bytes = 0
        self.dirty = False
        self.needs_accept = True
        self.pong_nonce: int | None = None
        self.control = True  # something besides frames is due (ACCEPT, PONG, BYE)
        self.closing: str | None = None
        self.ended = False
        self.welcome_name = ""
        self.replay = dg.ReplayWindow()
        config = server.config
        self.bucket = TokenBucket(config.rate_limit, config.burst)
        self.rate_warned_at = -RATE_WARNING_INTERVAL

    @property
    def peer(self) -> str:
        host, port = self.address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def deliver(self, out: Outbound) -> bool:
        # Runs once per member per broadcast, under the hub's lock: only an enqueue.
        size = len(out.json)  # encoded once per frame, whatever the number of members
        server = self._server
        with server._outbox_lock:
            if self.closing is not None:
                return True
            if self.queued_bytes + size > server.config.max_queue:
                return False
            self.pending.append(out)
            self.queued_bytes += size
            if not self.dirty:
                self.dirty = True
                server._dirty.append(self)
        return True

    def close(self, reason: str) -> None:
        self._server._close_session(self, reason)


class UdpRelayServer:
    """A :class:`~netchat.transport.base.ServerTransport` over UDP, bound on construction.

    Args:
        hub: the chat the peers join.
        config: address, limits (``max_clients``, ``max_per_address``,
            ``max_queue``, ``rate_limit``/``burst``) and ``ping_interval``.
        heartbeat_interval: seconds between client heartbeats; by default
            ``min(config.ping_interval, 5)``. A peer silent for three intervals is
            expired; tests pass a small value.
        cookie_lifetime: seconds per cookie time bucket (a cookie lives 1-2 buckets).
        clock: monotonic time source.

    Raises:
        OSError: the address cannot be bound.
    """

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
        self.expiry = MISSED_HEARTBEATS * self.heartbeat_interval
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
        self._sessions: dict[Address, UdpSession] = {}
        self._per_host: Counter[str] = Counter()
        self._table_lock = threading.Lock()
        self._outbox_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._dirty: list[UdpSession] = []
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._serving_thread: threading.Thread | None = None
        self._shutdown_reason = ""
        self._closed = False
        self.counters: Counter[str] = Counter()

    # --- ServerTransport ------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def serve_forever(self) -> None:
        """Receive and relay until :meth:`shutdown`; then say goodbye and close."""
        self._serving_thread = threading.current_thread()
        housekeeper = threading.Thread(
            target=self._housekeeping, name="netchat-udp-housekeeping", daemon=True
        )
        housekeeper.start()
        try:
            while not self._stopping.is_set():
                self._receive_batch()
        finally:
            self._stopping.set()
            housekeeper.join(timeout=5)
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
        sessions, cookies issued, notices, bad datagrams, rate-limited frames, …"""
        with self._table_lock:
            sessions = len(self._sessions)
        return {**self.counters, "sessions": sessions}

    # --- receiving --------------------------------------------------------------------

    def _receive_batch(self) -> None:
        try:
            readable = wait_readable([self._sock, self._wake_r], 1.0)
        except (OSError, ValueError):
            self._stopping.set()
            return
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(64)
        if self._sock not in readable:
            return
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
        self._flush()

    def _on_datagram(self, data: bytes, address: Address, now: float) -> None:
        self.counters["datagrams_in"] += 1
        self.counters["bytes_in"] += len(data)
        session = self._sessions.get(address)
        try:
            datagram = dg.decode_datagram(data)
        except RemoteProtocolError as exc:
            self.counters["bad_datagrams"] += 1
            if session is not None and exc.code == "too-large":
                self.hub.report_error(session, "too-large", str(exc))
            elif exc.code != "magic":  # not netchat at all: not ours to answer
                self._notice(address, exc.code, len(data), now)
            return
        if session is None:
            self._from_stranger(datagram, address, len(data), now)
        else:
            session.last_heard = now
            self._from_session(session, datagram, now)

    def _reply_stateless(self, address: Address, reply: bytes, received: int, now: float) -> None:
        """Send ``reply`` to an unvalidated source: never larger than what it sent us,
        and within its (fixed-table) rate limit."""
        if len(reply) > received or not self._limiter.allow(address[0], now):
            self.counters["replies_suppressed"] += 1
            return
        self._send_raw(reply, address)

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
        else:  # a BYE from a forgotten session, or a server-bound kind: nothing to say
            self.counters["bad_datagrams"] += 1

    def _join(self, address: Address, payload: bytes, now: float) -> None:
        """A cookie-validated HELLO: the address is proven, so a REJECT may be sent."""
        try:
            hello = decode_frame(payload)
        except RemoteProtocolError as exc:
            self._reject(address, exc.code, f"bad hello: {exc}")
            return
        if not isinstance(hello, Hello):
            self._reject(address, "not-joined", "join first: send a hello frame")
            return
        host = address[0]
        with self._table_lock:
            if len(self._sessions) >= self.config.max_clients:
                full = "server-full", f"the server is full ({self.config.max_clients} users)"
            elif 0 < self.config.max_per_address <= self._per_host[host]:
                full = "too-many-connections", f"too many users from {host}"
            else:
                full = None
        if full is not None:
            self._reject(address, *full)
            return
        session = UdpSession(self, address, now)
        try:
            welcome = self.hub.join(session, hello.name)
        except Rejected as exc:
            self._reject(address, exc.code, str(exc), exc.suggestion or "")
            return
        session.welcome_name = welcome.name
        with self._table_lock:
            self._sessions[address] = session
            self._per_host[host] += 1
        self.counters["joins"] += 1
        self._mark_dirty(session)

    def _reject(self, address: Address, code: str, text: str, suggestion: str = "") -> None:
        self.counters["rejects"] += 1
        body = encode_frame(Error(code, text[:300], suggestion))
        self._send_raw(dg.encode_reject(body), address)

    def _from_session(self, session: UdpSession, datagram: dg.Datagram, now: float) -> None:
        if isinstance(datagram, dg.Data):
            self._session_data(session, datagram, now)
        elif isinstance(datagram, dg.Ping):
            with self._outbox_lock:
                session.pong_nonce = datagram.nonce
                session.control = True
            self._mark_dirty(session)
        elif isinstance(datagram, dg.Hello):
            # The client did not get our ACCEPT and retried: send it again.
            with self._outbox_lock:
                session.needs_accept = True
                session.control = True
            self._mark_dirty(session)
        elif isinstance(datagram, dg.Bye):
            self.hub.leave(session, "quit")
            session.close("bye")
        else:
            self.counters["bad_datagrams"] += 1

    def _session_data(self, session: UdpSession, data: dg.Data, now: float) -> None:
        if not session.replay.check(data.seq, len(data.units)):
            self.counters["duplicates_in"] += 1  # or an implausible sequence number
            return
        if data.more or data.cont:
            self.hub.report_error(
                session,
                "too-large",
                f"a message must fit in one datagram of {MAX_DATAGRAM_BYTES} bytes",
            )
            return
        for unit in data.units:
            try:
                frame = decode_frame(unit)
            except RemoteProtocolError as exc:
                self.counters["bad_frames"] += 1
                self.hub.report_error(session, exc.code, str(exc))
                continue
            if isinstance(frame, _RATE_LIMITED) and not session.bucket.try_take():
                self._rate_limited(session, now)
                continue
            self.hub.handle(session, frame)

    def _rate_limited(self, session: UdpSession, now: float) -> None:
        self.counters["rate_limited"] += 1
        if now - session.rate_warned_at >= RATE_WARNING_INTERVAL:
            session.rate_warned_at = now
            limit = self.config.rate_limit
            self.hub.report_error(
                session,
                "rate-limited",
                f"you are sending too fast (limit {limit:g} messages/s); message dropped",
            )

    # --- sending ----------------------------------------------------------------------

    def _mark_dirty(self, session: UdpSession) -> None:
        with self._outbox_lock:
            if not session.dirty:
                session.dirty = True
                self._dirty.append(session)

    def _close_session(self, session: UdpSession, reason: str) -> None:
        with self._outbox_lock:
            if session.closing is None:
                session.closing = reason
                session.control = True
            if not session.dirty:
                session.dirty = True
                self._dirty.append(session)

    def _flush(self) -> None:
        """Send every session's outbox, in order, packed into as few datagrams as fit."""
        sendto = self._sock.sendto
        pack_header = _DATA_HEADER.pack
        with self._send_lock:
            with self._outbox_lock:
                dirty, self._dirty = self._dirty, []
                batches: list[tuple[UdpSession, list[Outbound]]] = []
                for session in dirty:
                    batches.append((session, session.pending))
                    session.pending = []
                    session.queued_bytes = 0
                    session.dirty = False
            # The fan-out hot path: one small frame for a peer with nothing else due
            # goes out with one pack and one sendto; counters are summed locally.
            datagrams_out = bytes_out = units_out = 0
            for session, pending in batches:
                if session.control or len(pending) != 1 or len(pending[0].json) > _ROOM:
                    sent, sent_bytes = self._flush_session(session, pending)
                    datagrams_out += sent
                    bytes_out += sent_bytes
                    units_out += len(pending)
                    continue
                seq = session.next_seq
                session.next_seq = seq + 1
                datagram = pack_header(dg.MAGIC, dg.DATAGRAM_VERSION, dg.Kind.DATA, seq, 0)
                datagram += pending[0].json
                try:
                    sendto(datagram, session.address)
                except OSError as exc:
                    self._count_send_error(exc, session.address)
                else:
                    datagrams_out += 1
                    bytes_out += len(datagram)
                units_out += 1
            counters = self.counters
            counters["datagrams_out"] += datagrams_out
            counters["bytes_out"] += bytes_out
            counters["units_out"] += units_out

    def _flush_session(self, session: UdpSession, pending: list[Outbound]) -> tuple[int, int]:
        """The general case: ACCEPT, frames (batched or fragmented), PONG, BYE, in that
        order. Called with the send lock held. Returns datagrams and bytes sent."""
        if session.ended:
            return 0, 0
        with self._outbox_lock:
            needs_accept, pong_nonce = session.needs_accept, session.pong_nonce
            session.needs_accept, session.pong_nonce, session.control = False, None, False
            closing = session.closing
        datagrams: list[bytes] = []
        if needs_accept:
            heartbeat_ms = int(self.heartbeat_interval * 1000)
            datagrams.append(dg.encode_accept(1, heartbeat_ms, session.welcome_name))
        if pending:
            packed, session.next_seq = dg.pack_data(session.next_seq, [o.json for o in pending])
            datagrams += packed
        if pong_nonce is not None:
            datagrams.append(dg.encode_pong(pong_nonce, session.next_seq))
        if closing is not None:
            session.ended = True
            datagrams.append(dg.encode_bye(closing))
        sent = sent_bytes = 0
        for datagram in datagrams:
            try:
                self._sock.sendto(datagram, session.address)
            except OSError as exc:
                self._count_send_error(exc, session.address)
            else:
                sent += 1
                sent_bytes += len(datagram)
        if closing is not None:
            self._forget(session)
        return sent, sent_bytes

    def _count_send_error(self, exc: OSError, address: Address) -> None:
        if isinstance(exc, BlockingIOError):
            self.counters["send_dropped"] += 1  # the peer will report it as lost
        else:
            self.counters["send_errors"] += 1
            log.debug("sendto %s failed: %s", address, exc)

    def _send_raw(self, datagram: bytes, address: Address) -> None:
        try:
            self._sock.sendto(datagram, address)
        except OSError as exc:
            self._count_send_error(exc, address)
            return
        self.counters["datagrams_out"] += 1
        self.counters["bytes_out"] += len(datagram)

    def _forget(self, session: UdpSession) -> None:
        with self._table_lock:
            if self._sessions.get(session.address) is session:
                del self._sessions[session.address]
                host = session.address[0]
                self._per_host[host] -= 1
                if self._per_host[host] <= 0:
                    del self._per_host[host]

    # --- housekeeping -------------------------------------------------------------------

    def _housekeeping(self) -> None:
        tick = max(0.01, min(1.0, self.heartbeat_interval / 4))
        while not self._stopping.wait(tick):
            try:
                self._expire(self._clock())
                self._flush()
            except Exception:
                log.exception("housekeeping failed")

    def _expire(self, now: float) -> None:
        with self._table_lock:
            silent = [s for s in self._sessions.values() if now - s.last_heard > self.expiry]
        for session in silent:
            self.counters["expired"] += 1
            self.hub.leave(session, "timeout")
            session.close("timed out: no heartbeat")

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.hub.shutdown(self._shutdown_reason)
            self._flush()
        finally:
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()
            self._stopped.set()

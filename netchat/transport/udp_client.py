"""The client side of the UDP relay: whole frames over one connected datagram socket.

Strategy
--------
The socket is ``connect()``-ed to the server, so the kernel drops datagrams from
any other source and reports ICMP "port unreachable" as ``ConnectionRefusedError``.
:meth:`UdpClientTransport.connect` fetches an address-validation cookie (proving the
server is there); sending the ``Hello`` frame then sends the real join, which is
retried until the server accepts or rejects it. The caller never sees cookies.

One receiver thread owns everything time-driven: it retries the join, sends a
heartbeat every interval the server announced, declares the server dead after
:data:`MISSED_HEARTBEATS` intervals of silence, and runs the
:class:`~netchat.protocol.datagram.SequenceTracker` that turns gaps into
``Info("2 messages lost")`` frames, drops duplicates and reorders late arrivals.
Frames reach :meth:`UdpClientTransport.receive` through a queue, in sequence order.

Datagram size policy: the server fragments frames too large for one datagram and
this side reassembles them; a frame *we* would send that does not fit in
:data:`~netchat.protocol.limits.MAX_DATAGRAM_BYTES` is refused locally with an
``Error("too-large")`` frame delivered through :meth:`receive`, not sent.

With a password the join is the sealed one of PROTOCOL.md ("The relay join",
through :class:`~netchat.protocol.envelope.ClientKeys`): the cookie comes with the
chat's salt, scrypt runs once, and the relay's ACCEPT proves that it knows the
password too. After it every datagram is sealed and opened at the socket edge by
the session's :class:`~netchat.protocol.envelope.Envelope`; one that does not open
is dropped and counted (``forged``, ``replayed``), never shown. Nothing is ever
sent in clear but the cookie request, and a NOTICE (which nobody signs) is only a
hint: ``not-joined`` does not end a sealed session (a relay that really forgot us
stops answering our heartbeats, and that does).

Every PONG also says the highest of our own numbers the server accepted. A number we
never sent means someone forged our address and ran our numbers ahead, so the server
now drops what we send as replays: the user is told (an ``Info`` frame) and we number
what we send next above it (issue 6 #11; see docs/PROTOCOL.md).

The round-trip time shown by ``/stats`` comes from our own exchanges: the cookie
request at connect, then every heartbeat (the server's PONG echoes the PING's nonce),
smoothed as TCP does (RFC 6298: 7/8 old, 1/8 new).

:class:`PlainUdpTransport` is the other UDP client: for a lab server that does not
speak netchat, raw datagrams out and in, one message each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..errors import (
    AuthenticationFailed,
    ConnectError,
    ConnectionClosed,
    ForeignServer,
    LocalProtocolError,
    Rejected,
    RemoteProtocolError,
    ReplayedDatagram,
)
from ..events import FrameInbox
from ..protocol import datagram as dg
from ..protocol.envelope import CLEAR, ClientKeys, Envelope, is_layout
from ..protocol.frames import Error, Frame, Hello, Info, Welcome, decode_frame, encode_frame
from ..protocol.limits import MAX_DATAGRAM_BYTES
from ..protocol.seal import SEAL_OVERHEAD, SEALED_VERSION
from ..protocol.text import sanitize_text
from .tcp_client import describe_os_error, format_address
from .waiting import wait_readable

#: Intervals without a word from the server after which it is declared dead.
MISSED_HEARTBEATS = 3
#: Seconds between retries of the cookie request and of the join.
RETRY_INTERVAL = 0.5
#: Join attempts before giving up.
JOIN_ATTEMPTS = 10
#: DATA datagrams kept while the ACCEPT that numbers them is still on its way.
MAX_EARLY_DATAGRAMS = 64
#: Highest number a PONG may move our own numbering to (far below 2**64, so a
#: forged PONG cannot make the next DATA header overflow).
MAX_RESYNC_SEQ = 2**62
#: Largest encoded frame we send: it must fit in one datagram with its header.
MAX_REQUEST_BYTES = MAX_DATAGRAM_BYTES - dg.DATA_HEADER_BYTES


def _datagram_socket(host: str, port: int, where: str) -> tuple[socket.socket, Any]:
    """A UDP socket of the family ``host`` resolves to, and the address to connect it to.

    Raises:
        ConnectError: unknown host, or no socket to be had.
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        return socket.socket(family, socket.SOCK_DGRAM), address
    except OSError as exc:
        raise ConnectError(f"cannot reach {where}: {describe_os_error(exc)}") from exc


def spoofing_notice(unconfirmed: int) -> str:
    """What the user is told when the server accepted numbers this client never sent;
    ``unconfirmed``: our messages sent since the server last confirmed one."""
    dropped = f", and dropped up to {unconfirmed} of yours" if unconfirmed > 0 else ""
    return (
        "someone may be sending as you (address spoofing): the server got messages from"
        f" your address that this client never sent{dropped}. What you send gets through"
        " again; reconnect to be safe."
    )


def lost_notice(count: int) -> Info:
    """The frame shown for a gap (``-!- 2 messages lost`` on a screen)."""
    return Info(f"{count} message{'s' if count != 1 else ''} lost")


class UdpClientTransport:
    """A :class:`~netchat.transport.base.ClientTransport` over the UDP relay.

    Args:
        host: server host name or address.
        port: server UDP port.
        connect_timeout: seconds :meth:`connect` waits for the server's cookie.
        reorder_window: seconds a gap may stay open for a late datagram.
        clock: monotonic time source.
        password: the chat's password; every datagram is then sealed (None or
            empty: an open chat).

    Raises:
        LocalProtocolError: the password is unusable (empty after all, or too long).
    """

    #: The ``--proto`` named in our hello.
    PROTO = "udp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        reorder_window: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.reorder_window = reorder_window
        self._clock = clock
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._frames = FrameInbox()
        self._thread: threading.Thread | None = None
        self._cookie = dg.NO_COOKIE
        self._hello: bytes | None = None  # the join, until the server answers it
        self._join_attempts = 0
        self._join_sent_at = 0.0
        self._accepted: dg.Accept | None = None
        self._welcomed = False
        self._early: list[dg.Data] = []
        self._tracker: dg.SequenceTracker[tuple[bytes, bool, bool]] = dg.SequenceTracker(
            reorder_window=reorder_window
        )
        self._reassembler = dg.Reassembler()
        self._send_seq = 1
        self._confirmed = 0  # the highest of our numbers the server said it accepted
        self._heartbeat = 5.0
        self._next_ping = 0.0
        self._last_heard = 0.0
        self._nonces = itertools.count(1)
        self._ping_nonce = 0
        self._ping_sent_at = 0.0
        self._rtt: float | None = None  # smoothed round-trip time, seconds
        self._closed = threading.Event()
        self._connecting = False  # connect() polls the socket: it closes it, not close()
        self._ended = False
        self._bytes_in = 0
        self._bytes_out = 0
        #: a chat with a password: the join proves it, every datagram is sealed
        self._keys = ClientKeys(password) if password else None
        #: how datagrams travel; a sealed session has none until the relay's ACCEPT
        self._envelope: Envelope | None = CLEAR if self._keys is None else None
        self._early_sealed: list[bytes] = []  # sealed datagrams that beat the ACCEPT
        self._refused: Counter[str] = Counter()  # datagrams that did not open
        self._max_request = MAX_REQUEST_BYTES - (SEAL_OVERHEAD if self._keys is not None else 0)

    @property
    def _where(self) -> str:
        return f"udp://{format_address(self.host, self.port)}"

    # --- ClientTransport ----------------------------------------------------------------

    def connect(self) -> None:
        """Reach the server and get a join cookie; :meth:`close` from another thread
        aborts the wait.

        Raises:
            ForeignServer: something answered, but not in netchat (a lab server).
            ConnectError: unknown host, nothing listening, or no answer in time.
            ConnectionClosed: :meth:`close` was called meanwhile.
        """
        sock, address = _datagram_socket(self.host, self.port, self._where)
        with self._lock:
            if self._closed.is_set():
                sock.close()
                raise ConnectionClosed("connection closed")
            self._sock = sock
            self._connecting = True
        try:
            sock.connect(address)
            self._cookie = self._fetch_cookie(sock)
        except BaseException:
            with self._lock:
                self._connecting = False
                self._sock = None
            sock.close()
            raise
        with self._lock:
            self._connecting = False
            if self._closed.is_set():  # close() came as the cookie did: it left us the socket
                self._sock = None
                sock.close()
                raise ConnectionClosed("connection closed")
        self._last_heard = self._clock()
        self._thread = threading.Thread(
            target=self._receive_loop, name="netchat-udp-client", daemon=True
        )
        self._thread.start()

    def _fetch_cookie(self, sock: socket.socket) -> bytes:
        keys = self._keys
        deadline = self._clock() + self.connect_timeout
        while (remaining := deadline - self._clock()) > 0:
            request = dg.encode_hello(dg.NO_COOKIE) if keys is None else keys.cookie_request()
            try:
                sent_at = self._clock()
                sock.send(request)
                self._bytes_out += len(request)
                readable = wait_readable([sock], min(RETRY_INTERVAL, remaining))
                if self._closed.is_set():
                    raise ConnectionClosed("connection closed")
                if not readable:
                    continue
                data = sock.recv(MAX_DATAGRAM_BYTES + 1)
            except OSError as exc:
                if self._closed.is_set():
                    raise ConnectionClosed("connection closed") from exc
                raise ConnectError(f"cannot reach {self._where}: {describe_os_error(exc)}") from exc
            self._bytes_in += len(data)
            if keys is not None and is_layout(data, SEALED_VERSION, dg.Kind.COOKIE):
                self._note_rtt(self._clock() - sent_at)
                try:
                    cookie = keys.take_cookie(data)  # the first one runs scrypt
                except RemoteProtocolError:
                    continue
                if cookie is not None:
                    return cookie
                continue
            try:
                answer = dg.decode_datagram(data)
            except RemoteProtocolError as exc:
                if exc.code == "magic":  # only the server can send to our connected socket
                    sample = sanitize_text(data[:60].decode("utf-8", "replace")).strip()
                    raise ForeignServer(
                        f"{self._where} does not speak netchat (it sent {sample!r})"
                    ) from None
                continue  # netchat, but damaged or of another layout version
            if isinstance(answer, dg.Cookie) and keys is None:
                self._note_rtt(self._clock() - sent_at)
                return answer.cookie
            if isinstance(answer, dg.Notice):
                raise self._refusal(answer.code)
        raise ConnectError(f"no answer from {self._where} within {self.connect_timeout:g} s")

    def _refusal(self, code: str) -> ConnectError | Rejected:
        """What a NOTICE answering our cookie request means."""
        if code == "needs-password":
            return Rejected(f"{self._where}: this chat needs a password", code="needs-password")
        if code == "version" and self._keys is not None:
            # It could not read a sealed datagram: a relay without a password.
            return Rejected(
                f"{self._where} has no password (anyone who can reach it can read the chat);"
                " join it without one",
                code="no-password",
            )
        return ConnectError(f"{self._where} refused us: {code}")

    def send(self, frame: Frame) -> None:
        """Send one frame; a ``Hello`` starts the join.

        A frame too large for one datagram is not sent: an ``Error("too-large")``
        frame saying so arrives through :meth:`receive` instead.

        Raises:
            ConnectionClosed: the session has ended or was never connected.
        """
        if self._sock is None or self._closed.is_set():
            raise ConnectionClosed("not connected")
        if isinstance(frame, Hello) and not frame.proto:
            frame = dataclasses.replace(frame, proto=self.PROTO)  # a relay of the other refuses
        try:
            payload = encode_frame(frame)
        except LocalProtocolError as exc:
            self._refuse(str(exc))
            return
        if isinstance(frame, Hello):
            with self._lock:
                self._hello = payload
                self._join_attempts = 0
            self._send_join()
            return
        if len(payload) > self._max_request:
            self._refuse(
                f"message not sent: {len(payload)} bytes encoded, but a UDP datagram holds"
                f" {self._max_request}; shorten it (or use --proto tcp)"
            )
            return
        with self._lock:
            seq = self._send_seq
            self._send_seq += 1
        self._send(dg.encode_data(seq, payload))

    def receive(self, timeout: float | None = None) -> Frame | None:
        return self._frames.get(timeout)

    def close(self) -> None:
        """Tell the server we are leaving (if it does not know yet) and stop; a
        :meth:`connect` waiting on another thread raises ConnectionClosed. Idempotent."""
        with self._lock:
            if self._closed.is_set():
                return
            say_bye = self._accepted is not None and not self._ended
            sock = self._sock
            connecting = self._connecting
            self._closed.set()
        if say_bye:
            with contextlib.suppress(ConnectionClosed):
                self._send(dg.encode_bye("client closed"))
        if sock is not None:
            # Wakes a poll() on another thread at once (connect's or the receiver's).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._end("connection closed")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        if sock is not None and not connecting:
            sock.close()  # else connect() closes it, once it no longer polls it

    def stats(self) -> dict[str, int]:
        """What ``/stats`` shows: messages ``lost``, ``duplicates`` dropped, ``reordered``
        ones put back in order, ``bytes_in``/``bytes_out`` (datagrams, headers included)
        and ``rtt_us``, the smoothed round-trip time in microseconds (0 until measured)."""
        tracker = self._tracker
        stats = {
            "lost": tracker.lost,
            "duplicates": tracker.duplicates,
            "reordered": tracker.reordered,
            "bytes_in": self._bytes_in,
            "bytes_out": self._bytes_out,
            "rtt_us": round(self._rtt * 1_000_000) if self._rtt is not None else 0,
        }
        if self._keys is not None:  # sealed: what did not open (forged, replayed)
            stats.update({"forged": 0, "replayed": 0, **self._refused})
        return stats

    # --- internals ----------------------------------------------------------------------

    def _refuse(self, text: str) -> None:
        self._frames.put(Error("too-large", text))

    def _note_rtt(self, sample: float) -> None:
        rtt = self._rtt
        self._rtt = sample if rtt is None else rtt + (sample - rtt) / 8

    def _send(self, datagram: bytes) -> None:
        """Send a layout-1 datagram the way this session's datagrams travel."""
        envelope = self._envelope
        if envelope is None:  # sealed, and no keys before the relay's ACCEPT
            raise ConnectionClosed("not joined yet")
        self._send_raw(envelope.seal(datagram))

    def _send_raw(self, datagram: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionClosed("not connected")
        try:
            sock.send(datagram)
        except ConnectionRefusedError:
            self._end(f"{self._where} is gone (connection refused)")
            raise ConnectionClosed(f"{self._where} is gone (connection refused)") from None
        except OSError as exc:
            if self._closed.is_set():
                raise ConnectionClosed("connection closed") from exc
            return  # a datagram may be dropped (a full buffer): UDP is allowed to lose it
        with self._lock:  # heartbeats are sent by the receiver thread, chat by the user's
            self._bytes_out += len(datagram)

    def _send_join(self) -> None:
        with self._lock:
            hello = self._hello
            if hello is None:
                return
            self._join_attempts += 1
            self._join_sent_at = self._clock()
            if self._keys is None:
                datagram = dg.encode_hello(self._cookie, hello)
            else:  # the same sealed bytes for every retry with this cookie
                datagram = self._keys.hello(self._cookie, hello)
        self._send_raw(datagram)

    def _end(self, reason: str) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._frames.end(reason)

    def _receive_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while not self._ended and not self._closed.is_set():
                readable = wait_readable([sock], self._wait_time())
                if readable:
                    self._drain(sock)
                self._tick(self._clock())
        except (OSError, ValueError) as exc:  # the socket was closed under us
            if not self._closed.is_set():
                self._end(f"connection lost: {describe_os_error(exc)}")
        except ConnectionClosed as exc:
            self._end(str(exc))

    def _wait_time(self) -> float:
        now = self._clock()
        moments = [now + 0.5]
        deadline = self._tracker.deadline()
        if deadline is not None:
            moments.append(deadline)
        if self._accepted is not None:
            moments.append(self._next_ping)
        elif self._hello is not None:
            moments.append(self._join_sent_at + RETRY_INTERVAL)
        return min(0.5, max(0.005, min(moments) - now))

    def _drain(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data = sock.recv(MAX_DATAGRAM_BYTES + 1, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                self._end(f"{self._where} is gone (connection refused)")
                return
            if not data and self._closed.is_set():
                return  # shut down by close()
            self._bytes_in += len(data)
            now = self._clock()
            datagram = self._open(data)
            if datagram is None:
                continue  # not netchat, damaged, or (sealed) not from the relay
            if self._keys is None or not isinstance(datagram, dg.Notice):
                self._last_heard = now  # (nobody signs a NOTICE)
            self._on_datagram(datagram, now)

    def _open(self, data: bytes) -> dg.Datagram | None:
        """The datagram in ``data``, opened if the chat is sealed; None if it does not
        open (counted) or is of no use."""
        keys = self._keys
        try:
            if keys is None or is_layout(data, dg.DATAGRAM_VERSION, dg.Kind.NOTICE):
                return dg.decode_datagram(data)
            if not is_layout(data, SEALED_VERSION):
                self._refused["unsealed"] += 1
                return None
            joining = self._accepted is None and self._hello is not None
            if data[3] == dg.Kind.COOKIE:  # our cookie expired: a new one, same salt
                cookie = keys.take_cookie(data) if joining else None
                return dg.Cookie(cookie) if cookie is not None else None
            if data[3] in (dg.Kind.ACCEPT, dg.Kind.REJECT):
                if not joining:
                    return None  # a copy of the answer we already have
                plain, session = keys.finish(data)
                answer = dg.decode_datagram(plain)
                if isinstance(answer, dg.Accept):
                    self._envelope = session
                return answer
            envelope = self._envelope
            if envelope is None:  # it beat the ACCEPT that brings its keys
                if len(self._early_sealed) < MAX_EARLY_DATAGRAMS:
                    self._early_sealed.append(data)
                return None
            return dg.decode_datagram(envelope.open(data))
        except AuthenticationFailed:
            self._refused["forged"] += 1
        except ReplayedDatagram:
            self._refused["replayed"] += 1
        except RemoteProtocolError:
            pass  # not netchat, or damaged: nothing to show
        return None

    def _on_datagram(self, datagram: dg.Datagram, now: float) -> None:
        if isinstance(datagram, dg.Data):
            if self._accepted is None:
                if len(self._early) < MAX_EARLY_DATAGRAMS:
                    self._early.append(datagram)
                return
            self._on_data(datagram, now)
        elif isinstance(datagram, dg.Pong):
            if datagram.nonce and datagram.nonce == self._ping_nonce:  # 0: unasked for
                self._note_rtt(now - self._ping_sent_at)
            self._release(self._tracker.advance_to(datagram.next_seq, now))
            if datagram.received is not None:
                self._check_received(datagram.received)
        elif isinstance(datagram, dg.Accept):
            if self._accepted is None and self._hello is not None:
                self._on_accept(datagram, now)
        elif isinstance(datagram, dg.Cookie):
            # Our cookie expired before the join got through: retry with the new one.
            if self._accepted is None and self._hello is not None:
                self._cookie = datagram.cookie
                self._send_join()
        elif isinstance(datagram, dg.Reject):
            if self._accepted is None and self._hello is not None:
                self._on_reject(datagram)
        elif isinstance(datagram, dg.Bye):
            self._end(f"the server closed the session ({datagram.reason or 'no reason given'})")
        elif isinstance(datagram, dg.Notice):
            self._on_notice(datagram.code)
        # Datagrams of other kinds are not for a client: they change nothing here.

    def _on_notice(self, code: str) -> None:
        """A NOTICE answers a datagram the server could not use. Nobody signs one, so
        in a sealed chat it is only believed where that costs nothing but a join."""
        if code == "not-joined" and self._keys is None:
            self._end("the server no longer knows us (did it restart?)")
        elif code == "not-joined":
            self._refused["notices_ignored"] += 1
        elif code == "bad-password" and self._keys is not None and self._accepted is None:
            with self._lock:
                joining, self._hello = self._hello is not None, None
            if joining:
                self._frames.put(Error("bad-password", "wrong password: the relay refused it"))

    def _check_received(self, received: int) -> None:
        """The server says the highest number of ours it accepted. Above the last one
        we sent, it can only have come from someone sending under our address: the
        server now drops our datagrams as replays. Say so, and send above it.
        """
        with self._lock:
            last_sent = self._send_seq - 1
            if received <= last_sent:
                self._confirmed = max(self._confirmed, received)
                return
            unconfirmed = last_sent - self._confirmed
            if received < MAX_RESYNC_SEQ:  # a forged PONG must not overflow our numbers
                self._send_seq = received + 1
            self._confirmed = received
        self._frames.put(Info(spoofing_notice(unconfirmed)))

    def _on_accept(self, accept: dg.Accept, now: float) -> None:
        with self._lock:
            self._hello = None
            self._accepted = accept
        self._heartbeat = max(0.01, accept.heartbeat_ms / 1000)
        self._next_ping = now + self._heartbeat
        self._tracker = dg.SequenceTracker(accept.first_seq, reorder_window=self.reorder_window)
        early, self._early = self._early, []
        for data in early:
            self._on_data(data, now)
        early_sealed, self._early_sealed = self._early_sealed, []
        for sealed in early_sealed:
            datagram = self._open(sealed)
            if isinstance(datagram, dg.Data):
                self._on_data(datagram, now)

    def _on_reject(self, reject: dg.Reject) -> None:
        with self._lock:
            self._hello = None
        try:
            frame = decode_frame(reject.payload)
        except RemoteProtocolError:
            frame = Error("rejected", "the server refused the join")
        self._frames.put(frame)

    def _on_data(self, data: dg.Data, now: float) -> None:
        last = len(data.units) - 1
        for index, unit in enumerate(data.units):
            item = (unit, index == 0 and data.cont, index == last and data.more)
            self._release(self._tracker.accept(data.seq + index, item, now))

    def _release(self, released: list[tuple[bytes, bool, bool] | dg.Gap]) -> None:
        for item in released:
            if isinstance(item, dg.Gap):
                self._reassembler.gap()
                if not self._welcomed and self._accepted is not None:
                    # The welcome itself was lost: stand in for it, so the join completes.
                    self._welcomed = True
                    name = self._accepted.name
                    self._frames.put(Welcome(name, (name,)))
                self._frames.put(lost_notice(item.count))
                continue
            unit, cont, more = item
            whole = self._reassembler.feed(unit, cont=cont, more=more)
            if whole is not None:
                self._deliver(whole)

    def _deliver(self, whole: bytes) -> None:
        """A whole frame arrived: hand it to :meth:`receive` (a damaged one is dropped)."""
        try:
            frame = decode_frame(whole)
        except RemoteProtocolError:
            return  # nothing to show
        if isinstance(frame, Welcome):
            self._welcomed = True
        self._frames.put(frame)

    def _tick(self, now: float) -> None:
        self._release(self._tracker.poll(now))
        if self._accepted is None:
            if self._hello is not None and now - self._join_sent_at >= RETRY_INTERVAL:
                if self._join_attempts >= JOIN_ATTEMPTS:
                    self._end(f"{self._where} did not answer our join")
                else:
                    self._send_join()
            return
        if now - self._last_heard > MISSED_HEARTBEATS * self._heartbeat:
            self._end("server not responding")
            return
        if now >= self._next_ping:
            self._next_ping = now + self._heartbeat
            self._ping_nonce = next(self._nonces)
            self._ping_sent_at = now
            with contextlib.suppress(ConnectionClosed):
                self._send(dg.encode_ping(self._ping_nonce, self._tracker.next_seq))


class PlainUdpTransport:
    """Raw datagrams to and from a lab UDP server that does not speak netchat.

    Nothing is sent until the user says something (a lab server learns its clients
    from their datagrams). The socket is ``connect()``-ed, so datagrams from anyone but
    the server are dropped by the kernel, and an ICMP "port unreachable" comes back as
    a :class:`ConnectError` from the next send or receive: nothing listens there (yet);
    the session goes on, since a lab server may be started later.

    Args:
        host: server host name or address.
        port: server UDP port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        # Guards _closed/_polling, as in the TCP transport: close() must not free the
        # descriptor while receive_bytes() polls it on another thread.
        self._lock = threading.Lock()
        self._closed = False
        self._polling = False
        self._bytes_in = 0
        self._bytes_out = 0

    @property
    def where(self) -> str:
        return f"udp://{format_address(self.host, self.port)}"

    def connect(self) -> None:
        """Open a socket aimed at the server (no datagram is sent).

        Raises:
            ConnectError: unknown host or no route.
        """
        sock, address = _datagram_socket(self.host, self.port, self.where)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot reach {self.where}: {describe_os_error(exc)}") from exc
        self._sock = sock

    def send_bytes(self, data: bytes) -> None:
        """Send one datagram.

        Raises:
            ConnectError: nothing listens at the server's port (an earlier datagram
                bounced); later sends may succeed.
            ConnectionClosed: :meth:`close` was called.
        """
        sock = self._sock
        if sock is None or self._closed:
            raise ConnectionClosed("not connected")
        try:
            sock.send(data)
        except ConnectionRefusedError:
            raise ConnectError(self._unreachable()) from None
        except OSError as exc:
            if self._closed:
                raise ConnectionClosed("connection closed") from exc
            return  # a full buffer: UDP may drop a datagram
        self._bytes_out += len(data)

    def receive_bytes(self, timeout: float | None = None) -> bytes | None:
        """The next datagram; ``None`` if none came within ``timeout`` seconds.

        Raises:
            ConnectError: nothing listens at the server's port (a datagram bounced).
            ConnectionClosed: :meth:`close` was called.
        """
        with self._lock:
            if self._closed or self._sock is None:
                raise ConnectionClosed("connection closed")
            sock = self._sock
            self._polling = True
        try:
            if not wait_readable([sock], timeout):
                return None
            data = sock.recv(65536)
        except ConnectionRefusedError:
            raise ConnectError(self._unreachable()) from None
        except OSError as exc:
            raise ConnectionClosed("connection closed") from exc
        finally:
            with self._lock:
                self._polling = False
                if self._closed:
                    sock.close()
        if self._closed:
            raise ConnectionClosed("connection closed")
        self._bytes_in += len(data)
        return data

    def finish_sending(self) -> None:
        """Nothing to do: a datagram session has no end to announce."""

    def close(self) -> None:
        """Stop; a :meth:`receive_bytes` blocked on another thread raises. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._sock is None:
                return
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes a poll() on another thread
            if not self._polling:
                self._sock.close()

    def stats(self) -> dict[str, int]:
        """``bytes_in`` and ``bytes_out``."""
        return {"bytes_in": self._bytes_in, "bytes_out": self._bytes_out}

    def _unreachable(self) -> str:
        return f"nothing answers at {self.where} (port unreachable); is the server running?"

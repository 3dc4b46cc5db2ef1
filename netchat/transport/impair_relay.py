"""Impairment relays: UDP and TCP proxies that put a bad network between two endpoints.

Strategy
--------
A relay listens where clients connect and forwards to an upstream server. Each
direction goes through its own link from :mod:`netchat.impair` (seeded, sans-I/O),
so what the relay does to traffic is decided by the model and tested with a fake
clock; this module only moves bytes and keeps the time.

* **UDP** (:class:`UdpImpairRelay`): one listening socket. Each client source
  address becomes a *flow* with an upstream socket of its own, so the server sees
  one address per client as it would without the relay, and with two datagram links
  (client → server "up", server → client "down"). Flows are numbered in the order
  their first datagram arrives and each link is seeded with its flow's number, so
  clients that start one after another meet the same fates in every run.
* **TCP** (:class:`TcpImpairRelay`): each accepted connection gets an upstream
  connection and two stream links. Bytes are never dropped or reordered (that would
  corrupt the stream); they are delayed, jittered, throttled, and held for a
  retransmission timeout where the model says a segment would have been lost. A
  direction stops reading while more than :data:`MAX_BACKLOG` bytes wait in it, so
  a throttled direction pushes back on the sender through TCP's own flow control.

One thread does everything: ``poll()`` on every socket, waking when the next datagram
or chunk is due. A relay starts *armed* (impairing) unless told otherwise; the
benchmark starts it unarmed so that its clients join over a clean path, then arms it
for the measured run, which is when every link's random sequence starts.

Counters: per direction, what the links did (offered, dropped, duplicated, …). For
TCP also the kernel's own counts from ``TCP_INFO`` on the upstream sockets
(segments and bytes each way on the server's side of the relay), where Linux has it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..impair import DatagramLink, Impairment, LinkCounters, StreamLink, link_random

log = logging.getLogger("netchat.impair")

Address = tuple[str, int]

#: Largest datagram the UDP relay forwards (the largest UDP payload over IPv4).
MAX_UDP_PAYLOAD = 65507
#: Bytes one direction of a TCP connection may hold before the relay stops reading it.
MAX_BACKLOG = 256 * 1024
#: Seconds without traffic after which a UDP flow is forgotten.
FLOW_IDLE_TIMEOUT = 120.0
#: Most UDP flows (client addresses) at once; datagrams from more are dropped.
MAX_FLOWS = 4096
#: Datagrams (or accepts) handled per socket per wake-up, so one busy socket cannot
#: starve the others or the timers.
BATCH = 64
#: Receive and send buffer asked for on relay sockets: a burst should queue, not drop,
#: before the relay has run.
SOCKET_BUFFER = 4 * 1024 * 1024

_NULL = Impairment()


class ImpairRelay(Protocol):
    """What runs a relay: the CLI and the benchmark use both kinds through this."""

    @property
    def address(self) -> Address:
        """Where clients connect (the real port when 0 was asked for)."""
        ...

    def serve_forever(self) -> None:
        """Relay until :meth:`shutdown` is called from another thread."""
        ...

    def shutdown(self) -> None:
        """Stop relaying and close every socket."""
        ...

    def arm(self, armed: bool = True) -> None:
        """Start (or stop) impairing; links are re-seeded when armed."""
        ...

    def stats(self) -> dict[str, object]:
        """Counters: ``up`` and ``down`` link counters, flows, and (TCP) ``tcp_info``."""
        ...


def resolve(address: Address, kind: socket.SocketKind) -> tuple[socket.AddressFamily, Address]:
    """The family and the socket address of ``(host, port)``.

    Raises:
        OSError: the host cannot be resolved.
    """
    family, _type, _proto, _name, sockaddr = socket.getaddrinfo(address[0], address[1], type=kind)[
        0
    ]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def _tune(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def _add(into: dict[str, int], counters: LinkCounters) -> None:
    for key, value in counters.as_dict().items():
        into[key] = into.get(key, 0) + value


class _RelayBase:
    """The loop, the wake-up pipe and arming, shared by both relays."""

    def __init__(self, impairment: Impairment, armed: bool, clock: Callable[[], float]) -> None:
        self.impairment = impairment
        self._clock = clock
        self._armed = armed
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._poller = select.poll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._poller.register(self._wake_r.fileno(), select.POLLIN)
        self.counters: dict[str, int] = {}

    @property
    def armed(self) -> bool:
        return self._armed

    def _active_impairment(self) -> Impairment:
        return self.impairment if self._armed else _NULL

    def serve_forever(self) -> None:
        try:
            while not self._stopping.is_set():
                with self._lock:
                    timeout = self._timeout(self._clock())
                events = self._poller.poll(timeout)
                with self._lock:
                    for fd, mask in events:
                        if fd == self._wake_r.fileno():
                            with contextlib.suppress(OSError):
                                self._wake_r.recv(64)
                            continue
                        self._on_event(fd, mask)
                    self._on_tick(self._clock())
        finally:
            with self._lock:
                self._close_all()
            self._wake_r.close()
            self._wake_w.close()
            self._stopped.set()

    def shutdown(self) -> None:
        self._stopping.set()
        self._wake()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _timeout(self, now: float) -> int:
        """Milliseconds poll() may sleep: until the next due item, at most 1 s."""
        due = self._next_due()
        if due is None:
            return 1000
        return max(0, min(1000, math.ceil((due - now) * 1000)))

    def _next_due(self) -> float | None:
        raise NotImplementedError

    def _on_event(self, fd: int, mask: int) -> None:
        raise NotImplementedError

    def _on_tick(self, now: float) -> None:
        raise NotImplementedError

    def _close_all(self) -> None:
        raise NotImplementedError


# --- UDP --------------------------------------------------------------------------------


class _Flow:
    """One client address: its upstream socket and a link per direction."""

    __slots__ = ("client", "down", "index", "last_active", "sock", "up")

    def __init__(
        self, index: int, client: Address, sock: socket.socket, up: DatagramLink, down: DatagramLink
    ) -> None:
        self.index = index
        self.client = client
        self.sock = sock
        self.up = up
        self.down = down
        self.last_active = 0.0


class UdpImpairRelay(_RelayBase):
    """A UDP proxy impairing each direction of each client's traffic.

    Args:
        listen: where clients send (port 0 picks a free one).
        upstream: the server datagrams are forwarded to.
        impairment: what to do to them (each direction independently).
        armed: impair from the start (``False``: forward untouched until :meth:`arm`).
        clock: monotonic time source.

    Raises:
        OSError: the listening address cannot be bound or the upstream not resolved.
    """

    def __init__(
        self,
        listen: Address,
        upstream: Address,
        impairment: Impairment,
        *,
        armed: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(impairment, armed, clock)
        self._upstream_family, self.upstream = resolve(upstream, socket.SOCK_DGRAM)
        family, listen_address = resolve(listen, socket.SOCK_DGRAM)
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _tune(self._sock)
            self._sock.bind(listen_address)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._poller.register(self._sock.fileno(), select.POLLIN)
        self._flows: dict[Address, _Flow] = {}
        self._by_fd: dict[int, _Flow] = {}
        self._busy: set[_Flow] = set()
        self._next_index = 0
        self._retired_totals: dict[str, dict[str, int]] = {"up": {}, "down": {}}
        self.counters = {
            "flows_opened": 0,
            "flows_refused": 0,
            "send_errors": 0,
            "receive_errors": 0,
        }

    @property
    def address(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def arm(self, armed: bool = True) -> None:
        with self._lock:
            self._armed = armed
            for flow in self._flows.values():
                self._relink(flow)
        self._wake()

    def stats(self) -> dict[str, object]:
        with self._lock:
            up = dict(self._retired_totals["up"])
            down = dict(self._retired_totals["down"])
            for flow in self._flows.values():
                _add(up, flow.up.counters)
                _add(down, flow.down.counters)
            return {
                "kind": "udp",
                "armed": self._armed,
                "flows": len(self._flows),
                **self.counters,
                "up": up,
                "down": down,
            }

    # --- the loop ---------------------------------------------------------------------

    def _next_due(self) -> float | None:
        moments = [due for flow in self._busy for due in (flow.up.next_due(), flow.down.next_due())]
        present = [due for due in moments if due is not None]
        return min(present) if present else None

    def _on_event(self, fd: int, mask: int) -> None:
        if fd == self._sock.fileno():
            self._from_clients()
            return
        flow = self._by_fd.get(fd)
        if flow is not None:
            self._from_server(flow)

    def _on_tick(self, now: float) -> None:
        for flow in list(self._busy):
            for datagram in flow.up.release(now):
                self._send_up(flow, datagram)
            for datagram in flow.down.release(now):
                self._send_down(flow, datagram)
            if not flow.up.held and not flow.down.held:
                self._busy.discard(flow)
        for flow in [f for f in self._flows.values() if now - f.last_active > FLOW_IDLE_TIMEOUT]:
            self._forget(flow)

    def _from_clients(self) -> None:
        for _ in range(BATCH):
            try:
                data, address = self._sock.recvfrom(MAX_UDP_PAYLOAD + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error from an earlier send to a client
                self.counters["receive_errors"] += 1
                log.debug("recvfrom on the listening socket failed: %s", exc)
                continue
            client = (str(address[0]), int(address[1]))
            flow = self._flows.get(client) or self._open_flow(client)
            if flow is None:
                continue
            now = self._clock()
            flow.last_active = now
            flow.up.offer(data, now)
            self._busy.add(flow)

    def _from_server(self, flow: _Flow) -> None:
        for _ in range(BATCH):
            try:
                data = flow.sock.recv(MAX_UDP_PAYLOAD + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable: the server is not there
                self.counters["receive_errors"] += 1
                log.debug("flow %d: recv from upstream failed: %s", flow.index, exc)
                return
            now = self._clock()
            flow.last_active = now
            flow.down.offer(data, now)
            self._busy.add(flow)

    def _open_flow(self, client: Address) -> _Flow | None:
        if len(self._flows) >= MAX_FLOWS:
            self.counters["flows_refused"] += 1
            return None
        sock = socket.socket(self._upstream_family, socket.SOCK_DGRAM)
        try:
            _tune(sock)
            sock.connect(self.upstream)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self.counters["flows_refused"] += 1
            log.warning("cannot open an upstream socket to %s: %s", self.upstream, exc)
            return None
        index = self._next_index
        self._next_index += 1
        impairment = self._active_impairment()
        flow = _Flow(
            index,
            client,
            sock,
            DatagramLink(impairment, link_random(impairment.seed, f"flow{index}", "up")),
            DatagramLink(impairment, link_random(impairment.seed, f"flow{index}", "down")),
        )
        self._flows[client] = flow
        self._by_fd[sock.fileno()] = flow
        self._poller.register(sock.fileno(), select.POLLIN)
        self.counters["flows_opened"] += 1
        return flow

    def _relink(self, flow: _Flow) -> None:
        """New links for ``flow`` under the current arming; what waits is sent now."""
        now = self._clock()
        for datagram in flow.up.release(math.inf):
            self._send_up(flow, datagram)
        for datagram in flow.down.release(math.inf):
            self._send_down(flow, datagram)
        _add(self._retired_totals["up"], flow.up.counters)
        _add(self._retired_totals["down"], flow.down.counters)
        impairment = self._active_impairment()
        flow.up = DatagramLink(impairment, link_random(impairment.seed, f"flow{flow.index}", "up"))
        flow.down = DatagramLink(
            impairment, link_random(impairment.seed, f"flow{flow.index}", "down")
        )
        flow.last_active = now

    def _send_up(self, flow: _Flow, datagram: bytes) -> None:
        try:
            flow.sock.send(datagram)
        except OSError:  # full buffer, or the server is gone: the datagram is lost
            self.counters["send_errors"] += 1

    def _send_down(self, flow: _Flow, datagram: bytes) -> None:
        try:
            self._sock.sendto(datagram, flow.client)
        except OSError:
            self.counters["send_errors"] += 1

    def _forget(self, flow: _Flow) -> None:
        _add(self._retired_totals["up"], flow.up.counters)
        _add(self._retired_totals["down"], flow.down.counters)
        self._flows.pop(flow.client, None)
        self._busy.discard(flow)
        fd = flow.sock.fileno()
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(fd)
        flow.sock.close()

    def _close_all(self) -> None:
        for flow in list(self._flows.values()):
            self._forget(flow)
        self._sock.close()


# --- TCP --------------------------------------------------------------------------------

#: struct tcp_info offsets (linux/tcp.h): total_retrans, bytes_acked, bytes_received,
#: segs_out, segs_in, data_segs_in, data_segs_out.
_TCP_INFO_FIELDS = (
    ("total_retrans", 100, "I"),
    ("bytes_acked", 120, "Q"),
    ("bytes_received", 128, "Q"),
    ("segs_out", 136, "I"),
    ("segs_in", 140, "I"),
    ("data_segs_in", 152, "I"),
    ("data_segs_out", 156, "I"),
)
_TCP_INFO_BYTES = 160


def tcp_info(sock: socket.socket) -> dict[str, int] | None:
    """The kernel's segment and byte counters of a TCP socket (Linux ≥ 4.6), else ``None``.

    ``segs_out``/``segs_in`` count every segment, pure ACKs included; ``bytes_acked``
    is what we sent and the peer acknowledged, ``bytes_received`` what we received.
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, 256)
    except OSError:
        return None
    if len(raw) < _TCP_INFO_BYTES:
        return None
    return {
        name: int(struct.unpack_from("=" + kind, raw, offset)[0])
        for name, offset, kind in _TCP_INFO_FIELDS
    }


class _Direction:
    """One direction of a relayed connection: read from ``src``, write to ``dst``."""

    __slots__ = ("dst", "eof", "link", "name", "out", "shut", "src")

    def __init__(self, name: str, src: socket.socket, dst: socket.socket, link: StreamLink):
        self.name = name
        self.src = src
        self.dst = dst
        self.link = link
        self.out = bytearray()  # due, not yet accepted by the kernel
        self.eof = False  # the source finished sending
        self.shut = False  # we passed the end on (shutdown SHUT_WR)

    @property
    def backlog(self) -> int:
        return self.link.held_bytes + len(self.out)

    @property
    def wants_read(self) -> bool:
        return not self.eof and self.backlog < MAX_BACKLOG


class _Pipe:
    """One relayed TCP connection."""

    __slots__ = ("client", "connecting", "down", "hung", "index", "masks", "server", "up")

    def __init__(
        self,
        index: int,
        client: socket.socket,
        server: socket.socket,
        up: _Direction,
        down: _Direction,
    ) -> None:
        self.index = index
        self.client = client
        self.server = server
        self.up = up
        self.down = down
        self.connecting = True
        self.masks: dict[int, int | None] = {}  # None: not registered with poll()
        self.hung: set[int] = set()


class TcpImpairRelay(_RelayBase):
    """A TCP proxy that delays, jitters and throttles each direction of each connection.

    Args:
        listen: where clients connect (port 0 picks a free one).
        upstream: the server each connection is forwarded to.
        impairment: what to do (loss becomes an emulated retransmission stall;
            duplication and reordering do not apply to a byte stream).
        armed: impair from the start (``False``: forward untouched until :meth:`arm`).
        clock: monotonic time source.

    Raises:
        OSError: the listening address cannot be bound or the upstream not resolved.
    """

    def __init__(
        self,
        listen: Address,
        upstream: Address,
        impairment: Impairment,
        *,
        armed: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(impairment, armed, clock)
        self._upstream_family, self.upstream = resolve(upstream, socket.SOCK_STREAM)
        family, listen_address = resolve(listen, socket.SOCK_STREAM)
        self._listener = socket.create_server(listen_address, family=family, backlog=512)
        self._listener.setblocking(False)
        self._poller.register(self._listener.fileno(), select.POLLIN)
        self._pipes: dict[int, _Pipe] = {}  # by both sockets' descriptors
        self._next_index = 0
        self._retired_totals: dict[str, dict[str, int]] = {"up": {}, "down": {}}
        self._retired_info: dict[str, int] = {}
        self.counters = {"connections": 0, "upstream_errors": 0, "resets": 0}

    @property
    def address(self) -> Address:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def arm(self, armed: bool = True) -> None:
        with self._lock:
            self._armed = armed
            for pipe in set(self._pipes.values()):
                for direction in (pipe.up, pipe.down):
                    self._relink(pipe, direction)
        self._wake()

    def stats(self) -> dict[str, object]:
        with self._lock:
            up = dict(self._retired_totals["up"])
            down = dict(self._retired_totals["down"])
            info = dict(self._retired_info)
            for pipe in set(self._pipes.values()):
                _add(up, pipe.up.link.counters)
                _add(down, pipe.down.link.counters)
                self._add_info(info, pipe)
            return {
                "kind": "tcp",
                "armed": self._armed,
                "flows": len(set(self._pipes.values())),
                **self.counters,
                "up": up,
                "down": down,
                "tcp_info": info,
            }

    # --- the loop ---------------------------------------------------------------------

    def _next_due(self) -> float | None:
        moments = [
            due
            for pipe in set(self._pipes.values())
            for due in (pipe.up.link.next_due(), pipe.down.link.next_due())
            if due is not None
        ]
        return min(moments) if moments else None

    def _on_event(self, fd: int, mask: int) -> None:
        if fd == self._listener.fileno():
            self._accept()
            return
        pipe = self._pipes.get(fd)
        if pipe is None:
            return
        try:
            if pipe.connecting and fd == pipe.server.fileno():
                self._finish_connect(pipe, mask)
                return
            if mask & select.POLLERR:
                raise ConnectionResetError(errno.ECONNRESET, "connection error")
            reading = pipe.up if fd == pipe.client.fileno() else pipe.down
            writing = pipe.down if reading is pipe.up else pipe.up
            if mask & select.POLLHUP:
                if reading.eof:
                    # Nothing left to read and nobody to write to; poll() would report
                    # the hang-up forever, so stop watching this socket.
                    pipe.hung.add(fd)
                else:
                    # The peer is gone: what it sent is all there will ever be, so read
                    # it even past the backlog limit (its socket buffer bounds it).
                    self._read(reading)
            elif mask & select.POLLIN and reading.wants_read:
                self._read(reading)
            if mask & select.POLLOUT:
                self._write(writing)
        except OSError as exc:
            self._close(pipe, f"{type(exc).__name__}: {exc}")

    def _on_tick(self, now: float) -> None:
        for pipe in set(self._pipes.values()):
            try:
                for direction in (pipe.up, pipe.down):
                    for chunk in direction.link.release(now):
                        direction.out += chunk
                    if direction.out and not (pipe.connecting and direction is pipe.up):
                        self._write(direction)
                    if (
                        direction.eof
                        and not direction.shut
                        and not direction.out
                        and not direction.link.held_bytes
                        and not pipe.connecting
                    ):
                        direction.shut = True
                        with contextlib.suppress(OSError):
                            direction.dst.shutdown(socket.SHUT_WR)
                if pipe.up.shut and pipe.down.shut:
                    self._close(pipe, "")
                else:
                    self._update_masks(pipe)
            except OSError as exc:
                self._close(pipe, f"{type(exc).__name__}: {exc}")

    def _accept(self) -> None:
        for _ in range(BATCH):
            try:
                client, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of descriptors: try again on the next wake-up
                log.warning("accept failed: %s", exc)
                return
            client.setblocking(False)
            server = socket.socket(self._upstream_family, socket.SOCK_STREAM)
            server.setblocking(False)
            code = server.connect_ex(self.upstream)
            if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
                self.counters["upstream_errors"] += 1
                log.warning("cannot reach %s: %s", self.upstream, errno.errorcode.get(code, code))
                client.close()
                server.close()
                continue
            index = self._next_index
            self._next_index += 1
            impairment = self._active_impairment()
            name = f"connection{index}"
            up_link = StreamLink(impairment, link_random(impairment.seed, name, "up"))
            down_link = StreamLink(impairment, link_random(impairment.seed, name, "down"))
            up = _Direction("up", client, server, up_link)
            down = _Direction("down", server, client, down_link)
            pipe = _Pipe(index, client, server, up, down)
            self._pipes[client.fileno()] = pipe
            self._pipes[server.fileno()] = pipe
            for sock in (client, server):
                self._poller.register(sock.fileno(), 0)
                pipe.masks[sock.fileno()] = 0
            self.counters["connections"] += 1
            self._update_masks(pipe)

    def _finish_connect(self, pipe: _Pipe, mask: int) -> None:
        error = pipe.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error or mask & (select.POLLERR | select.POLLHUP):
            self.counters["upstream_errors"] += 1
            reason = errno.errorcode.get(error, str(error)) if error else "hung up"
            log.warning("cannot reach %s: %s", self.upstream, reason)
            self._close(pipe, "")
            return
        pipe.connecting = False
        for sock in (pipe.client, pipe.server):
            with contextlib.suppress(OSError):  # chat lines are small: no Nagle delay
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._update_masks(pipe)

    def _read(self, direction: _Direction) -> None:
        try:
            data = direction.src.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            direction.eof = True
            return
        direction.link.offer(data, self._clock())

    def _write(self, direction: _Direction) -> None:
        if not direction.out:
            return
        try:
            sent = direction.dst.send(direction.out)
        except (BlockingIOError, InterruptedError):
            return
        del direction.out[:sent]

    def _update_masks(self, pipe: _Pipe) -> None:
        if pipe.connecting:
            wanted = {
                pipe.client.fileno(): select.POLLIN if pipe.up.wants_read else 0,
                pipe.server.fileno(): select.POLLOUT,
            }
        else:
            wanted = {
                pipe.client.fileno(): (select.POLLIN if pipe.up.wants_read else 0)
                | (select.POLLOUT if pipe.down.out else 0),
                pipe.server.fileno(): (select.POLLIN if pipe.down.wants_read else 0)
                | (select.POLLOUT if pipe.up.out else 0),
            }
        for fd, mask in wanted.items():
            if fd in pipe.hung:
                if pipe.masks.get(fd) is not None:
                    self._poller.unregister(fd)
                    pipe.masks[fd] = None
            elif pipe.masks.get(fd) != mask:
                self._poller.modify(fd, mask)
                pipe.masks[fd] = mask

    def _relink(self, pipe: _Pipe, direction: _Direction) -> None:
        for chunk in direction.link.release(math.inf):  # what waits keeps its place
            direction.out += chunk
        _add(self._retired_totals[direction.name], direction.link.counters)
        impairment = self._active_impairment()
        rng = link_random(impairment.seed, f"connection{pipe.index}", direction.name)
        direction.link = StreamLink(impairment, rng)

    def _add_info(self, into: dict[str, int], pipe: _Pipe) -> None:
        if pipe.connecting:
            return
        info = tcp_info(pipe.server)
        if info is not None:
            for key, value in info.items():
                into[key] = into.get(key, 0) + value

    def _close(self, pipe: _Pipe, reason: str) -> None:
        if reason:
            self.counters["resets"] += 1
            log.debug("connection %d closed: %s", pipe.index, reason)
        self._add_info(self._retired_info, pipe)
        _add(self._retired_totals["up"], pipe.up.link.counters)
        _add(self._retired_totals["down"], pipe.down.link.counters)
        for sock in (pipe.client, pipe.server):
            fd = sock.fileno()
            if fd >= 0:
                self._pipes.pop(fd, None)
                with contextlib.suppress(KeyError, ValueError):
                    self._poller.unregister(fd)
            sock.close()

    def _close_all(self) -> None:
        for pipe in set(self._pipes.values()):
            self._close(pipe, "")
        self._listener.close()


def make_impair_relay(
    stream: bool,
    listen: Address,
    upstream: Address,
    impairment: Impairment,
    *,
    armed: bool = True,
) -> UdpImpairRelay | TcpImpairRelay:
    """A TCP relay if ``stream``, else a UDP one, bound and ready to serve.

    Raises:
        OSError: the listening address cannot be bound or the upstream not resolved.
    """
    if stream:
        return TcpImpairRelay(listen, upstream, impairment, armed=armed)
    return UdpImpairRelay(listen, upstream, impairment, armed=armed)

"""Serverless chat: peers talking over IP multicast (or broadcast) with no server at all.

Strategy
--------
Every peer sends its frames to one group address and port and hears everyone
else's there, its own included (IP_MULTICAST_LOOP, so peers on one host hear each
other). A datagram is a PEER datagram (:mod:`netchat.protocol.datagram`): a random
8-byte *instance id*, that instance's own sequence number, and one ordinary frame
as JSON, so the console renders peers exactly like a server's users:

* presence: ``Joined(name, ts=when the name was claimed, seq=next sequence number)``,
  sent unsequenced (header seq 0) at start, every heartbeat interval, and whenever a
  newcomer appears (so it learns the room at once). A peer not heard from for
  :data:`MISSED_HEARTBEATS` intervals is shown as ``* bob timed out``.
* chat: ``Message``, ``PrivateMessage`` (every peer receives it; only the peer it is
  addressed to shows it), ``Renamed`` and ``Left``, numbered per instance, so
  receivers detect loss, duplicates and reordering as a relay client does.

Nothing a datagram claims is trusted for display: messages are shown under the name
its instance announced, names must pass :func:`name_problem` and text is sanitised.
One's own datagrams are recognised by the instance id and skipped; what a peer says
is echoed locally, so it is shown exactly once.

Name collisions are resolved without coordination: the claim with the earlier
timestamp (then the smaller instance id) keeps the name; the other peer renames
itself to the first free ``name2``, ``name3``…, and says so to everyone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import CommandError, ConnectError, ConnectionClosed, Rejected, RemoteProtocolError
from .events import call_handler
from .impair import DatagramFilter
from .protocol import datagram as dg
from .protocol.commands import HELP_TEXT, parse_input, split_command
from .protocol.frames import (
    Act,
    Error,
    Frame,
    Help,
    Info,
    Joined,
    Left,
    Message,
    Nick,
    Private,
    PrivateMessage,
    Quit,
    Renamed,
    Say,
    UserList,
    Welcome,
    Who,
    decode_frame,
    encode_frame,
)
from .protocol.limits import MAX_DATAGRAM_BYTES, MAX_TEXT_CHARS
from .protocol.text import name_candidates, name_key, name_problem, sanitize_text
from .transport.base import ClosedHandler, EventHandler
from .transport.waiting import wait_readable

log = logging.getLogger("netchat.peer")

DEFAULT_GROUP = "239.255.80.80"  # administratively scoped (RFC 2365): stays on the site
DEFAULT_PEER_PORT = 8081
#: Seconds between presence announcements.
HEARTBEAT_INTERVAL = 2.0
#: A peer silent for this many intervals has timed out.
MISSED_HEARTBEATS = 3
#: Largest frame a peer sends: one datagram with its header.
MAX_PEER_FRAME = MAX_DATAGRAM_BYTES - dg.HEADERS[dg.Kind.PEER].size


@dataclass
class _Known:
    """Another peer, as we have heard it."""

    name: str
    claimed_at: float
    last_heard: float
    tracker: dg.SequenceTracker[Frame] = field(repr=False)


class Peer:
    """A serverless chat endpoint (:class:`~netchat.transport.base.ChatEndpoint`).

    Args:
        name: the name to use; changed visibly if another peer already has it.
        group: multicast group (or, with ``broadcast``, the broadcast address;
            the default group then means 255.255.255.255).
        port: UDP port shared by all peers.
        interface: local address of the interface to use (``127.0.0.1`` for
            loopback); by default the system chooses.
        broadcast: use broadcast instead of multicast.
        ttl: multicast hops (1: the local network only).
        heartbeat_interval: seconds between presence announcements.
        impairment: a :class:`~netchat.impair.DatagramFilter` every received datagram
            passes through first (``netchat bench`` uses it to drop, delay, duplicate
            and reorder what a peer hears); ``None`` takes datagrams as they come.
    """

    def __init__(
        self,
        name: str,
        *,
        group: str = DEFAULT_GROUP,
        port: int = DEFAULT_PEER_PORT,
        interface: str | None = None,
        broadcast: bool = False,
        ttl: int = 1,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        reorder_window: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        impairment: DatagramFilter | None = None,
    ) -> None:
        self._name = name.strip()
        self.group = group
        self.port = port
        self.interface = interface
        self.broadcast = broadcast
        self.ttl = ttl
        self.heartbeat_interval = heartbeat_interval
        self.reorder_window = reorder_window
        self._clock = clock
        self._wall_clock = wall_clock
        self.instance = os.urandom(8)
        self._claimed_at = 0.0
        self._sock: socket.socket | None = None
        self._destination: tuple[str, int] = (group, port)
        self._lock = threading.Lock()
        self._known: dict[bytes, _Known] = {}
        self._seq = 1
        self._next_presence = 0.0
        self._on_event: EventHandler | None = None
        self._on_closed: ClosedHandler | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._finishing = False
        self._counters: Counter[str] = Counter()
        self._impairment = impairment

    # --- ChatEndpoint ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def start(self, on_event: EventHandler, on_closed: ClosedHandler) -> None:
        """Open the socket, join the group, announce ourselves, start listening.

        Raises:
            Rejected: the name is not valid.
            ConnectError: the group cannot be joined (no multicast route, bad address…).
        """
        problem = name_problem(self._name)
        if problem is not None:
            raise Rejected(problem, code="bad-name")
        self._sock = self._open_socket()
        self._on_event = on_event
        self._on_closed = on_closed
        self._claimed_at = self._wall_clock()
        how = "broadcast" if self.broadcast else "multicast"
        where = f"{how} {self._destination[0]}:{self.port}"
        self._emit(Welcome(self._name, (self._name,), where))
        self._announce()
        self._thread = threading.Thread(target=self._receive_loop, name="netchat-peer", daemon=True)
        self._thread.start()

    def send_line(self, line: str) -> None:
        """Act on what the user typed (see :data:`~netchat.protocol.commands.HELP_TEXT`).

        Raises:
            CommandError: malformed or unknown command.
            ConnectionClosed: the peer was closed.
        """
        if self._stop.is_set() or self._sock is None:
            raise ConnectionClosed("not connected")
        command = split_command(line)
        if command is not None and command[0] == "stats":
            stats = self.stats()
            self._emit(Info("stats: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))))
            return
        self._act(parse_input(line))

    def stats(self) -> dict[str, int]:
        """Datagrams sent/received, and the loss/duplicate/reorder counters over all peers."""
        with self._lock:
            trackers = [known.tracker for known in self._known.values()]
            peers = len(self._known)
        counters = dict(self._counters)
        for counter in ("sent", "received", "invalid"):
            counters.setdefault(counter, 0)
        counters["peers"] = peers
        counters["lost"] = counters.get("lost_gone", 0) + sum(t.lost for t in trackers)
        counters["duplicates"] = counters.get("duplicates_gone", 0) + sum(
            t.duplicates for t in trackers
        )
        counters["reordered"] = counters.get("reordered_gone", 0) + sum(
            t.reordered for t in trackers
        )
        for gone in ("lost_gone", "duplicates_gone", "reordered_gone"):
            counters.pop(gone, None)
        return counters

    def close(self) -> None:
        """Say goodbye to the group, stop listening and close. Idempotent."""
        if self._stop.is_set():
            return
        with contextlib.suppress(OSError, ConnectionClosed):
            self._send_sequenced(Left(self._name, self._wall_clock(), 0, "quit"))
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        self._finish(None)

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    # --- sockets ----------------------------------------------------------------------

    def _open_socket(self) -> socket.socket:
        try:
            group = ipaddress.ip_address(self.group)
            if group.version != 4:
                raise ConnectError("peers use IPv4 multicast or broadcast")
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except ValueError as exc:
            raise ConnectError(f"bad group address {self.group!r}") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):  # several peers on one host share the port
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.broadcast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                target = "255.255.255.255" if group.is_multicast else self.group
                sock.bind(("", self.port))
                self._destination = (target, self.port)
            else:
                if not group.is_multicast:
                    raise ConnectError(f"{self.group} is not a multicast address")
                self._join_group(sock)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConnectError(
                f"cannot join {self.group}:{self.port}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def _join_group(self, sock: socket.socket) -> None:
        try:
            # Bound to the group itself, the socket receives only the group's traffic.
            sock.bind((self.group, self.port))
        except OSError:  # pragma: no cover - systems that cannot bind a group address
            sock.bind(("", self.port))
        local = socket.inet_aton(self.interface or "0.0.0.0")
        sock.setsockopt(
            socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(self.group) + local
        )
        if self.interface:
            # Without this the kernel sends by the routing table (the default route):
            # the loopback interface has no multicast route of its own.
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)

    def _send(self, datagram: bytes) -> None:
        sock = self._sock
        if sock is None or self._stop.is_set():
            raise ConnectionClosed("not connected")
        try:
            sock.sendto(datagram, self._destination)
        except BlockingIOError:
            self._counters["send_dropped"] += 1
            return
        self._counters["sent"] += 1

    def _send_sequenced(self, frame: Frame) -> bool:
        payload = encode_frame(frame)
        if len(payload) > MAX_PEER_FRAME:
            self._emit(
                Error(
                    "too-large",
                    f"message not sent: {len(payload)} bytes encoded, but a datagram holds"
                    f" {MAX_PEER_FRAME}; shorten it",
                )
            )
            return False
        with self._lock:
            seq = self._seq
            self._seq += 1
        self._send(dg.encode_peer(self.instance, seq, payload))
        return True

    def _announce(self) -> None:
        with self._lock:
            presence = Joined(self._name, self._claimed_at, self._seq)
        self._next_presence = self._clock() + self.heartbeat_interval
        with contextlib.suppress(OSError, ConnectionClosed):
            self._send(dg.encode_peer(self.instance, 0, encode_frame(presence)))

    # --- what the user does -------------------------------------------------------------

    def _act(self, frame: Frame) -> None:
        now = self._wall_clock()
        if isinstance(frame, (Say, Act)):
            text = sanitize_text(frame.text).strip()
            if len(text) > MAX_TEXT_CHARS:
                self._emit(Error("too-long", f"message of {len(text)} characters not sent"))
            elif text:
                message = Message(self._name, text, now, 0, isinstance(frame, Act))
                if self._send_sequenced(message):
                    self._emit(message)
        elif isinstance(frame, Private):
            target = self._find(frame.to.strip())
            text = sanitize_text(frame.text).strip()
            if target is None:
                self._emit(
                    Error(
                        "no-such-user",
                        f"no peer named {sanitize_text(frame.to)!r}; /who lists who is here",
                    )
                )
            elif text:
                private = PrivateMessage(self._name, target, text, now, 0)
                if self._send_sequenced(private):
                    self._emit(private)
        elif isinstance(frame, Nick):
            self._rename(frame.name.strip())
        elif isinstance(frame, Who):
            self._emit(UserList(self._names()))
        elif isinstance(frame, Help):
            self._emit(Info(HELP_TEXT))
        elif isinstance(frame, Quit):
            self.close()
        else:  # pragma: no cover - parse_input makes nothing else
            raise CommandError(f"a peer cannot send {frame.TYPE!r}")

    def _names(self) -> tuple[str, ...]:
        with self._lock:
            return (self._name, *sorted(k.name for k in self._known.values()))

    def _find(self, name: str) -> str | None:
        key = name_key(name)
        if key == name_key(self._name):
            return self._name
        with self._lock:
            for known in self._known.values():
                if name_key(known.name) == key:
                    return known.name
        return None

    def _rename(self, new: str, *, reason: str = "") -> None:
        problem = name_problem(new)
        if problem is not None:
            self._emit(Error("bad-name", problem))
            return
        if name_key(new) != name_key(self._name) and self._find(new) is not None:
            self._emit(Error("name-taken", f"another peer is called {new!r}"))
            return
        old = self._name
        renamed = Renamed(old, new, self._wall_clock(), 0)
        with self._lock:
            self._name = new
            self._claimed_at = renamed.ts
        with contextlib.suppress(OSError, ConnectionClosed):
            self._send_sequenced(renamed)
        if reason:
            self._emit(Info(reason))
        self._emit(renamed)

    # --- what the group says ------------------------------------------------------------

    def _receive_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while not self._stop.is_set():
                readable = wait_readable([sock], self._wait_time())
                if readable:
                    self._drain(sock)
                self._tick(self._clock())
        except (OSError, ValueError) as exc:
            if not self._stop.is_set():
                log.warning("peer socket failed: %s", exc)
                self._stop.set()
                self._finish(f"network error: {exc}")

    def _wait_time(self) -> float:
        now = self._clock()
        moments = [self._next_presence]
        if self._impairment is not None and (due := self._impairment.next_due()) is not None:
            moments.append(due)
        with self._lock:
            for known in self._known.values():
                deadline = known.tracker.deadline()
                if deadline is not None:
                    moments.append(deadline)
        return min(0.25, max(0.005, min(moments) - now))

    def _drain(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data = sock.recv(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            if self._impairment is not None:  # it hands the datagram back when due
                self._impairment.offer(data, self._clock())
            else:
                self._take(data)

    def _take(self, data: bytes) -> None:
        self._counters["received"] += 1
        try:
            self._on_datagram(data, self._clock())
        except RemoteProtocolError:
            self._counters["invalid"] += 1

    def _on_datagram(self, data: bytes, now: float) -> None:
        datagram = dg.decode_datagram(data)
        if not isinstance(datagram, dg.PeerData):
            raise RemoteProtocolError(f"not a peer datagram: {type(datagram).__name__}")
        if datagram.instance == self.instance:
            self._counters["own"] += 1  # our own, looped back: already shown
            return
        frame = decode_frame(datagram.payload)
        if datagram.seq == 0:
            if not isinstance(frame, Joined):
                raise RemoteProtocolError("only presence may be unsequenced")
            self._on_presence(datagram.instance, frame, now)
            return
        with self._lock:
            known = self._known.get(datagram.instance)
        if known is None:
            if isinstance(frame, Left):
                return  # someone we never saw is leaving
            sender = frame.sender if isinstance(frame, (Message, PrivateMessage)) else ""
            sender = frame.new if isinstance(frame, Renamed) else sender
            if name_problem(sender) is not None:
                raise RemoteProtocolError("sequenced frame from an unknown peer without a name")
            # Heard before its presence (we just started): take it in, claim time unknown.
            known = self._add(datagram.instance, sender, float("inf"), datagram.seq, now)
        known.last_heard = now
        for item in known.tracker.accept(datagram.seq, frame, now):
            self._on_sequenced(datagram.instance, known, item)

    def _on_presence(self, instance: bytes, presence: Joined, now: float) -> None:
        if name_problem(presence.name) is not None:
            raise RemoteProtocolError("presence with an invalid name")
        with self._lock:
            known = self._known.get(instance)
        if known is None:
            self._add(instance, presence.name, presence.ts, presence.seq, now)
            self._announce()  # let the newcomer learn about us right away
        else:
            known.last_heard = now
            known.claimed_at = presence.ts
            if known.name != presence.name:  # we missed its rename
                old, known.name = known.name, presence.name
                self._emit(Renamed(old, presence.name, presence.ts, 0))
            for item in known.tracker.advance_to(presence.seq, now):
                self._on_sequenced(instance, known, item)
        self._check_collision(instance, presence)

    def _add(self, instance: bytes, name: str, claimed_at: float, seq: int, now: float) -> _Known:
        tracker: dg.SequenceTracker[Frame] = dg.SequenceTracker(
            max(seq, 1), reorder_window=self.reorder_window
        )
        known = _Known(name, claimed_at, now, tracker)
        with self._lock:
            self._known[instance] = known
        self._emit(Joined(name, self._wall_clock(), 0))
        return known

    def _check_collision(self, instance: bytes, presence: Joined) -> None:
        if name_key(presence.name) != name_key(self._name):
            return
        with self._lock:
            ours = (self._claimed_at, self.instance)
        if (presence.ts, instance) >= ours:
            return  # our claim is older: they will move
        taken = {name_key(n) for n in self._names()}
        new = next(c for c in name_candidates(self._name) if name_key(c) not in taken)
        self._rename(
            new,
            reason=f"another peer was already called {self._name}; you are now {new}",
        )

    def _on_sequenced(self, instance: bytes, known: _Known, item: Frame | dg.Gap) -> None:
        if isinstance(item, dg.Gap):
            self._emit(Info(f"{lost_text(item.count)} from {known.name}"))
            return
        frame = item
        if isinstance(frame, Message):
            text = sanitize_text(frame.text)[:MAX_TEXT_CHARS]
            self._emit(Message(known.name, text, frame.ts, frame.seq, frame.action))
        elif isinstance(frame, PrivateMessage):
            if name_key(frame.to) == name_key(self._name):
                text = sanitize_text(frame.text)[:MAX_TEXT_CHARS]
                self._emit(PrivateMessage(known.name, self._name, text, frame.ts, frame.seq))
        elif isinstance(frame, Renamed):
            if name_problem(frame.new) is None and frame.new != known.name:
                old, known.name = known.name, frame.new
                known.claimed_at = frame.ts
                self._emit(Renamed(old, frame.new, frame.ts, 0))
        elif isinstance(frame, Left):
            self._forget(instance, known, "quit")
        else:
            self._counters["invalid"] += 1

    def _forget(self, instance: bytes, known: _Known, reason: str) -> None:
        with self._lock:
            if self._known.pop(instance, None) is None:
                return
        # Keep the counters of peers that left in the totals.
        self._counters["lost_gone"] += known.tracker.lost
        self._counters["duplicates_gone"] += known.tracker.duplicates
        self._counters["reordered_gone"] += known.tracker.reordered
        self._emit(Left(known.name, self._wall_clock(), 0, reason))

    def _tick(self, now: float) -> None:
        if self._impairment is not None:
            for data in self._impairment.release(now):
                self._take(data)
        if now >= self._next_presence:
            self._announce()
        with self._lock:
            known_peers = list(self._known.items())
        silent_after = MISSED_HEARTBEATS * self.heartbeat_interval
        for instance, known in known_peers:
            if now - known.last_heard > silent_after:
                self._forget(instance, known, "timeout")
                continue
            for item in known.tracker.poll(now):
                self._on_sequenced(instance, known, item)

    # --- plumbing ------------------------------------------------------------------------

    def _emit(self, frame: Frame) -> None:
        call_handler(self._on_event, frame, log)

    def _finish(self, reason: str | None) -> None:
        with self._lock:
            if self._finishing:
                return
            self._finishing = True
        if self._sock is not None:
            self._sock.close()
        call_handler(self._on_closed, reason, log)
        self._ended.set()


def lost_text(count: int) -> str:
    """``2 messages lost``."""
    return f"{count} message{'s' if count != 1 else ''} lost"

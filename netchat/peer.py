"""Serverless chat: peers talking over IP multicast (or broadcast) with no server at all.

Strategy
--------
Every peer sends its frames to one group address and port and hears everyone
else's there, its own included (IP_MULTICAST_LOOP, so peers on one host hear each
other). A datagram is a PEER datagram (:mod:`netchat.protocol.datagram`): a random
8-byte *instance id*, that instance's own sequence number, and one ordinary frame
as JSON, so the console renders peers exactly like a server's users:

* presence: ``Joined(name, ts=when the name was claimed, seq=next sequence number)``,
  sent unsequenced (header seq 0) at start, every heartbeat interval, and soon
  after a newcomer appears (so it learns the room at once). A peer not heard from
  for :data:`MISSED_HEARTBEATS` intervals is shown as ``-!- bob timed out``.
* chat: ``Message``, ``PrivateMessage`` (every peer receives it; only the peer it is
  addressed to shows it), ``Renamed`` and ``Left``, numbered per instance, so
  receivers detect loss, duplicates and reordering as a relay client does.

Without a shared secret anyone on the group can send anything, so a peer trusts
little and keeps everything bounded:

* **Instances are bound to their source.** Each peer sends from a socket of its own
  (an ephemeral port, which nobody else can bind), and the first address:port an
  instance id is heard from is the only one accepted for it: copying someone's
  instance id does not let a stranger speak, rename or leave in her name.
* **A newcomer is shown once heard twice.** One datagram from an unknown instance
  makes it a *newcomer* (not shown, kept at most :data:`NEWCOMER_EXPIRY` heartbeat
  intervals, at most :data:`MAX_NEWCOMERS` of them and :data:`MAX_NEWCOMERS_PER_HOST`
  per address; a full table refuses more until they expire or become peers), so a
  flood of fake ids heard once each costs a fixed table and shows nothing, and a
  larger crowd joins a table-full at a time. A second datagram from the same source
  makes it a peer (at most :data:`MAX_PEERS`).
* **Replies are rate-limited.** A newcomer brings our next announcement forward,
  never closer than :data:`REPLY_SPACING` intervals to the previous one, so a flood
  of newcomers draws a handful of announcements, not one each.
* **A sequence jump silences no one.** A peer's presence says which number it will
  send next; if forged units pushed our tracker far beyond it, the tracker restarts
  there.
* **A name is kept by whoever holds it.** Once we have announced our name for a
  heartbeat interval it is ours: a later claim to it, whatever timestamp it carries,
  does not move us; we (and every peer that knew us first) show the claimant as
  ``alice#3f2a`` (its name, ``#`` and the start of its instance id: not a valid name,
  so nobody can hold it). Two peers that claim one name within their first interval
  (started together) resolve it as before: the earlier claim (then the smaller
  instance id) keeps it, the other renames itself to the first free ``name2``,
  ``name3``… and says so.

With a password (``password=``, the CLI's ``--password``) every datagram is sealed
under the sender's own key (:class:`~netchat.protocol.envelope.SealedGroup`: the
password stretched under a salt of the group address and port, then one key per
instance id) and opened before anything above looks at it: a datagram that does not
open — a stranger's, a forgery, a replay, a peer without the password — is dropped
and counted (``forged``, ``replayed``, ``unsealed``), never shown. Members still
trust each other: the rules above keep applying between them.

Nothing a datagram claims is trusted for display: messages are shown under the name
its instance announced, names must pass :func:`name_problem` and text is sanitised.
One's own datagrams are recognised by the instance id and skipped; what a peer says
is echoed locally, so it is shown exactly once. No datagram can end the receive
thread: a malformed one is counted (``invalid``), and should one trip a bug, the
error is logged and counted (``errors``) and the peer keeps listening.
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
from typing import cast

from .errors import (
    AuthenticationFailed,
    CommandError,
    ConnectError,
    ConnectionClosed,
    LocalProtocolError,
    Rejected,
    RemoteProtocolError,
    ReplayedDatagram,
)
from .events import call_handler
from .impair import DatagramFilter
from .protocol import datagram as dg
from .protocol.commands import HELP_TEXT, parse_input, split_command
from .protocol.envelope import CLEAR, Envelope, SealedGroup
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
from .protocol.limits import MAX_DATAGRAM_BYTES, MAX_NAME_CHARS, MAX_TEXT_CHARS
from .protocol.seal import SEALED_VERSION, ChatKey, group_salt
from .protocol.text import (
    name_candidates,
    name_key,
    name_keys,
    name_problem,
    names_clash,
    normalize_name,
    quote_input,
    repair_name,
    sanitize_text,
)
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
#: Most peers we keep; a newcomer beyond them is ignored until someone leaves.
MAX_PEERS = 256
#: Most instances heard only once that we keep (see the module docstring).
MAX_NEWCOMERS = 64
#: Most of those from one address: one host spraying ids cannot crowd out the others.
MAX_NEWCOMERS_PER_HOST = 8
#: Heartbeat intervals after which an instance heard only once is forgotten.
NEWCOMER_EXPIRY = 2.0
#: Least gap between two announcements, in heartbeat intervals.
REPLY_SPACING = 0.125
#: Units a presence may trail data sent after it (reordering on the network).
REORDER_SLACK = 64
#: Longest ``/quit`` reason sent to the group, in characters.
MAX_REASON_CHARS = 200

Address = tuple[str, int]


@dataclass
class _Newcomer:
    """An instance heard once: not shown until heard again from the same address."""

    address: Address
    heard_at: float
    claim: str
    claimed_at: float
    first_seq: int
    frame: Frame | None  # a sequenced frame it sent, shown if it becomes a peer


@dataclass
class _Known:
    """Another peer, as we have heard it."""

    address: Address
    claim: str  # the name it claims
    name: str  # the name we show: its claim, or claim#tag while another holds that name
    claimed_at: float
    last_heard: float
    tracker: dg.SequenceTracker[Frame] = field(repr=False)
    warned: bool = False  # told our user that it claims our name


class Peer:
    """A serverless chat endpoint (:class:`~netchat.transport.base.ChatEndpoint`).

    Args:
        name: the name to use; changed visibly if another peer already holds it.
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
        password: the group's password: only peers that know it are heard, and only
            they can read us (None or empty: an open group).
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
        password: str | None = None,
    ) -> None:
        self._name = normalize_name(name)
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
        self._claimed_at = 0.0  # wall clock, announced: breaks ties between new claims
        self._holds_name_from = 0.0  # monotonic: from then on our name is ours to keep
        self._sock: socket.socket | None = None  # bound to the group: receives
        self._send_sock: socket.socket | None = None  # our own port: others bind us to it
        self._destination: Address = (group, port)
        self._lock = threading.Lock()
        self._known: dict[bytes, _Known] = {}
        self._newcomers: dict[bytes, _Newcomer] = {}
        self._seq = 1
        self._next_presence = 0.0
        self._last_presence = float("-inf")
        self._full_warned = False
        self._on_event: EventHandler | None = None
        self._on_closed: ClosedHandler | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._finishing = False
        self._counters: Counter[str] = Counter()
        self._impairment = impairment
        self._password = password or None
        #: how our datagrams travel: sealed once start() has derived the group's key
        self._envelope: Envelope = CLEAR
        self._max_frame = MAX_PEER_FRAME
        self._strangers_told = False  # told the user about peers of the other kind

    # --- ChatEndpoint ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def start(self, on_event: EventHandler, on_closed: ClosedHandler) -> None:
        """Open the sockets, join the group, announce ourselves, start listening.

        Raises:
            Rejected: the name is not valid.
            ConnectError: the group cannot be joined (no multicast route, bad address…).
        """
        problem = name_problem(self._name)
        if problem is not None:
            raise Rejected(problem, code="bad-name")
        if self._password is not None:
            self._envelope = self._seal_with(self._password)
            self._max_frame = MAX_PEER_FRAME - self._envelope.overhead
        self._sock, self._send_sock = self._open_sockets()
        self._on_event = on_event
        self._on_closed = on_closed
        self._claim_name(self._name)
        how = "broadcast" if self.broadcast else "multicast"
        where = f"{how} {self._destination[0]}:{self.port}"
        if self._envelope.sealed:
            where += ", sealed with the password"
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
            newcomers = len(self._newcomers)
        counters = dict(self._counters)
        for counter in ("sent", "received", "invalid", "errors"):
            counters.setdefault(counter, 0)
        if self._envelope.sealed:  # what did not open
            for counter in ("forged", "replayed", "unsealed"):
                counters.setdefault(counter, 0)
        counters["peers"] = peers
        counters["newcomers"] = newcomers
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
        self._leave("")

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def receive_datagram(self, data: bytes, source: Address, now: float | None = None) -> None:
        """Act on one datagram heard on the group from ``source`` (``now``: our clock).

        The receive thread calls this for every datagram. It never raises: a
        malformed datagram is counted as ``invalid``; anything else that goes wrong
        is logged and counted as ``errors``, and the peer keeps listening.
        """
        self._counters["received"] += 1
        try:
            self._on_datagram(data, source, self._clock() if now is None else now)
        except AuthenticationFailed:
            self._counters["forged"] += 1
        except ReplayedDatagram:
            self._counters["replayed"] += 1
        except RemoteProtocolError:
            layout = data[2] if len(data) > 2 and data[:2] == dg.MAGIC else None
            if layout == (dg.DATAGRAM_VERSION if self._envelope.sealed else SEALED_VERSION):
                self._other_kind_heard()
            else:
                self._counters["invalid"] += 1
        except Exception:
            self._counters["errors"] += 1
            log.exception("datagram from %s:%s not handled", *source[:2])

    def _seal_with(self, password: str) -> SealedGroup:
        """The group's envelope: scrypt (~80 ms) under the group's own salt.

        Raises:
            ConnectError: the password is unusable, or the group is not an address.
        """
        try:
            chat_key = ChatKey.derive(password, group_salt(self.group, self.port))
        except LocalProtocolError as exc:
            raise ConnectError(f"cannot use that password: {exc}") from None
        return SealedGroup(chat_key, self.instance)

    def _other_kind_heard(self) -> None:
        """A datagram of the other kind (sealed when we are not, or the reverse): counted,
        and the user is told once that such peers are on the group."""
        sealed = self._envelope.sealed
        self._counters["unsealed" if sealed else "sealed_unreadable"] += 1
        if self._strangers_told:
            return
        self._strangers_told = True
        if sealed:
            text = "peers without the password are on this group: they are not shown"
        else:
            text = "peers with a password are on this group; without it we cannot read them"
        self._emit(Info(text))

    # --- sockets ----------------------------------------------------------------------

    def _open_sockets(self) -> tuple[socket.socket, socket.socket]:
        try:
            group = ipaddress.ip_address(self.group)
        except ValueError as exc:
            raise ConnectError(f"bad group address {self.group!r}") from exc
        if group.version != 4:
            raise ConnectError("peers use IPv4 multicast or broadcast")
        if not self.broadcast and not group.is_multicast:
            raise ConnectError(f"{self.group} is not a multicast address")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):  # several peers on one host share the port
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.broadcast:
                sock.bind(("", self.port))
                sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                target = "255.255.255.255" if group.is_multicast else self.group
                self._destination = (target, self.port)
            else:
                self._join_group(sock, sender)
            # The sender gets an ephemeral port of its own now, so the address others
            # bind our instance to is ours alone (see the module docstring).
            sender.bind((self.interface or "", 0))
            sock.setblocking(False)
            sender.setblocking(False)
        except OSError as exc:
            sock.close()
            sender.close()
            raise ConnectError(
                f"cannot join {self.group}:{self.port}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            sock.close()
            sender.close()
            raise
        return sock, sender

    def _join_group(self, sock: socket.socket, sender: socket.socket) -> None:
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
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)

    def _send(self, datagram: bytes) -> None:
        sock = self._send_sock
        if sock is None or self._stop.is_set():
            raise ConnectionClosed("not connected")
        try:
            sock.sendto(self._envelope.seal(datagram), self._destination)
        except BlockingIOError:
            self._counters["send_dropped"] += 1
            return
        self._counters["sent"] += 1

    def _send_sequenced(self, frame: Frame) -> bool:
        payload = encode_frame(frame)
        if len(payload) > self._max_frame:
            self._emit(
                Error(
                    "too-large",
                    f"message not sent: {len(payload)} bytes encoded, but a datagram holds"
                    f" {self._max_frame}; shorten it",
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
        now = self._clock()
        self._last_presence = now
        self._next_presence = now + self.heartbeat_interval
        with contextlib.suppress(OSError, ConnectionClosed):
            self._send(dg.encode_peer(self.instance, 0, encode_frame(presence)))

    def _announce_soon(self, now: float) -> None:
        """A newcomer should learn about us: announce soon, but never in a flood."""
        soonest = self._last_presence + REPLY_SPACING * self.heartbeat_interval
        self._next_presence = min(self._next_presence, max(now, soonest))

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
            self._private(frame, now)
        elif isinstance(frame, Nick):
            self._rename(normalize_name(frame.name))
        elif isinstance(frame, Who):
            self._emit(UserList(self._names()))
        elif isinstance(frame, Help):
            self._emit(Info(HELP_TEXT))
        elif isinstance(frame, Quit):
            self._leave(frame.reason)
        else:  # pragma: no cover - parse_input makes nothing else
            raise CommandError(f"a peer cannot send {frame.TYPE!r}")

    def _private(self, frame: Private, now: float) -> None:
        text = sanitize_text(frame.text).strip()
        wanted = frame.to.strip()
        if name_key(wanted) == name_key(self._name):
            target: str | None = self._name
        else:
            known = self._find(wanted)
            if known is not None and known.name != known.claim:
                self._emit(
                    Error(
                        "no-such-user",
                        f"{quote_input(known.name)} claims a name another peer holds;"
                        " private messages to it are not sent",
                    )
                )
                return
            target = None if known is None else known.claim
        if target is None:
            self._emit(
                Error(
                    "no-such-user",
                    f"no peer named {quote_input(frame.to)}; /who lists who is here",
                )
            )
        elif text:
            private = PrivateMessage(self._name, target, text, now, 0)
            if self._send_sequenced(private):
                self._emit(private)

    def _names(self) -> tuple[str, ...]:
        with self._lock:
            return (self._name, *sorted(k.name for k in self._known.values()))

    def _find(self, name: str) -> _Known | None:
        """The peer shown as ``name`` (case and look-alikes aside)."""
        key = name_key(name)
        with self._lock:
            known_peers = list(self._known.values())
        for known in known_peers:
            if name_key(known.name) == key:
                return known
        for known in known_peers:
            if known.name == known.claim and names_clash(name, known.claim):
                return known
        return None

    def _claim_name(self, name: str) -> None:
        with self._lock:
            self._name = name
            self._claimed_at = self._wall_clock()
        # Everyone has heard the claim after one interval; from then on it is ours.
        self._holds_name_from = self._clock() + self.heartbeat_interval

    def _rename(self, new: str, *, reason: str = "") -> None:
        problem = name_problem(new)
        if problem is not None:
            self._emit(Error("bad-name", problem))
            return
        if not names_clash(new, self._name) and self._claimed_by_another(new):
            self._emit(Error("name-taken", f"another peer is called {quote_input(new)}"))
            return
        old = self._name
        self._claim_name(new)
        renamed = Renamed(old, new, self._claimed_at, 0)
        with contextlib.suppress(OSError, ConnectionClosed):
            self._send_sequenced(renamed)
        if reason:
            self._emit(Info(reason))
        self._emit(renamed)
        self._refresh_names()

    def _claimed_by_another(self, name: str) -> bool:
        with self._lock:
            claims = [known.claim for known in self._known.values()]
        return any(names_clash(name, claim) for claim in claims)

    def _leave(self, reason: str) -> None:
        if self._stop.is_set():
            return
        detail = sanitize_text(reason).strip()[:MAX_REASON_CHARS]
        with contextlib.suppress(OSError, ConnectionClosed):
            self._send_sequenced(Left(self._name, self._wall_clock(), 0, "quit", detail))
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        self._finish(None)

    # --- what the group says ------------------------------------------------------------

    def _receive_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while not self._stop.is_set():
                readable = wait_readable([sock], self._wait_time())
                if readable:
                    self._drain(sock)
                try:
                    self._tick(self._clock())
                except Exception:  # same rule as receive_datagram: keep listening
                    self._counters["errors"] += 1
                    log.exception("peer housekeeping failed")
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
                data, source = sock.recvfrom(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            if self._impairment is not None:  # it hands the datagram back when due
                self._impairment.offer(data, self._clock(), source[:2])
            else:
                self.receive_datagram(data, source[:2], self._clock())

    def _on_datagram(self, data: bytes, source: Address, now: float) -> None:
        datagram = dg.decode_datagram(self._envelope.open(data))
        if not isinstance(datagram, dg.PeerData):
            raise RemoteProtocolError(f"not a peer datagram: {type(datagram).__name__}")
        if datagram.instance == self.instance:
            self._counters["own"] += 1  # our own, looped back: already shown
            return
        frame = decode_frame(datagram.payload)
        if datagram.seq == 0 and not isinstance(frame, Joined):
            raise RemoteProtocolError("only presence may be unsequenced")
        known = self._known.get(datagram.instance)
        if known is None:
            known = self._on_stranger(datagram.instance, source, datagram.seq, frame, now)
            if known is None:
                return
        elif known.address != source:
            self._counters["spoofed"] += 1  # its id, another address: not her
            return
        known.last_heard = now
        if datagram.seq == 0:
            assert isinstance(frame, Joined)
            self._on_presence(datagram.instance, known, frame, now)
            return
        for item in known.tracker.accept(datagram.seq, frame, now):
            self._on_sequenced(datagram.instance, known, item)

    def _on_stranger(
        self, instance: bytes, source: Address, seq: int, frame: Frame, now: float
    ) -> _Known | None:
        """A datagram from an instance that is not (yet) a peer; the peer if it now is."""
        if isinstance(frame, Left):
            self._newcomers.pop(instance, None)
            return None  # someone we never saw is leaving
        claim = _claimed_name(frame)
        if name_problem(claim) is not None:
            raise RemoteProtocolError("a datagram from an unknown peer without a valid name")
        # A presence or rename says what it claims and since when; a message's sender
        # only names it for want of better (claimed at "never", so it yields).
        claims = isinstance(frame, (Joined, Renamed))
        claimed_at = frame.ts if isinstance(frame, (Joined, Renamed)) else float("inf")
        newcomer = self._newcomers.get(instance)
        if newcomer is not None and newcomer.address != source:
            self._counters["spoofed"] += 1
            return None
        if claims:
            self._check_collision(instance, claim, claimed_at)
        if newcomer is None:
            first_seq = frame.seq if isinstance(frame, Joined) else seq
            kept = None if isinstance(frame, Joined) else frame
            self._add_newcomer(
                instance, _Newcomer(source, now, claim, claimed_at, max(first_seq, 1), kept)
            )
            self._announce_soon(now)
            return None
        if claims:  # the latest claim is the one to show
            newcomer.claim, newcomer.claimed_at = claim, claimed_at
        with self._lock:
            full = len(self._known) >= MAX_PEERS
            if full:
                self._newcomers.pop(instance, None)
        if full:
            self._counters["peers_refused"] += 1
            if not self._full_warned:
                self._full_warned = True
                self._emit(Info(f"more than {MAX_PEERS} peers: newcomers are ignored for now"))
            return None
        return self._confirm(instance, newcomer, now)

    def _add_newcomer(self, instance: bytes, newcomer: _Newcomer) -> None:
        # A full table refuses the newcomer instead of evicting an older one: a crowd
        # larger than the table (netchat bench starts 20 or 50 peers on one host) then
        # evicted each other before anyone was heard twice, and nobody ever joined.
        # Refused, a newcomer is heard again at its next announcement, by when the
        # first ones have become peers and made room; one-off ids expire.
        host = newcomer.address[0]
        with self._lock:
            same_host = sum(1 for n in self._newcomers.values() if n.address[0] == host)
            full = same_host >= MAX_NEWCOMERS_PER_HOST or len(self._newcomers) >= MAX_NEWCOMERS
            if not full:
                self._newcomers[instance] = newcomer
        self._counters["newcomers_refused" if full else "newcomers_heard"] += 1

    def _confirm(self, instance: bytes, newcomer: _Newcomer, now: float) -> _Known:
        """Heard twice from one address: a peer. Show it, and answer so it learns us."""
        self._check_collision(instance, newcomer.claim, newcomer.claimed_at)
        tracker: dg.SequenceTracker[Frame] = dg.SequenceTracker(
            newcomer.first_seq, reorder_window=self.reorder_window
        )
        shown = self._shown_name(instance, newcomer.claim)
        known = _Known(newcomer.address, newcomer.claim, shown, newcomer.claimed_at, now, tracker)
        with self._lock:
            self._newcomers.pop(instance, None)
            self._known[instance] = known
        self._emit(Joined(shown, self._wall_clock(), 0))
        self._announce_soon(now)
        if newcomer.frame is not None:
            for item in tracker.accept(newcomer.first_seq, newcomer.frame, now):
                self._on_sequenced(instance, known, item)
        return known

    def _on_presence(self, instance: bytes, known: _Known, presence: Joined, now: float) -> None:
        if name_problem(presence.name) is not None:
            raise RemoteProtocolError("presence with an invalid name")
        if presence.seq + REORDER_SLACK < known.tracker.next_seq:
            # We are far past what it says it has sent: forged units pushed its
            # tracker ahead. Start again where it really is, so it is heard again.
            self._counters["resynced"] += 1
            self._retire_tracker(known)
            known.tracker = dg.SequenceTracker(
                max(presence.seq, 1), reorder_window=self.reorder_window
            )
        self._check_collision(instance, presence.name, presence.ts)
        self._set_claim(instance, known, normalize_name(presence.name), presence.ts)
        for item in known.tracker.advance_to(presence.seq, now):
            self._on_sequenced(instance, known, item)

    def _set_claim(self, instance: bytes, known: _Known, claim: str, claimed_at: float) -> None:
        changed = claim != known.claim
        known.claim = claim
        known.claimed_at = claimed_at
        if not changed and known.name == claim:
            return  # the usual heartbeat: nothing to look up
        shown = self._shown_name(instance, claim)
        if shown != known.name:
            old, known.name = known.name, shown
            self._emit(Renamed(old, shown, self._wall_clock(), 0))
        if changed:
            self._refresh_names()  # its old name may be free for someone shown as name#tag

    def _shown_name(self, instance: bytes, claim: str) -> str:
        """``claim``, or ``claim#tag`` while we or another peer we know holds that name."""
        held = names_clash(claim, self._name)
        if not held:
            with self._lock:
                holders = [
                    known.claim
                    for other, known in self._known.items()
                    if other != instance and known.name == known.claim
                ]
            held = any(names_clash(claim, holder) for holder in holders)
        return f"{claim}#{instance[:2].hex()}" if held else claim

    def _refresh_names(self) -> None:
        """Names may have come free (a holder left or renamed): show them as claimed."""
        with self._lock:
            known_peers = list(self._known.items())
        for instance, known in known_peers:
            if known.name != known.claim:
                self._set_claim(instance, known, known.claim, known.claimed_at)

    def _check_collision(self, instance: bytes, claim: str, claimed_at: float) -> None:
        if not names_clash(claim, self._name):
            return
        if self._clock() >= self._holds_name_from:
            known = self._known.get(instance)
            if known is not None and not known.warned:
                known.warned = True
                self._emit(
                    Info(
                        f"another peer ({known.address[0]}) also calls itself"
                        f" {quote_input(claim)}; you keep your name, and it is shown as"
                        f" {claim}#{instance[:2].hex()}"
                    )
                )
            return
        with self._lock:
            ours = (self._claimed_at, self.instance)
        if (claimed_at, instance) >= ours:
            return  # our claim is older: they will move
        new = self._free_name(claim)
        self._rename(
            new,
            reason=f"another peer was already called {self._name}; you are now {new}",
        )

    def _free_name(self, taken_name: str) -> str:
        """The first of our name's candidates nobody claims (always returns one)."""
        with self._lock:
            claims = [taken_name, *(known.claim for known in self._known.values())]
        keys = [name_keys(claim) for claim in claims]
        folds = {key.fold for key in keys}
        shapes = {key.shape for key in keys}
        for candidate in name_candidates(self._name):
            key = name_keys(candidate)
            if key.fold not in folds and key.shape not in shapes:
                return candidate
        # Every numbered variant is taken (a hostile group): a random one is free.
        suffix = "-" + os.urandom(3).hex()
        base = repair_name(self._name)[: MAX_NAME_CHARS - len(suffix)]
        candidate = base + suffix
        return candidate if name_problem(candidate) is None else "guest" + suffix

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
            new = normalize_name(frame.new)
            if name_problem(new) is None and new != known.claim:
                self._check_collision(instance, new, frame.ts)
                self._set_claim(instance, known, new, frame.ts)
        elif isinstance(frame, Left):
            detail = sanitize_text(frame.detail).strip()[:MAX_REASON_CHARS]
            self._forget(instance, known, "quit", detail)
        else:
            self._counters["invalid"] += 1

    def _retire_tracker(self, known: _Known) -> None:
        # Keep the counters of trackers we drop in the totals.
        self._counters["lost_gone"] += known.tracker.lost
        self._counters["duplicates_gone"] += known.tracker.duplicates
        self._counters["reordered_gone"] += known.tracker.reordered

    def _forget(self, instance: bytes, known: _Known, reason: str, detail: str = "") -> None:
        with self._lock:
            if self._known.pop(instance, None) is None:
                return
            if len(self._known) < MAX_PEERS:
                self._full_warned = False
        self._retire_tracker(known)
        self._emit(Left(known.name, self._wall_clock(), 0, reason, detail))
        self._refresh_names()

    def _tick(self, now: float) -> None:
        if self._impairment is not None:
            for data, source in self._impairment.release_tagged(now):
                self.receive_datagram(data, cast(Address, source), now)
        if now >= self._next_presence:
            self._announce()
        expiry = NEWCOMER_EXPIRY * self.heartbeat_interval
        with self._lock:
            for instance in [i for i, n in self._newcomers.items() if now - n.heard_at > expiry]:
                del self._newcomers[instance]
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
        for sock in (self._sock, self._send_sock):
            if sock is not None:
                sock.close()
        call_handler(self._on_closed, reason, log)
        self._ended.set()


def _claimed_name(frame: Frame) -> str:
    """The name a frame from an unknown instance says its sender has ('' if none)."""
    if isinstance(frame, Joined):
        return normalize_name(frame.name)
    if isinstance(frame, (Message, PrivateMessage)):
        return normalize_name(frame.sender)
    if isinstance(frame, Renamed):
        return normalize_name(frame.new)
    return ""


def lost_text(count: int) -> str:
    """``2 messages lost``."""
    return f"{count} message{'s' if count != 1 else ''} lost"

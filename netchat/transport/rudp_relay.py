"""The reliable UDP relay (``--proto rudp``): the UDP relay plus a sender and a receiver
per member.

Strategy
--------
Everything :class:`~netchat.transport.udp_relay.UdpRelayServer` does stays: one
socket, one thread, the stateless cookie join, heartbeats, BYE, the hub's stream log,
the batching of what a member is owed into few datagrams. This subclass changes what
happens to a member's traffic in the two places where reliability enters:

* **In**: DATA from a member goes to its :class:`~netchat.protocol.reliable.Receiver`,
  which hands back the frames now complete and in order, exactly once; those go to
  the member's :class:`~netchat.session.ServerSession` as units. An ACK goes to the
  member's :class:`~netchat.protocol.reliable.Sender`.
* **Out**: what the session owes (:meth:`ServerSession.data_to_send`, the same bytes
  the UDP relay would send) is queued in the member's sender, whose
  :meth:`~netchat.protocol.reliable.Sender.transmit` packs it into DATA datagrams as
  the window allows and resends what it finds lost.

Acknowledgements leave after each drained batch of datagrams, so one ACK covers a
burst (the receiver's own rule decides whether one is due yet). The senders' and
receivers' timers (retransmission, loss detection, the delayed ACK, the dead peer)
live in one heap keyed by deadline; the serving thread wakes for the earliest, as
it does for its housekeeping tick. An entry is pushed only when a member's deadline
moves *earlier*; one that fires early just re-files the member, so the heap costs
a push per member per round of traffic, not per datagram.

A sender that fails ends the member: no acknowledgement of anything new for three
heartbeat intervals leaves it as ``timeout`` ("not acknowledging for 15 s"), a
backlog past ``--max-queue`` as ``dropped`` ("too slow"), as on TCP. A member that
quits keeps its sender until everything it was owed is acknowledged (at most
:data:`LINGER` seconds), then gets its BYE.

Plain members (``--accept-plain``: the lab's own UDP programs) cannot acknowledge
anything; they are served exactly as by the UDP relay.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

from ..hub import Hub
from ..protocol import datagram as dg
from ..protocol import reliable as rel
from ..session import Phase, ServerSession
from .base import ServerConfig
from .udp_relay import MISSED_HEARTBEATS, Address, UdpMember, UdpRelayServer

__all__ = ["LINGER", "RudpMember", "RudpRelayServer"]

#: Seconds a member that is leaving keeps its sender to get what it is owed through;
#: the same grace a client gives the server to confirm its /quit.
LINGER = 2.0


class RudpMember(UdpMember):
    """A validated member and one reliable stream each way."""

    __slots__ = ("closing_since", "receiver", "sender", "timer_at")

    def __init__(
        self,
        address: Address,
        session: ServerSession,
        sender: rel.Sender,
        receiver: rel.Receiver,
    ) -> None:
        super().__init__(address, session)
        self.sender = sender
        self.receiver = receiver
        #: the deadline this member is filed under in the relay's timer heap
        self.timer_at: float | None = None
        #: when its session stopped being joined (it lingers, see LINGER)
        self.closing_since: float | None = None


class RudpRelayServer(UdpRelayServer):
    """A :class:`~netchat.transport.base.ServerTransport`: reliable, ordered chat over UDP.

    Args:
        hub: the chat the members join.
        config: as for the UDP relay; ``max_queue`` bounds what a member's sender
            may hold unacknowledged before the member is dropped as too slow.
        heartbeat_interval: seconds between client heartbeats (default
            ``min(config.ping_interval, 5)``); a member silent, or not acknowledging,
            for three intervals is dropped.
        cookie_lifetime: seconds per cookie time bucket.
        window: units in flight per member and direction.
        min_rto: floor of the retransmission timeout (seconds).
        clock: monotonic time source.

    Raises:
        OSError: the address cannot be bound.
    """

    PROTO = "rudp"

    def __init__(
        self,
        hub: Hub,
        config: ServerConfig,
        *,
        heartbeat_interval: float | None = None,
        cookie_lifetime: float = 30.0,
        window: int = rel.DEFAULT_WINDOW,
        min_rto: float = rel.MIN_RTO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            hub,
            config,
            heartbeat_interval=heartbeat_interval,
            cookie_lifetime=cookie_lifetime,
            clock=clock,
        )
        self.window = window
        self.min_rto = min_rto
        #: payload room of a DATA datagram to a member (less when they are sealed)
        self.room = rel.ROOM - (self.keys.overhead if self.keys is not None else 0)
        #: a sender with units in flight and no new acknowledgement for this long fails
        self.dead_after = MISSED_HEARTBEATS * self.heartbeat_interval
        self._timers: list[tuple[float, int, RudpMember]] = []
        self._timer_order = itertools.count()  # ties in the heap never compare members
        # Members that heard something (an ACK, DATA, a PING, a repeated HELLO) since
        # the last flush, in arrival order; a dict as an ordered set.
        self._stirred: dict[RudpMember, None] = {}
        # Counters of members that have gone, so stats() does not lose them.
        self._retired: dict[str, int] = {}

    # --- members ---------------------------------------------------------------------

    def _new_member(self, address: Address, session: ServerSession) -> UdpMember:
        sender = rel.Sender(
            1,
            window=self.window,
            max_queue=self.config.max_queue,
            min_rto=self.min_rto,
            dead_after=self.dead_after,
            room=self.room,
        )
        receiver = rel.Receiver(1, window=self.window)
        return RudpMember(address, session, sender, receiver)

    def _from_member(self, member: UdpMember, datagram: dg.Datagram, now: float) -> None:
        assert isinstance(member, RudpMember)
        if isinstance(datagram, dg.Ack):
            member.sender.on_ack(datagram, now)
        elif isinstance(datagram, dg.Data):
            session = member.session
            for frame in member.receiver.on_data(datagram, now):
                session.receive_unit(frame, now)
        else:  # PING, a repeated HELLO, BYE: as on UDP
            super()._from_member(member, datagram, now)
        self._stirred[member] = None

    def stats(self) -> dict[str, int]:
        """The UDP relay's counters, plus the reliability counters summed over members
        (present and gone): ``rudp_sent``, ``rudp_retransmitted``, ``rudp_acknowledged``,
        ``rudp_lost``, ``rudp_timeouts``, ``rudp_acks_in``, ``rudp_acks_out``,
        ``rudp_duplicates``, ``rudp_held_back``, ..."""
        totals = super().stats()
        rudp = dict(self._retired)
        for member in list(self._members.values()):
            if isinstance(member, RudpMember):
                _add_counters(rudp, member)
        return {**totals, **rudp}

    # --- the timer heap ----------------------------------------------------------------

    def _next_wakeup(self) -> float:
        wakeup = super()._next_wakeup()
        if self._timers and self._timers[0][0] < wakeup:
            return self._timers[0][0]
        return wakeup

    @staticmethod
    def _deadline(member: RudpMember) -> float | None:
        """The earliest of ``member``'s timers: its sender's, its receiver's delayed
        ACK, the end of its lingering."""
        deadline = member.sender.next_deadline()
        ack_at = member.receiver.next_deadline()
        if ack_at is not None and (deadline is None or ack_at < deadline):
            deadline = ack_at
        if member.closing_since is not None:
            linger_end = member.closing_since + LINGER
            if deadline is None or linger_end < deadline:
                deadline = linger_end
        return deadline

    def _file(self, member: RudpMember, deadline: float | None) -> None:
        """File ``member`` under ``deadline``, if that is earlier than before."""
        if deadline is not None and (member.timer_at is None or deadline < member.timer_at):
            member.timer_at = deadline
            heapq.heappush(self._timers, (deadline, next(self._timer_order), member))

    def _due_members(self, now: float) -> None:
        """Move the members whose deadline has come to the stirred ones; one whose
        timers moved later since it was filed (an ACK came) is filed again instead."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, member = heapq.heappop(timers)
            if member.timer_at == deadline:
                member.timer_at = None
                if self._members.get(member.address) is member:
                    due = self._deadline(member)
                    if due is not None and due > now:
                        self._file(member, due)
                    else:
                        self._stirred[member] = None

    # --- sending ----------------------------------------------------------------------

    def _flush(self) -> None:
        """Queue what each member is owed in its sender, and send what the senders,
        the receivers (ACKs) and the heartbeats have to say."""
        now = self._clock()
        self._due_members(now)
        stirred, self._stirred = self._stirred, {}
        final = self._stopping.is_set()
        datagrams_out = bytes_out = 0
        for member in list(self._members.values()):
            session = member.session
            if member.plain:
                if session.has_output() or session.phase is not Phase.JOINED:
                    sent, sent_bytes = self._flush_plain(member)
                    datagrams_out += sent
                    bytes_out += sent_bytes
                continue
            assert isinstance(member, RudpMember)
            if (
                member in stirred
                or member.needs_accept
                or session.phase is not Phase.JOINED
                or session.has_output()
            ):
                sent, sent_bytes = self._serve_member(member, now, final)
                datagrams_out += sent
                bytes_out += sent_bytes
        counters = self.counters
        counters["datagrams_out"] += datagrams_out
        counters["bytes_out"] += bytes_out

    def _serve_member(self, member: RudpMember, now: float, final: bool) -> tuple[int, int]:
        """ACCEPT, new and retransmitted DATA, an ACK, a PONG and at the end a BYE, in
        that order. Returns the datagrams and bytes sent."""
        session = member.session
        sender = member.sender
        datagrams: list[bytes] = []
        accept = b""
        if member.needs_accept:
            member.needs_accept = False
            accept = member.accept  # sealed already in a chat with a password
        data = session.data_to_send()
        if data and not session.abort:
            sender.send_frames(data)  # the stream log's frames: no need to check each
        sent_before = sender.sent
        retransmitted_before = sender.retransmitted
        datagrams += sender.transmit(now)
        self.counters["units_out"] += sender.sent - sent_before
        self.counters["units_retransmitted"] += sender.retransmitted - retransmitted_before
        failure = sender.failure
        if failure is not None and not session.abort:
            if failure.reason == "dead":
                session.undeliverable("timeout", f"not acknowledging for {self.dead_after:g} s")
            else:
                session.undeliverable("dropped", "too slow")
        ack = member.receiver.take_ack(now)
        if ack is not None:
            datagrams.append(ack)
        if member.pong is not None:
            received = member.receiver.next_expected - 1  # the client's units we took
            datagrams.append(
                dg.encode_pong(
                    member.pong,
                    sender.next_unit,
                    received,
                    rel.report(member.sender, member.receiver),
                )
            )
            member.pong = None
        if session.phase is not Phase.JOINED:
            if member.closing_since is None:
                member.closing_since = now
            if final or session.abort or sender.idle or now >= member.closing_since + LINGER:
                datagrams.append(dg.encode_bye(session.close_reason or "closed"))
                member.bye_sent = True
        sent = sent_bytes = 0
        if accept and self._send_counted(accept, member.address):
            sent, sent_bytes = 1, len(accept)
        for datagram in datagrams:
            size = self._send_to_member(member, datagram)
            sent += size > 0
            sent_bytes += size
        if member.bye_sent:
            self._end(member)
        else:
            self._file(member, self._deadline(member))
        return sent, sent_bytes

    def _send_to_member(self, member: RudpMember, datagram: bytes) -> int:
        """Send one of ``member``'s datagrams; the bytes sent (0 if the kernel refused).

        The one way out for a member's datagrams, so that whatever the UDP relay does
        to every datagram of a member at the socket edge (sealing) is done here too."""
        datagram = member.envelope.seal(datagram)
        return len(datagram) if self._send_counted(datagram, member.address) else 0

    def _end(self, member: UdpMember) -> None:
        if isinstance(member, RudpMember) and self._members.get(member.address) is member:
            _add_counters(self._retired, member)
        super()._end(member)


def _add_counters(into: dict[str, int], member: RudpMember) -> None:
    sender, receiver = member.sender, member.receiver
    for key, value in (
        ("rudp_sent", sender.sent),
        ("rudp_retransmitted", sender.retransmitted),
        ("rudp_acknowledged", sender.acknowledged),
        ("rudp_lost", sender.lost),
        ("rudp_timeouts", sender.timeouts),
        ("rudp_acks_in", sender.acks),
        ("rudp_invalid_acks", sender.invalid_acks),
        ("rudp_received", receiver.received),
        ("rudp_duplicates", receiver.duplicates),
        ("rudp_held_back", receiver.held_back),
        ("rudp_beyond_window", receiver.beyond_window),
        ("rudp_acks_out", receiver.acks_sent),
    ):
        into[key] = into.get(key, 0) + value

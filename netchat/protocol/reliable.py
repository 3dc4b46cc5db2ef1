"""Reliable, ordered delivery over the UDP datagram layer (``--proto rudp``) — sans-I/O.

Each direction of a ``--proto rudp`` session is one :class:`Sender` at one end and one
:class:`Receiver` at the other. Neither reads a clock nor touches a socket: the
transport passes ``now`` in, sends the datagrams they return, and wakes them at
:meth:`Sender.next_deadline` / :meth:`Receiver.next_deadline`.

Strategy
--------
The units are the ones the UDP relay already numbers (see
:mod:`netchat.protocol.datagram`): one frame, or one piece of a frame too large for a
datagram, carried in ordinary DATA datagrams. Reliability adds one datagram kind,
ACK, and the rules below. Where a choice had to be made it follows TCP's
retransmission timer (RFC 6298) and QUIC's loss recovery (RFC 9002), at chat scale.

* **Receipts.** The receiver acknowledges cumulatively (every unit before
  ``cumulative`` arrived) plus up to :data:`~.datagram.MAX_SACK_RANGES` SACK ranges
  above it, the highest ones when there are more (QUIC's choice: the newest news is
  what the sender lacks; older ranges were reported before, and the sender never
  forgets a range). The ACK also echoes the first unit of the datagram that arrived
  last, with how long the receiver held the ACK since, so the sender can time a
  round trip and subtract the receiver's delay, as QUIC's ``ack_delay`` does.
* **When to acknowledge.** Every second datagram, or :data:`MAX_ACK_DELAY` after the
  first one not yet acknowledged, whichever is first (QUIC's rule, RFC 9000 §13.2;
  TCP's delayed ACK); at once for a datagram that arrives out of order, fills a hole or
  repeats one (the sender may be retransmitting because our ACKs were lost).
* **Round-trip time and RTO** (RFC 6298): SRTT and RTTVAR from samples,
  ``RTO = SRTT + max(G, 4·RTTVAR) + max_ack_delay`` between :data:`MIN_RTO` and
  :data:`MAX_RTO`, doubled on every expiry and back to normal as soon as an ACK
  acknowledges something new (QUIC resets its probe backoff the same way). A sample
  is taken only from the echoed unit, and only if it was sent once (Karn's rule:
  the ACK of a retransmitted unit cannot say which copy it answers).
* **Loss detection** (RFC 9002 §6.1). The wire carries unit numbers, which repeat on
  retransmission as TCP's sequence numbers do; privately the sender also numbers
  its transmissions (datagrams), which never repeat, like QUIC's packet numbers.
  A unit is lost when a datagram sent :data:`PACKET_THRESHOLD` datagrams after its
  own was acknowledged, or when any later datagram was acknowledged and
  ``9/8 · max(SRTT, latest RTT)`` has passed since it was sent; failing that, when
  the retransmission timer, keyed to the oldest transmission still unacknowledged
  (as Linux does), expires. Only units found lost are sent again; units the
  receiver reported in a SACK range never are.
* **Bookkeeping per datagram.** The sender keeps one record per DATA datagram (a
  *run* of consecutive units), not one per unit, as QUIC keeps one per packet: a
  relay that packs six frames into a datagram then numbers, times, acknowledges and
  frees one record. :meth:`Sender.send_frames` queues what a trusted encoder wrote
  (the relay's stream log) as such runs without looking at each frame. Where an ACK
  ends inside a run (rare: a receiver whose window ended there, or a retransmission
  that regrouped units), the run is cut there; lost runs that follow each other are
  resent as one datagram when they fit.
* **Flow control.** At most ``window`` units (the span from the oldest
  unacknowledged unit, as TCP's window) are in flight, and never more than the
  receiver advertises, so the receiver's reorder buffer never holds more than
  ``window - 1`` units. Units beyond the window wait in a backlog; when what waits
  for acknowledgement (in flight plus backlog) would pass ``max_queue`` bytes the
  sender fails as **too slow**, and the relay drops that member as TCP does.
* **Liveness.** A sender with units in flight that hears no acknowledgement of
  anything new for ``dead_after`` seconds fails as **dead** ("no ack for 15 s").
* **Hostile input.** Every structure is bounded by a constant: the sender by its
  window and ``max_queue``, the receiver by its window; an ACK for units never sent
  is ignored and counted, ranges are clipped to what is in flight, a unit outside
  the receive window is dropped and counted. Decoding an ACK raises only
  :class:`~netchat.errors.RemoteProtocolError`; handling one never raises.

Not done, on purpose: congestion control (chat rates are tiny, the window is the
only brake), and anything that would let one lost unit be skipped (in-order delivery
means a lost unit holds back everything behind it until it is retransmitted: the
head-of-line blocking of TCP, and of each single QUIC stream).

Not thread-safe: one thread (or one lock) owns each Sender and Receiver.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from ..errors import LocalProtocolError
from . import datagram as dg
from .limits import MAX_DATAGRAM_BYTES, MAX_FRAME_BYTES

__all__ = [
    "ACK_EVERY",
    "DEAD_AFTER",
    "DEFAULT_WINDOW",
    "GRANULARITY",
    "INITIAL_RTT",
    "MAX_ACK_DELAY",
    "MAX_RTO",
    "MAX_WINDOW",
    "MIN_RTO",
    "PACKET_THRESHOLD",
    "ROOM",
    "TIME_THRESHOLD",
    "Failure",
    "Receiver",
    "Sender",
    "report",
]

#: Units in flight at most (and the receive window). 64 units hold the largest frame
#: (64 KiB, 56 pieces) in one window; let 32 SACK ranges describe any pattern of holes
#: in it; keep a reorder buffer under 80 KB; and at a 1 ms LAN round trip still allow
#: 64,000 units/s per member, far beyond chat. A larger window would only add
#: queueing delay (and spurious timeouts) when a member falls behind.
DEFAULT_WINDOW = 64
#: Largest window the 2-byte field of an ACK can advertise.
MAX_WINDOW = 0xFFFF
#: Default bytes waiting for acknowledgement before a sender fails as too slow
#: (the relay passes its ``--max-queue``; this is ServerConfig's default).
DEFAULT_MAX_QUEUE = 1024 * 1024

#: RTT assumed before the first sample (RFC 9002's kInitialRtt): with RTTVAR = RTT/2
#: it gives RFC 6298's initial RTO of 1 s. A transport that timed the join handshake
#: passes that instead.
INITIAL_RTT = 0.333
#: Floor of the RTO. Loopback round trips between two Python processes take 30-45 µs
#: at the median, but with one busy thread sharing the answering process's GIL
#: (5 ms switch interval) 5 ms at the median, 17 ms at p99 and 20-37 ms at worst
#: (``benchmarks/loopback_rtt.py``): the RTT a Python endpoint sees is mostly
#: scheduling. Without a floor, the RTO learnt on a quiet LAN (~1 ms) would fire
#: spuriously at the first such stall; 50 ms is above the worst of them, and RTTVAR
#: learns anything slower (a busier process, Wi-Fi) by itself. TCP's floor (200 ms on
#: Linux) is sized for delayed ACKs of up to 200 ms; this protocol's are 5 ms.
MIN_RTO = 0.050
#: Ceiling of the backed-off RTO. RFC 6298 allows any ceiling of 60 s or more; a chat
#: peer back from a Wi-Fi roam should hear from us within seconds. Backing off from a
#: LAN's 50 ms, a 4 s ceiling probes at 6.4, 10.4 and 14.4 s before the peer is
#: declared dead at :data:`DEAD_AFTER` (15 s); with 60 s it would probe last at 12.8 s,
#: and a peer back at 13 s would be dropped unprobed. A probe is one datagram.
MAX_RTO = 4.0
#: Timer granularity G of RFC 6298 (RFC 9002's kGranularity).
GRANULARITY = 0.001
#: Seconds without an acknowledgement of anything new, units being in flight, after
#: which a sender declares its peer dead: three of the relay's heartbeat intervals,
#: the same silence after which the relay expires a member.
DEAD_AFTER = 15.0
#: A unit is lost once a datagram sent this many datagrams after it was acknowledged
#: (RFC 9002's kPacketThreshold, TCP's three duplicate ACKs).
PACKET_THRESHOLD = 3
#: ... or once this many round trips have passed since it was sent and a later
#: datagram was acknowledged (RFC 9002's kTimeThreshold).
TIME_THRESHOLD = 9 / 8
#: A receiver acknowledges at least every this many DATA datagrams (RFC 9000 §13.2.2).
ACK_EVERY = 2
#: ... and at most this long after the first one it has not acknowledged. QUIC's
#: default is 25 ms; at LAN round trips that would dominate every RTO, and a chat's
#: DATA comes in bursts in which :data:`ACK_EVERY` does the saving anyway.
MAX_ACK_DELAY = 0.005

#: Payload room of one DATA datagram; a transport that adds bytes (sealing) gives less.
ROOM = MAX_DATAGRAM_BYTES - dg.DATA_HEADER_BYTES
_ACK_HEADER = dg.HEADERS[dg.Kind.ACK]
# The largest ACK must fit in a datagram; MAX_SACK_RANGES is sized for it.
assert _ACK_HEADER.size + 8 * dg.MAX_SACK_RANGES <= MAX_DATAGRAM_BYTES


@dataclass(frozen=True)
class Failure:
    """Why a :class:`Sender` gave up; the transport drops the member with this reason.

    ``reason`` is ``"too-slow"`` (its backlog passed ``max_queue``) or ``"dead"``
    (no acknowledgement for ``dead_after`` seconds); ``detail`` is for people.
    """

    reason: str
    detail: str


class _Run:
    """Consecutive units on their way, as one DATA datagram carries them: whole frames,
    perhaps a continuation piece first (``cont``) and an unfinished piece last
    (``more``), with their transmission history.

    The grouping is the sender's private bookkeeping, as QUIC keeps one record per
    packet and not per frame: on the wire every unit has its own number, and where an
    acknowledgement ends inside a run the run is cut in two (:meth:`cut`). A relay that
    packs six frames into a datagram thus keeps, times and acknowledges one record.
    """

    __slots__ = (
        "cont",
        "count",
        "end",
        "more",
        "payload",
        "sacked",
        "sent_at",
        "seq",
        "transmissions",
        "tx",
    )

    def __init__(
        self, seq: int, payload: bytes, count: int, cont: bool = False, more: bool = False
    ) -> None:
        self.seq = seq  # number of the first unit
        self.payload = payload
        self.count = count  # units: the newlines, plus one for an unfinished piece
        self.end = seq + count  # the number after the last unit
        self.cont = cont  # the first unit continues the frame the previous run started
        self.more = more  # the last unit is continued by the next run
        self.sent_at = 0.0  # time of the latest transmission
        self.tx = 0  # number of the datagram that carried the latest transmission
        self.transmissions = 0
        self.sacked = False

    def cut(self, at: int) -> _Run:
        """Keep the units before ``at`` (``seq < at < end``); return the rest, with the
        same history."""
        payload = self.payload
        offset = -1
        for _ in range(at - self.seq):  # every unit but an unfinished last one ends in \n
            offset = payload.index(b"\n", offset + 1)
        offset += 1
        tail = _Run(at, payload[offset:], self.end - at, False, self.more)
        tail.sent_at, tail.tx = self.sent_at, self.tx
        tail.transmissions, tail.sacked = self.transmissions, self.sacked
        self.payload, self.count, self.end, self.more = payload[:offset], at - self.seq, at, False
        return tail


def _pack(runs: list[_Run], room: int) -> list[list[_Run]]:
    """Group runs, in order, into what one DATA datagram may carry: consecutive
    numbers, a continuation piece only first, an unfinished piece only last, at most
    ``room`` bytes."""
    groups: list[list[_Run]] = []
    group: list[_Run] = []
    size = 0
    for run in runs:
        if group and (
            run.cont or group[-1].more or run.seq != group[-1].end or size + len(run.payload) > room
        ):
            groups.append(group)
            group, size = [], 0
        group.append(run)
        size += len(run.payload)
    if group:
        groups.append(group)
    return groups


class Sender:
    """The sending half of one direction: numbers, transmits and retransmits units.

    Use: :meth:`send` each frame (or :meth:`send_frames` a run of them); pass each ACK
    to :meth:`on_ack`; call :meth:`transmit` after either and whenever
    :meth:`next_deadline` passes, and send the datagrams it returns in order. Once
    :attr:`failure` is set the sender is finished: it sends nothing more and holds no
    units.

    Args:
        first_seq: number of the first unit (the relay's ACCEPT announces it).
        window: most units in flight; the receiver may advertise fewer.
        max_queue: most bytes waiting for acknowledgement before failing as too slow.
        initial_rtt: the RTT assumed until the first sample (e.g. the join's).
        min_rto: floor of the retransmission timeout (seconds).
        max_rto: ceiling of the backed-off retransmission timeout (seconds).
        peer_max_ack_delay: the longest the receiver delays an ACK (seconds).
        dead_after: seconds without progress, units in flight, before failing as dead.
        room: most payload bytes in one DATA datagram (less than :data:`ROOM` when the
            transport adds bytes of its own, such as a seal).

    Raises:
        ValueError: a window outside 1..65535, non-positive times, or a room too small.
    """

    def __init__(
        self,
        first_seq: int = 1,
        *,
        window: int = DEFAULT_WINDOW,
        max_queue: int = DEFAULT_MAX_QUEUE,
        initial_rtt: float = INITIAL_RTT,
        min_rto: float = MIN_RTO,
        max_rto: float = MAX_RTO,
        peer_max_ack_delay: float = MAX_ACK_DELAY,
        dead_after: float = DEAD_AFTER,
        room: int = ROOM,
    ) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW} units")
        if min(initial_rtt, min_rto, dead_after) <= 0 or max_rto < min_rto:
            raise ValueError("times must be positive and max_rto at least min_rto")
        if not 64 <= room <= ROOM:
            raise ValueError(f"room must be 64..{ROOM} bytes")
        self.window = window
        self.room = room
        self.max_queue = max_queue
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.peer_max_ack_delay = peer_max_ack_delay
        self.dead_after = dead_after
        self.failure: Failure | None = None
        self._next_new = first_seq  # number the next frame's first unit gets
        self._snd_una = first_seq  # oldest unit not cumulatively acknowledged
        self._snd_nxt = first_seq  # next unit to be transmitted for the first time
        self._peer_window = window
        self._backlog: deque[_Run] = deque()  # numbered, never sent: [snd_nxt, next_new)
        # Sent, not cumulatively acknowledged: first unit -> run. The runs cover
        # [snd_una, snd_nxt) end to end, so a walk from snd_una finds any unit.
        self._flight: dict[int, _Run] = {}
        # Sent, neither acknowledged nor found lost, in order of latest transmission
        # (retransmitting re-inserts at the end). An OrderedDict, not a dict: its
        # oldest entry is found in O(1) however many were removed before it.
        self._outstanding: OrderedDict[_Run, None] = OrderedDict()
        self._lost: dict[int, _Run] = {}  # found lost, waiting to be sent again
        self._queued_bytes = 0
        self._tx = 0  # datagrams transmitted: the private "packet number"
        self._largest_acked_tx = 0  # of a run sent once, so unambiguous
        self._loss_time: float | None = None
        self._progress_at = 0.0  # last ACK of something new, or start of a flight
        self._last_now = 0.0
        # RTT estimator (RFC 6298 §2, RFC 9002 §5).
        self._srtt = initial_rtt
        self._rttvar = initial_rtt / 2
        self._min_rtt = float("inf")
        self._latest_rtt = 0.0
        self._backoff = 0
        self._rto = 0.0
        self._update_rto()
        # Counters for /stats (in units).
        self.sent = 0  # units transmitted for the first time
        self.retransmitted = 0  # unit retransmissions
        self.acknowledged = 0  # units acknowledged (cumulatively or in a SACK range)
        self.datagrams = 0  # DATA datagrams transmitted
        self.lost = 0  # units found lost (each is then retransmitted)
        self.timeouts = 0  # RTO expiries
        self.rtt_samples = 0
        self.acks = 0  # ACKs handled
        self.invalid_acks = 0  # ACKs (or ranges) for units never sent

    # --- state -----------------------------------------------------------------------

    @property
    def rto(self) -> float:
        """The retransmission timeout now, backoff included (seconds)."""
        return self._rto

    def _update_rto(self) -> None:
        # Kept in an attribute: transmit() reads it on every call, samples are rarer.
        base = self._srtt + max(GRANULARITY, 4 * self._rttvar) + self.peer_max_ack_delay
        base = min(max(base, self.min_rto), self.max_rto)
        self._rto = min(base * (1 << self._backoff), self.max_rto)

    @property
    def srtt(self) -> float:
        """The smoothed round-trip time (seconds); the initial RTT before any sample."""
        return self._srtt

    @property
    def in_flight(self) -> int:
        """Window in use: units from the oldest unacknowledged to the newest sent."""
        return self._snd_nxt - self._snd_una

    @property
    def next_unit(self) -> int:
        """The number the next frame's first unit will get."""
        return self._next_new

    @property
    def backlog(self) -> int:
        """Units numbered but not yet sent, waiting for the window to open."""
        return self._next_new - self._snd_nxt

    @property
    def queued_bytes(self) -> int:
        """Payload bytes waiting for acknowledgement, in flight or in the backlog."""
        return self._queued_bytes

    @property
    def idle(self) -> bool:
        """Everything sent was acknowledged and nothing waits."""
        return not self._flight and not self._backlog

    def stats(self) -> dict[str, float]:
        """Counters and gauges for ``/stats``."""
        return {
            "sent": self.sent,
            "retransmitted": self.retransmitted,
            "acknowledged": self.acknowledged,
            "lost": self.lost,
            "timeouts": self.timeouts,
            "rto_ms": round(self.rto * 1000, 1),
            "srtt_ms": round(self._srtt * 1000, 3),
            "window_in_use": self.in_flight,
            "backlog": self.backlog,
            "datagrams": self.datagrams,
            "acks": self.acks,
            "invalid_acks": self.invalid_acks,
        }

    def next_deadline(self) -> float | None:
        """When :meth:`transmit` must next be called though nothing arrived, or ``None``.

        That is the earliest of the dead-peer limit, the time-threshold loss timer and
        the retransmission timer; or the latest ``now`` seen, if datagrams are already
        waiting to go (found lost, or let through by a wider window).
        """
        if self.failure is not None:
            return None
        if self._lost or (self._backlog and self._backlog[0].seq < self._window_end()):
            return self._last_now
        deadlines = []
        if self._flight:
            deadlines.append(self._progress_at + self.dead_after)
        if self._outstanding:
            oldest = next(iter(self._outstanding))
            deadlines.append(oldest.sent_at + self._rto)
        if self._loss_time is not None:
            deadlines.append(self._loss_time)
        return min(deadlines, default=None)

    def _window_end(self) -> int:
        return self._snd_una + min(self.window, self._peer_window)

    # --- input -----------------------------------------------------------------------

    def send(self, frame: bytes) -> bool:
        """Queue one encoded frame (one line ending in ``\\n``), cut into units.

        Returns:
            False when it does not fit in ``max_queue`` (the sender then fails as
            too slow) or the sender has already failed; True otherwise.

        Raises:
            LocalProtocolError: ``frame`` is not one newline-terminated line, or is
                over :data:`~.limits.MAX_FRAME_BYTES`.
        """
        size = len(frame)
        if frame[-1:] != b"\n" or frame.count(b"\n") != 1:
            raise LocalProtocolError("a frame is one line ending in a newline")
        if size > MAX_FRAME_BYTES:
            raise LocalProtocolError(
                f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}", code="too-large"
            )
        if not self._admit(size):
            return False
        if size <= self.room:  # the common case: one frame, one unit
            self._backlog.append(_Run(self._next_new, frame, 1))
            self._next_new += 1
        else:
            self._cut_into_pieces(frame)
        return True

    def send_frames(self, frames: bytes) -> bool:
        """Queue several encoded frames at once, as :meth:`send` would one by one.

        For a transport handing on what an encoder it trusts wrote (the relay's stream
        log): ``frames`` is their concatenation, each one line ending in ``\\n``, and
        they are not checked one by one. Frames that fit in a datagram together
        become one record, so the usual case costs no work per frame.

        Returns:
            As :meth:`send`.

        Raises:
            LocalProtocolError: ``frames`` is not empty and does not end in a newline.
        """
        size = len(frames)
        if not size:
            return self.failure is None
        if frames[-1:] != b"\n":
            raise LocalProtocolError("frames are lines ending in a newline")
        if not self._admit(size):
            return False
        seq = self._next_new
        room = self.room
        if size <= room:  # the usual case: what a member is owed fits one datagram
            count = frames.count(b"\n")
            self._backlog.append(_Run(seq, frames, count))
            self._next_new = seq + count
            return True
        append = self._backlog.append
        start = 0
        while start < size:
            end = frames.index(b"\n", start) + 1  # of the first frame
            if end - start > room:
                self._cut_into_pieces(frames[start:end])
            else:
                end = frames.rindex(b"\n", start, start + room) + 1  # whole frames that fit
                run = frames[start:end]
                count = run.count(b"\n")
                append(_Run(self._next_new, run, count))
                self._next_new += count
            start = end
        return True

    def _admit(self, size: int) -> bool:
        """Count ``size`` more bytes as queued; False (failing as too slow) if that
        passes ``max_queue``, or if the sender has failed already."""
        if self.failure is not None:
            return False
        queued = self._queued_bytes + size
        if queued > self.max_queue:
            self._fail("too-slow", f"too slow: over {self.max_queue} bytes unacknowledged")
            return False
        self._queued_bytes = queued
        return True

    def _cut_into_pieces(self, frame: bytes) -> None:
        """Queue a frame too large for one datagram as pieces, one unit each."""
        seq = self._next_new
        size = len(frame)
        room = self.room
        for start in range(0, size, room):
            more = start + room < size
            self._backlog.append(_Run(seq, frame[start : start + room], 1, start > 0, more))
            seq += 1
        self._next_new = seq

    def on_ack(self, ack: dg.Ack, now: float) -> None:
        """Take one ACK: free what it acknowledges, time a round trip, find losses.

        Never raises: an ACK for units never sent is ignored and counted in
        ``invalid_acks``; ranges are clipped to what is in flight.
        """
        self._last_now = now
        if self.failure is not None:
            return
        self.acks += 1
        cumulative = ack.cumulative
        if cumulative > self._snd_nxt:
            self.invalid_acks += 1
            return
        if cumulative >= self._snd_una:  # not an old ACK overtaken by a newer one
            self._peer_window = max(1, min(ack.window, self.window))
        newly: list[_Run] = []
        flight = self._flight
        seq = self._snd_una
        if seq < cumulative:
            freed = 0
            while seq < cumulative:
                run = flight[seq]
                if run.end > cumulative:  # the ACK ends inside it: keep the rest
                    self._split(run, cumulative)
                del flight[seq]
                freed += len(run.payload)
                if not run.sacked:
                    newly.append(run)
                seq = run.end
            self._queued_bytes -= freed
            self._snd_una = cumulative
        if ack.ranges:
            self._sacked(ack.ranges, newly)
        if not newly:
            return
        echo = ack.echo
        echo_run: _Run | None = None
        largest = self._largest_acked_tx
        forget = self._outstanding.pop
        lost = self._lost
        units = 0
        for run in newly:
            forget(run, None)
            if lost and lost.get(run.seq) is run:
                del lost[run.seq]
            units += run.count
            if run.transmissions == 1:
                if run.tx > largest:
                    largest = run.tx
                if run.seq <= echo < run.seq + run.count:
                    echo_run = run
        self._largest_acked_tx = largest
        self.acknowledged += units
        self._progress_at = now
        if echo_run is not None:
            self._sample_rtt(now - echo_run.sent_at, ack.delay_us / 1e6)
        if echo_run is not None or self._backoff:
            self._backoff = 0
            self._update_rto()
        self._detect_losses(now)

    def _sacked(self, ranges: tuple[tuple[int, int], ...], newly: list[_Run]) -> None:
        """Mark what SACK ``ranges`` cover, cutting runs at their edges; add the runs
        newly acknowledged to ``newly``."""
        flight = self._flight
        snd_una, snd_nxt = self._snd_una, self._snd_nxt
        seq = snd_una  # a run's first unit; ranges are ascending, so the walk goes on
        for start, end in ranges:
            if end > snd_nxt:
                self.invalid_acks += 1
            start, end = max(start, snd_una), min(end, snd_nxt)
            if start >= end:
                continue
            if start < seq:  # out of order (only a hostile ACK): walk from the start
                seq = snd_una
            run = flight[seq]
            while run.end <= start:
                seq = run.end
                run = flight[seq]
            while seq < end:
                run = flight[seq]
                if not run.sacked:  # (a sacked run, perhaps by an earlier range, stays whole)
                    if seq < start:
                        run = self._split(run, start)
                        seq = start
                    if run.end > end:
                        self._split(run, end)
                    run.sacked = True
                    newly.append(run)
                seq = run.end

    def _split(self, run: _Run, at: int) -> _Run:
        """Cut a sent ``run`` at unit ``at`` and file the second half where the first
        is: in flight, among the outstanding (at its place in transmission order) and
        among the lost."""
        tail = run.cut(at)
        if self._flight.get(run.seq) is run:
            self._flight[at] = tail
        if run in self._outstanding:
            # Rare (an ACK that ends inside what one datagram carried): rebuild, so the
            # order of transmissions, which loss detection walks, stays exact.
            rebuilt: OrderedDict[_Run, None] = OrderedDict()
            for other in self._outstanding:
                rebuilt[other] = None
                if other is run:
                    rebuilt[tail] = None
            self._outstanding = rebuilt
        if self._lost.get(run.seq) is run:
            self._lost[at] = tail
        return tail

    def _sample_rtt(self, latest: float, ack_delay: float) -> None:
        """RFC 9002 §5.3 (the receiver's delay taken out) feeding RFC 6298 §2."""
        self.rtt_samples += 1
        self._latest_rtt = latest
        self._min_rtt = min(self._min_rtt, latest)
        ack_delay = min(ack_delay, self.peer_max_ack_delay)
        adjusted = latest - ack_delay if latest - ack_delay >= self._min_rtt else latest
        if self.rtt_samples == 1:
            self._srtt, self._rttvar = latest, latest / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - adjusted)
            self._srtt = 0.875 * self._srtt + 0.125 * adjusted

    def _detect_losses(self, now: float) -> None:
        """Mark lost what a later acknowledged datagram proves lost (RFC 9002 §6.1)."""
        self._loss_time = None
        largest = self._largest_acked_tx
        if not self._outstanding or next(iter(self._outstanding)).tx >= largest:
            return  # the usual case: nothing sent before the newest acknowledged waits
        delay = max(TIME_THRESHOLD * max(self._srtt, self._latest_rtt), GRANULARITY)
        lost = []
        for run in self._outstanding:  # oldest transmission first
            if run.tx >= largest:
                break  # nothing sent after it was acknowledged (yet)
            if run.tx <= largest - PACKET_THRESHOLD or run.sent_at + delay <= now:
                lost.append(run)
            else:
                self._loss_time = run.sent_at + delay
                break  # later transmissions are younger still
        for run in lost:
            self._mark_lost(run)

    def _mark_lost(self, run: _Run) -> None:
        del self._outstanding[run]
        self._lost[run.seq] = run
        self.lost += run.count

    # --- output ----------------------------------------------------------------------

    def transmit(self, now: float) -> list[bytes]:
        """Run the timers, then return the DATA datagrams to send now, in order:
        retransmissions of lost units first, then new units as the window allows."""
        self._last_now = now
        if self.failure is not None:
            return []
        if self._flight and now >= self._progress_at + self.dead_after:
            self._fail("dead", f"no ack for {self.dead_after:g} s")
            return []
        if self._loss_time is not None and now >= self._loss_time:
            self._detect_losses(now)
        if self._outstanding:
            oldest = next(iter(self._outstanding))
            if now >= oldest.sent_at + self._rto:
                self._on_timeout(now)
        datagrams: list[bytes] = []
        if self._lost:
            again = [self._lost[seq] for seq in sorted(self._lost)]
            self._lost.clear()
            datagrams += self._emit(again, now)
        backlog = self._backlog
        if backlog:
            end = self._window_end()
            fresh: list[_Run] = []
            while backlog and backlog[0].seq < end:
                run = backlog.popleft()
                if run.end > end:  # the window ends inside it
                    backlog.appendleft(run.cut(end))
                fresh.append(run)
            if fresh:
                flight = self._flight
                if not flight:
                    self._progress_at = now  # a new flight: the dead-peer clock starts
                for run in fresh:
                    flight[run.seq] = run
                self._snd_nxt = fresh[-1].end
                datagrams += self._emit(fresh, now)
        return datagrams

    def _on_timeout(self, now: float) -> None:
        """RFC 6298 §5.4-5.6: what has waited a whole RTO is lost; back off."""
        self.timeouts += 1
        rto = self._rto
        lost = []
        for run in self._outstanding:  # oldest transmission first
            if run.sent_at + rto > now:
                break
            lost.append(run)
        for run in lost:
            self._mark_lost(run)
        if rto < self.max_rto:
            self._backoff += 1
            self._update_rto()

    def _emit(self, runs: list[_Run], now: float) -> list[bytes]:
        """One datagram per group of runs that fit together; each group becomes one
        run (one record per datagram)."""
        datagrams = []
        outstanding = self._outstanding
        first_time = again = 0
        for group in _pack(runs, self.room) if len(runs) > 1 else [runs]:
            run = group[0]
            for member in group:
                if member.transmissions:
                    again += member.count
                else:
                    first_time += member.count
            if len(group) > 1:
                flight = self._flight
                for member in group[1:]:
                    del flight[member.seq]
                run.payload = b"".join([member.payload for member in group])
                run.end = group[-1].end
                run.count = run.end - run.seq
                run.more = group[-1].more
                run.transmissions = max(member.transmissions for member in group)
            self._tx += 1
            run.sent_at = now
            run.tx = self._tx
            run.transmissions += 1
            outstanding[run] = None
            datagrams.append(dg.encode_data(run.seq, run.payload, more=run.more, cont=run.cont))
        self.sent += first_time
        self.retransmitted += again
        self.datagrams += len(datagrams)
        return datagrams

    def _fail(self, reason: str, detail: str) -> None:
        self.failure = Failure(reason, detail)
        # Nothing more will be sent: let go of every unit (memory stays bounded).
        self._backlog.clear()
        self._flight.clear()
        self._outstanding.clear()
        self._lost.clear()
        self._queued_bytes = 0
        self._loss_time = None
        self._snd_una = self._snd_nxt = self._next_new


class Receiver:
    """The receiving half of one direction: puts units in order, exactly once, and
    says what arrived.

    Use: pass each DATA datagram to :meth:`on_data`, which returns the frames now
    complete and in order; after a batch of datagrams, and whenever
    :meth:`next_deadline` passes, send what :meth:`take_ack` returns.

    Args:
        first_seq: number of the first unit expected.
        window: units accepted from the oldest missing one on (advertised in ACKs);
            at most ``window - 1`` are ever held back.
        ack_every: acknowledge at least every this many DATA datagrams.
        max_ack_delay: acknowledge at most this long after a datagram (seconds).
        max_frame_bytes: longest frame reassembled from pieces.

    Raises:
        ValueError: a window outside 1..65535, ``ack_every`` < 1, a negative delay.
    """

    def __init__(
        self,
        first_seq: int = 1,
        *,
        window: int = DEFAULT_WINDOW,
        ack_every: int = ACK_EVERY,
        max_ack_delay: float = MAX_ACK_DELAY,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW} units")
        if ack_every < 1 or max_ack_delay < 0:
            raise ValueError("ack_every must be at least 1 and max_ack_delay not negative")
        self.window = window
        self.ack_every = ack_every
        self.max_ack_delay = max_ack_delay
        self._rcv_nxt = first_seq  # next unit to deliver
        self._held: dict[int, tuple[bytes, bool, bool]] = {}  # seq -> (payload, cont, more)
        self._reassembler = dg.Reassembler(max_frame_bytes)
        self._echo: int | None = None  # first unit of the latest DATA datagram
        self._echo_at = 0.0
        self._unacked = 0  # DATA datagrams since the last ACK
        self._ack_at: float | None = None  # when the owed ACK is due
        # Counters for /stats.
        self.received = 0  # units accepted (not duplicates, inside the window)
        self.delivered = 0  # units handed on in order
        self.frames = 0  # frames handed on
        self.duplicates = 0  # units discarded because they had arrived before
        self.held_back = 0  # units that had to wait for an earlier one
        self.beyond_window = 0  # units discarded for being too far ahead
        self.acks_sent = 0

    @property
    def next_expected(self) -> int:
        """The cumulative point: every unit before it was delivered."""
        return self._rcv_nxt

    @property
    def buffered(self) -> int:
        """Units held back now, waiting for an earlier one."""
        return len(self._held)

    def stats(self) -> dict[str, float]:
        """Counters and gauges for ``/stats``."""
        return {
            "received": self.received,
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "held_back": self.held_back,
            "buffered": self.buffered,
            "beyond_window": self.beyond_window,
            "acks_sent": self.acks_sent,
        }

    def next_deadline(self) -> float | None:
        """When an ACK is due (:meth:`take_ack` then returns it), or ``None``."""
        return self._ack_at

    def on_data(self, data: dg.Data, now: float) -> list[bytes]:
        """Take one DATA datagram; return the frames it completes, in order.

        Duplicates and units beyond the window are discarded (and counted); neither
        ever raises, whatever the numbers.
        """
        out_of_order = bool(self._held)  # a hole before: this may fill it
        last = len(data.units) - 1
        frames: list[bytes] = []
        for index, payload in enumerate(data.units):
            seq = data.seq + index
            if seq < self._rcv_nxt or seq in self._held:
                self.duplicates += 1
                out_of_order = True
                continue
            if seq >= self._rcv_nxt + self.window:
                self.beyond_window += 1
                out_of_order = True
                continue
            self.received += 1
            unit = (payload, data.cont and index == 0, data.more and index == last)
            if seq != self._rcv_nxt:
                self._held[seq] = unit
                self.held_back += 1
                out_of_order = True
                continue
            self._deliver(unit, frames)
            while self._rcv_nxt in self._held:
                self._deliver(self._held.pop(self._rcv_nxt), frames)
        self._echo, self._echo_at = data.seq, now
        self._unacked += 1
        if out_of_order or self._held or self._unacked >= self.ack_every:
            self._ack_at = now
        elif self._ack_at is None:
            self._ack_at = now + self.max_ack_delay
        return frames

    def _deliver(self, unit: tuple[bytes, bool, bool], frames: list[bytes]) -> None:
        payload, cont, more = unit
        self._rcv_nxt += 1
        self.delivered += 1
        frame = self._reassembler.feed(payload, cont=cont, more=more)
        if frame is not None:
            self.frames += 1
            frames.append(frame)

    def take_ack(self, now: float, *, force: bool = False) -> bytes | None:
        """The ACK datagram to send now, or ``None`` when none is due.

        Args:
            now: the current time.
            force: build one even if not due yet (e.g. to answer a heartbeat), as long
                as any DATA has arrived.
        """
        if self._echo is None or (self._ack_at is None and not force):
            return None
        if not force and self._ack_at is not None and now < self._ack_at:
            return None
        self._ack_at = None
        self._unacked = 0
        self.acks_sent += 1
        ack = dg.Ack(
            self._rcv_nxt,
            self._echo,
            round((now - self._echo_at) * 1e6),
            self.window,
            self._sack_ranges(),
        )
        return dg.encode_ack(ack)

    def _sack_ranges(self) -> tuple[tuple[int, int], ...]:
        """The held-back units as ``[start, end)`` ranges: the highest ones if too many."""
        if not self._held:
            return ()
        ranges: list[tuple[int, int]] = []
        for seq in sorted(self._held):
            if ranges and ranges[-1][1] == seq:
                ranges[-1] = (ranges[-1][0], seq + 1)
            else:
                ranges.append((seq, seq + 1))
        return tuple(ranges[-dg.MAX_SACK_RANGES :])


def report(sender: Sender, receiver: Receiver) -> dg.Report:
    """One end's figures for its two directions, as a PONG carries them (times in µs,
    SRTT 0 before the first sample): the relay sends it to each member, and a client
    shows its own end from it beside the relay's."""
    return dg.Report(
        sent=sender.sent,
        retransmitted=sender.retransmitted,
        acknowledged=sender.acknowledged,
        rto_us=round(sender.rto * 1e6),
        srtt_us=round(sender.srtt * 1e6) if sender.rtt_samples else 0,
        window_in_use=sender.in_flight,
        window=sender.window,
        received=receiver.received,
        duplicates=receiver.duplicates,
        held_back=receiver.held_back,
    )

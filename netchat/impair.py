"""Seeded network impairment: what a lossy, slow or jittery network does to traffic.

Strategy
--------
Sans-I/O, like the protocol core. A *link* is one direction of one path. It is
offered datagrams (or, for TCP, chunks of a byte stream) together with the time they
arrived, and it hands them back when they are due; it never reads a clock, sleeps or
touches a socket. The relays in :mod:`netchat.transport.impair_relay` and the peer's
receive hook drive links from real sockets; the tests drive them with a fake clock.

Reproducibility is the point: a whole class should get the same numbers. Every link
has its own ``random.Random``, seeded from the run's seed, the link's name and its
direction (:func:`link_random`), and every datagram takes exactly
:data:`DRAWS_PER_DATAGRAM` numbers from it, in a fixed order, whatever then happens
to it. So the *k*-th datagram of a direction meets the same fate for the same seed on
every machine, and turning one knob (say duplication) never changes which datagrams
another knob (loss) drops.

A :class:`DatagramLink` drops (independently, or in bursts with the Gilbert–Elliott
model), delays with jitter, duplicates, reorders, and throttles to a bandwidth with
a bounded queue, as ``tc netem`` would. A :class:`StreamLink` can only delay, jitter
and throttle: a relay that dropped or reordered bytes of a TCP stream would corrupt
it, since the kernels at both ends would never know. What it emulates instead is the
*effect* of a lost segment on TCP: the bytes arrive late, after the retransmission
Linux would send, and everything behind them waits too (head-of-line blocking).
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections import deque
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Protocol

from .errors import InvalidParameter

#: Random numbers each datagram takes from its link's generator, whatever its fate:
#: loss-state transition, loss, delay, duplicate?, the duplicate's delay, reorder?
DRAWS_PER_DATAGRAM = 6
#: Random numbers each chunk of a stream takes: emulated loss, delay.
DRAWS_PER_CHUNK = 2
#: Linux's smallest retransmission timeout (TCP_RTO_MIN); a TCP loss costs at least this.
TCP_MIN_RTO = 0.2
#: Segment size used to turn a chunk into segments for the loss emulation
#: (Ethernet's 1,500-byte MTU less IPv4, TCP and timestamp-option headers).
EMULATED_MSS = 1448
#: Bytes that may wait for a throttled datagram link before it drops (a small router buffer).
DEFAULT_QUEUE_BYTES = 64 * 1024
#: Longest a datagram chosen for reordering waits for a later one to overtake it.
DEFAULT_REORDER_HOLD = 0.1


class LossModel(str, Enum):
    """How losses are spread over time."""

    #: every datagram is lost with the same probability, independently of the others
    bernoulli = "bernoulli"
    #: two states, good and bad, as on Wi-Fi: losses come in bursts
    gilbert_elliott = "gilbert-elliott"


@dataclass(frozen=True)
class GilbertElliott:
    """The Gilbert–Elliott two-state loss model (transition probabilities per datagram).

    Args:
        p: probability of moving from the good state to the bad one.
        r: probability of moving from the bad state back to the good one.
        loss_good: loss probability in the good state.
        loss_bad: loss probability in the bad state.
    """

    p: float
    r: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    @classmethod
    def from_rate(cls, loss: float, burst: float) -> GilbertElliott:
        """The simple Gilbert model (no loss when good, all lost when bad) whose
        average loss is ``loss`` and whose bursts last ``burst`` datagrams on average.

        In the bad state a burst ends with probability ``r`` per datagram, so bursts
        last ``1/r``; the chain spends ``p/(p+r)`` of the time in the bad state.

        Raises:
            InvalidParameter: no such chain exists (``loss`` above ``burst/(burst+1)``).
        """
        if burst < 1:
            raise InvalidParameter(f"a loss burst lasts at least 1 datagram, not {burst:g}")
        if not 0 <= loss < 1:
            raise InvalidParameter("bursty loss needs a loss rate below 100 %")
        r = 1.0 / burst
        p = loss * r / (1.0 - loss)
        if p > 1.0:
            most = burst / (burst + 1)
            raise InvalidParameter(
                f"bursts of {burst:g} datagrams on average allow at most {most:.0%} loss,"
                f" not {loss:.0%}; make the bursts longer"
            )
        return cls(p, r)

    @property
    def average_loss(self) -> float:
        """The long-run loss rate: the time spent in each state times its loss."""
        if self.p + self.r == 0:
            return self.loss_good
        bad = self.p / (self.p + self.r)
        return bad * self.loss_bad + (1 - bad) * self.loss_good


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise InvalidParameter(f"{name} must be between 0 and 1 (or 0% and 100%), not {value!r}")


@dataclass(frozen=True)
class Impairment:
    """What to do to traffic, in each direction independently.

    Args:
        loss: probability that a datagram is lost (the average, for bursty loss).
        loss_model: independent losses, or Gilbert–Elliott bursts.
        burst: mean length of a loss burst, in datagrams (Gilbert–Elliott only).
        delay: one-way delay, in seconds.
        jitter: each delay is drawn uniformly from ``delay ± jitter`` (never below 0).
        duplicate: probability that a datagram is delivered twice.
        reorder: probability that a datagram is held back until the next one of its
            direction has overtaken it (at most ``reorder_hold`` seconds).
        bandwidth: bottleneck rate in bits per second (0 = unlimited).
        seed: the seed every link's random generator is derived from.
        queue_bytes: bytes that may wait for a throttled datagram link; more are dropped.
        reorder_hold: longest wait for a datagram chosen for reordering.

    Raises:
        InvalidParameter: a value is out of range.
    """

    loss: float = 0.0
    loss_model: LossModel = LossModel.bernoulli
    burst: float = 3.0
    delay: float = 0.0
    jitter: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    bandwidth: float = 0.0
    seed: int = 1
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    reorder_hold: float = DEFAULT_REORDER_HOLD

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            _check_probability(name, getattr(self, name))
        object.__setattr__(self, "loss_model", LossModel(self.loss_model))
        for name in ("delay", "jitter", "bandwidth", "reorder_hold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InvalidParameter(f"{name} must be a finite number >= 0, not {value!r}")
        if self.queue_bytes < 1:
            raise InvalidParameter(f"queue_bytes must be at least 1, not {self.queue_bytes}")
        if self.loss_model is LossModel.gilbert_elliott and self.loss > 0:
            GilbertElliott.from_rate(self.loss, self.burst)  # raises if impossible

    @property
    def is_null(self) -> bool:
        """True if traffic passes untouched."""
        return not any(
            (self.loss, self.delay, self.jitter, self.duplicate, self.reorder, self.bandwidth)
        )

    def loss_chain(self) -> GilbertElliott | None:
        """The Gilbert–Elliott chain for bursty loss; ``None`` for independent loss."""
        if self.loss_model is LossModel.gilbert_elliott and self.loss > 0:
            return GilbertElliott.from_rate(self.loss, self.burst)
        return None

    def describe(self) -> str:
        """One line for people: ``loss 5% (bursts of 3), delay 20 ms ± 5 ms, …``."""
        parts = []
        if self.loss:
            bursty = self.loss_model is LossModel.gilbert_elliott
            how = f" (Gilbert–Elliott, bursts of {self.burst:g})" if bursty else ""
            parts.append(f"loss {_pct(self.loss)}{how}")
        if self.delay or self.jitter:
            spread = f" ± {self.jitter * 1000:g} ms" if self.jitter else ""
            parts.append(f"delay {self.delay * 1000:g} ms{spread}")
        if self.duplicate:
            parts.append(f"duplicate {_pct(self.duplicate)}")
        if self.reorder:
            parts.append(f"reorder {_pct(self.reorder)}")
        if self.bandwidth:
            parts.append(f"bandwidth {format_bandwidth(self.bandwidth)}")
        return ", ".join(parts) + f" (seed {self.seed})" if parts else "none"

    def as_dict(self) -> dict[str, object]:
        """The settings as JSON-ready values (times in milliseconds)."""
        return {
            "loss": self.loss,
            "loss_model": self.loss_model.value,
            "burst": self.burst,
            "delay_ms": self.delay * 1000,
            "jitter_ms": self.jitter * 1000,
            "dup": self.duplicate,
            "reorder": self.reorder,
            "bandwidth_bps": self.bandwidth,
            "seed": self.seed,
        }


def _pct(value: float) -> str:
    return f"{value * 100:.4g}%"


def link_random(seed: int, link: str, direction: str) -> random.Random:
    """The random generator of one direction of one link.

    Seeded with a string, which CPython hashes with SHA-512 (seed version 2): the same
    arguments give the same numbers on every machine and Python version.
    """
    return random.Random(f"netchat-impair/{seed}/{link}/{direction}")


@dataclass
class LinkCounters:
    """What a link did, for reports and ``/stats``."""

    offered: int = 0
    offered_bytes: int = 0
    dropped: int = 0
    overflow: int = 0
    duplicated: int = 0
    reordered: int = 0
    stalls: int = 0
    released: int = 0
    released_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _LossProcess:
    """Decides loss from two uniform numbers; keeps the Gilbert–Elliott state."""

    def __init__(self, impairment: Impairment) -> None:
        self._loss = impairment.loss
        self._chain = impairment.loss_chain()
        self.bad = False

    def lost(self, u_state: float, u_loss: float) -> bool:
        chain = self._chain
        if chain is None:
            return u_loss < self._loss
        # Move first, then lose according to the state the datagram meets.
        self.bad = (u_state >= chain.r) if self.bad else (u_state < chain.p)
        return u_loss < (chain.loss_bad if self.bad else chain.loss_good)


#: A datagram and whatever its receiver wants back with it.
_Item = tuple[bytes, object]


class DatagramFilter(Protocol):
    """What a receiver needs from an impairment in front of it (see ``Peer(impairment=…)``)."""

    def offer(self, datagram: bytes, now: float, tag: object = None) -> None:
        """A datagram arrived at ``now``; ``tag`` (its source, say) travels with it."""
        ...

    def release_tagged(self, now: float) -> list[tuple[bytes, object]]:
        """The datagrams due by ``now`` with their tags, in the order delivered."""
        ...

    def next_due(self) -> float | None:
        """When the next datagram is due; ``None`` if none is waiting."""
        ...


class DatagramLink:
    """One direction of a datagram path: loss, delay, jitter, duplication, reordering,
    a bandwidth bottleneck with a bounded queue.

    Args:
        impairment: what to do.
        rng: this direction's generator (:func:`link_random`).
    """

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.impairment = impairment
        self.counters = LinkCounters()
        self._rng = rng
        self._loss = _LossProcess(impairment)
        # (due, order, offer index or -1 for a duplicate copy, (datagram, tag)); order
        # keeps datagrams due at the same moment first-in first-out.
        self._queue: list[tuple[float, int, int, _Item]] = []
        # Waiting to be overtaken: (deadline, due without the hold, offer index, item).
        self._held: list[tuple[float, float, int, _Item]] = []
        self._order = 0
        self._offered = 0
        self._highest_released = -1
        self._link_free = -math.inf

    @property
    def held(self) -> int:
        """Datagrams accepted but not yet released."""
        return len(self._queue) + len(self._held)

    def offer(self, datagram: bytes, now: float, tag: object = None) -> None:
        """Take a datagram that arrived at ``now``; see :meth:`release` for what comes out.

        ``tag`` is handed back with the datagram by :meth:`release_tagged` (a receiver
        keeps each datagram's source that way); it does not count as bytes.
        """
        imp = self.impairment
        item = (datagram, tag)
        rng = self._rng
        # Always the same draws, in the same order, whatever the datagram's fate.
        u_state, u_loss, u_delay, u_dup, u_dup_delay, u_reorder = (
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
        )
        index = self._offered
        self._offered += 1
        counters = self.counters
        counters.offered += 1
        counters.offered_bytes += len(datagram)
        if self._loss.lost(u_state, u_loss):
            counters.dropped += 1
            return
        departure = self._departure(len(datagram), now)
        if departure is None:
            counters.overflow += 1
            return
        due = departure + self._delay(u_delay)
        if u_reorder < imp.reorder:
            self._held.append((due + imp.reorder_hold, due, index, item))
        else:
            self._push(due, index, item)
            # Whatever was held back for reordering goes right after this one.
            for _deadline, held_due, held_index, held in self._held:
                self._push(max(held_due, due), held_index, held)
            self._held.clear()
        if u_dup < imp.duplicate:
            copy_departure = self._departure(len(datagram), now)
            if copy_departure is None:
                counters.overflow += 1
            else:
                counters.duplicated += 1
                self._push(copy_departure + self._delay(u_dup_delay), -1, item)

    def release(self, now: float) -> list[bytes]:
        """The datagrams due by ``now``, in delivery order."""
        return [datagram for datagram, _tag in self.release_tagged(now)]

    def release_tagged(self, now: float) -> list[tuple[bytes, object]]:
        """:meth:`release`, each datagram with the tag it was offered with."""
        if self._held:
            expired = [entry for entry in self._held if entry[0] <= now]
            if expired:
                self._held = [entry for entry in self._held if entry[0] > now]
                for deadline, _due, index, item in expired:
                    self._push(deadline, index, item)
        out: list[_Item] = []
        counters = self.counters
        while self._queue and self._queue[0][0] <= now:
            _due, _order, index, item = heapq.heappop(self._queue)
            if index >= 0:  # duplicate copies do not count as reordering
                if index < self._highest_released:
                    counters.reordered += 1
                else:
                    self._highest_released = index
            counters.released += 1
            counters.released_bytes += len(item[0])
            out.append(item)
        return out

    def next_due(self) -> float | None:
        """When :meth:`release` next has something; ``None`` if nothing is waiting."""
        moments = [deadline for deadline, _due, _index, _data in self._held]
        if self._queue:
            moments.append(self._queue[0][0])
        return min(moments) if moments else None

    def _push(self, due: float, index: int, item: _Item) -> None:
        self._order += 1
        heapq.heappush(self._queue, (due, self._order, index, item))

    def _delay(self, u: float) -> float:
        imp = self.impairment
        return max(0.0, imp.delay + imp.jitter * (2.0 * u - 1.0))

    def _departure(self, size: int, now: float) -> float | None:
        """When the datagram has crossed the bottleneck; ``None`` if its queue is full."""
        bandwidth = self.impairment.bandwidth
        if not bandwidth:
            return now
        start = max(now, self._link_free)
        waiting_bytes = (start - now) * bandwidth / 8
        if waiting_bytes + size > self.impairment.queue_bytes:
            return None
        self._link_free = start + size * 8 / bandwidth
        return self._link_free


class StreamLink:
    """One direction of a TCP stream: delay, jitter, throttling and emulated loss.

    Bytes leave in the order they came, whatever the jitter: a chunk is never released
    before the one in front of it. A chunk that would have lost one of its segments
    (probability ``1 - (1 - loss) ** segments``) is recovered the way Linux recovers
    (RACK-TLP, RFC 8985), and everything behind it waits (head-of-line blocking):

    * if a later chunk arrives before the tail-loss probe fires, that chunk's
      selective acknowledgement reveals the hole and the retransmission arrives about
      three one-way delays after the later chunk was sent;
    * otherwise the tail-loss probe does it: :data:`TCP_MIN_RTO` plus two round trips
      after the chunk was sent (2 × SRTT + 200 ms when one segment is in flight), and
      one more one-way delay for the retransmission to arrive.

    A retransmission is never lost again (real TCP would back off exponentially).

    Args:
        impairment: what to do (duplication and reordering do not apply to a stream).
        rng: this direction's generator (:func:`link_random`).
    """

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.impairment = impairment
        self.counters = LinkCounters()
        self.held_bytes = 0
        self._rng = rng
        # [due, chunk]; a lost chunk's due moves earlier when a later chunk reveals it.
        self._queue: deque[list[Any]] = deque()
        self._unrecovered: list[list[Any]] = []
        self._link_free = -math.inf

    @property
    def tail_stall(self) -> float:
        """Extra wait of a lost chunk that nothing follows: the tail-loss probe."""
        return TCP_MIN_RTO + 4 * self.impairment.delay

    def offer(self, chunk: bytes, now: float) -> None:
        """Take bytes read from the stream at ``now``."""
        imp = self.impairment
        u_loss, u_delay = self._rng.random(), self._rng.random()
        counters = self.counters
        counters.offered += 1
        counters.offered_bytes += len(chunk)
        departure = now
        if imp.bandwidth:
            self._link_free = max(now, self._link_free) + len(chunk) * 8 / imp.bandwidth
            departure = self._link_free
        due = departure + max(0.0, imp.delay + imp.jitter * (2.0 * u_delay - 1.0))
        lost = False
        if imp.loss:
            segments = max(1, math.ceil(len(chunk) / EMULATED_MSS))
            lost = u_loss < 1.0 - (1.0 - imp.loss) ** segments
        entry: list[Any] = [due, chunk]
        if lost:
            counters.stalls += 1
            entry[0] = due + self.tail_stall
            self._unrecovered.append(entry)
        elif self._unrecovered:
            # This chunk's acknowledgement reveals the hole: the retransmission goes out
            # a round trip after it was sent and arrives one one-way delay later.
            recovered = departure + 3 * imp.delay
            for waiting in self._unrecovered:
                waiting[0] = min(waiting[0], recovered)
            self._unrecovered.clear()
        self._queue.append(entry)
        self.held_bytes += len(chunk)

    def release(self, now: float) -> list[bytes]:
        """The chunks due by ``now``, in stream order (a chunk waits for those before it)."""
        out: list[bytes] = []
        while self._queue and self._queue[0][0] <= now:
            entry = self._queue.popleft()
            if self._unrecovered and entry is self._unrecovered[0]:
                self._unrecovered.pop(0)
            chunk: bytes = entry[1]
            self.held_bytes -= len(chunk)
            self.counters.released += 1
            self.counters.released_bytes += len(chunk)
            out.append(chunk)
        return out

    def next_due(self) -> float | None:
        """When :meth:`release` next has something; ``None`` if nothing is waiting."""
        return float(self._queue[0][0]) if self._queue else None


# --- settings as people type them -----------------------------------------------------

_PERCENT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*$")


def parse_probability(text: str, what: str = "probability") -> float:
    """``0.05`` or ``5%`` → 0.05.

    Raises:
        InvalidParameter: not a number, or outside 0–1 (0–100 %).
    """
    match = _PERCENT.match(text)
    if match is None:
        raise InvalidParameter(f"{what} must be a fraction like 0.05 or a percentage like 5%")
    value = float(match.group(1))
    if match.group(2):
        value /= 100.0
    if not 0.0 <= value <= 1.0:
        shown = text.strip()
        raise InvalidParameter(
            f"{what} {shown} is out of range: give a fraction from 0 to 1 (0.05)"
            " or a percentage from 0% to 100% (5%)"
        )
    return value


_BANDWIDTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(bit|bps|b/s)?\s*$", re.IGNORECASE)
_BANDWIDTH_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_bandwidth(text: str) -> float:
    """A rate in bits per second, written as ``tc`` does: ``256kbit``, ``1mbit``, ``1e6``.

    Raises:
        InvalidParameter: not a rate, or zero.
    """
    match = _BANDWIDTH.match(text)
    if match is None or (match.group(3) or "").lower() == "bps":
        raise InvalidParameter(
            "bandwidth must be a bit rate like 64kbit, 1mbit or 2.5mbit"
            " (bits per second; 'bps' is ambiguous and not accepted)"
        )
    value = float(match.group(1)) * _BANDWIDTH_SCALE[match.group(2).lower()]
    if value <= 0:
        raise InvalidParameter("bandwidth must be above 0 (leave it out for no limit)")
    return value


def format_bandwidth(bits_per_second: float) -> str:
    """``1mbit``, ``256kbit``, ``1500bit``."""
    for scale, unit in ((1e9, "gbit"), (1e6, "mbit"), (1e3, "kbit")):
        if bits_per_second >= scale:
            return f"{bits_per_second / scale:g}{unit}"
    return f"{bits_per_second:g}bit"

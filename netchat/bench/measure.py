"""What receivers measure: delivery, duplicates, order, latency and jitter. No I/O.

Strategy
--------
Each message's text carries its own identity and send time::

    nb <run token> <sender> <number> <monotonic ns> xxxx…

The sender stamps ``time.monotonic_ns()`` just before sending; a receiver subtracts
it from its own ``time.monotonic_ns()`` when the frame reaches it. Senders and
receivers run in one process (and on Linux CLOCK_MONOTONIC is one clock for the
whole system anyway), so the difference is the one-way latency a user would see,
the client library's own queueing included.

A :class:`ReceiverTally` belongs to one receiver and is only touched by that
receiver's thread. Per sender it keeps which numbers arrived (a duplicate is a number
seen before, and counts only as a duplicate), the highest number so far (a number
below it arrived *out of order*), and the RFC 3550 interarrival jitter estimator
``J += (|D| - J) / 16``, where ``D`` is the change in transit time between two
consecutive arrivals from that sender.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PAYLOAD_PREFIX = "nb"
_PAYLOAD = re.compile(r"^nb ([0-9a-f]{8}) (\d{1,6}) (\d{1,9}) (\d{1,20})(?: |$)")


def payload(token: str, sender: int, number: int, sent_ns: int, size: int) -> str:
    """The text of one benchmark message, padded with ``x`` to ``size`` characters."""
    stamp = f"{PAYLOAD_PREFIX} {token} {sender} {number} {sent_ns}"
    pad = size - len(stamp) - 1
    return f"{stamp} {'x' * pad}" if pad >= 0 else stamp


def parse_payload(text: str, token: str) -> tuple[int, int, int] | None:
    """``(sender, number, sent_ns)`` of a benchmark message of this run, else ``None``."""
    match = _PAYLOAD.match(text)
    if match is None or match.group(1) != token:
        return None
    return int(match.group(2)), int(match.group(3)), int(match.group(4))


class _Stream:
    """One sender as seen by one receiver."""

    __slots__ = ("highest", "jitter_ns", "last_transit", "seen")

    def __init__(self, messages: int) -> None:
        self.seen = bytearray(messages)
        self.highest = -1
        self.last_transit: int | None = None
        self.jitter_ns = 0.0


@dataclass
class ReceiverTally:
    """Everything one receiver saw of the benchmark traffic.

    Args:
        senders: number of senders in the run.
        messages: messages per sender.
        own_sender: this receiver's own sender number (its messages do not count).
    """

    senders: int
    messages: int
    own_sender: int | None = None
    #: deliveries this receiver should see; set from what was really sent, once known
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    foreign: int = 0  # numbers outside the run's range: counted, never trusted
    latencies_ns: list[int] = field(default_factory=list)
    first_ns: int | None = None
    last_ns: int | None = None
    _streams: list[_Stream] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._streams = [_Stream(self.messages) for _ in range(self.senders)]
        if not self.expected:
            others = self.senders - (1 if self.own_sender is not None else 0)
            self.expected = others * self.messages

    def record(self, sender: int, number: int, sent_ns: int, arrived_ns: int) -> None:
        """One benchmark message arrived."""
        if sender == self.own_sender:
            return  # our own message echoed back: not a delivery
        if not (0 <= sender < self.senders and 0 <= number < self.messages):
            self.foreign += 1
            return
        stream = self._streams[sender]
        if stream.seen[number]:
            self.duplicates += 1
            return
        stream.seen[number] = 1
        self.delivered += 1
        transit = arrived_ns - sent_ns
        self.latencies_ns.append(transit)
        if number < stream.highest:
            self.out_of_order += 1
        else:
            stream.highest = number
        if stream.last_transit is not None:
            # RFC 3550 §6.4.1: J(i) = J(i-1) + (|D(i-1,i)| - J(i-1)) / 16
            stream.jitter_ns += (abs(transit - stream.last_transit) - stream.jitter_ns) / 16
        stream.last_transit = transit
        if self.first_ns is None:
            self.first_ns = arrived_ns
        self.last_ns = arrived_ns

    def jitters_ns(self) -> list[float]:
        """The final jitter estimate of every sender heard at least twice."""
        return [
            s.jitter_ns
            for i, s in enumerate(self._streams)
            if i != self.own_sender and s.last_transit is not None and s.seen.count(1) > 1
        ]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0–1) of values sorted ascending."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Summary:
    """Receivers' tallies added up, as a report row shows them."""

    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    foreign: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    jitter_ms: float | None = None
    first_ns: int | None = None
    last_ns: int | None = None
    #: latency at 0 %, 1 %, …, 100 % of deliveries (ms), for CDF plots
    cdf_ms: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, tallies: Iterable[ReceiverTally]) -> Summary:
        """Add up ``tallies``."""
        summary = cls()
        latencies: list[int] = []
        jitters: list[float] = []
        for tally in tallies:
            summary.expected += tally.expected
            summary.delivered += tally.delivered
            summary.duplicates += tally.duplicates
            summary.out_of_order += tally.out_of_order
            summary.foreign += tally.foreign
            latencies.extend(tally.latencies_ns)
            jitters.extend(tally.jitters_ns())
            if tally.first_ns is not None:
                first = summary.first_ns
                summary.first_ns = tally.first_ns if first is None else min(first, tally.first_ns)
            if tally.last_ns is not None:
                last = summary.last_ns
                summary.last_ns = tally.last_ns if last is None else max(last, tally.last_ns)
        if latencies:
            latencies.sort()
            ms = [value / 1e6 for value in latencies]
            summary.p50_ms = percentile(ms, 0.50)
            summary.p95_ms = percentile(ms, 0.95)
            summary.p99_ms = percentile(ms, 0.99)
            summary.max_ms = ms[-1]
            summary.cdf_ms = [ms[0]] + [percentile(ms, i / 100) for i in range(1, 101)]
        if jitters:
            summary.jitter_ms = sum(jitters) / len(jitters) / 1e6
        return summary

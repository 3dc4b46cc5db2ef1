"""Who may connect: the caps every server transport enforces, written once.

Strategy
--------
Two pools. *Members* have joined; ``max_clients`` caps them and ``max_per_address``
caps what one IP address holds. *Pending* connections have not joined yet. Past
``max_pending`` of them, each new connection pushes out the oldest pending one that
has had :data:`MIN_EVICTABLE_AGE` seconds to join, as a SYN cache does: a real client
joins within a round trip of connecting, while connections that never send a name (a
slowloris) grow old, so they are the ones to go and they cannot lock members out. A
class connecting all at once is young, so it is never evicted: the pool stretches
(up to ``max_clients`` pending) instead. While the pool is more than half full, new
connections also get a shorter registration deadline
(:meth:`Admission.registration_timeout`).

Age alone cannot stop an attacker who keeps opening connections faster than they
age: the pool would stay full of young ones and lock everyone out. So when nobody in
the full pool is old enough, a connection from another address pushes out the oldest
pending connection of the address holding the most, if that address holds more than
its fair share (``max_pending`` divided among the waiting addresses, and more than
one). A class connecting at once (one connection per address) is never thinned out,
and neither is a crowd behind one address by its own newcomers; a flood from a few
addresses cannot keep anyone else out.

Refusals are logged by :class:`RefusalLog`: a flood of refused connections writes a
line per interval, not a line each.

No sockets here: a transport asks :meth:`Admission.admit` before it spends a thread
on a connection, :meth:`Admission.claim_member` just before it joins, and
:meth:`Admission.release` when the connection ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Rejected

#: Seconds an unregistered connection gets while the pending pool is under pressure.
HURRIED_REGISTRATION = 5.0
#: Seconds a pending connection must have had to join before it may be evicted.
MIN_EVICTABLE_AGE = 2.0


def plural(count: int, word: str) -> str:
    """``1 connection``, ``2 connections``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


@dataclass(eq=False)
class Ticket:
    """One admitted connection. ``evict`` is called (once, from another thread) if the
    connection is pushed out of the pending pool; the transport closes it."""

    address: str
    admitted_at: float = 0.0
    evict: Callable[[], None] = field(default=lambda: None)
    member: bool = False
    released: bool = False


class Admission:
    """Member and pending caps; thread-safe.

    Args:
        max_clients: most members at once (and most pending connections).
        max_per_address: most connections (members and pending) from one IP
            address; 0 means no cap.
        max_pending: pending connections past which old ones are evicted.
        clock: monotonic time source.
    """

    def __init__(
        self,
        max_clients: int,
        max_per_address: int = 0,
        max_pending: int = 128,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_clients = max_clients
        self.max_per_address = max_per_address
        self.max_pending = max_pending
        self._clock = clock
        self._lock = threading.Lock()
        self._members = 0
        self._pending: OrderedDict[int, Ticket] = OrderedDict()  # oldest first
        self._per_address: Counter[str] = Counter()
        self._pending_per_address: Counter[str] = Counter()
        #: connections pushed out of the pending pool
        self.evicted = 0

    @property
    def members(self) -> int:
        return self._members

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(self, address: str) -> Ticket:
        """Admit a new connection from ``address`` as pending.

        Raises:
            Rejected: the server is full, or ``address`` holds too many
                connections; the message is fit to show the client.
        """
        evicted: Ticket | None = None
        now = self._clock()
        with self._lock:
            if self._members >= self.max_clients:
                raise self._full()
            if 0 < self.max_per_address <= self._per_address[address]:
                raise Rejected(
                    f"too many connections from {address}"
                    f" (at most {plural(self.max_per_address, 'connection')})",
                    code="too-many-connections",
                )
            if len(self._pending) >= self.max_pending:
                oldest = next(iter(self._pending.values()))
                if now - oldest.admitted_at >= MIN_EVICTABLE_AGE:
                    evicted = oldest
                else:
                    evicted = self._hog_locked(address)
                if evicted is not None:
                    self._release_locked(evicted)
                    self.evicted += 1
                elif len(self._pending) >= self.max_clients:
                    raise Rejected(
                        "too many connections are joining at once; try again in a moment",
                        code="server-busy",
                    )
            ticket = Ticket(address, admitted_at=now)
            self._pending[id(ticket)] = ticket
            self._pending_per_address[address] += 1
            self._per_address[address] += 1
        if evicted is not None:
            evicted.evict()
        return ticket

    def _hog_locked(self, newcomer: str) -> Ticket | None:
        """The oldest pending connection of the address holding the most pending
        connections, if that is not ``newcomer``'s and holds more than its fair share."""
        if not self._pending_per_address:
            return None
        hog, count = self._pending_per_address.most_common(1)[0]
        fair_share = max(1.0, self.max_pending / len(self._pending_per_address))
        if hog == newcomer or count <= fair_share:
            return None
        return next(ticket for ticket in self._pending.values() if ticket.address == hog)

    def registration_timeout(self, normal: float) -> float:
        """The deadline for a connection admitted now: shorter while the pending pool
        is more than half full."""
        if len(self._pending) > self.max_pending // 2:
            return min(normal, HURRIED_REGISTRATION)
        return normal

    def claim_member(self, ticket: Ticket) -> None:
        """Move ``ticket`` to the member pool, just before its connection joins.

        Raises:
            Rejected: ``server-full``: ``max_clients`` members are in already.
        """
        with self._lock:
            if ticket.member or ticket.released:
                return
            if self._members >= self.max_clients:
                raise self._full()
            self._forget_pending_locked(ticket)
            ticket.member = True
            self._members += 1

    def unclaim_member(self, ticket: Ticket) -> None:
        """The join after :meth:`claim_member` failed (name taken): pending again."""
        with self._lock:
            if not ticket.member or ticket.released:
                return
            ticket.member = False
            self._members -= 1
            self._pending[id(ticket)] = ticket
            self._pending_per_address[ticket.address] += 1

    def release(self, ticket: Ticket) -> None:
        """``ticket``'s connection ended. Idempotent."""
        with self._lock:
            self._release_locked(ticket)

    def _full(self) -> Rejected:
        return Rejected(
            f"server full (at most {plural(self.max_clients, 'user')}); try again later",
            code="server-full",
        )

    def _release_locked(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        if ticket.member:
            self._members -= 1
        else:
            self._forget_pending_locked(ticket)
        self._per_address[ticket.address] -= 1
        if self._per_address[ticket.address] <= 0:
            del self._per_address[ticket.address]

    def _forget_pending_locked(self, ticket: Ticket) -> None:
        if self._pending.pop(id(ticket), None) is None:
            return
        self._pending_per_address[ticket.address] -= 1
        if self._pending_per_address[ticket.address] <= 0:
            del self._pending_per_address[ticket.address]


class RefusalLog:
    """Logs refused connections, at most one line per ``interval`` seconds: a flood of
    refusals (a client's doing) must not write a line each. A line after a quiet
    spell names the refusal; the next one says how many more there were meanwhile.

    Args:
        logger: where the lines go (at WARNING).
        interval: least seconds between two lines.
        clock: monotonic time source.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last_line = float("-inf")
        self._unlogged = 0
        #: every refusal, logged or not
        self.refused = 0

    def note(self, peer: str, reason: str) -> None:
        """``peer`` was refused for ``reason``."""
        now = self._clock()
        with self._lock:
            self.refused += 1
            if now - self._last_line < self.interval:
                self._unlogged += 1
                return
            unlogged, self._unlogged = self._unlogged, 0
            self._last_line = now
        since = (
            f" ({plural(unlogged, 'more connection')} refused in the last {self.interval:g} s)"
            if unlogged
            else ""
        )
        self._logger.warning("refused %s: %s%s", peer, reason, since)

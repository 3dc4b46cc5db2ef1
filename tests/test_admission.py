"""Who may connect (netchat/admission.py): the pending pool under floods, and the
refusal log, on a fake clock and with no sockets."""

from __future__ import annotations

import logging
from functools import partial

import pytest

from netchat.admission import MIN_EVICTABLE_AGE, Admission, RefusalLog, Ticket
from netchat.errors import Rejected


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Pool:
    """An :class:`Admission` on a fake clock that records whom it evicts."""

    def __init__(self, max_clients: int, max_pending: int) -> None:
        self.clock = Clock()
        self.admission = Admission(max_clients, max_pending=max_pending, clock=self.clock)
        self.evicted: list[Ticket] = []

    def admit(self, address: str, count: int = 1) -> list[Ticket]:
        tickets = []
        for _ in range(count):
            ticket = self.admission.admit(address)
            ticket.evict = partial(self.evicted.append, ticket)
            tickets.append(ticket)
        return tickets


def test_a_young_flood_from_one_address_cannot_keep_another_out() -> None:
    pool = Pool(max_clients=150, max_pending=128)
    flood = pool.admit("192.0.2.66", 150)  # all young: the pool stretched to max_clients
    with pytest.raises(Rejected, match="too many connections are joining at once"):
        pool.admit("192.0.2.66")  # the flood's own next one finds no room
    [real] = pool.admit("192.0.2.7")  # nobody is old enough, but the flood hogs the pool
    assert pool.evicted == [flood[0]] and pool.admission.evicted == 1
    pool.admission.claim_member(real)
    assert (pool.admission.members, pool.admission.pending) == (1, 149)


def test_a_class_connecting_at_once_is_never_thinned_out() -> None:
    pool = Pool(max_clients=300, max_pending=128)
    for student in range(200):  # one connection per address, all young
        pool.admit(f"10.0.0.{student}")
    assert pool.admission.pending == 200 and pool.evicted == []


def test_a_crowd_behind_one_address_is_not_thinned_by_its_own_newcomers() -> None:
    pool = Pool(max_clients=300, max_pending=128)
    pool.admit("198.51.100.1", 200)  # a classroom behind one NAT address
    assert pool.admission.pending == 200 and pool.evicted == []


def test_old_pending_connections_go_first() -> None:
    pool = Pool(max_clients=300, max_pending=4)
    first = pool.admit("192.0.2.1", 4)
    pool.clock.now = MIN_EVICTABLE_AGE
    pool.admit("192.0.2.1")
    assert pool.evicted == [first[0]]


def test_a_flood_of_refusals_writes_a_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("netchat.test-refusals")
    refusals = RefusalLog(logger, interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for port in range(300):
            refusals.note(f"192.0.2.66:{port}", "too many connections from 192.0.2.66")
        clock.now = 10.0
        refusals.note("192.0.2.66:1", "too many connections from 192.0.2.66")
    assert [record.getMessage() for record in caplog.records] == [
        "refused 192.0.2.66:0: too many connections from 192.0.2.66",
        "refused 192.0.2.66:1: too many connections from 192.0.2.66"
        " (299 more connections refused in the last 10 s)",
    ]
    assert refusals.refused == 301

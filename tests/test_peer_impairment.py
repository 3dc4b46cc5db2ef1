"""A peer's receive-side impairment hook (``Peer(impairment=…)``), over real multicast on
the loopback interface (interface 127.0.0.1, a free port per test)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from netchat.impair import DatagramLink, Impairment, link_random
from netchat.peer import Peer
from netchat.protocol.frames import Frame, Message

LOOPBACK = "127.0.0.1"
DEADLINE = 10.0


class Heard:
    """Chat messages a peer showed, with when they were shown."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, float]] = []
        self._cond = threading.Condition()

    def on_event(self, frame: Frame) -> None:
        if isinstance(frame, Message):
            with self._cond:
                self.messages.append((frame.sender, frame.text, time.monotonic()))
                self._cond.notify_all()

    def wait_count(self, count: int) -> None:
        end = time.monotonic() + DEADLINE
        with self._cond:
            while len(self.messages) < count and (left := end - time.monotonic()) > 0:
                self._cond.wait(left)


@pytest.fixture
def make_peer() -> Iterator[Callable[..., tuple[Peer, Heard]]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    peers: list[Peer] = []

    def make(name: str, impairment: DatagramLink | None = None) -> tuple[Peer, Heard]:
        peer = Peer(
            name, port=port, interface=LOOPBACK, heartbeat_interval=0.2, impairment=impairment
        )
        heard = Heard()
        peer.start(heard.on_event, lambda reason: None)
        peers.append(peer)
        return peer, heard

    yield make
    for peer in peers:
        peer.close()


def wait_known(peer: Peer, count: int) -> None:
    end = time.monotonic() + DEADLINE
    while peer.stats()["peers"] < count and time.monotonic() < end:
        time.sleep(0.02)
    assert peer.stats()["peers"] == count


def test_duplicated_datagrams_are_shown_once_and_counted(
    make_peer: Callable[..., tuple[Peer, Heard]],
) -> None:
    link = DatagramLink(Impairment(duplicate=1.0), link_random(1, "peer", "down"))
    alice, _ = make_peer("alice")
    bob, bob_heard = make_peer("bob", impairment=link)
    wait_known(bob, 1)
    for text in ("one", "два", "三"):
        alice.send_line(text)
    bob_heard.wait_count(3)
    time.sleep(0.3)  # a wrongly shown copy would arrive by now
    assert [(sender, text) for sender, text, _ in bob_heard.messages] == [
        ("alice", "one"),
        ("alice", "два"),
        ("alice", "三"),
    ]
    assert bob.stats()["duplicates"] >= 3
    assert link.counters.duplicated == link.counters.offered >= 3


def test_a_delayed_datagram_is_shown_when_due(
    make_peer: Callable[..., tuple[Peer, Heard]],
) -> None:
    link = DatagramLink(Impairment(delay=0.3), link_random(1, "peer", "down"))
    alice, _ = make_peer("alice")
    bob, bob_heard = make_peer("bob", impairment=link)
    wait_known(bob, 1)
    sent = time.monotonic()
    alice.send_line("late news")
    bob_heard.wait_count(1)
    assert [(s, t) for s, t, _ in bob_heard.messages] == [("alice", "late news")]
    assert bob_heard.messages[0][2] - sent >= 0.3

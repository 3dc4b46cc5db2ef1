"""Serverless peers over multicast on the loopback interface (group 239.255.80.80,
interface 127.0.0.1, a free port per test). Every wait is a bounded poll."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from netchat.peer import DEFAULT_GROUP, Peer
from netchat.protocol import datagram as dg
from netchat.protocol.frames import Frame, Joined, encode_frame
from netchat.protocol.render import render_lines

DEADLINE = 10.0
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOOPBACK, 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


class Recorder:
    """Collects what a peer shows, as rendered lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed: list[str | None] = []
        self._cond = threading.Condition()

    def on_event(self, frame: Frame) -> None:
        with self._cond:
            self.lines += render_lines(frame)
            self._cond.notify_all()

    def on_closed(self, reason: str | None) -> None:
        self.closed.append(reason)

    def wait_for(self, predicate: Callable[[str], bool]) -> str:
        end = time.monotonic() + DEADLINE
        with self._cond:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no such line; shown: {self.lines}")
                self._cond.wait(min(remaining, 0.1))

    def wait_line(self, text: str) -> str:
        return self.wait_for(lambda line: line.endswith(text))

    def count(self, text: str) -> int:
        with self._cond:
            return sum(line.endswith(text) for line in self.lines)


@pytest.fixture
def group_port() -> int:
    return free_port()


@pytest.fixture
def make_peer(group_port: int) -> Iterator[Callable[..., tuple[Peer, Recorder]]]:
    peers: list[Peer] = []

    def make(name: str, heartbeat_interval: float = 0.2) -> tuple[Peer, Recorder]:
        peer = Peer(
            name, port=group_port, interface=LOOPBACK, heartbeat_interval=heartbeat_interval
        )
        recorder = Recorder()
        peer.start(recorder.on_event, recorder.on_closed)
        peers.append(peer)
        return peer, recorder

    yield make
    for peer in peers:
        peer.close()
        assert peer.wait(DEADLINE)


def group_sender() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    return sock


def test_three_peers_chat_and_see_their_own_lines_once(
    make_peer: Callable[..., tuple[Peer, Recorder]],
) -> None:
    (alice, a), (bob, b), (carol, c) = make_peer("alice"), make_peer("bob"), make_peer("carol")
    for recorder, others in ((a, ("bob", "carol")), (b, ("alice", "carol")), (c, ("alice", "bob"))):
        for other in others:
            recorder.wait_line(f"* {other} joined")
    alice.send_line("hello peers")
    bob.send_line("/me waves")
    for recorder in (a, b, c):
        recorder.wait_line("<alice> hello peers")
        recorder.wait_line("* bob waves")
    time.sleep(0.3)  # give a looped-back copy the chance to be (wrongly) shown twice
    assert a.count("<alice> hello peers") == 1
    assert b.count("* bob waves") == 1
    carol.send_line("/who")
    c.wait_line("Online (3): carol, alice, bob")
    assert alice.stats()["lost"] == 0


def test_private_messages_reach_only_their_target(
    make_peer: Callable[..., tuple[Peer, Recorder]],
) -> None:
    (alice, a), (_, b), (carol, c) = make_peer("alice"), make_peer("bob"), make_peer("carol")
    a.wait_line("* bob joined")
    a.wait_line("* carol joined")
    alice.send_line("/msg bob psst")
    b.wait_line("<alice -> bob> psst")
    a.wait_line("<alice -> bob> psst")
    alice.send_line("/msg nobody hi")
    a.wait_line("no peer named 'nobody'; /who lists who is here")
    carol.send_line("marker")
    c.wait_line("<carol> marker")
    a.wait_line("<carol> marker")
    assert c.count("psst") == 0


def test_leaving_and_timing_out(
    make_peer: Callable[..., tuple[Peer, Recorder]], group_port: int
) -> None:
    (_, a), (bob, b) = make_peer("alice"), make_peer("bob")
    a.wait_line("* bob joined")
    bob.send_line("/quit")
    a.wait_line("* bob left")
    assert bob.wait(DEADLINE) and b.closed == [None]
    # A peer that announces itself once and then vanishes times out.
    ghost = group_sender()
    presence = encode_frame(Joined("ghost", time.time(), 1))
    ghost.sendto(dg.encode_peer(os.urandom(8), 0, presence), (DEFAULT_GROUP, group_port))
    ghost.close()
    a.wait_line("* ghost joined")
    a.wait_line("* ghost timed out")


def test_a_name_collision_is_resolved_visibly(
    make_peer: Callable[..., tuple[Peer, Recorder]],
) -> None:
    first, a1 = make_peer("alice")
    time.sleep(0.05)  # the first claim is older
    second, a2 = make_peer("alice")
    a2.wait_line("another peer was already called alice; you are now alice2")
    a1.wait_line("* alice is now known as alice2")
    assert second.name == "alice2" and first.name == "alice"
    second.send_line("who am i")
    a1.wait_line("<alice2> who am i")


def test_garbage_on_the_group_is_counted_not_fatal(
    make_peer: Callable[..., tuple[Peer, Recorder]], group_port: int
) -> None:
    (alice, a), (bob, b) = make_peer("alice"), make_peer("bob")
    a.wait_line("* bob joined")
    noise = group_sender()
    try:
        for n in range(100):
            noise.sendto(os.urandom(n * 7 % 1300), (DEFAULT_GROUP, group_port))
        noise.sendto(dg.encode_peer(b"x" * 8, 5, b"not json"), (DEFAULT_GROUP, group_port))
        noise.sendto(dg.encode_peer(b"y" * 8, 2**63, b"{}"), (DEFAULT_GROUP, group_port))
        noise.sendto(dg.encode_hello(dg.NO_COOKIE), (DEFAULT_GROUP, group_port))
    finally:
        noise.close()
    bob.send_line("still alive")
    a.wait_line("<bob> still alive")
    end = time.monotonic() + DEADLINE
    while alice.stats()["invalid"] < 3 and time.monotonic() < end:
        time.sleep(0.05)
    assert alice.stats()["invalid"] >= 3
    assert b.closed == [] and a.closed == []


def test_a_message_too_large_for_a_datagram_is_refused(
    make_peer: Callable[..., tuple[Peer, Recorder]],
) -> None:
    alice, a = make_peer("alice")
    alice.send_line("z" * 1500)
    a.wait_for(lambda line: line.startswith("! message not sent"))


def test_broadcast_peers_on_the_loopback_broadcast_address(group_port: int) -> None:
    # 127.255.255.255 is the broadcast address of lo: broadcast mode, tested without
    # sending anything off this machine.
    peers = [
        Peer(name, group="127.255.255.255", port=group_port, broadcast=True, heartbeat_interval=0.2)
        for name in ("alice", "bob")
    ]
    recorders = [Recorder(), Recorder()]
    try:
        for peer, recorder in zip(peers, recorders, strict=True):
            peer.start(recorder.on_event, recorder.on_closed)
        recorders[0].wait_line("* bob joined")
        recorders[1].wait_line("* alice joined")
        peers[1].send_line("über broadcast")
        for recorder in recorders:
            recorder.wait_line("<bob> über broadcast")
    finally:
        for peer in peers:
            peer.close()
            assert peer.wait(DEADLINE)

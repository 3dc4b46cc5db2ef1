"""Serverless peers over multicast on the loopback interface (group 239.255.80.80,
interface 127.0.0.1, a free port per test). Every wait is a bounded poll."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netchat.peer
from netchat.peer import (
    DEFAULT_GROUP,
    MAX_NEWCOMERS,
    MAX_NEWCOMERS_PER_HOST,
    MAX_PEERS,
    REPLY_SPACING,
    Address,
    Peer,
)
from netchat.protocol import datagram as dg
from netchat.protocol.frames import (
    Frame,
    Joined,
    Left,
    Message,
    Renamed,
    encode_frame,
)
from netchat.protocol.render import render_lines
from netchat.protocol.text import name_problem
from tests.test_frames import ANY_FRAME

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
        self.frames: list[Frame] = []
        self.closed: list[str | None] = []
        self._cond = threading.Condition()

    def on_event(self, frame: Frame) -> None:
        with self._cond:
            self.frames.append(frame)
            self.lines += render_lines(frame, time.time())
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

    def transcript(self) -> list[str]:
        """Every line shown so far, in order, without its time."""
        with self._cond:
            return [line.split("] ", 1)[1] for line in self.lines]


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


def wait_until(condition: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


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
            recorder.wait_line(f"-!- {other} joined")
    alice.send_line("hello peers")
    bob.send_line("/me waves")
    for recorder in (a, b, c):
        recorder.wait_line("<alice> hello peers")
        recorder.wait_line("] * bob waves")
    time.sleep(0.3)  # give a looped-back copy the chance to be (wrongly) shown twice
    assert a.count("<alice> hello peers") == 1
    assert b.count("] * bob waves") == 1
    carol.send_line("/who")
    c.wait_line("Online (3): carol, alice, bob")
    assert alice.stats()["lost"] == 0


def test_private_messages_reach_only_their_target(
    make_peer: Callable[..., tuple[Peer, Recorder]],
) -> None:
    (alice, a), (_, b), (carol, c) = make_peer("alice"), make_peer("bob"), make_peer("carol")
    a.wait_line("-!- bob joined")
    a.wait_line("-!- carol joined")
    alice.send_line("/msg bob psst")
    b.wait_line("<alice -> bob> psst")
    a.wait_line("<alice -> bob> psst")
    alice.send_line("/msg nobody hi")
    a.wait_line("no peer named 'nobody'; /who lists who is here")
    carol.send_line("marker")
    c.wait_line("<carol> marker")
    a.wait_line("<carol> marker")
    assert c.count("psst") == 0


def test_leaving_with_a_reason_and_timing_out(
    make_peer: Callable[..., tuple[Peer, Recorder]], group_port: int
) -> None:
    (_, a), (bob, b) = make_peer("alice"), make_peer("bob")
    a.wait_line("-!- bob joined")
    bob.send_line("/quit going home")  # the reason used to be lost (issue 10, #9)
    a.wait_line("-!- bob left: going home")
    assert bob.wait(DEADLINE) and b.closed == [None]
    # A peer heard twice, then never again, times out.
    ghost = group_sender()
    presence = encode_frame(Joined("ghost", time.time(), 1))
    instance = os.urandom(8)
    for _ in range(2):
        ghost.sendto(dg.encode_peer(instance, 0, presence), (DEFAULT_GROUP, group_port))
    ghost.close()
    a.wait_line("-!- ghost joined")
    a.wait_line("-!- ghost timed out")


def test_a_peer_heard_once_is_never_shown_and_soon_forgotten(
    make_peer: Callable[..., tuple[Peer, Recorder]], group_port: int
) -> None:
    alice, a = make_peer("alice")
    once = group_sender()
    presence = encode_frame(Joined("once", time.time(), 1))
    once.sendto(dg.encode_peer(os.urandom(8), 0, presence), (DEFAULT_GROUP, group_port))
    once.close()
    wait_until(lambda: alice.stats()["newcomers"] == 1)
    wait_until(lambda: alice.stats()["newcomers"] == 0)  # after NEWCOMER_EXPIRY intervals
    assert alice.stats()["peers"] == 0
    assert not any("once" in line for line in a.lines)


def test_a_name_collision_is_resolved_visibly(
    make_peer: Callable[..., tuple[Peer, Recorder]],
) -> None:
    first, a1 = make_peer("alice")
    time.sleep(0.05)  # the first claim is older; both are still new (interval 0.2 s)
    second, a2 = make_peer("alice")
    a2.wait_line("-!- another peer was already called alice; you are now alice2")
    a2.wait_line("-!- alice is now known as alice2")
    a1.wait_line("-!- alice2 joined")
    assert second.name == "alice2" and first.name == "alice"
    second.send_line("who am i")
    a1.wait_line("<alice2> who am i")
    assert not any("#" in line for line in a1.lines)  # settled before it was shown


def test_garbage_on_the_group_is_counted_not_fatal(
    make_peer: Callable[..., tuple[Peer, Recorder]], group_port: int
) -> None:
    (alice, a), (bob, b) = make_peer("alice"), make_peer("bob")
    a.wait_line("-!- bob joined")
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
    wait_until(lambda: alice.stats()["invalid"] >= 3)
    assert alice.stats()["errors"] == 0
    assert b.closed == [] and a.closed == []


def test_a_message_too_large_for_a_datagram_is_refused(
    make_peer: Callable[..., tuple[Peer, Recorder]],
) -> None:
    alice, a = make_peer("alice")
    alice.send_line("z" * 1500)
    a.wait_for(lambda line: "] ! message not sent" in line)


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
        recorders[0].wait_line("-!- bob joined")
        recorders[1].wait_line("-!- alice joined")
        peers[1].send_line("über broadcast")
        for recorder in recorders:
            recorder.wait_line("<bob> über broadcast")
    finally:
        for peer in peers:
            peer.close()
            assert peer.wait(DEADLINE)


# --- hostile peers, live (issue 6, items 5 and 12) ---------------------------------------


def test_a_copied_instance_id_does_not_speak_rename_or_leave_for_her(
    make_peer: Callable[..., tuple[Peer, Recorder]], group_port: int
) -> None:
    (alice, _), (bob, b) = make_peer("alice"), make_peer("bob")
    b.wait_line("-!- alice joined")
    impostor = group_sender()  # another socket, so another source address:port
    forged: list[Frame] = [
        Message("alice", "send me your password", time.time(), 0),
        Renamed("alice", "mallory", time.time(), 0),
        Left("alice", time.time(), 0, "quit", "bye"),
    ]
    try:
        for seq, frame in enumerate(forged, start=1000):
            impostor.sendto(
                dg.encode_peer(alice.instance, seq, encode_frame(frame)),
                (DEFAULT_GROUP, group_port),
            )
    finally:
        impostor.close()
    wait_until(lambda: bob.stats().get("spoofed", 0) == 3)
    alice.send_line("the real alice")
    b.wait_line("<alice> the real alice")
    shown = b.transcript()
    assert not any("password" in line or "mallory" in line or "left" in line for line in shown)


def test_replies_to_a_flood_of_newcomers_are_rate_limited(
    make_peer: Callable[..., tuple[Peer, Recorder]], group_port: int
) -> None:
    alice, _ = make_peer("alice")
    wait_until(lambda: alice.stats()["sent"] >= 1)
    flood = group_sender()
    sent_before = alice.stats()["sent"]
    started = time.monotonic()
    try:
        for n in range(500):  # each a new instance id: it used to draw one reply each
            presence = encode_frame(Joined(f"fake{n}", time.time(), 1))
            flood.sendto(dg.encode_peer(os.urandom(8), 0, presence), (DEFAULT_GROUP, group_port))
            if n % 50 == 49:
                time.sleep(0.01)  # paced, so the kernel keeps (nearly) all of them
    finally:
        flood.close()
    wait_until(lambda: alice.stats()["received"] >= 400)
    elapsed = time.monotonic() - started
    replies = alice.stats()["sent"] - sent_before
    interval = alice.heartbeat_interval
    assert replies <= 2 + elapsed / (REPLY_SPACING * interval) + elapsed / interval
    assert alice.stats()["peers"] == 0  # each heard once: none shown
    assert alice.stats()["newcomers"] <= MAX_NEWCOMERS_PER_HOST  # all from one address


# --- hostile peers, deterministic: datagrams handed to a peer by the test ----------------

ALICE = b"alice\x00\x00\x00"
MALLORY = b"mallory\x00"
ALICE_AT = ("127.0.0.1", 40001)
MALLORY_AT = ("127.0.0.9", 40002)


class Offline:
    """A peer that hears only what the test hands it, on a clock the test moves.

    The peer is started (its own socket, a private port) and closed at once; what
    it hears afterwards comes from :meth:`Peer.receive_datagram` on this thread, so
    every transcript is exact and nothing depends on timing.
    """

    def __init__(self, name: str) -> None:
        self.now = 1000.0
        self.peer = Peer(
            name,
            port=free_port(),
            interface=LOOPBACK,
            heartbeat_interval=1.0,
            clock=lambda: self.now,
            wall_clock=lambda: 1_700_000_000.0 + self.now,
        )
        self.recorder = Recorder()
        self.peer.start(self.recorder.on_event, self.recorder.on_closed)
        self.peer.close()
        assert self.peer.wait(DEADLINE)
        self.recorder.lines.clear()

    def hear(self, instance: bytes, seq: int, frame: Frame, source: tuple[str, int]) -> None:
        self.peer.receive_datagram(dg.encode_peer(instance, seq, encode_frame(frame)), source)

    def presence(self, instance: bytes, name: str, source: tuple[str, int], **kw: float) -> None:
        claimed = kw.get("claimed", 1_700_000_000.0)
        self.hear(instance, 0, Joined(name, claimed, int(kw.get("next_seq", 1))), source)

    def say(self, instance: bytes, seq: int, text: str, source: tuple[str, int]) -> None:
        self.hear(instance, seq, Message("whoever", text, 1_700_000_000.0, 0), source)

    def transcript(self) -> list[str]:
        return self.recorder.transcript()


def test_a_peer_is_shown_once_heard_twice_from_one_address() -> None:
    bob = Offline("bob")
    bob.presence(ALICE, "alice", ALICE_AT)
    assert bob.transcript() == []
    bob.presence(ALICE, "alice", MALLORY_AT)  # the id again, from elsewhere: not her
    assert bob.transcript() == []
    bob.presence(ALICE, "alice", ALICE_AT)
    bob.say(ALICE, 1, "hi", ALICE_AT)
    assert bob.transcript() == ["-!- alice joined", "<alice> hi"]
    assert bob.peer.stats()["spoofed"] == 1


def test_a_message_heard_before_the_presence_is_shown_once_confirmed() -> None:
    bob = Offline("bob")
    bob.say(ALICE, 7, "first", ALICE_AT)  # we started while alice was talking
    bob.say(ALICE, 8, "second", ALICE_AT)
    assert bob.transcript() == ["-!- whoever joined", "<whoever> first", "<whoever> second"]


def test_a_sequence_jump_does_not_silence_a_peer() -> None:
    bob = Offline("bob")
    bob.presence(ALICE, "alice", ALICE_AT)
    bob.presence(ALICE, "alice", ALICE_AT)
    bob.say(ALICE, 1, "one", ALICE_AT)
    # Forged units from her address (spoofed), far ahead: believed once three agree.
    for n in range(3):
        bob.say(ALICE, 2**62 + n, f"forged {n}", ALICE_AT)
    bob.say(ALICE, 2, "two (hidden: the tracker is far ahead)", ALICE_AT)
    bob.presence(ALICE, "alice", ALICE_AT, next_seq=3)  # her heartbeat says where she is
    bob.say(ALICE, 3, "three", ALICE_AT)
    assert bob.transcript() == [
        "-!- alice joined",
        "<alice> one",
        f"-!- {2**62 - 2} messages lost from alice",
        "<alice> forged 0",
        "<alice> forged 1",
        "<alice> forged 2",
        "<alice> three",
    ]
    assert bob.peer.stats()["resynced"] == 1


def test_a_name_is_kept_by_whoever_holds_it() -> None:
    carol = Offline("carol")
    carol.presence(ALICE, "alice", ALICE_AT)
    carol.presence(ALICE, "alice", ALICE_AT)
    # Mallory claims alice's name with a timestamp older than hers: no takeover.
    carol.presence(MALLORY, "alice", MALLORY_AT, claimed=0.0)
    carol.presence(MALLORY, "alice", MALLORY_AT, claimed=0.0)
    carol.say(MALLORY, 1, "I am alice", MALLORY_AT)
    carol.say(ALICE, 1, "no, I am", ALICE_AT)
    tag = MALLORY[:2].hex()
    assert carol.transcript() == [
        "-!- alice joined",
        f"-!- alice#{tag} joined",
        f"<alice#{tag}> I am alice",
        "<alice> no, I am",
    ]
    # When alice leaves, the name is free and the other is shown by it.
    carol.hear(ALICE, 2, Left("alice", 1.0, 0), ALICE_AT)
    assert carol.transcript()[-2:] == ["-!- alice left", f"-!- alice#{tag} is now known as alice"]


def test_we_keep_our_name_once_it_is_settled() -> None:
    alice = Offline("alice")
    alice.now += 2.0  # one heartbeat interval since we claimed it
    alice.presence(MALLORY, "alice", MALLORY_AT, claimed=0.0)
    alice.presence(MALLORY, "ALICE", MALLORY_AT, claimed=0.0)
    assert alice.peer.name == "alice"
    tag = MALLORY[:2].hex()
    assert alice.transcript() == [
        f"-!- ALICE#{tag} joined",
        f"-!- another peer (127.0.0.9) also calls itself 'ALICE'; you keep your name,"
        f" and it is shown as ALICE#{tag}",
    ]


def test_a_new_name_yields_to_an_older_claim() -> None:
    alice = Offline("alice")  # just started: the name is not settled yet
    alice.presence(MALLORY, "alice", MALLORY_AT, claimed=1.0)
    assert alice.peer.name == "alice2"
    assert alice.transcript() == [
        "-!- another peer was already called alice; you are now alice2",
        "-!- alice is now known as alice2",
    ]


def test_no_free_numbered_name_still_leaves_the_peer_listening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every rename candidate taken used to raise StopIteration in the receive thread.
    alice = Offline("alice")
    monkeypatch.setattr(netchat.peer, "name_candidates", lambda name: iter(()))
    alice.presence(MALLORY, "alice", MALLORY_AT, claimed=1.0)
    assert alice.peer.name.startswith("alice-") and alice.peer.stats()["errors"] == 0
    assert name_problem(alice.peer.name) is None


def test_the_tables_are_capped_under_a_flood_of_fake_peers() -> None:
    bob = Offline("bob")
    for n in range(MAX_PEERS + 100):
        instance = n.to_bytes(8, "big")
        source = (f"127.0.{n // 250}.{n % 250 + 1}", 5000)
        for _ in range(2):
            bob.presence(instance, f"fake{n}", source)
    stats = bob.peer.stats()
    assert stats["peers"] == MAX_PEERS
    assert stats["newcomers"] <= MAX_NEWCOMERS
    assert stats["peers_refused"] == 100
    joined = [line for line in bob.transcript() if line.endswith(" joined")]
    assert len(joined) == MAX_PEERS
    assert f"-!- more than {MAX_PEERS} peers: newcomers are ignored for now" in bob.transcript()


def test_newcomers_from_one_host_cannot_crowd_out_the_others() -> None:
    bob = Offline("bob")
    bob.presence(ALICE, "alice", ALICE_AT)
    for n in range(1000):  # one host spraying instance ids, each heard once
        bob.presence(n.to_bytes(8, "big"), f"fake{n}", MALLORY_AT)
    assert bob.peer.stats()["newcomers"] == 1 + MAX_NEWCOMERS_PER_HOST
    bob.presence(ALICE, "alice", ALICE_AT)  # alice is still remembered
    assert bob.transcript() == ["-!- alice joined"]


def test_a_crowd_of_peers_on_one_host_all_join() -> None:
    # More peers than the per-host newcomer table holds, all started at once on one
    # machine (netchat bench's fan-out runs 20 and 50): each announces in turn. Evicting
    # the oldest newcomer made them push each other out before anyone was heard twice,
    # so none ever joined; the table now admits newcomers as peers make room.
    bob = Offline("bob")
    crowd = [(n.to_bytes(8, "big"), f"p{n:02}", ("127.0.0.1", 41000 + n)) for n in range(20)]
    for _round in range(4):  # 8 join per round, as the first 8 make room: 20 need 4
        for instance, name, source in crowd:
            bob.presence(instance, name, source)
        bob.now += 0.25
    assert bob.transcript() == [f"-!- {name} joined" for _instance, name, _source in crowd]
    assert bob.peer.stats()["peers"] == 20 and bob.peer.stats()["newcomers"] == 0


INSTANCES = st.sampled_from([ALICE, MALLORY, b"\x00" * 8, b"\xff" * 8])
SOURCES = st.sampled_from([ALICE_AT, MALLORY_AT, ("127.0.0.2", 1)])
SEQS = st.sampled_from([0, 1, 2, 3, 4096, 2**32, 2**63, 2**64 - 1]) | st.integers(0, 50)
PEER_DATAGRAM = st.builds(
    lambda instance, seq, frame: dg.encode_peer(instance, seq, encode_frame(frame)),
    INSTANCES,
    SEQS,
    ANY_FRAME,
)
DATAGRAMS = st.lists(
    st.tuples(PEER_DATAGRAM | st.binary(max_size=80), SOURCES, st.floats(0, 30)), max_size=30
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["alice", "alice2", "bob"]), DATAGRAMS)
def test_no_datagram_can_break_a_peer(
    name: str, datagrams: list[tuple[bytes, Address, float]]
) -> None:
    # Anything from the group is handled or counted as invalid, never an error: the
    # receive thread (which calls receive_datagram) never sees an exception.
    now = [0.0]
    peer = Peer(name, heartbeat_interval=1.0, clock=lambda: now[0])  # never started: no I/O
    for data, source, advance in datagrams:
        now[0] += advance
        peer.receive_datagram(data, source)
    stats = peer.stats()
    assert stats["errors"] == 0
    assert stats["peers"] <= MAX_PEERS and stats["newcomers"] <= MAX_NEWCOMERS

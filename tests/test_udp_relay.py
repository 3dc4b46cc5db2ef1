"""The UDP relay and its client over real sockets on 127.0.0.1 (ports chosen by the OS).

Every wait is a bounded poll; no test asserts on timing beyond generous deadlines.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable

import pytest

from netchat.client import Client
from netchat.errors import ConnectionClosed, Rejected
from netchat.protocol import datagram as dg
from netchat.protocol.frames import (
    Error,
    Frame,
    Hello,
    Info,
    Left,
    Message,
    PrivateMessage,
    Say,
    Welcome,
    encode_frame,
)
from netchat.protocol.limits import MAX_DATAGRAM_BYTES
from netchat.protocol.render import render_lines
from netchat.transport.base import Proto
from netchat.transport.udp_client import UdpClientTransport
from netchat.transport.udp_relay import PLAIN_HINT, UdpRelayServer
from tests.wire import raw_join

DEADLINE = 10.0  # generous: two shared cores


class Member:
    """A joined UdpClientTransport with helpers to wait for frames."""

    def __init__(self, relay: UdpRelayServer, name: str) -> None:
        self.transport = UdpClientTransport(*relay.address)
        self.transport.connect()
        self.transport.send(Hello(name))
        self.seen: list[Frame] = []
        self.welcome = self.expect(lambda f: isinstance(f, (Welcome, Error)))
        if isinstance(self.welcome, Error):
            self.transport.close()
            raise Rejected(self.welcome.text, code=self.welcome.code)

    def expect(self, predicate: Callable[[Frame], bool], deadline: float = DEADLINE) -> Frame:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            frame = self.transport.receive(timeout=0.1)
            if frame is None:
                continue
            self.seen.append(frame)
            if predicate(frame):
                return frame
        raise AssertionError(f"expected frame not received; saw {self.seen}")

    def say(self, text: str) -> None:
        self.transport.send(Say(text))

    def message(self, text: str) -> Frame:
        return self.expect(lambda f: isinstance(f, Message) and f.text == text)

    def close(self) -> None:
        self.transport.close()


def test_three_clients_chat_and_whisper(make_relay: Callable[..., UdpRelayServer]) -> None:
    relay = make_relay()
    alice, bob, carol = (Member(relay, n) for n in ("alice", "bob", "carol"))
    assert isinstance(carol.welcome, Welcome)
    assert carol.welcome.users == ("alice", "bob", "carol")
    alice.say("hello everyone")
    for member in (alice, bob, carol):
        message = member.message("hello everyone")
        assert isinstance(message, Message) and message.sender == "alice"
    alice.transport.send(dg_private("bob", "just for you"))
    private = bob.expect(lambda f: isinstance(f, PrivateMessage))
    assert render_lines(private, 0.0)[0].endswith("<alice -> bob> just for you")
    alice.expect(lambda f: isinstance(f, PrivateMessage))  # the sender's echo
    bob.say("marker")
    carol.message("marker")
    assert not any(isinstance(f, PrivateMessage) for f in carol.seen)
    carol.transport.send(dg_quit())
    left = alice.expect(lambda f: isinstance(f, Left))
    assert render_lines(left, 0.0)[0].endswith("] -!- carol left")
    for member in (alice, bob, carol):
        assert member.transport.stats()["lost"] == 0
        member.close()


def dg_private(to: str, text: str) -> Frame:
    from netchat.protocol.frames import Private

    return Private(to, text)


def dg_quit() -> Frame:
    from netchat.protocol.frames import Quit

    return Quit()


def test_the_real_client_works_over_udp(make_relay: Callable[..., UdpRelayServer]) -> None:
    relay = make_relay()
    with (
        Client.connect("ann", *relay.address, proto=Proto.udp) as ann,
        Client.connect("ben", *relay.address, proto=Proto.udp) as ben,
    ):
        ann.send_line("/me waves")
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            frame = ben.next_event(timeout=0.1)
            if isinstance(frame, Message) and frame.action:
                break
        else:
            raise AssertionError("ben did not see the action")
        assert "received" in ann.stats() and "lost" in ann.stats()


def test_a_silent_peer_times_out(make_relay: Callable[..., UdpRelayServer]) -> None:
    relay = make_relay(heartbeat_interval=0.1)
    alice = Member(relay, "alice")
    ghost, _ = raw_join(relay.address, "ghost")  # joins, then never sends a heartbeat
    try:
        left = alice.expect(lambda f: isinstance(f, Left) and f.name == "ghost")
        assert render_lines(left, 0.0)[0].endswith("] -!- ghost timed out")
        # The ghost is told, if it is still listening.
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if isinstance(dg.decode_datagram(ghost.recv(2048)), dg.Bye):
                break
        alice.say("still here")  # alice's heartbeats kept her in
        alice.message("still here")
    finally:
        ghost.close()
        alice.close()


def test_unvalidated_sources_never_get_more_than_they_sent(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    relay = make_relay()
    alice, bob = Member(relay, "alice"), Member(relay, "bob")
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.connect(relay.address)
    attacker.setblocking(False)
    rng = random.Random(1234)
    forged_hello = encode_frame(Hello("mallory"))
    payloads = [
        lambda: os.urandom(rng.randint(0, 1500)),
        lambda: dg.encode_hello(dg.NO_COOKIE, forged_hello)[: rng.randint(0, 60)],
        lambda: dg.encode_hello(os.urandom(16), forged_hello),  # forged cookie
        lambda: dg.encode_hello(dg.NO_COOKIE),  # a genuine cookie request
        lambda: b"nc\x07" + os.urandom(rng.randint(1, 40)),  # wrong version
        lambda: dg.encode_data(rng.randint(1, 2**63), encode_frame(Say("spam"))),
        lambda: dg.encode_ping(1, 1),
        lambda: b"nc\x01" + bytes([rng.randint(11, 255)]),
        lambda: dg.encode_data(1, b"x" * 1500 + b"\n"),
    ]
    sent = received = 0
    kinds: set[int] = set()
    try:
        for round_number in range(300):
            data = rng.choice(payloads)()
            attacker.send(data)
            sent += len(data)
            if round_number % 50 == 0:
                alice.say(f"chat {round_number}")
                bob.message(f"chat {round_number}")
            while True:
                try:
                    reply = attacker.recv(65536)
                except BlockingIOError:
                    break
                received += len(reply)
                kinds.add(-1 if reply == PLAIN_HINT else reply[3])
        # Collect late replies for a moment.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                reply = attacker.recv(65536)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            received += len(reply)
            kinds.add(-1 if reply == PLAIN_HINT else reply[3])
    finally:
        attacker.close()
    assert 0 < received <= sent
    # Never chat traffic: cookies, notices, and (for junk that is not netchat at all)
    # the hint that plain clients are not accepted.
    assert kinds <= {dg.Kind.COOKIE, dg.Kind.NOTICE, -1}
    assert relay.stats()["sessions"] == 2
    alice.say("after the storm")
    bob.message("after the storm")
    alice.close()
    bob.close()


def test_garbage_from_a_member_does_not_wedge_anything(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    relay = make_relay()
    alice = Member(relay, "alice")
    sock, _ = raw_join(relay.address, "mallory")
    try:
        rng = random.Random(99)
        for _ in range(200):
            sock.send(os.urandom(rng.randint(0, 1300)))
        sock.send(dg.encode_data(1, b"not json\n"))
        sock.send(dg.encode_data(2, b'{"v":1,"t":"nope"}\n'))
        sock.send(dg.encode_data(2**62, encode_frame(Say("forged sequence number"))))
        sock.send(dg.encode_data(3, encode_frame(Say("mallory is fine"))))
        sock.send(dg.encode_data(3, encode_frame(Say("mallory is fine"))))  # duplicate
        message = alice.message("mallory is fine")
        assert isinstance(message, Message) and message.sender == "mallory"
        alice.say("and alice too")
        alice.message("and alice too")
        stats = relay.stats()
        assert stats["bad_datagrams"] > 0 and stats["duplicates_in"] >= 2
        assert sum(isinstance(f, Message) and f.text == "mallory is fine" for f in alice.seen) == 1
    finally:
        sock.close()
        alice.close()


def test_rate_limit_drops_and_tells_the_sender(make_relay: Callable[..., UdpRelayServer]) -> None:
    relay = make_relay(rate_limit=1.0, burst=3)
    alice, bob = Member(relay, "alice"), Member(relay, "bob")
    for n in range(20):
        alice.say(f"flood {n}")
    error = alice.expect(lambda f: isinstance(f, Error) and f.code == "rate-limited")
    assert "too fast" in render_lines(error, 0.0)[0]
    bob.message("flood 1")  # the hello took a token of the burst of 3
    # The error answers the first excess datagram; the rest may still be in flight.
    deadline = time.monotonic() + 10
    while relay.stats()["rate_limited"] < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert relay.stats()["rate_limited"] >= 10
    alice.close()
    bob.close()


def test_oversize_messages_are_refused_and_big_frames_fragmented(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    relay = make_relay()
    alice, bob = Member(relay, "alice"), Member(relay, "bob")
    alice.say("x" * 2000)
    refused = alice.expect(lambda f: isinstance(f, Error))
    assert isinstance(refused, Error) and refused.code == "too-large"
    assert "not sent" in refused.text
    # A request that fits becomes a relayed frame that does not: it is fragmented.
    text = "é" * 575  # 1150 bytes of UTF-8: the Say fits, the Message does not
    alice.say(text)
    assert isinstance(bob.message(text), Message)
    # A member sending an oversized datagram by hand gets a clear error.
    sock, _ = raw_join(relay.address, "carol")
    try:
        sock.send(dg.encode_data(1, b"y" * MAX_DATAGRAM_BYTES + b"\n"))
        end = time.monotonic() + DEADLINE
        found = False
        while time.monotonic() < end and not found:
            data = dg.decode_datagram(sock.recv(2048))
            found = isinstance(data, dg.Data) and any(b"too-large" in u for u in data.units)
        assert found
    finally:
        sock.close()
        alice.close()
        bob.close()


def test_server_full_and_name_taken_are_rejections(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    relay = make_relay(max_clients=2)
    alice = Member(relay, "alice")
    with pytest.raises(Rejected) as taken:
        Member(relay, "ALICE")
    assert taken.value.code == "name-taken"
    bob = Member(relay, "bob")
    with pytest.raises(Rejected) as full:
        Member(relay, "carol")
    assert full.value.code == "server-full"
    alice.close()
    bob.close()


class FakeServer:
    """Plays the server side by hand, to lose, duplicate and reorder on purpose."""

    def __init__(self, heartbeat_ms: int = 5000) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(DEADLINE)
        self.heartbeat_ms = heartbeat_ms
        self.client: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def serve_join(self) -> None:
        while True:
            data, self.client = self.sock.recvfrom(2048)
            hello = dg.decode_datagram(data)
            assert isinstance(hello, dg.Hello)
            if hello.cookie == dg.NO_COOKIE:
                self.sock.sendto(dg.encode_cookie(b"c" * 16), self.client)
            else:
                self.sock.sendto(dg.encode_accept(1, self.heartbeat_ms, "zed"), self.client)
                return

    def send_frames(self, seq: int, *frames: Frame) -> None:
        assert self.client is not None
        payload = b"".join(encode_frame(f) for f in frames)
        self.sock.sendto(dg.encode_data(seq, payload), self.client)


def _msg(n: int) -> Message:
    return Message("srv", f"m{n}", 1.0, n)


def test_client_reports_loss_drops_duplicates_and_reorders() -> None:
    server = FakeServer()
    client = UdpClientTransport(*server.address)
    joiner = threading.Thread(target=server.serve_join)
    joiner.start()
    client.connect()
    client.send(Hello("zed"))
    joiner.join(timeout=DEADLINE)
    try:
        server.send_frames(1, Welcome("zed", ("zed",)))
        server.send_frames(3, _msg(3))  # 2 arrives after 3
        server.send_frames(2, _msg(2))
        server.send_frames(6, _msg(6), _msg(7))  # 4 and 5 are lost
        server.send_frames(6, _msg(6), _msg(7))  # duplicated
        server.send_frames(8, _msg(8))
        frames: list[Frame] = []
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and len(frames) < 7:
            frame = client.receive(timeout=0.1)
            if frame is not None:
                frames.append(frame)
        texts = [render_lines(f, 0.0)[0].split("] ", 1)[-1] for f in frames]
        assert texts[1:] == [
            "<srv> m2",
            "<srv> m3",
            "-!- 2 messages lost",
            "<srv> m6",
            "<srv> m7",
            "<srv> m8",
        ]
        stats = client.stats()
        assert (stats["lost"], stats["duplicates"], stats["reordered"]) == (2, 2, 1)
    finally:
        client.close()
        server.sock.close()


def test_client_notices_a_dead_server() -> None:
    server = FakeServer(heartbeat_ms=100)
    client = UdpClientTransport(*server.address)
    joiner = threading.Thread(target=server.serve_join)
    joiner.start()
    client.connect()
    client.send(Hello("zed"))
    joiner.join(timeout=DEADLINE)
    try:
        server.send_frames(1, Welcome("zed", ("zed",)))
        with pytest.raises(ConnectionClosed, match="server not responding"):
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end:
                client.receive(timeout=0.1)
    finally:
        client.close()
        server.sock.close()


def test_lost_welcome_is_stood_in_for() -> None:
    server = FakeServer()
    client = UdpClientTransport(*server.address)
    joiner = threading.Thread(target=server.serve_join)
    joiner.start()
    client.connect()
    client.send(Hello("zed"))
    joiner.join(timeout=DEADLINE)
    try:
        server.send_frames(2, _msg(2))  # the welcome (1) never arrives
        first = client.receive(timeout=DEADLINE)
        assert isinstance(first, Welcome) and first.name == "zed"
        notice = client.receive(timeout=DEADLINE)
        assert isinstance(notice, Info) and notice.text == "1 message lost"
    finally:
        client.close()
        server.sock.close()


def test_connect_to_nothing_fails_fast() -> None:
    from netchat.errors import ConnectError

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = UdpClientTransport("127.0.0.1", port, connect_timeout=2.0)
    with pytest.raises(ConnectError):
        client.connect()

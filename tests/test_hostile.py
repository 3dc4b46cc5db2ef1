"""The live hostile suite (issue 6): every attack of the issue, played against a real
server or real peers on loopback, asserting the bound, the error or the refusal.

Each test is named after its item of issue 6 (``test_1_…`` is "UDP relay memory
bomb", and so on) and checks numbers a user or an operator would care about: bytes of
memory, replies per window, lines in the log, seconds until a ghost is announced,
entries in a peer table. What users see is compared as exact transcripts (every line,
in order, without its ``[HH:MM:SS]`` time), so a duplicated or reordered line fails.

Everything talks to 127.0.0.1 (and 127.0.0.2 as a second source address) on ports
the system chooses; every wait is bounded by a deadline. Some attacks need a source
address the attacker could only forge with raw sockets (a UDP member's address, a
peer's port): the tests then send from the victim's own socket, which is exactly
what the server or the group receives when that source is spoofed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import netchat.transport.tcp as tcp_transport
from netchat.peer import DEFAULT_GROUP, Peer
from netchat.protocol import datagram as dg
from netchat.protocol.commands import HELP_TEXT
from netchat.protocol.frames import (
    Error,
    Frame,
    Hello,
    Help,
    Info,
    Joined,
    Left,
    Message,
    Ping,
    Pong,
    Private,
    Renamed,
    Say,
    UserList,
    Who,
    decode_frame,
    encode_frame,
)
from netchat.protocol.limits import MAX_DATAGRAM_BYTES
from netchat.protocol.render import render_lines
from netchat.server import Server
from netchat.transport.udp_client import UdpClientTransport
from netchat.transport.udp_relay import UdpRelayServer
from tests.conftest import ServerFactory
from tests.wire import FrameClient, LineClient, frame_client, plain_client, raw_join

WAIT = 10.0  # generous deadline: shared cores; a passing wait returns at once
LOOPBACK = "127.0.0.1"
#: The server's defaults that bound what one client can draw (ServerConfig).
RATE, BURST = 20.0, 100

_TIME = re.compile(r"\[(?:\d\d:\d\d:\d\d|\?\?:\?\?:\?\?)\] ")


def untimed(line: str) -> str:
    """A rendered line without its ``[HH:MM:SS] `` prefix (which every line must have)."""
    match = _TIME.match(line)
    assert match is not None, f"no time prefix: {line!r}"
    return line[match.end() :]


def rendered(frames: list[Frame]) -> list[str]:
    """What netchat's client shows for ``frames``, time stripped."""
    return [untimed(line) for frame in frames for line in render_lines(frame, time.time())]


def lines_until(client: LineClient, last: str, timeout: float = WAIT) -> list[str]:
    """Every line ``client`` receives, time stripped, up to and including ``last``."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        while client.lines:
            line = untimed(client.lines.pop(0))
            seen.append(line)
            if line == last:
                return seen
        if not client._fill(deadline):
            raise AssertionError(f"{last!r} never came; received {seen}")


def frames_until(
    client: FrameClient, last: Callable[[Frame], bool], timeout: float = WAIT
) -> list[Frame]:
    """Every frame ``client`` receives up to and including the first ``last`` accepts."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while True:
        frame = client.next_frame(timeout=max(0.01, deadline - time.monotonic()))
        frames.append(frame)
        if last(frame):
            return frames


def send_what_fits(sock: socket.socket, data: bytes) -> int:
    """Send as much of ``data`` as the kernel takes without blocking; bytes sent."""
    sock.setblocking(False)
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent : sent + 65536])
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(WAIT)
    return sent


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def event_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- UDP relay helpers --------------------------------------------------------------------


class UdpUser:
    """netchat's own UDP transport, joined, recording every frame it receives."""

    def __init__(self, relay: UdpRelayServer, name: str) -> None:
        self.transport = UdpClientTransport(*relay.address)
        self.transport.connect()
        self.transport.send(Hello(name))
        self.frames: list[Frame] = []

    def until(self, last: Callable[[Frame], bool], timeout: float = WAIT) -> list[Frame]:
        """Receive until a frame ``last`` accepts; every frame so far, in order."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.transport.receive(timeout=0.05)
            if frame is None:
                continue
            self.frames.append(frame)
            if last(frame):
                return self.frames
        raise AssertionError(f"the awaited frame never came; received {self.frames}")

    def until_message(self, text: str) -> list[str]:
        """The transcript (time stripped) up to our message ``text``."""
        return rendered(self.until(lambda f: isinstance(f, Message) and f.text == text))

    def say(self, text: str) -> None:
        self.transport.send(Say(text))

    def close(self) -> None:
        self.transport.close()


class RawMember:
    """A relay member that joins by hand, to send what netchat's client never would."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.sock, _ = raw_join(address, name)
        self.next_seq = 1
        self._nonce = 0
        self.answer()  # the welcome (and anything else the join drew)

    def send_units(self, units: list[bytes], seq: int | None = None) -> int:
        """One DATA datagram carrying ``units``; returns its size in bytes."""
        if seq is None:
            seq = self.next_seq
        self.next_seq = seq + len(units)
        datagram = dg.encode_data(seq, b"".join(units))
        assert len(datagram) <= MAX_DATAGRAM_BYTES
        self.sock.send(datagram)
        return len(datagram)

    def answer(self) -> tuple[list[Frame], int]:
        """Everything the relay sends us until it answers a PING (which it handles
        after what we sent before it): the frames, and the bytes of their datagrams."""
        self._nonce += 1
        self.sock.send(dg.encode_ping(self._nonce, 0))
        frames: list[Frame] = []
        size = 0
        while True:
            datagram = dg.decode_datagram(self.sock.recv(4096))
            if isinstance(datagram, dg.Pong) and datagram.nonce == self._nonce:
                return frames, size
            if isinstance(datagram, dg.Data):
                size += len(dg.encode_data(datagram.seq, b"".join(datagram.units)))
                frames += [decode_frame(unit) for unit in datagram.units]

    def close(self) -> None:
        self.sock.close()


def fill_datagram(unit: bytes) -> list[bytes]:
    """As many copies of ``unit`` as one DATA datagram holds."""
    return [unit] * ((MAX_DATAGRAM_BYTES - dg.DATA_HEADER_BYTES) // len(unit))


# --- peer helpers -----------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


class Shown:
    """What a peer shows its user: frames and their rendered lines (time stripped)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._cond = threading.Condition()

    def on_event(self, frame: Frame) -> None:
        with self._cond:
            self.frames.append(frame)
            self._cond.notify_all()

    def on_closed(self, reason: str | None) -> None:
        pass

    def lines(self) -> list[str]:
        with self._cond:
            return rendered(list(self.frames))

    def wait_line(self, line: str, timeout: float = WAIT) -> list[str]:
        """Wait until ``line`` is shown; every line shown so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while line not in (lines := rendered(list(self.frames))):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{line!r} never shown; shown: {lines}")
                self._cond.wait(min(remaining, 0.05))
            return lines


@pytest.fixture
def make_peer() -> Iterator[Callable[..., tuple[Peer, Shown]]]:
    """``make_peer(name, heartbeat_interval=0.3)``: a started peer on a fresh port of
    the default group, on the loopback interface."""
    port = free_udp_port()
    peers: list[Peer] = []

    def make(name: str, heartbeat_interval: float = 0.3) -> tuple[Peer, Shown]:
        peer = Peer(name, port=port, interface=LOOPBACK, heartbeat_interval=heartbeat_interval)
        shown = Shown()
        peer.start(shown.on_event, shown.on_closed)
        peers.append(peer)
        return peer, shown

    yield make
    for peer in peers:
        peer.close()
        assert peer.wait(WAIT)


def group_socket() -> socket.socket:
    """An attacker's socket sending to the group on the loopback interface."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.bind((LOOPBACK, 0))
    return sock


def presence(instance: bytes, name: str, ts: float, next_seq: int = 1) -> bytes:
    return dg.encode_peer(instance, 0, encode_frame(Joined(name, ts, next_seq)))


# =============================================================================================
# Unbounded resources
# =============================================================================================


def test_1_sequence_jumps_of_2_to_the_32_and_62_cost_the_relay_no_memory(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    relay = make_relay()
    watcher = UdpUser(relay, "watcher")
    mallory = RawMember(relay.address, "mallory")
    mallory.send_units([encode_frame(Say("before"))])
    watcher.until_message("before")
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for power in (32, 62):
            for step in range(3):  # three numbers that agree make the relay believe a jump
                mallory.send_units([encode_frame(Say(f"2^{power} + {step}"))], seq=2**power + step)
        mallory.send_units([encode_frame(Say("after"))], seq=2**62 + 3)
        transcript = watcher.until_message("after")
        peak_growth = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    # A 2^32 jump once made the relay build a 2^32-bit window (512 MiB); now the
    # window is 256 bits whatever arrives.
    assert peak_growth < 1024 * 1024, f"the relay grew by {peak_growth} bytes"
    assert transcript == [
        "-!- Welcome, watcher! Online (1): watcher. Type /help for commands.",
        "-!- mallory joined",
        "<mallory> before",
        "<mallory> 2^32 + 2",
        "<mallory> 2^62 + 2",
        "<mallory> after",
    ]
    watcher.close()
    mallory.close()


def test_2_a_flood_of_identical_junk_draws_one_error_and_one_event_log_line(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    server = make_server(event_log=events)
    mallory = frame_client(server.address, "mallory")
    junk = b'{"v":1,"t":"nonsense"}\n'
    sent = send_what_fits(mallory.sock, junk * 20_000)
    assert sent >= 1000 * len(junk)  # a real flood got into the server's buffers
    replies = [decode_frame(line) for line in mallory.collect(1.0)]
    assert replies == [Error("unknown-type", "frame dropped: unknown frame type 'nonsense'")]
    server.shutdown()  # writes out the event log
    errors = [r for r in event_records(events) if r["event"] == "error"]
    assert [(r["name"], r["code"]) for r in errors] == [("mallory", "unknown-type")]


def test_2_distinct_junk_gets_replies_only_within_the_token_bucket(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    server = make_server(event_log=events)
    mallory = plain_client(server.address, "mallory")
    flood = b"".join(f"/frob{number}\n".encode() for number in range(5000))
    started = time.monotonic()
    send_what_fits(mallory.sock, flood)
    replies = [untimed(line) for line in mallory.collect(1.0)]
    server.shutdown()
    elapsed = time.monotonic() - started
    allowed = BURST + RATE * elapsed
    assert 0 < len(replies) <= allowed
    # Said in order, each once: the first commands of the flood, no more.
    assert replies == [
        f"! unknown command /frob{number}; type /help for the list"
        for number in range(len(replies))
    ]
    errors = [r for r in event_records(events) if r["event"] == "error"]
    assert len(errors) <= allowed


@pytest.mark.parametrize(
    ("unit", "reply"),
    [
        (encode_frame(Help()), Info(HELP_TEXT)),
        (encode_frame(Who()), UserList(("mallory",))),
        (encode_frame(Ping("x")), Pong("x")),
        (b"x\n", Error("malformed", "frame dropped: frame is not valid JSON")),
        (
            encode_frame(Private("nobody", "hi")),
            Error("no-such-user", "no user named 'nobody'; /who lists who is online"),
        ),
    ],
    ids=["help", "who", "ping", "junk", "msg-to-nobody"],
)
def test_2_one_udp_datagram_draws_one_reply_and_fewer_bytes_than_it_carried(
    make_relay: Callable[..., UdpRelayServer], unit: bytes, reply: Frame
) -> None:
    relay = make_relay()
    mallory = RawMember(relay.address, "mallory")
    size = mallory.send_units(fill_datagram(unit))
    frames, size_back = mallory.answer()
    # Before: 62 help texts (24 times the bytes received), 65 user lists, 38 pongs.
    assert frames == [reply]
    assert size_back <= size
    mallory.close()


def test_3_never_registering_connections_cannot_lock_a_real_client_out(
    make_server: ServerFactory,
) -> None:
    # No per-address cap (a classroom behind one NAT address) and room for 150: the
    # attacker's 200 silent connections, all too young to be let go, would fill every
    # place (the last 50 are refused).
    server = make_server(max_clients=150, max_per_address=0)
    attackers = [socket.create_connection(server.address, timeout=WAIT) for _ in range(200)]
    try:
        started = time.monotonic()
        real = LineClient(server.address, source="127.0.0.2")
        real.expect("Type your name", timeout=1.0)
        real.send_line("alice")
        real.expect(r"-!- Welcome, alice!", timeout=max(0.01, started + 1.0 - time.monotonic()))
        real.close()
    finally:
        for sock in attackers:
            sock.close()


def test_3_name_spam_before_joining_is_under_the_token_bucket(make_server: ServerFactory) -> None:
    server = make_server()
    spammer = LineClient(server.address)
    spammer.expect("Type your name")
    started = time.monotonic()
    send_what_fits(spammer.sock, b"a b\n" * 5000)
    replies = [untimed(line) for line in spammer.collect(1.0)]
    elapsed = time.monotonic() - started
    assert 0 < len(replies) <= BURST + RATE * elapsed
    refusal = "! a name may contain only letters, digits, '_', '-' and '.'; try 'a_b'."
    assert replies == [refusal + " Type another name:"] * len(replies)


def test_3_a_connection_flood_writes_a_bounded_log(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="netchat")
    server = make_server(max_per_address=4)
    held = [LineClient(server.address) for _ in range(4)]
    refused_lines = []
    for _ in range(300):
        with contextlib.closing(LineClient(server.address)) as refused:
            refused_lines.append(untimed(refused.expect("")))
    reason = "too many connections from 127.0.0.1 (at most 4 connections)"
    assert refused_lines == [f"! {reason}"] * 300
    # One line for the first refusal; the next, 10 s later, would count the rest.
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(logged) == 1 and re.fullmatch(
        r"refused 127\.0\.0\.1:\d+: " + re.escape(reason), logged[0]
    )
    for client in held:
        client.close()


def _server_side_socket(server: Server, client: LineClient) -> socket.socket:
    """The server's end of ``client``'s connection (found through the transport)."""
    wanted = client.sock.getsockname()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for connection in list(getattr(server.transport, "_connections", ())):
            sock: socket.socket = connection.sock
            with contextlib.suppress(OSError):
                if sock.getpeername() == wanted:
                    return sock
        time.sleep(0.01)
    raise AssertionError("the server has no such connection")


def test_4_the_server_detects_a_vanished_peer_within_a_minute(make_server: ServerFactory) -> None:
    server = make_server()
    bob = plain_client(server.address, "bob")
    sock = _server_side_socket(server, bob)
    tcp = socket.IPPROTO_TCP
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    idle = sock.getsockopt(tcp, socket.TCP_KEEPIDLE)
    interval = sock.getsockopt(tcp, socket.TCP_KEEPINTVL)
    probes = sock.getsockopt(tcp, socket.TCP_KEEPCNT)
    user_timeout_ms = sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT)
    # Idle: the last keepalive probe goes unanswered after 45 + 3 × 5 s; with data in
    # flight, unacknowledged for 60 s. (Before: 60 + 3 × 10 s idle, and about
    # 15.6 minutes of retransmissions while the chat was active.)
    assert (idle, interval, probes, user_timeout_ms) == (45, 5, 3, 60_000)
    assert idle + interval * probes <= 60
    bob.close()


def test_4_a_reset_connection_is_announced_as_lost(make_server: ServerFactory) -> None:
    server = make_server()
    alice = plain_client(server.address, "alice")
    bob = plain_client(server.address, "bob")
    bob.reset()
    assert lines_until(alice, "-!- bob left (connection lost)") == [
        "-!- bob joined",
        "-!- bob left (connection lost)",
    ]
    alice.send_line("/msg bob are you there?")  # refused, not silently lost
    assert lines_until(alice, "! no user named 'bob'; /who lists who is online") == [
        "! no user named 'bob'; /who lists who is online"
    ]
    alice.close()


def test_4_a_reset_first_seen_by_a_send_is_announced_as_lost(make_server: ServerFactory) -> None:
    # The kernel reports a connection's error once. While bob is over his rate his
    # thread reads nothing, so the reset reaches the server's send to him first
    # (alice's message), and his thread later reads only an end of file.
    server = make_server(rate_limit=1, burst=1)
    alice = plain_client(server.address, "alice")
    bob = plain_client(server.address, "bob")
    bob.send_line("one")
    bob.send_line("two")  # waits a second for a token: bob's thread sleeps, not in recv
    assert lines_until(alice, "<bob> one") == ["-!- bob joined", "<bob> one"]
    bob.reset()
    alice.send_line("anyone?")  # a send to bob meets the reset
    assert lines_until(alice, "-!- bob left (connection lost)") == [
        "<alice> anyone?",
        "<bob> two",
        "-!- bob left (connection lost)",
    ]
    alice.close()


def test_4_a_peer_that_stops_acknowledging_is_announced_as_lost(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loopback always acknowledges, so a vanished host is played by a client whose
    # receive window stays closed (it never reads): what the server sends it waits
    # unsent, and TCP_USER_TIMEOUT gives up on it as on unacknowledged data. The
    # timeout is cut from 60 s to 0.3 s so that the test takes a second.
    monkeypatch.setattr(tcp_transport, "USER_TIMEOUT_MS", 300)
    server = make_server()
    alice = plain_client(server.address, "alice")
    ghost = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ghost.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ghost.settimeout(WAIT)
    ghost.connect(server.address)
    ghost.sendall(b"ghost\n")
    alice.expect("-!- ghost joined")
    chat = [f"{number} " + "x" * 3000 for number in range(20)]
    for line in chat:
        alice.send_line(line)
    transcript = lines_until(alice, "-!- ghost left (connection lost)")
    assert transcript == [*(f"<alice> {line}" for line in chat), "-!- ghost left (connection lost)"]
    alice.send_line("/msg ghost are you there?")
    assert lines_until(alice, "! no user named 'ghost'; /who lists who is online") == [
        "! no user named 'ghost'; /who lists who is online"
    ]
    ghost.close()
    alice.close()


def test_4_a_silent_structured_member_times_out(make_server: ServerFactory) -> None:
    server = make_server(ping_interval=0.2)
    alice = plain_client(server.address, "alice")
    ghost = FrameClient(server.address)
    ghost.send_frame(Hello("ghost"))  # joins, then never reads nor answers a ping
    alice.expect("-!- ghost joined")
    started = time.monotonic()
    alice.send_line("/msg ghost hello?")
    assert lines_until(alice, "<alice -> ghost> hello?") == ["<alice -> ghost> hello?"]
    assert lines_until(alice, "-!- ghost timed out") == ["-!- ghost timed out"]
    assert time.monotonic() - started < WAIT  # three silent ping intervals, not minutes
    ghost.sock.close()
    alice.close()


def test_5_a_flood_of_fake_peers_is_bounded(make_peer: Callable[..., tuple[Peer, Shown]]) -> None:
    alice, alice_shows = make_peer("alice", heartbeat_interval=2.0)
    bob, _ = make_peer("bob", heartbeat_interval=2.0)
    alice_shows.wait_line("-!- bob joined")
    sent_before = alice.stats()["sent"]
    attackers = [group_socket() for _ in range(8)]
    flood = []
    for number in range(600):  # each fake instance twice, from one port: a confirmed peer
        datagram = presence(os.urandom(8), f"fake{number}", 1.0)
        flood += [(attackers[number % 8], datagram)] * 2
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        started = time.monotonic()
        send_paced(alice, flood)
        flood_seconds = time.monotonic() - started
        growth = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    stats = alice.stats()
    assert stats["peers"] <= 256
    assert stats["newcomers"] <= 64
    # Replies to newcomers: at most one announcement per 1/8 heartbeat (0.25 s here),
    # plus the heartbeats themselves.
    announcements = stats["sent"] - sent_before
    assert announcements <= flood_seconds / 0.25 + flood_seconds / 2.0 + 2
    assert growth < 16 * 1024 * 1024, f"a flood of 600 fake peers took {growth} bytes"
    shown = alice_shows.lines()
    assert shown.count("-!- more than 256 peers: newcomers are ignored for now") == 1
    assert sum(line.endswith(" joined") for line in shown) <= 256
    bob.send_line("still here")
    alice_shows.wait_line("<bob> still here")
    for sock in attackers:
        sock.close()


def _has_received(peer: Peer, count: int) -> bool:
    return peer.stats()["received"] >= count


def send_paced(peer: Peer, flood: list[tuple[socket.socket, bytes]], chunk: int = 32) -> None:
    """Send each datagram of ``flood`` to the group from its socket, a chunk at a time,
    each chunk once ``peer`` has taken in the one before: her socket buffer never
    overflows, so what she shows is her own doing, not the kernel's."""
    for first in range(0, len(flood), chunk):
        part = flood[first : first + chunk]
        wanted = peer.stats()["received"] + len(part)
        for sock, datagram in part:
            sock.sendto(datagram, (DEFAULT_GROUP, peer.port))
        wait_until(partial(_has_received, peer, wanted))


# =============================================================================================
# Crashes
# =============================================================================================


def test_6_a_peer_keeps_listening_whatever_it_hears(
    make_peer: Callable[..., tuple[Peer, Shown]],
) -> None:
    bob, _ = make_peer("bob", heartbeat_interval=2.0)
    alice, alice_shows = make_peer("alice", heartbeat_interval=2.0)
    alice_shows.wait_line("-!- bob joined")  # known before the flood fills her table
    attacker = group_socket()
    # Within alice's first interval, older claims to her name and to every numbered
    # name a table can hold: she must move, and move again as the claims follow her.
    claims = [presence(os.urandom(8), f"alice{number}", 1.0) for number in ["", *range(2, 300)]]
    garbage = [
        b"",
        b"nc",
        b"nc\x01\x0a" + b"\xff" * 7,  # truncated PEER header
        dg.encode_peer(os.urandom(8), 0, b"not json\n"),
        dg.encode_peer(os.urandom(8), 2**64 - 1, encode_frame(Say("a request, not an event"))),
        dg.encode_peer(os.urandom(8), 0, b'{"v":1,"t":"joined","name":"","ts":1e400,"seq":-1}\n'),
        os.urandom(MAX_DATAGRAM_BYTES + 1),
    ]
    send_paced(alice, [(attacker, datagram) for claim in claims for datagram in (claim, claim)])
    send_paced(alice, [(attacker, datagram) for datagram in garbage])
    assert alice.name != "alice"
    bob.send_line("can you hear me?")
    shown = alice_shows.wait_line("<bob> can you hear me?")
    assert shown.count("<bob> can you hear me?") == 1
    assert alice.stats()["errors"] == 0
    assert alice._thread is not None and alice._thread.is_alive()
    attacker.close()


def test_7_a_private_message_to_a_name_that_expands_when_quoted(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    mallory = plain_client(server.address, "mallory")
    invisible = "\u200b" * 20_000  # 60 KB; quoted as \u200b it would be 120,000 characters
    mallory.send_line(f"/msg {invisible} hi")
    mallory.send_line("/who")
    expected_error = "! no user named '" + "\\u200b" * 32 + "'…; /who lists who is online"
    assert lines_until(mallory, "-!- Online (1): mallory") == [
        expected_error,
        "-!- Online (1): mallory",
    ]
    structured = frame_client(server.address, "eve")
    structured.send_frame(Private(invisible, "hi"))
    structured.send_frame(Who())
    frames = frames_until(structured, lambda f: not isinstance(f, Error))
    assert frames == [
        Error("no-such-user", expected_error[2:]),
        UserList(("mallory", "eve")),
    ]
    mallory.close()
    structured.close()


# =============================================================================================
# Impersonation and forgery
# =============================================================================================


@pytest.mark.parametrize(
    ("asked", "error"),
    [
        ("аlice", Error("name-taken", "the name 'аlice' is taken; try 'аlice2'", "аlice2")),
        ("aIice", Error("name-taken", "the name 'aIice' is taken; try 'aIice2'", "aIice2")),
        ("ALICE", Error("name-taken", "the name 'ALICE' is taken; try 'ALICE2'", "ALICE2")),
        (
            "alice\u3164",
            Error("bad-name", "a name cannot contain invisible characters; try 'alice_'", "alice_"),
        ),
        (
            "\u3164\u3164",
            Error("bad-name", "a name cannot contain invisible characters; try 'guest'", "guest"),
        ),
        ("server", Error("bad-name", "the name 'server' is reserved; try 'server2'", "server2")),
        ("ѕerver", Error("bad-name", "the name 'server' is reserved; try 'ѕerver2'", "ѕerver2")),
    ],
    ids=[
        "cyrillic-a",
        "capital-I",
        "upper-case",
        "hangul-filler",
        "only-fillers",
        "reserved",
        "reserved-lookalike",
    ],
)
def test_8_look_alike_invisible_and_reserved_names_are_refused(
    make_server: ServerFactory, asked: str, error: Error
) -> None:
    server = make_server()
    alice = plain_client(server.address, "alice")
    impostor = FrameClient(server.address)
    impostor.send_frame(Hello(asked))
    assert impostor.next_frame() == error
    impostor.send_frame(Hello("Jose\u0301"))  # decomposed: joins as the composed name
    welcome = impostor.next_frame()
    assert rendered([welcome]) == [
        "-!- Welcome, José! Online (2): alice, José. Type /help for commands."
    ]
    alice.send_line("/who")
    assert lines_until(alice, "-!- Online (2): alice, José") == [
        "-!- José joined",
        "-!- Online (2): alice, José",
    ]
    impostor.close()
    alice.close()


def test_8_look_alike_names_are_refused_on_udp_too(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    relay = make_relay()
    alice = UdpUser(relay, "alice")
    alice.until(lambda f: True)
    impostor = UdpUser(relay, "аlice")
    assert impostor.until(lambda f: True) == [
        Error("name-taken", "the name 'аlice' is taken; try 'аlice2'", "аlice2")
    ]
    impostor.close()
    alice.close()


def test_9_nobody_can_forge_a_server_notice(make_server: ServerFactory) -> None:
    server = make_server()
    alice = plain_client(server.address, "alice")
    carol = frame_client(server.address, "carol")
    bob = plain_client(server.address, "bob")
    bob.send_line("/me left")
    bob.send_line("hi" + " " * 500 + "-!- alice left")  # padded to wrap into a fake notice
    bob.send_line("hi" + "\u2800" * 300 + "\u3164" * 300 + "[12:00:00] -!- carol left")
    bob.send_line("/quit")
    expected = [
        "-!- bob joined",
        "* bob left",
        "<bob> hi -!- alice left",
        "<bob> hi [12:00:00] -!- carol left",
        "-!- bob left",
    ]
    assert lines_until(alice, "-!- bob left") == ["-!- carol joined", *expected]
    assert rendered(frames_until(carol, lambda f: rendered([f]) == ["-!- bob left"])) == expected
    # Only the server's own notices start with the notice prefix, on every renderer.
    assert [line for line in expected if line.startswith("-!-")] == [
        "-!- bob joined",
        "-!- bob left",
    ]
    carol.close()
    alice.close()


def test_10_invisible_payloads_are_stripped_and_real_scripts_kept(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    alice = plain_client(server.address, "alice")
    bob = frame_client(server.address, "bob")
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "ignore previous instructions")
    scripts = "Привет 你好 नमस्ते مرحبا 👩🏽‍💻 👨‍👩‍👧 🏴󠁧󠁢󠁳󠁣󠁴󠁿"
    bob.send_frame(Say("look" + hidden + " a" + "\u0301" * 3000 + " " + scripts))
    assert lines_until(alice, "<bob> look a" + "\u0301" * 8 + " " + scripts) == [
        "-!- bob joined",
        "<bob> look a" + "\u0301" * 8 + " " + scripts,
    ]
    bob.close()
    alice.close()


def test_11_a_spoofed_udp_member_is_told_and_heard_again(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    # Heartbeats far apart: what tells alice here is the relay's answer to the
    # datagram it drops, not the next heartbeat.
    relay = make_relay(heartbeat_interval=30.0)
    alice = UdpUser(relay, "alice")
    bob = UdpUser(relay, "bob")
    alice.until(lambda f: isinstance(f, Message) or "bob joined" in rendered([f])[0])
    alice.say("one")
    bob.until_message("one")
    # Someone who can forge alice's address sends as her, far ahead of her numbers.
    spoofer = alice.transport._sock
    assert spoofer is not None
    for step in range(3):
        spoofer.send(dg.encode_data(10_000 + step, encode_frame(Say(f"I am alice {step}"))))
    bob.until_message("I am alice 2")
    alice.say("two")  # behind the forged numbers: the relay drops it ...
    warning = alice.until(lambda f: isinstance(f, Info) and "sending as you" in f.text)[-1]
    alice.say("three")  # ... and, once told, the client sends above them again
    assert bob.until_message("three")[-3:] == [
        "<alice> one",
        "<alice> I am alice 2",
        "<alice> three",
    ]
    assert rendered([warning]) == [
        "-!- someone may be sending as you (address spoofing): the server got messages"
        " from your address that this client never sent, and dropped up to 2 of yours."
        " What you send gets through again; reconnect to be safe."
    ]
    assert alice.until_message("three")[-4:] == [
        "<alice> one",
        "<alice> I am alice 2",
        rendered([warning])[0],
        "<alice> three",
    ]
    # The relay's PONG for the dropped datagram answered no ping: no RTT sample from it.
    assert 0 < alice.transport.stats()["rtt_us"] < 1_000_000
    alice.close()
    bob.close()


def test_11_a_spoofed_udp_member_is_told_even_before_it_speaks(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    relay = make_relay(heartbeat_interval=0.2)
    alice = UdpUser(relay, "alice")
    alice.until(lambda f: True)
    spoofer = alice.transport._sock
    assert spoofer is not None
    for step in range(3):
        spoofer.send(dg.encode_data(5000 + step, encode_frame(Say(f"I am alice {step}"))))
    frames = alice.until(lambda f: isinstance(f, Info))  # the next heartbeat tells
    assert rendered(frames) == [
        "-!- Welcome, alice! Online (1): alice. Type /help for commands.",
        "<alice> I am alice 2",
        "-!- someone may be sending as you (address spoofing): the server got messages"
        " from your address that this client never sent."
        " What you send gets through again; reconnect to be safe.",
    ]
    alice.close()


def test_12_peers_cannot_be_impersonated_by_copying_an_instance_id(
    make_peer: Callable[..., tuple[Peer, Shown]],
) -> None:
    alice, _ = make_peer("alice")
    bob, bob_shows = make_peer("bob")
    bob_shows.wait_line("-!- alice joined")
    attacker = group_socket()  # a port of its own: it cannot forge alice's source
    forged = [
        Message("alice", "I am alice", time.time(), 0),
        Renamed("alice", "mallory", time.time(), 0),
        Left("alice", time.time(), 0),
    ]
    # Her own instance id and the very numbers she will use next (she has sent none).
    send_paced(
        bob,
        [
            (attacker, dg.encode_peer(alice.instance, seq, encode_frame(frame)))
            for seq, frame in enumerate(forged, start=1)
        ],
    )
    alice.send_line("the real one")
    lines = bob_shows.wait_line("<alice> the real one")
    assert lines[lines.index("-!- alice joined") :] == ["-!- alice joined", "<alice> the real one"]
    assert bob.stats()["spoofed"] == 3
    attacker.close()


def test_12_a_sequence_jump_does_not_silence_a_peer(
    make_peer: Callable[..., tuple[Peer, Shown]],
) -> None:
    alice, _ = make_peer("alice")
    bob, bob_shows = make_peer("bob")
    bob_shows.wait_line("-!- alice joined")
    # From alice's own address (a forged source): numbers far beyond hers.
    forger = alice._send_sock
    assert forger is not None
    for step in range(3):
        forged = Message("alice", f"forged {step}", time.time(), 0)
        forger.sendto(
            dg.encode_peer(alice.instance, 10**9 + step, encode_frame(forged)),
            (DEFAULT_GROUP, alice.port),
        )
    bob_shows.wait_line("<alice> forged 2")
    resynced = bob.stats().get("resynced", 0)
    wait_until(lambda: bob.stats().get("resynced", 0) > resynced)  # her next presence
    alice.send_line("heard again")
    lines = bob_shows.wait_line("<alice> heard again")
    assert lines[lines.index("-!- alice joined") :][-2:] == [
        "<alice> forged 2",
        "<alice> heard again",
    ]


def test_12_an_older_timestamp_does_not_take_a_held_name(
    make_peer: Callable[..., tuple[Peer, Shown]],
) -> None:
    alice, alice_shows = make_peer("alice")
    bob, bob_shows = make_peer("bob")
    bob_shows.wait_line("-!- alice joined")
    wait_until(lambda: time.monotonic() >= alice._holds_name_from)
    attacker = group_socket()
    instance = os.urandom(8)
    claim = presence(instance, "alice", 1.0)  # claimed in 1970: older than anyone
    for _ in range(2):
        attacker.sendto(claim, (DEFAULT_GROUP, alice.port))
    tag = "alice#" + instance[:2].hex()
    bob_shows.wait_line(f"-!- {tag} joined")
    alice_shows.wait_line(
        f"-!- another peer (127.0.0.1) also calls itself 'alice'; you keep your name,"
        f" and it is shown as {tag}"
    )
    assert alice.name == "alice"
    bob.send_line(f"/msg {tag} hi")
    bob_shows.wait_line(
        f"! '{tag}' claims a name another peer holds; private messages to it are not sent"
    )
    attacker.close()

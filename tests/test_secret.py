"""A chat with a password (issue 6), end to end on loopback: TCP, the UDP relay, peers.

What users see is compared as whole transcripts (a duplicated or reordered line
fails). The UDP tests put an on-path :class:`Tap` between a client and the relay: it
keeps a copy of every datagram (what an eavesdropper on the LAN would have) and
sends its own to either side (what an attacker would), so forged, replayed and
altered datagrams are tried against real sockets in both directions.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from netchat.client import Client
from netchat.errors import Rejected
from netchat.peer import DEFAULT_GROUP, Peer
from netchat.protocol import datagram as dg
from netchat.protocol.envelope import ClientKeys
from netchat.protocol.frames import (
    Error,
    Frame,
    Hello,
    Joined,
    Left,
    Message,
    Private,
    PrivateMessage,
    Say,
    Welcome,
    encode_frame,
)
from netchat.protocol.limits import MAX_DATAGRAM_BYTES
from netchat.protocol.seal import SEAL_OVERHEAD, SEALED_VERSION, ChatKey, Sealer, group_salt
from netchat.server import Server
from netchat.transport.base import Proto
from tests.conftest import ServerFactory
from tests.test_peer import LOOPBACK, Recorder, free_port, group_sender, wait_until
from tests.wire import WAIT, FrameClient, LineClient

PASSWORD = "correct horse battery staple"
Address = tuple[str, int]


# --- helpers ---------------------------------------------------------------------------


def read_until(client: LineClient, pattern: str) -> list[str]:
    """Every line up to and including the first matching ``pattern`` (none dropped)."""
    seen: list[str] = []
    end = time.monotonic() + WAIT
    while True:
        while client.lines:
            seen.append(client.lines.pop(0))
            if re.search(pattern, seen[-1]):
                return seen
        if not client._fill(end):
            raise AssertionError(f"no line matching {pattern!r}; got {seen}")


def untimed(lines: list[str]) -> list[str]:
    """Lines as an ``nc`` user reads them, without the ``[HH:MM:SS] `` in front."""
    return [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line) for line in lines]


def shown(frame: Frame) -> tuple[object, ...]:
    """What a user sees of a frame, without the times and numbers that vary by run."""
    if isinstance(frame, Message):
        return ("message", frame.sender, frame.text)
    if isinstance(frame, PrivateMessage):
        return ("private", frame.sender, frame.to, frame.text)
    if isinstance(frame, Joined):
        return ("joined", frame.name)
    if isinstance(frame, Left):
        return ("left", frame.name, frame.reason)
    if isinstance(frame, Welcome):
        return ("welcome", frame.name, frame.users)
    return (frame.TYPE, *dataclasses.astuple(frame))


class Events:
    """Everything a :class:`Client` received, in order, and waits on it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.frames: list[Frame] = []

    def until(self, predicate: Callable[[Frame], bool]) -> Frame:
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            frame = self.client.next_event(timeout=0.05)
            if frame is None:
                continue
            self.frames.append(frame)
            if predicate(frame):
                return frame
        raise AssertionError(f"not received; got {self.frames}")

    def message(self, text: str) -> Frame:
        return self.until(lambda f: isinstance(f, (Message, PrivateMessage)) and f.text == text)

    def settle(self, seconds: float = 0.3) -> None:
        """Take what arrives within ``seconds`` (to see that nothing more does)."""
        end = time.monotonic() + seconds
        while (remaining := end - time.monotonic()) > 0:
            frame = self.client.next_event(timeout=remaining)
            if frame is not None:
                self.frames.append(frame)

    def transcript(self) -> list[tuple[object, ...]]:
        return [shown(frame) for frame in self.frames]


@pytest.fixture
def clients() -> Iterator[Callable[..., Events]]:
    made: list[Client] = []

    def join(name: str, address: Address, proto: Proto, password: str | None) -> Events:
        client = Client.connect(name, *address, proto, password=password)
        made.append(client)
        return Events(client)

    yield join
    for client in made:
        client.close()


class Tap:
    """An on-path box between one relay client and the relay.

    It forwards both ways, keeps a copy of every datagram (``up``: to the relay,
    ``down``: to the client) and sends datagrams of its own to either side.
    """

    def __init__(self, relay: Address) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind((LOOPBACK, 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(relay)
        self.client: Address | None = None
        self.up: list[bytes] = []
        self.down: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> Address:
        host, port = self.front.getsockname()
        return host, port

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.front, self.back], [], [], 0.05)
            if self.front in readable:
                data, self.client = self.front.recvfrom(4096)
                self.up.append(data)
                self.back.send(data)
            if self.back in readable:
                with_ok = self.back.recv(4096)
                self.down.append(with_ok)
                if self.client is not None:
                    self.front.sendto(with_ok, self.client)

    def to_client(self, data: bytes) -> None:
        assert self.client is not None
        self.front.sendto(data, self.client)

    def to_relay(self, data: bytes) -> None:
        self.back.send(data)

    def captured(self) -> list[bytes]:
        return [*self.up, *self.down]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT)
        self.front.close()
        self.back.close()


@pytest.fixture
def taps() -> Iterator[Callable[[Address], Tap]]:
    made: list[Tap] = []

    def tap(relay: Address) -> Tap:
        made.append(Tap(relay))
        return made[-1]

    yield tap
    for tap_ in made:
        tap_.close()


def with_counter(datagram: bytes, counter: int) -> bytes:
    """A sealed DATA/PING/PONG datagram with another counter (and the same ciphertext)."""
    return datagram[:4] + counter.to_bytes(8, "big") + datagram[12:]


def flipped(datagram: bytes, index: int) -> bytes:
    return datagram[:index] + bytes([datagram[index] ^ 0x01]) + datagram[index + 1 :]


def sealed_kind(datagrams: list[bytes], kind: dg.Kind) -> list[bytes]:
    return [d for d in datagrams if d[:4] == b"nc" + bytes([SEALED_VERSION, kind])]


# --- TCP ---------------------------------------------------------------------------------


def test_tcp_chat_with_a_password_nc_and_netchat_client_exact_transcripts(
    make_server: ServerFactory, clients: Callable[..., Events]
) -> None:
    server = make_server(password=PASSWORD)
    nc = LineClient(server.address)
    seen = read_until(nc, r"This chat needs a password")
    nc.send_line(PASSWORD)
    seen += read_until(nc, r"password accepted")
    nc.send_line("алиса")
    seen += read_until(nc, r"Welcome, алиса!")
    bob = clients("bob", server.address, Proto.tcp, PASSWORD)
    bob.until(lambda f: isinstance(f, Welcome))
    nc.send_line("привет, bob")
    bob.message("привет, bob")
    bob.client.say("hi алиса")
    bob.message("hi алиса")
    bob.client.send_line("/quit")
    seen += read_until(nc, r"bob left")
    seen += nc.collect(0.3)  # nothing more, nothing twice
    assert untimed(seen) == [
        "netchat/1 ready: welcome to netchat! This chat needs a password: type it and press Enter:",
        "-!- password accepted. Type your name and press Enter:",
        "-!- Welcome, алиса! Online (1): алиса. Type /help for commands.",
        "-!- bob joined",
        "<алиса> привет, bob",
        "<bob> hi алиса",
        "-!- bob left",
    ]
    assert bob.transcript() == [
        ("welcome", "bob", ("алиса", "bob")),
        ("message", "алиса", "привет, bob"),
        ("message", "bob", "hi алиса"),
    ]
    nc.close()


@pytest.mark.parametrize(
    ("password", "code"),
    [(None, "needs-password"), ("wrong", "bad-password")],
)
def test_tcp_a_netchat_client_without_the_password_is_refused_and_sees_nothing(
    make_server: ServerFactory, password: str | None, code: str
) -> None:
    server = make_server(password=PASSWORD)
    member = LineClient(server.address)
    member.send_line(PASSWORD)
    member.send_line("watcher")
    member.expect("Welcome, watcher!")
    with pytest.raises(Rejected) as refused:
        Client.connect("mallory", *server.address, Proto.tcp, password=password)
    assert refused.value.code == code
    member.send_line("marker")
    member.expect("<watcher> marker$")
    assert untimed(member.lines) == []  # no "mallory joined", nothing at all
    member.close()


def test_tcp_a_structured_hello_without_the_password_gets_no_chat_traffic(
    make_server: ServerFactory,
) -> None:
    server = make_server(password=PASSWORD)
    member = LineClient(server.address)
    member.send_line(PASSWORD)
    member.send_line("watcher")
    member.expect("Welcome, watcher!")
    stranger = FrameClient(server.address)
    stranger.send_frame(Hello("mallory"))
    stranger.send_json({"v": 1, "t": "who"})
    stranger.send_frame(Hello("mallory", password="guess"))
    frames = [stranger.next_frame() for _ in range(3)]
    assert frames == [
        Error("needs-password", "this chat needs a password"),
        Error("not-joined", "join first: send a hello frame"),
        Error("bad-password", "wrong password (2 tries left)"),
    ]
    assert stranger.collect(0.3) == []
    member.send_line("marker")
    member.expect("<watcher> marker$")
    assert untimed(member.lines) == []
    stranger.close()
    member.close()


def test_tcp_three_wrong_passwords_then_a_disconnect_with_the_reason(
    make_server: ServerFactory,
) -> None:
    server = make_server(password=PASSWORD)
    transport = server.transport
    transport.policy = dataclasses.replace(transport.policy, password_delay=0.05)  # type: ignore[attr-defined]
    nc = LineClient(server.address)
    for guess in ("one", "two", "three"):
        nc.send_line(guess)
    seen = read_until(nc, "goodbye$")
    assert nc.wait_closed()
    nc.sock.close()
    assert untimed(seen) == [
        "netchat/1 ready: welcome to netchat! This chat needs a password: type it and press Enter:",
        "! wrong password (2 tries left). Type the password:",
        "! wrong password (1 try left). Type the password:",
        "! wrong password 3 times; goodbye",
    ]


def test_tcp_a_client_with_a_password_refuses_a_chat_that_asks_for_none(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    with pytest.raises(Rejected) as refused:
        Client.connect("alice", *server.address, Proto.tcp, password=PASSWORD)
    assert refused.value.code == "no-password"
    assert "does not ask for a password" in str(refused.value)


# --- the UDP relay ---------------------------------------------------------------------------


def test_udp_chat_with_a_password_exact_transcripts(
    make_server: ServerFactory, clients: Callable[..., Events]
) -> None:
    motd = "Добро пожаловать! " * 80  # a welcome of ~2.7 kB: the relay fragments it, sealed
    server = make_server(Proto.udp, password=PASSWORD, motd=motd)
    alice = clients("alice", server.address, Proto.udp, PASSWORD)
    alice.until(lambda f: isinstance(f, Welcome))
    bob = clients("bob", server.address, Proto.udp, PASSWORD)
    bob.until(lambda f: isinstance(f, Welcome))
    alice.until(lambda f: isinstance(f, Joined))
    alice.client.say("привет, bob 👋")
    bob.message("привет, bob 👋")
    bob.client.send(Private("alice", "только тебе"))
    alice.message("только тебе")
    # The largest message a sealed datagram holds goes; one byte more is refused here.
    room = MAX_DATAGRAM_BYTES - dg.DATA_HEADER_BYTES - SEAL_OVERHEAD
    largest = "x" * (room - len(encode_frame(Say(""))))
    alice.client.say(largest)
    bob.message(largest)
    alice.message(largest)
    alice.client.say(largest + "y")
    alice.until(lambda f: isinstance(f, Error))
    bob.settle()
    alice.settle()
    assert alice.transcript() == [
        ("welcome", "alice", ("alice",)),
        ("joined", "bob"),
        ("message", "alice", "привет, bob 👋"),
        ("private", "bob", "alice", "только тебе"),
        ("message", "alice", largest),
        (
            "error",
            "too-large",
            f"message not sent: {room + 1} bytes encoded, but a UDP datagram holds {room};"
            " shorten it (or use --proto tcp)",
            "",
        ),
    ]
    assert bob.transcript() == [
        ("welcome", "bob", ("alice", "bob")),
        ("message", "alice", "привет, bob 👋"),
        ("private", "bob", "alice", "только тебе"),
        ("message", "alice", largest),
    ]
    assert isinstance(bob.frames[0], Welcome) and bob.frames[0].motd == motd
    stats = server.transport.stats()  # type: ignore[attr-defined]
    assert (stats.get("forged", 0), stats.get("replayed", 0)) == (0, 0)


@pytest.mark.parametrize(
    ("password", "code"),
    [(None, "needs-password"), ("wrong", "bad-password")],
)
def test_udp_a_client_without_the_password_is_refused_and_sees_nothing(
    make_server: ServerFactory, clients: Callable[..., Events], password: str | None, code: str
) -> None:
    server = make_server(Proto.udp, password=PASSWORD)
    alice = clients("alice", server.address, Proto.udp, PASSWORD)
    alice.until(lambda f: isinstance(f, Welcome))
    with pytest.raises(Rejected) as refused:
        Client.connect("mallory", *server.address, Proto.udp, password=password)
    assert refused.value.code == code
    alice.client.say("marker")
    alice.message("marker")
    assert alice.transcript() == [("welcome", "alice", ("alice",)), ("message", "alice", "marker")]
    if code == "bad-password":
        assert server.transport.stats()["bad_password"] == 1  # type: ignore[attr-defined]


def test_udp_a_client_with_a_password_refuses_a_relay_without_one(
    make_server: ServerFactory,
) -> None:
    server = make_server(Proto.udp)
    with pytest.raises(Rejected) as refused:
        Client.connect("alice", *server.address, Proto.udp, password=PASSWORD)
    assert refused.value.code == "no-password"


@pytest.mark.parametrize("password", [PASSWORD, None])
def test_an_eavesdropper_on_the_relay_traffic_reads_no_chat(
    make_server: ServerFactory,
    clients: Callable[..., Events],
    taps: Callable[[Address], Tap],
    password: str | None,
) -> None:
    server = make_server(Proto.udp, password=password or "")
    alice_tap, bob_tap = taps(server.address), taps(server.address)
    alice = clients("alice", alice_tap.address, Proto.udp, password)
    alice.until(lambda f: isinstance(f, Welcome))
    bob = clients("bob", bob_tap.address, Proto.udp, password)
    bob.until(lambda f: isinstance(f, Welcome))
    alice.client.say("секретный план: встречаемся в 7")
    bob.message("секретный план: встречаемся в 7")
    bob.client.send(Private("alice", "pssst, only for you"))
    alice.message("pssst, only for you")
    captured = alice_tap.captured() + bob_tap.captured()
    secrets = ["секретный план".encode(), b"pssst, only for you", b'"alice"', b'"bob"']
    leaked = [secret for secret in secrets if any(secret in data for data in captured)]
    if password is None:
        assert leaked == secrets  # the control: an open chat's traffic is readable
    else:
        assert leaked == []
        assert not any(PASSWORD.encode() in data for data in captured)
        # Nothing travels in layout 1; what is not sealed is the cookie exchange (36 bytes).
        assert all(data.startswith(b"nc\x02") for data in captured)
        cookies = [d for d in captured if d[3] == dg.Kind.COOKIE or d[4:20] == dg.NO_COOKIE]
        assert len(cookies) == 4 and all(len(d) == 36 for d in cookies), cookies


def test_forged_replayed_and_altered_datagrams_are_dropped_and_counted_both_ways(
    make_server: ServerFactory, clients: Callable[..., Events], taps: Callable[[Address], Tap]
) -> None:
    server = make_server(Proto.udp, password=PASSWORD)
    relay = server.transport
    tap = taps(server.address)
    alice = clients("alice", tap.address, Proto.udp, PASSWORD)
    alice.until(lambda f: isinstance(f, Welcome))
    bob = clients("bob", server.address, Proto.udp, PASSWORD)
    bob.until(lambda f: isinstance(f, Welcome))
    bob.client.say("one")
    alice.message("one")
    alice.client.say("mine")
    bob.message("mine")

    # Toward alice: every DATA she received, again; one with a new counter; one with
    # a changed byte of ciphertext and a new counter; one made up.
    to_alice = sealed_kind(tap.down, dg.Kind.DATA)
    for datagram in to_alice:
        tap.to_client(datagram)
    tap.to_client(with_counter(to_alice[-1], 10_000))
    tap.to_client(flipped(with_counter(to_alice[-1], 10_001), -1))
    tap.to_client(b"nc\x02\x05" + (10_002).to_bytes(8, "big") + os.urandom(60))
    # Toward the relay: the same with what alice sent.
    from_alice = sealed_kind(tap.up, dg.Kind.DATA)
    for datagram in from_alice:
        tap.to_relay(datagram)
    tap.to_relay(with_counter(from_alice[-1], 20_000))
    tap.to_relay(flipped(with_counter(from_alice[-1], 20_001), 20))
    tap.to_relay(b"nc\x02\x05" + (20_002).to_bytes(8, "big") + os.urandom(60))

    wait_until(lambda: relay.stats().get("forged", 0) == 3)  # type: ignore[attr-defined]
    wait_until(lambda: alice.client.stats().get("forged", 0) == 3)
    assert relay.stats()["replayed"] == len(from_alice)  # type: ignore[attr-defined]
    assert alice.client.stats()["replayed"] == len(to_alice)
    bob.client.say("two")
    alice.message("two")
    bob.message("two")
    alice.settle()
    bob.settle()
    assert alice.transcript() == [
        ("welcome", "alice", ("alice",)),
        ("joined", "bob"),
        ("message", "bob", "one"),
        ("message", "alice", "mine"),
        ("message", "bob", "two"),
    ]
    assert bob.transcript() == [
        ("welcome", "bob", ("alice", "bob")),
        ("message", "bob", "one"),
        ("message", "alice", "mine"),
        ("message", "bob", "two"),
    ]
    alice.client.send_line("/stats")
    stats_line = alice.until(lambda f: f.TYPE == "info")
    assert f"{len(to_alice) + 3} forged or replayed datagrams dropped" in stats_line.text  # type: ignore[attr-defined]


def test_a_recorded_join_replayed_by_an_eavesdropper_opens_no_session(
    make_server: ServerFactory, clients: Callable[..., Events], taps: Callable[[Address], Tap]
) -> None:
    server = make_server(Proto.udp, password=PASSWORD)
    tap = taps(server.address)
    alice = clients("alice", tap.address, Proto.udp, PASSWORD)
    alice.until(lambda f: isinstance(f, Welcome))
    hello = sealed_kind(tap.up, dg.Kind.HELLO)[-1]
    thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    thief.settimeout(0.5)
    thief.connect(server.address)
    thief.send(hello)  # from another address: its cookie is not valid there
    answer = thief.recv(2048)
    thief.close()
    assert answer[:4] == b"nc\x02" + bytes([dg.Kind.COOKIE])  # a fresh cookie, nothing sealed
    stats = server.transport.stats()  # type: ignore[attr-defined]
    assert (stats["joins"], stats["sessions"]) == (1, 1)


# --- peers -------------------------------------------------------------------------------------


@pytest.fixture
def group_port() -> int:
    return free_port()


@pytest.fixture
def make_peer(group_port: int) -> Iterator[Callable[..., tuple[Peer, Recorder]]]:
    peers: list[Peer] = []

    def make(name: str, password: str | None) -> tuple[Peer, Recorder]:
        peer = Peer(
            name,
            port=group_port,
            interface=LOOPBACK,
            heartbeat_interval=0.2,
            password=password,
        )
        recorder = Recorder()
        peer.start(recorder.on_event, recorder.on_closed)
        peers.append(peer)
        return peer, recorder

    yield make
    for peer in peers:
        peer.close()
        assert peer.wait(WAIT)


class GroupListener:
    """An eavesdropper on the group: keeps a copy of every datagram sent to it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((DEFAULT_GROUP, port))
        membership = socket.inet_aton(DEFAULT_GROUP) + socket.inet_aton(LOOPBACK)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        self.sock.setblocking(False)
        self.heard: list[bytes] = []

    def drain(self) -> list[bytes]:
        while True:
            try:
                self.heard.append(self.sock.recv(4096))
            except BlockingIOError:
                return self.heard

    def close(self) -> None:
        self.sock.close()


def test_peers_with_a_password_chat_and_outsiders_read_nothing(
    make_peer: Callable[..., tuple[Peer, Recorder]], group_port: int
) -> None:
    listener = GroupListener(group_port)
    (alice, a), (bob, b) = make_peer("alice", PASSWORD), make_peer("bob", PASSWORD)
    (_, wrong) = make_peer("mallory", "not the password")
    (_, open_) = make_peer("eve", None)
    a.wait_line("-!- bob joined")
    b.wait_line("-!- alice joined")
    alice.send_line("тайная встреча в 7")
    bob.send_line("/msg alice только тебе")
    b.wait_line("<alice> тайная встреча в 7")
    a.wait_line("<bob -> alice> только тебе")
    time.sleep(0.5)  # heartbeats: a copy shown twice, or an outsider shown, would show now
    # When eve's first datagram arrives is up to the network: that one line may come
    # anywhere, once; everything else in this order.
    outsiders = "-!- peers without the password are on this group: they are not shown"
    transcript = a.transcript()
    assert transcript.count(outsiders) == 1
    assert [line for line in transcript if line != outsiders] == [
        "-!- Welcome, alice! Online (1): alice. Type /help for commands.",
        "-!- bob joined",
        "<alice> тайная встреча в 7",
        "<bob -> alice> только тебе",
    ]
    # The outsiders see no one and nothing: mallory's key is wrong (it hears eve's
    # unsealed datagrams as such), eve has none.
    assert wrong.transcript()[1:] == [outsiders]
    assert open_.transcript()[1:] == [
        "-!- peers with a password are on this group; without it we cannot read them"
    ]
    assert alice.stats()["forged"] > 0 and alice.stats()["unsealed"] > 0
    heard = listener.drain()
    listener.close()
    assert heard, "the listener heard the group"
    for secret in ("тайная встреча".encode(), "только тебе".encode(), b'"alice"'):
        assert not any(secret in data for data in heard if data[2] == SEALED_VERSION)


def test_a_peer_drops_replayed_forged_and_altered_datagrams(
    make_peer: Callable[..., tuple[Peer, Recorder]], group_port: int
) -> None:
    listener = GroupListener(group_port)
    (alice, a), (bob, _) = make_peer("alice", PASSWORD), make_peer("bob", PASSWORD)
    a.wait_line("-!- bob joined")
    bob.send_line("only once")
    a.wait_line("<bob> only once")
    sent_by_bob = [
        d for d in listener.drain() if d[2] == SEALED_VERSION and d[4:12] == bob.instance
    ]
    listener.close()
    before = alice.stats()
    attacker = group_sender()
    for datagram in sent_by_bob:  # every datagram bob sent, again
        attacker.sendto(datagram, (DEFAULT_GROUP, group_port))
    last = sent_by_bob[-1]
    counter = 1 << 40
    attacker.sendto(last[:12] + counter.to_bytes(8, "big") + last[20:], (DEFAULT_GROUP, group_port))
    # A datagram under bob's id sealed with a key from another password.
    other_key = ChatKey.derive("not the password", group_salt(DEFAULT_GROUP, group_port))
    forged = Sealer(other_key.peer_key(bob.instance), first_counter=counter + 1).seal_datagram(
        dg.encode_peer(bob.instance, 99, encode_frame(Message("bob", "forged", 0.0, 0)))
    )
    attacker.sendto(forged, (DEFAULT_GROUP, group_port))
    attacker.close()
    wait_until(lambda: alice.stats()["forged"] >= before["forged"] + 2)
    wait_until(lambda: alice.stats()["replayed"] >= before["replayed"] + len(sent_by_bob))
    bob.send_line("and again")
    a.wait_line("<bob> and again")
    assert a.count("<bob> only once") == 1
    assert not any("forged" in line for line in a.lines)


# --- the CLI, through the installed command -------------------------------------------------


def test_the_cli_says_plainly_when_a_chat_needs_a_password(
    make_server: ServerFactory,
) -> None:
    import subprocess

    from tests.test_installed_command import netchat_command

    server: Server = make_server(password=PASSWORD)
    port = str(server.address[1])
    env = {k: v for k, v in os.environ.items() if k != "NETCHAT_PASSWORD"}

    def client(*options: str, password: str | None) -> subprocess.CompletedProcess[str]:
        run_env = dict(env) if password is None else {**env, "NETCHAT_PASSWORD": password}
        return subprocess.run(
            [netchat_command(), "client", "--port", port, "--name", "bob", "--pipe", *options],
            input="hello\n",
            capture_output=True,
            text=True,
            env=run_env,
            timeout=WAIT,
            check=False,
        )

    missing = client(password=None)
    assert (missing.returncode, missing.stderr) == (
        1,
        "netchat: this chat needs a password: --password or NETCHAT_PASSWORD\n",
    )
    empty = client(password="")  # an empty one means none
    assert empty.stderr == missing.stderr
    wrong = client(password="guess")
    assert (wrong.returncode, wrong.stderr) == (
        1,
        "netchat: wrong password (check --password or NETCHAT_PASSWORD)\n",
    )
    joined = client(password=PASSWORD)
    assert joined.returncode == 0, joined.stderr
    assert untimed(joined.stdout.splitlines()) == [
        "-!- Welcome, bob! Online (1): bob. Type /help for commands.",
        "<bob> hello",
    ]
    on_the_command_line = client("--password", PASSWORD, password=None)
    assert on_the_command_line.returncode == 0, on_the_command_line.stderr


def raw_socket(address: Address) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    sock.connect(address)
    return sock


def test_the_sealed_relay_keeps_nothing_for_strangers_and_never_amplifies(
    make_server: ServerFactory,
) -> None:
    server = make_server(Proto.udp, password=PASSWORD)
    relay = server.transport
    sock = raw_socket(server.address)
    # netchat without the password: told so, in fewer bytes than it sent.
    request = dg.encode_hello(dg.NO_COOKIE)
    sock.send(request)
    notice = sock.recv(2048)
    assert dg.decode_datagram(notice) == dg.Notice("needs-password")
    assert len(notice) <= len(request)
    # The sealed cookie request: a cookie and the salt, exactly as large as the request.
    keys = ClientKeys("a wrong password")
    sock.send(keys.cookie_request())
    answer = sock.recv(2048)
    assert len(answer) == len(keys.cookie_request()) == 36
    cookie = keys.take_cookie(answer)
    assert cookie is not None
    # A HELLO sealed with the wrong password: a NOTICE, nothing sealed, no session.
    hello = keys.hello(cookie, encode_frame(Hello("mallory")))
    sock.send(hello)
    refusal = sock.recv(2048)
    assert dg.decode_datagram(refusal) == dg.Notice("bad-password")
    assert len(refusal) < len(hello)
    # A sealed DATA from nobody we know: told to join, nothing else.
    sock.send(b"nc\x02\x05" + bytes(8) + os.urandom(40))
    assert dg.decode_datagram(sock.recv(2048)) == dg.Notice("not-joined")
    sock.close()
    stats = relay.stats()  # type: ignore[attr-defined]
    assert (stats["sessions"], stats.get("joins", 0), stats["bad_password"]) == (0, 0, 1)


def test_a_lost_accept_is_answered_with_the_same_bytes(make_server: ServerFactory) -> None:
    server = make_server(Proto.udp, password=PASSWORD)
    sock = raw_socket(server.address)
    keys = ClientKeys(PASSWORD)
    sock.send(keys.cookie_request())
    cookie = keys.take_cookie(sock.recv(2048))
    assert cookie is not None
    hello = keys.hello(cookie, encode_frame(Hello("alice")))
    assert keys.hello(cookie, encode_frame(Hello("alice"))) == hello  # a retry: same bytes
    sock.send(hello)
    accept = sock.recv(2048)  # then the welcome, in a sealed DATA
    sealed_welcome = sock.recv(2048)
    sock.send(hello)  # "the ACCEPT was lost"
    again = sock.recv(2048)
    assert again == accept
    plain, session = keys.finish(accept)
    assert dg.decode_datagram(plain) == dg.Accept(1, 5000, "alice")
    welcome = dg.decode_datagram(session.open(sealed_welcome))
    assert isinstance(welcome, dg.Data) and b'"t":"welcome"' in welcome.units[0]
    sock.send(session.seal(dg.encode_bye("done")))
    sock.close()
    stats = server.transport.stats()  # type: ignore[attr-defined]
    assert stats["joins"] == 1


# --- reliable UDP with a password ------------------------------------------------------


def test_rudp_chat_with_a_password_exact_transcripts(
    make_server: ServerFactory, clients: Callable[..., Events]
) -> None:
    motd = "Сообщение дня. " * 120  # longer than a sealed datagram: sent in pieces
    server = make_server(Proto.rudp, password=PASSWORD, motd=motd)
    alice = clients("alice", server.address, Proto.rudp, PASSWORD)
    alice.until(lambda f: isinstance(f, Welcome))
    bob = clients("bob", server.address, Proto.rudp, PASSWORD)
    bob.until(lambda f: isinstance(f, Welcome))
    alice.until(lambda f: isinstance(f, Joined))
    long = ("длинное сообщение " * 150).strip()  # pieces both ways, every one sealed
    alice.client.say(long)
    bob.message(long)
    alice.message(long)
    bob.client.send(Private("alice", "только тебе"))
    alice.message("только тебе")
    alice.settle()
    bob.settle()
    assert alice.transcript() == [
        ("welcome", "alice", ("alice",)),
        ("joined", "bob"),
        ("message", "alice", long),
        ("private", "bob", "alice", "только тебе"),
    ]
    assert bob.transcript() == [
        ("welcome", "bob", ("alice", "bob")),
        ("message", "alice", long),
        ("private", "bob", "alice", "только тебе"),
    ]
    stats = server.transport.stats()  # type: ignore[attr-defined]
    assert (stats.get("forged", 0), stats.get("replayed", 0)) == (0, 0)


def test_rudp_a_client_with_the_wrong_password_is_refused(
    make_server: ServerFactory, clients: Callable[..., Events]
) -> None:
    server = make_server(Proto.rudp, password=PASSWORD)
    alice = clients("alice", server.address, Proto.rudp, PASSWORD)
    alice.until(lambda f: isinstance(f, Welcome))
    with pytest.raises(Rejected) as refused:
        Client.connect("mallory", *server.address, Proto.rudp, password="wrong")
    assert refused.value.code == "bad-password"
    alice.client.say("marker")
    alice.message("marker")
    assert alice.transcript() == [("welcome", "alice", ("alice",)), ("message", "alice", "marker")]

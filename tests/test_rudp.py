"""``--proto rudp`` end to end: the reliable relay and its clients over real sockets on
127.0.0.1, most of them through the seeded impairment relay.

Transcripts are compared whole: every frame a member received after a point, in order,
so a duplicate, a reordering, a lost message or a stray notice fails the test. Every
wait is bounded by a deadline; nothing sleeps for a fixed time to let things happen.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from netchat.client import Client, _reliable_stats_text
from netchat.errors import ConnectionClosed, Rejected
from netchat.impair import Impairment
from netchat.plain_client import plural
from netchat.protocol import datagram as dg
from netchat.protocol.frames import (
    Frame,
    Hello,
    Info,
    Joined,
    Left,
    Message,
    Say,
    Shutdown,
    Welcome,
    encode_frame,
)
from netchat.protocol.reliable import Receiver
from netchat.transport.base import Proto
from netchat.transport.impair_relay import UdpImpairRelay
from netchat.transport.rudp_client import RudpClientTransport
from netchat.transport.rudp_relay import RudpRelayServer
from netchat.transport.udp_relay import UdpRelayServer
from tests.conftest import ImpairRelayFactory, RelayFactory
from tests.wire import raw_join

LOOPBACK = "127.0.0.1"
DEADLINE = 20.0  # generous: two shared cores; a passing test returns long before

ImpairFactory = Callable[..., UdpImpairRelay]


@pytest.fixture
def make_relay(make_relay: RelayFactory) -> RelayFactory:
    """The shared ``make_relay``, serving rudp and unthrottled unless told otherwise."""

    def make(
        heartbeat_interval: float = 5.0,
        relay_class: type[UdpRelayServer] = RudpRelayServer,
        **config: object,
    ) -> UdpRelayServer:
        config.setdefault("rate_limit", 0)
        return make_relay(heartbeat_interval, relay_class, **config)

    return make


@pytest.fixture
def impair(start_impair_relay: ImpairRelayFactory) -> ImpairFactory:
    """``impair(upstream, impairment)``: an unarmed impairment relay in front of it."""

    def start(upstream: tuple[str, int], impairment: Impairment) -> UdpImpairRelay:
        relay = start_impair_relay(False, upstream, impairment, armed=False)
        assert isinstance(relay, UdpImpairRelay)
        return relay

    return start


@pytest.fixture
def clients() -> Iterator[Callable[[str, tuple[str, int]], Client]]:
    """``join(name, address)``: a joined rudp Client, closed after the test."""
    joined: list[Client] = []

    def join(name: str, address: tuple[str, int]) -> Client:
        client = Client.connect(name, *address, Proto.rudp)
        joined.append(client)
        return client

    yield join
    for client in joined:
        client.close()


def shape(frame: Frame) -> tuple[object, ...]:
    """A frame as a transcript entry: what a user sees, without times and numbers."""
    if isinstance(frame, Message):
        return ("message", frame.sender, frame.text)
    if isinstance(frame, Joined):
        return ("joined", frame.name)
    if isinstance(frame, Left):
        return ("left", frame.name, frame.reason, frame.detail)
    if isinstance(frame, Welcome):
        return ("welcome", frame.name, frame.users)
    return (type(frame).__name__, frame)


def take(client: Client, count: int, *, quiet: float = 0.3) -> list[Frame]:
    """The next ``count`` frames, then everything else arriving within ``quiet``
    seconds (so a duplicate or a stray notice shows up in the transcript)."""
    frames: list[Frame] = []
    end = time.monotonic() + DEADLINE
    while len(frames) < count and (remaining := end - time.monotonic()) > 0:
        frame = client.next_event(timeout=remaining)
        if frame is not None:
            frames.append(frame)
    assert len(frames) == count, f"only {len(frames)} of {count} frames: {frames}"
    while (frame := client.next_event(timeout=quiet)) is not None:
        frames.append(frame)
    return frames


def wait_until(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < end, f"not within {DEADLINE} s: {what}"
        time.sleep(0.01)


# --- exactly once, in order, whatever the network does ------------------------------------


@pytest.mark.parametrize(
    "impairment",
    [
        Impairment(seed=3),
        Impairment(loss=0.05, duplicate=0.05, reorder=0.05, seed=3),
        Impairment(loss=0.30, duplicate=0.05, reorder=0.05, seed=3),
    ],
    ids=["clean", "5%-loss", "30%-loss"],
)
def test_every_message_arrives_exactly_once_and_in_order_at_every_member(
    impairment: Impairment,
    make_relay: Callable[..., UdpRelayServer],
    impair: ImpairFactory,
    clients: Callable[[str, tuple[str, int]], Client],
) -> None:
    relay = make_relay()
    network = impair(relay.address, impairment)
    names = ("alice", "bob", "carol")
    members = [clients(name, network.address) for name in names]
    # Joined over a clean path: everyone's transcript so far is known exactly.
    assert [shape(f) for f in take(members[0], 3)] == [
        ("welcome", "alice", ("alice",)),
        ("joined", "bob"),
        ("joined", "carol"),
    ]
    assert [shape(f) for f in take(members[1], 2)] == [
        ("welcome", "bob", ("alice", "bob")),
        ("joined", "carol"),
    ]
    assert [shape(f) for f in take(members[2], 1)] == [
        ("welcome", "carol", ("alice", "bob", "carol"))
    ]
    network.arm()
    texts = {name: [f"{name} {i}: привет, 世界 👋" for i in range(15)] for name in names}
    for i in range(15):
        for member, name in zip(members, names, strict=True):
            member.say(texts[name][i])
    transcripts = [take(member, 45) for member in members]
    network.arm(False)

    first = transcripts[0]
    assert all(isinstance(frame, Message) for frame in first), first
    for transcript in transcripts[1:]:
        assert transcript == first  # the same frames, in the same order, once each
    seqs = [frame.seq for frame in first if isinstance(frame, Message)]
    assert seqs == list(range(seqs[0], seqs[0] + 45))
    for name in names:
        assert [f.text for f in first if isinstance(f, Message) and f.sender == name] == texts[name]
    if impairment.loss:
        counters = network.stats()
        assert counters["up"]["dropped"] and counters["down"]["dropped"]  # type: ignore[index]
        # Drops can, by timing, hit only ACKs in one direction (a later ACK covers a
        # lost one, so nothing is resent there); across both directions some DATA was
        # lost and had to be resent.
        resent = relay.stats()["rudp_retransmitted"]
        resent += sum(member.stats()["up_retransmitted"] for member in members)
        assert resent > 0


def test_a_message_longer_than_a_datagram_arrives_whole_through_loss(
    make_relay: Callable[..., UdpRelayServer],
    impair: ImpairFactory,
    clients: Callable[[str, tuple[str, int]], Client],
) -> None:
    relay = make_relay()
    network = impair(relay.address, Impairment(loss=0.30, seed=11))
    alice = clients("alice", network.address)
    bob = clients("bob", network.address)
    take(alice, 2)
    take(bob, 1)
    network.arm()
    pangram = "Съешь же ещё этих мягких французских булок."
    long_texts = [" ".join([str(i)] + [pangram] * 88) for i in range(3)]
    assert len(encode_frame(Say(long_texts[0]))) > 7000  # six datagrams or more, each way
    for text in long_texts:
        alice.say(text)
    received = take(bob, 3)
    network.arm(False)
    assert [shape(frame) for frame in received] == [("message", "alice", t) for t in long_texts]


# --- the retransmission timer --------------------------------------------------------------


def test_the_rto_backs_off_during_a_blackhole_and_recovers_after_it(
    make_relay: Callable[..., UdpRelayServer],
    impair: ImpairFactory,
    clients: Callable[[str, tuple[str, int]], Client],
) -> None:
    relay = make_relay(heartbeat_interval=2.0)  # a dead peer only after 6 s of silence
    network = impair(relay.address, Impairment(loss=1.0, seed=1))
    alice = clients("alice", network.address)
    bob = clients("bob", network.address)
    take(alice, 2)
    take(bob, 1)
    alice.say("before")  # a round trip or two: the RTO is learnt, down to its floor
    assert [shape(f) for f in take(bob, 1)] == [("message", "alice", "before")]
    take(alice, 1)
    learnt = alice.stats()["up_rto_us"]
    assert learnt < 200_000

    network.arm()  # everything is lost, both ways
    alice.say("during the outage")
    wait_until(lambda: alice.stats()["up_timeouts"] >= 3, "three RTO expiries")
    backed_off = alice.stats()["up_rto_us"]
    assert backed_off >= 8 * learnt  # doubled at each expiry
    network.arm(False)

    assert [shape(f) for f in take(bob, 1)] == [("message", "alice", "during the outage")]
    assert [shape(f) for f in take(alice, 1)] == [("message", "alice", "during the outage")]
    wait_until(
        lambda: alice.stats()["up_acknowledged"] == 2, "the message acknowledged after the outage"
    )
    assert alice.stats()["up_rto_us"] < backed_off  # the first new ACK ends the backoff
    assert alice.stats()["up_retransmitted"] >= 3


# --- members that stop acknowledging ------------------------------------------------------


def raw_receive(sock: socket.socket, timeout: float) -> list[dg.Datagram]:
    """Every datagram arriving within ``timeout`` seconds."""
    datagrams = []
    end = time.monotonic() + timeout
    while (remaining := end - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            datagrams.append(dg.decode_datagram(sock.recv(2048)))
        except TimeoutError:
            break
    return datagrams


def test_a_member_that_goes_silent_times_out(
    make_relay: Callable[..., UdpRelayServer],
    clients: Callable[[str, tuple[str, int]], Client],
) -> None:
    relay = make_relay(heartbeat_interval=0.2)
    alice = clients("alice", relay.address)
    take(alice, 1)
    sock, accept = raw_join(relay.address, "zed", proto="rudp")
    with sock:
        # zed acknowledges its welcome, so nothing is in flight to it, then falls silent.
        receiver = Receiver(accept.first_seq)
        sock.settimeout(DEADLINE)
        while not isinstance(welcome := dg.decode_datagram(sock.recv(2048)), dg.Data):
            pass
        receiver.on_data(welcome, 0.0)
        ack = receiver.take_ack(0.0, force=True)
        assert ack is not None
        sock.send(ack)
        assert [shape(f) for f in take(alice, 2)] == [
            ("joined", "zed"),
            ("left", "zed", "timeout", ""),
        ]


def test_a_member_that_never_acknowledges_is_dropped_with_the_reason(
    make_relay: Callable[..., UdpRelayServer],
    clients: Callable[[str, tuple[str, int]], Client],
) -> None:
    relay = make_relay(heartbeat_interval=0.2)
    alice = clients("alice", relay.address)
    take(alice, 1)
    sock, _ = raw_join(relay.address, "zed", proto="rudp")
    with sock:
        # zed heartbeats (so its session hears it) but acknowledges nothing, not even
        # its welcome: after three heartbeat intervals its sender gives up.
        byes: list[dg.Datagram] = []
        end = time.monotonic() + DEADLINE
        while not byes and time.monotonic() < end:
            sock.send(dg.encode_ping(1, 1))
            byes = [d for d in raw_receive(sock, 0.1) if isinstance(d, dg.Bye)]
        assert byes == [dg.Bye("not acknowledging for 0.6 s")]
    assert [shape(f) for f in take(alice, 2)] == [
        ("joined", "zed"),
        ("left", "zed", "timeout", "not acknowledging for 0.6 s"),
    ]


def test_a_member_that_falls_behind_past_max_queue_is_dropped_as_too_slow(
    make_relay: Callable[..., UdpRelayServer],
    clients: Callable[[str, tuple[str, int]], Client],
) -> None:
    relay = make_relay(heartbeat_interval=2.0, max_queue=65536)
    alice = clients("alice", relay.address)
    take(alice, 1)
    sock, _ = raw_join(relay.address, "zed", proto="rudp")
    with sock:
        assert [shape(f) for f in take(alice, 1)] == [("joined", "zed")]
        texts = [f"{i} " + "x" * 900 for i in range(100)]  # 93 KB for zed's window of 64
        transcript: list[Frame] = []
        for text in texts:  # each once the last came back: alice keeps up, zed does not
            alice.say(text)
            while not any(isinstance(f, Message) and f.text == text for f in transcript[-2:]):
                transcript += take(alice, 1, quiet=0)
        transcript += take(alice, 101 - len(transcript))
    assert [shape(f) for f in transcript if not isinstance(f, Left)] == [
        ("message", "alice", text) for text in texts
    ]
    assert [shape(f) for f in transcript if isinstance(f, Left)] == [
        ("left", "zed", "dropped", "too slow")
    ]


# --- joining the wrong transport ------------------------------------------------------------


@pytest.mark.parametrize(
    ("relay_class", "proto", "refusal"),
    [
        (
            RudpRelayServer,
            Proto.udp,
            "this server speaks --proto rudp, not udp: join with netchat --proto rudp client",
        ),
        (
            UdpRelayServer,
            Proto.rudp,
            "this server speaks --proto udp, not rudp: join with netchat --proto udp client",
        ),
    ],
)
def test_a_client_of_the_other_udp_transport_is_refused_with_the_hint(
    make_relay: Callable[..., UdpRelayServer],
    relay_class: type[UdpRelayServer],
    proto: Proto,
    refusal: str,
) -> None:
    relay = make_relay(relay_class=relay_class)
    with pytest.raises(Rejected) as refused:
        Client.connect("alice", *relay.address, proto)
    assert (refused.value.code, str(refused.value)) == ("wrong-proto", refusal)
    assert relay.stats()["sessions"] == 0


@pytest.mark.parametrize(
    ("relay_class", "accepted"), [(RudpRelayServer, False), (UdpRelayServer, True)]
)
def test_a_hello_without_proto_is_an_older_udp_client(
    make_relay: Callable[..., UdpRelayServer], relay_class: type[UdpRelayServer], accepted: bool
) -> None:
    relay = make_relay(relay_class=relay_class)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(DEADLINE)
        sock.connect(relay.address)
        sock.send(dg.encode_hello(dg.NO_COOKIE))
        cookie = dg.decode_datagram(sock.recv(2048))
        assert isinstance(cookie, dg.Cookie)
        sock.send(dg.encode_hello(cookie.cookie, b'{"v":1,"t":"hello","name":"old"}\n'))
        answer = dg.decode_datagram(sock.recv(2048))
    if accepted:
        assert answer == dg.Accept(1, 5000, "old")
    else:
        assert answer == dg.Reject(
            b'{"v":1,"t":"error","code":"wrong-proto","text":"this server speaks --proto'
            b' rudp, not udp: join with netchat --proto rudp client","suggestion":""}\n'
        )


# --- leaving, shutting down, /stats ----------------------------------------------------


def test_quit_is_confirmed_and_the_others_are_told_once(
    make_relay: Callable[..., UdpRelayServer],
    clients: Callable[[str, tuple[str, int]], Client],
) -> None:
    relay = make_relay()
    alice = clients("alice", relay.address)
    bob = clients("bob", relay.address)
    take(alice, 2)
    take(bob, 1)
    bob.send_line("/quit see you")
    assert bob.wait(timeout=DEADLINE)  # the relay said BYE after what bob was owed
    assert [shape(f) for f in take(alice, 1)] == [("left", "bob", "quit", "see you")]
    wait_until(lambda: relay.stats()["sessions"] == 1, "bob's session gone from the relay")


def test_shutdown_reaches_every_member_and_ends_its_session(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    relay = make_relay()
    reasons: list[str | None] = []
    ended = threading.Event()
    events: list[Frame] = []

    def closed(reason: str | None) -> None:
        reasons.append(reason)
        ended.set()

    alice = Client("alice", *relay.address, Proto.rudp)
    alice.start(events.append, closed)
    try:
        wait_until(lambda: len(events) == 1, "alice's welcome")
        relay.shutdown("maintenance")
        assert ended.wait(DEADLINE)
        assert [shape(f) for f in events[1:]] == [("Shutdown", Shutdown("maintenance"))]
        assert reasons == ["the server shut down: maintenance"]
    finally:
        alice.close()


def test_stats_show_both_ends_of_each_direction(
    make_relay: Callable[..., UdpRelayServer],
    clients: Callable[[str, tuple[str, int]], Client],
) -> None:
    relay = make_relay(heartbeat_interval=0.2)
    alice = clients("alice", relay.address)
    take(alice, 1)
    alice.say("one")
    take(alice, 1)

    def reported() -> bool:
        stats = alice.stats()
        return stats["up_acknowledged"] == 1 and stats.get("down_server_acknowledged", 0) == 2

    wait_until(reported, "the message acknowledged, and the relay's report of it")
    stats = alice.stats()
    assert (stats["up_server_received"], stats["up_server_duplicates"]) == (1, 0)
    assert (stats["down_server_sent"], stats["down_received"]) == (2, 2)
    alice.send_line("/stats")
    [info] = take(alice, 1)
    assert isinstance(info, Info)
    first, up, down, note = info.text.split("\n")
    assert first.startswith("stats (rudp): 1 message sent, 2 received; ")
    assert up.startswith("you → server: 1 sent, 0 retransmitted, 1 acknowledged; RTO 50.0 ms,")
    assert up.endswith(
        "; window 0/64 in use; the server: 1 received, 0 duplicates discarded,"
        " 0 held back for ordering"
    )
    assert down.startswith("server → you: 2 sent, 0 retransmitted, 2 acknowledged; RTO ")
    assert down.endswith(
        "; you: 2 received, 0 duplicates discarded, 0 held back for ordering;"
        f" {plural(stats['down_acks_sent'], 'ACK')} sent"
    )
    assert note.startswith("(the server's figures are from its last heartbeat answer, ")


def _stats(**reported: int) -> dict[str, int]:
    return {
        "sent": 12,
        "received": 30,
        "bytes_in": 4096,
        "bytes_out": 900,
        "reconnects": 0,
        "up_sent": 12,
        "up_retransmitted": 2,
        "up_acknowledged": 11,
        "up_rto_us": 52_500,
        "up_srtt_us": 410,
        "up_window_in_use": 1,
        "up_window": 64,
        "up_backlog": 0,
        "down_received": 31,
        "down_duplicates": 1,
        "down_held_back": 3,
        "down_buffered": 0,
        "down_acks_sent": 17,
        **reported,
    }


def test_stats_text_names_every_counter_of_both_directions() -> None:
    stats = _stats(
        up_server_received=12,
        up_server_duplicates=2,
        up_server_held_back=0,
        down_server_sent=31,
        down_server_retransmitted=4,
        down_server_acknowledged=30,
        down_server_rto_us=200_000,
        down_server_srtt_us=0,
        down_server_window_in_use=1,
        down_server_window=64,
        server_report_age_ms=2140,
    )
    assert _reliable_stats_text(Proto.rudp, stats).split("\n") == [
        "stats (rudp): 12 messages sent, 30 received; 900 bytes out, 4.0 KiB in",
        "you → server: 12 sent, 2 retransmitted, 11 acknowledged; RTO 52.5 ms,"
        " smoothed RTT 0.41 ms; window 1/64 in use; the server: 12 received,"
        " 2 duplicates discarded, 0 held back for ordering",
        "server → you: 31 sent, 4 retransmitted, 30 acknowledged; RTO 200.0 ms,"
        " smoothed RTT not measured yet; window 1/64 in use; you: 31 received,"
        " 1 duplicate discarded, 3 held back for ordering; 17 ACKs sent",
        "(the server's figures are from its last heartbeat answer, 2.1 s ago)",
    ]


def test_stats_text_before_the_first_heartbeat_answer() -> None:
    assert _reliable_stats_text(Proto.rudp, _stats()).split("\n") == [
        "stats (rudp): 12 messages sent, 30 received; 900 bytes out, 4.0 KiB in",
        "you → server: 12 sent, 2 retransmitted, 11 acknowledged; RTO 52.5 ms,"
        " smoothed RTT 0.41 ms; window 1/64 in use",
        "server → you: 31 received, 1 duplicate discarded, 3 held back for ordering; 17 ACKs sent",
        "(the server's figures come with its first heartbeat answer)",
    ]


def test_a_transport_send_after_the_session_ended_is_refused(
    make_relay: Callable[..., UdpRelayServer],
) -> None:
    relay = make_relay()
    transport = RudpClientTransport(*relay.address)
    transport.connect()
    transport.send(Hello("alice"))
    end = time.monotonic() + DEADLINE
    while not isinstance(transport.receive(timeout=0.1), Welcome):
        assert time.monotonic() < end
    transport.close()
    with pytest.raises(ConnectionClosed):
        transport.send(Say("too late"))


# --- the lab's plain clients, on the rudp relay too ------------------------------------


def test_plain_datagram_clients_are_served_as_on_udp(
    make_relay: Callable[..., UdpRelayServer],
    clients: Callable[[str, tuple[str, int]], Client],
) -> None:
    relay = make_relay(accept_plain=True)
    alice = clients("alice", relay.address)
    take(alice, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as lab:
        lab.settimeout(DEADLINE)
        lab.sendto("zed: здравствуйте".encode(), relay.address)
        assert [shape(f) for f in take(alice, 2)] == [
            ("joined", "zed"),
            ("message", "zed", "здравствуйте"),
        ]
        alice.say("hi zed")
        lines = [lab.recv(2048).decode()[len("[12:00:00] ") :] for _ in range(3)]
    assert lines == [
        "-!- Welcome, zed! Online (2): alice, zed. Type /help for commands.\n",
        "<zed> здравствуйте\n",
        "<alice> hi zed\n",
    ]

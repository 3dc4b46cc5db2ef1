"""netchat's client against the lab's own servers: a raw TCP relay, a server with some
other greeting, a UDP relay. It must chat with them in plain lines and never leak its
JSON into their chat. Exact transcripts, Cyrillic included."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from netchat import Client, CommandError, Error, Frame, Proto
from netchat.errors import ForeignServer
from netchat.hints import failure_message
from netchat.plain_client import PlainChat, PlainLine
from netchat.transport.tcp_client import TcpClientTransport
from tests.labservers import WAIT, LabClient, LabUdpServer, RawRelay
from tests.wire import start_in_background

#: Short, so that tests against a silent relay do not wait the default 2 s each.
GREETING_TIMEOUT = 0.3


class Recorder:
    """Every event and the end of one session, with waits bounded by deadlines."""

    def __init__(self) -> None:
        self.events: list[Frame] = []
        self.closed: list[str | None] = []
        self.changed = threading.Condition()

    def on_event(self, frame: Frame) -> None:
        with self.changed:
            self.events.append(frame)
            self.changed.notify_all()

    def on_closed(self, reason: str | None) -> None:
        with self.changed:
            self.closed.append(reason)
            self.changed.notify_all()

    def transcript(self) -> list[tuple[str, str]]:
        """(kind, text) of every event: plain lines without their timestamp."""
        with self.changed:
            return [(type(f).__name__, getattr(f, "text", "")) for f in self.events]

    def wait_for(self, count: int) -> list[tuple[str, str]]:
        """The transcript once it has ``count`` events (no more arrive meanwhile)."""
        deadline = time.monotonic() + WAIT
        with self.changed:
            while len(self.events) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"only {self.events}"
                self.changed.wait(remaining)
        return self.transcript()


@pytest.fixture
def relay() -> Iterator[RawRelay]:
    server = RawRelay()
    yield server
    server.close()


@pytest.fixture
def started() -> Iterator[list[Client | PlainChat]]:
    made: list[Client | PlainChat] = []
    yield made
    for endpoint in made:
        endpoint.close()


def start(
    started: list[Client | PlainChat], address: tuple[str, int], **options: object
) -> tuple[Client, Recorder]:
    recorder = Recorder()
    options.setdefault("greeting_timeout", GREETING_TIMEOUT)
    client = Client("alice", *address, **options)  # type: ignore[arg-type]
    started.append(client)
    client.start(recorder.on_event, recorder.on_closed)
    return client, recorder


def switching_notice(address: tuple[str, int], name: str = "alice") -> tuple[str, str]:
    return (
        "Info",
        f"{address[0]}:{address[1]} does not speak netchat (it did not greet us as a netchat"
        f" server does); switching to plain-line mode: what you type is sent as '{name}: text'",
    )


# --- TCP: a raw relay that greets nobody ---------------------------------------------------


def test_client_joins_a_raw_relay_and_chats_in_plain_lines(
    relay: RawRelay, started: list[Client | PlainChat]
) -> None:
    bob = LabClient(relay.address)
    relay.wait_for_clients(1)
    alice, events = start(started, relay.address)
    relay.wait_for_clients(2)
    assert events.transcript() == [switching_notice(relay.address)]

    alice.send_line("Привет, bob! 👋")
    # bob's program receives exactly the text, with a name and a newline: no JSON hello.
    assert (
        bob.receive_until("alice: Привет, bob! 👋\n".encode())
        == "alice: Привет, bob! 👋\n".encode()
    )

    bob.send("bob: здравствуй, alice")  # a lab client: no newline, ever
    assert events.wait_for(3)[2] == ("PlainLine", "bob: здравствуй, alice")
    bob.send("bob: раз\nbob: два\n")
    assert events.wait_for(5) == [
        switching_notice(relay.address),
        ("PlainLine", "alice: Привет, bob! 👋"),  # what we said, shown as the relay shows it
        ("PlainLine", "bob: здравствуй, alice"),
        ("PlainLine", "bob: раз"),
        ("PlainLine", "bob: два"),
    ]
    assert relay.received[0] == "alice: Привет, bob! 👋\n".encode()
    assert not any(b"{" in chunk for chunk in relay.received)
    bob.close()


def test_commands_that_need_netchat_are_refused_not_sent(
    relay: RawRelay, started: list[Client | PlainChat]
) -> None:
    bob = LabClient(relay.address)
    alice, events = start(started, relay.address)
    relay.wait_for_clients(2)
    with pytest.raises(CommandError, match="/msg needs a netchat server"):
        alice.send_line("/msg bob a secret")
    with pytest.raises(CommandError, match="/who needs a netchat server"):
        alice.send_line("/who")
    alice.send_line("/nick алиса")
    alice.send_line("/me waves")
    alice.send_line("//slash")
    expected = "* алиса waves\nалиса: /slash\n".encode()
    assert bob.receive_until(expected) == expected
    assert events.wait_for(4) == [
        switching_notice(relay.address),
        ("Info", "you are now алиса: your lines are sent as 'алиса: text'"),
        ("PlainLine", "* алиса waves"),
        ("PlainLine", "алиса: /slash"),
    ]
    assert alice.name == "алиса"
    bob.close()


def test_stats_and_help_are_answered_locally(
    relay: RawRelay, started: list[Client | PlainChat]
) -> None:
    alice, events = start(started, relay.address)
    relay.wait_for_clients(1)
    alice.say("один")
    alice.send_line("/stats")
    alice.send_line("/help")
    transcript = events.wait_for(4)
    assert transcript[1] == ("PlainLine", "alice: один")
    assert re.fullmatch(
        r"stats \(plain tcp\): 1 line sent, 0 received; 16 bytes out, 0 bytes in;"
        r" round trip \d+\.\d\d ms",
        transcript[2][1],
    ), transcript[2]
    assert transcript[3][1].startswith("Plain-line mode: this server does not speak netchat")
    assert "/stats" in transcript[3][1]


def test_quit_ends_the_session_once_the_relay_closes(
    relay: RawRelay, started: list[Client | PlainChat]
) -> None:
    alice, events = start(started, relay.address)
    relay.wait_for_clients(1)
    alice.send_line("/quit")
    assert alice.wait(WAIT)
    assert events.closed == [None]
    relay.wait_for_clients(0)  # it saw our FIN and let go


def test_relay_going_away_ends_the_session_with_a_reason(
    relay: RawRelay, started: list[Client | PlainChat]
) -> None:
    alice, events = start(started, relay.address)
    relay.wait_for_clients(1)
    relay.close()
    assert alice.wait(WAIT)
    assert events.closed == ["server closed the connection"]


def test_a_character_split_across_chunks_is_shown_whole(relay: RawRelay) -> None:
    bob = LabClient(relay.address)
    events = Recorder()
    # The idle gap is long here, so the two chunks are surely one line.
    alice = PlainChat("alice", TcpClientTransport(*relay.address), idle_gap=1.0)
    alice.start(events.on_event, events.on_closed)
    try:
        relay.wait_for_clients(2)
        data = "bob: Ёжик".encode()
        bob.sock.sendall(data[:-1])  # cuts the last letter in two
        time.sleep(0.05)  # a second chunk, well within the idle gap
        bob.sock.sendall(data[-1:])
        assert events.wait_for(1) == [("PlainLine", "bob: Ёжик")]
    finally:
        alice.close()
        bob.close()
    assert events.closed == [None]


def test_forced_plain_mode_skips_the_wait_for_a_greeting(
    relay: RawRelay, started: list[Client | PlainChat]
) -> None:
    started_at = time.monotonic()
    alice, events = start(started, relay.address, plain=True, greeting_timeout=WAIT)
    assert time.monotonic() - started_at < WAIT  # it did not wait for a banner
    assert events.transcript() == [
        (
            "Info",
            f"plain-line mode: what you type is sent to {relay.address[0]}:{relay.address[1]}"
            " as 'alice: text'",
        )
    ]
    alice.say("hi")
    assert events.wait_for(2)[1] == ("PlainLine", "alice: hi")


# --- TCP: a server with a greeting of its own ---------------------------------------------


def test_another_programs_greeting_is_shown_and_not_answered(
    started: list[Client | PlainChat],
) -> None:
    relay = RawRelay(greeting="Добро пожаловать в чат Боба!\r\n".encode())
    try:
        started_at = time.monotonic()
        _, events = start(started, relay.address, greeting_timeout=WAIT)
        # A complete first line that is not netchat's banner decides at once.
        assert time.monotonic() - started_at < WAIT / 2
        assert events.wait_for(2) == [
            switching_notice(relay.address),
            ("PlainLine", "Добро пожаловать в чат Боба!"),
        ]
        relay.wait_for_clients(1)
        assert relay.received == []  # nothing was sent to it
    finally:
        relay.close()


# --- UDP: the lab's relay, with --plain ------------------------------------------------------


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    return sock


def test_plain_udp_client_talks_to_a_lab_udp_server(started: list[Client | PlainChat]) -> None:
    server = LabUdpServer()
    bob = udp_socket()
    try:
        bob.sendto(b"bob: hi all", server.address)  # bob's first datagram registers him
        server.wait_for_known(1)
        alice, events = start(started, server.address, proto=Proto.udp, plain=True)
        assert events.transcript() == [
            (
                "Info",
                f"plain-line mode: what you type is sent to udp://{server.address[0]}:"
                f"{server.address[1]} as 'alice: text'",
            )
        ]
        alice.send_line("Привет из netchat")
        data, _ = bob.recvfrom(2048)
        assert data == "alice: Привет из netchat".encode()  # one datagram, no newline
        server.wait_for_known(2)
        bob.sendto("bob: здравствуй".encode(), server.address)
        assert events.wait_for(3) == [
            events.transcript()[0],
            ("PlainLine", "alice: Привет из netchat"),
            ("PlainLine", "bob: здравствуй"),
        ]
        alice_address = server.known[1]
        assert server.from_(alice_address) == ["alice: Привет из netchat".encode()]
    finally:
        bob.close()
        server.close()


def test_plain_udp_client_says_once_when_nothing_listens(
    started: list[Client | PlainChat],
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        address = probe.getsockname()
    alice, events = start(started, address, proto=Proto.udp, plain=True)
    for _ in range(3):
        alice.say("anyone?")
    deadline = time.monotonic() + WAIT
    while not any(isinstance(f, Error) for f in list(events.events)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    errors = [f for f in events.events if isinstance(f, Error)]
    assert [e.text for e in errors] == [
        f"nothing answers at udp://127.0.0.1:{address[1]} (port unreachable);"
        " is the server running?"
    ]
    assert not alice.wait(0)  # the session goes on: the server may start later


def test_netchat_udp_client_recognises_a_lab_udp_server() -> None:
    server = LabUdpServer(echo=True)
    bob = udp_socket()
    client = Client("alice", *server.address, proto=Proto.udp)
    joiner, failure = start_in_background(client)
    try:
        server.wait_for_known(1)  # alice's cookie request reached it
        bob.sendto("bob: привет".encode(), server.address)
        joiner.join(WAIT)
        assert len(failure) == 1 and isinstance(failure[0], ForeignServer)
        where = f"udp://127.0.0.1:{server.address[1]}"
        assert failure_message(failure[0], (Proto.udp, *server.address)) == (
            f"{where} does not speak netchat (it sent 'bob: привет')"
            " — for a lab UDP server that is not netchat, add --plain"
        )
    finally:
        client.close()
        bob.close()
        server.close()


def test_nothing_but_the_text_reaches_a_lab_udp_server_in_plain_mode(
    started: list[Client | PlainChat],
) -> None:
    server = LabUdpServer()
    try:
        alice, _ = start(started, server.address, proto=Proto.udp, plain=True)
        alice.say("one")
        alice.send_line("/stats")
        alice.say("two")
        server.wait_for_known(1)
        deadline = time.monotonic() + WAIT
        while len(server.received) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert [data for _, data in server.received] == [b"alice: one", b"alice: two"]
    finally:
        server.close()


def test_plain_line_events_carry_the_time_they_arrived(
    relay: RawRelay, started: list[Client | PlainChat]
) -> None:
    before = time.time()
    alice, events = start(started, relay.address)
    alice.say("x")
    events.wait_for(2)
    line = events.events[1]
    assert isinstance(line, PlainLine)
    assert before <= line.ts <= time.time()

"""The client library and its TCP transport, against real servers on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import netchat
from netchat import (
    Client,
    CommandError,
    ConnectError,
    ConnectionClosed,
    Frame,
    Info,
    Joined,
    Message,
    NetchatError,
    PrivateMessage,
    Proto,
    Rejected,
    RemoteProtocolError,
    Renamed,
    Welcome,
    encode_frame,
)
from netchat.protocol.banner import banner_line
from netchat.server import Server
from netchat.transport.tcp_client import TcpClientTransport, classify_greeting
from tests.wire import start_in_background

WAIT = 10.0  # generous; a passing wait returns as soon as its event arrives

ServerFactory = Callable[..., Server]


def wait_for(client: Client, predicate: Callable[[Frame], bool], timeout: float = WAIT) -> Frame:
    """The first queued event matching ``predicate`` (earlier ones are dropped)."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        frame = client.next_event(timeout=remaining)
        if frame is not None and predicate(frame):
            return frame
    raise AssertionError("expected event did not arrive in time")


def message_with(text: str) -> Callable[[Frame], bool]:
    return lambda frame: isinstance(frame, (Message, PrivateMessage)) and frame.text == text


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Recorder:
    """on_event/on_closed handlers that remember what they were called with."""

    def __init__(self) -> None:
        self.events: list[Frame] = []
        self.closed: list[str | None] = []
        self.closed_event = threading.Event()

    def on_event(self, frame: Frame) -> None:
        self.events.append(frame)

    def on_closed(self, reason: str | None) -> None:
        self.closed.append(reason)
        self.closed_event.set()


@pytest.fixture
def address(server: Server) -> tuple[str, int]:
    return server.address


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Clients to close after the test, whatever happens."""
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def join(clients: list[Client], name: str, address: tuple[str, int], **options: Any) -> Client:
    client = Client.connect(name, *address, **options)
    clients.append(client)
    return client


# --- joining -------------------------------------------------------------------------


def test_join_yields_welcome_first(address: tuple[str, int], clients: list[Client]) -> None:
    alice = join(clients, "alice", address)
    welcome = alice.next_event(WAIT)
    assert isinstance(welcome, Welcome)
    assert welcome.name == "alice" and "alice" in welcome.users
    assert alice.name == "alice"


def test_name_taken_is_rejected_with_suggestion(
    address: tuple[str, int], clients: list[Client]
) -> None:
    join(clients, "alice", address)
    with pytest.raises(Rejected) as caught:
        Client.connect("Alice", *address)
    assert caught.value.code == "name-taken"
    assert caught.value.suggestion == "Alice2"
    assert "taken" in str(caught.value)


def test_bad_name_is_rejected(address: tuple[str, int]) -> None:
    with pytest.raises(Rejected) as caught:
        Client.connect("no spaces please", *address)
    assert caught.value.code == "bad-name"
    assert caught.value.suggestion


def test_connection_refused_is_connect_error() -> None:
    port = free_port()
    with pytest.raises(ConnectError) as caught:
        Client.connect("alice", "127.0.0.1", port)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert str(caught.value) == f"cannot connect to 127.0.0.1:{port}: connection refused"


def test_a_server_that_greets_but_never_welcomes_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        greeted: list[socket.socket] = []

        def greet() -> None:
            conn, _ = listener.accept()
            greeted.append(conn)
            conn.sendall(banner_line("mute"))

        threading.Thread(target=greet, daemon=True).start()
        client = Client("alice", *listener.getsockname(), welcome_timeout=0.3)
        with pytest.raises(ConnectError, match="no welcome"):
            client.start(lambda frame: None, lambda reason: None)
        for conn in greeted:
            conn.close()


# --- chatting ------------------------------------------------------------------------


def test_messages_reach_everyone_intact(address: tuple[str, int], clients: list[Client]) -> None:
    alice = join(clients, "alice", address)
    bob = join(clients, "bob", address)
    text = "Привет, мир! 👩‍💻🎉 こんにちは"
    alice.say(text)
    for client in (alice, bob):
        frame = wait_for(client, message_with(text))
        assert isinstance(frame, Message) and frame.sender == "alice"


def test_private_message_reaches_only_its_target(
    address: tuple[str, int], clients: list[Client]
) -> None:
    alice = join(clients, "alice", address)
    bob = join(clients, "bob", address)
    carol = join(clients, "carol", address)
    alice.send_line("/msg bob the secret")
    alice.say("public after")
    frame = wait_for(bob, message_with("the secret"))
    assert isinstance(frame, PrivateMessage) and frame.to == "bob"
    wait_for(alice, message_with("the secret"))  # echoed to the sender
    # carol sees the later public message but never the private one before it
    seen: list[Frame] = []

    def remember(frame: Frame) -> bool:
        seen.append(frame)
        return message_with("public after")(frame)

    wait_for(carol, remember)
    assert not any(isinstance(f, PrivateMessage) for f in seen)


def test_say_sends_slash_lines_verbatim(address: tuple[str, int], clients: list[Client]) -> None:
    alice = join(clients, "alice", address)
    alice.say("/not a command")
    wait_for(alice, message_with("/not a command"))


def test_bad_command_raises_locally(address: tuple[str, int], clients: list[Client]) -> None:
    alice = join(clients, "alice", address)
    with pytest.raises(CommandError):
        alice.send_line("/bogus")
    with pytest.raises(CommandError):
        alice.send_line("/msg bob")


def test_stats_is_answered_locally_in_words(
    address: tuple[str, int], clients: list[Client]
) -> None:
    alice = join(clients, "alice", address)
    alice.say("one")
    wait_for(alice, message_with("one"))
    alice.send_line("/stats")
    info = wait_for(alice, lambda f: isinstance(f, Info))
    assert isinstance(info, Info)
    # What a user understands, no internal counter names: the welcome and the echo
    # were received, one message sent, TCP loses, duplicates and reorders nothing.
    assert re.fullmatch(
        r"stats \(tcp\): 1 message sent, 2 received; 0 lost, 0 duplicates, 0 reordered;"
        r" \d+ bytes out, \d+ bytes in; round trip \d+\.\d\d ms",
        info.text,
    ), info.text
    assert "=" not in info.text and "skipped" not in info.text
    stats = alice.stats()
    assert (stats["sent"], stats["received"], stats["lost"], stats["reconnects"]) == (1, 2, 0, 0)
    assert stats["bytes_in"] > 0 and stats["bytes_out"] > 0 and stats["rtt_us"] > 0


def test_help_comes_from_the_server(address: tuple[str, int], clients: list[Client]) -> None:
    alice = join(clients, "alice", address)
    alice.send_line("/help")
    info = wait_for(alice, lambda f: isinstance(f, Info))
    assert isinstance(info, Info) and "/msg" in info.text
    assert "  /stats               what your connection has sent, received and lost" in info.text


def test_name_follows_nick(address: tuple[str, int], clients: list[Client]) -> None:
    alice = join(clients, "alice", address)
    bob = join(clients, "bob", address)
    alice.send_line("/nick alicia")
    wait_for(alice, lambda f: isinstance(f, Renamed))
    assert alice.name == "alicia"
    renamed = wait_for(bob, lambda f: isinstance(f, Renamed))
    assert isinstance(renamed, Renamed) and (renamed.old, renamed.new) == ("alice", "alicia")
    assert bob.name == "bob"  # someone else's rename is not ours


def test_pings_are_answered(make_server: ServerFactory, clients: list[Client]) -> None:
    server = make_server(ping_interval=0.2)
    alice = join(clients, "alice", server.address)
    # Idle through many ping intervals; a client that did not answer would be
    # dropped after three of them.
    deadline = time.monotonic() + 1.5
    while (remaining := deadline - time.monotonic()) > 0:
        alice.next_event(timeout=remaining)
    alice.say("still here")
    wait_for(alice, message_with("still here"))


def test_broken_handler_does_not_kill_the_receiver(
    address: tuple[str, int], clients: list[Client]
) -> None:
    calls: list[Frame] = []

    def flaky(frame: Frame) -> None:
        calls.append(frame)
        if len(calls) == 1:
            raise RuntimeError("handler bug")

    alice = Client("alice", *address)
    clients.append(alice)
    alice.start(flaky, lambda reason: None)
    alice.say("after the bug")
    deadline = time.monotonic() + WAIT
    while not any(message_with("after the bug")(f) for f in list(calls)):
        assert time.monotonic() < deadline
        time.sleep(0.01)


# --- ending ----------------------------------------------------------------------------


def test_close_ends_with_none_once(address: tuple[str, int]) -> None:
    recorder = Recorder()
    alice = Client("alice", *address)
    alice.start(recorder.on_event, recorder.on_closed)
    alice.close()
    assert alice.wait(WAIT)
    alice.close()  # idempotent
    assert recorder.closed == [None]


def test_quit_command_ends_with_none(address: tuple[str, int], clients: list[Client]) -> None:
    recorder = Recorder()
    alice = Client("alice", *address)
    clients.append(alice)
    bob = join(clients, "bob", address)
    alice.start(recorder.on_event, recorder.on_closed)
    alice.send_line("/quit bye now")
    assert alice.wait(WAIT)
    assert recorder.closed == [None]
    left = wait_for(bob, lambda f: getattr(f, "name", "") == "alice" and f.TYPE == "left")
    assert getattr(left, "detail", "") == "bye now"
    with pytest.raises(ConnectionClosed):
        alice.say("too late")


def test_server_shutdown_gives_a_reason(make_server: ServerFactory) -> None:
    server = make_server()
    recorder = Recorder()
    alice = Client("alice", *server.address)
    alice.start(recorder.on_event, recorder.on_closed)
    server.shutdown("maintenance")
    assert alice.wait(WAIT)
    assert len(recorder.closed) == 1
    assert recorder.closed[0] == "the server shut down: maintenance"
    assert any(f.TYPE == "shutdown" for f in recorder.events)
    alice.close()
    assert len(recorder.closed) == 1


def test_vanished_server_gives_a_reason() -> None:
    with socket.socket() as fake:
        fake.bind(("127.0.0.1", 0))
        fake.listen()
        recorder = Recorder()
        alice = Client("alice", *fake.getsockname())
        accepted: list[socket.socket] = []

        def welcome_then_vanish() -> None:
            conn, _ = fake.accept()
            accepted.append(conn)
            conn.sendall(banner_line("fake") + encode_frame(Welcome("alice")))
            conn.settimeout(WAIT)
            conn.recv(65536)  # the hello; closing with it unread would reset, not close

        greeter = threading.Thread(target=welcome_then_vanish, daemon=True)
        greeter.start()
        alice.start(recorder.on_event, recorder.on_closed)
        greeter.join(WAIT)
        accepted[0].close()
        assert alice.wait(WAIT)
        assert recorder.closed == ["server closed the connection"]
        alice.close()


def test_next_event_after_the_end_raises(make_server: ServerFactory) -> None:
    server = make_server()
    with Client.connect("alice", *server.address) as alice:
        server.shutdown("bye")
        with pytest.raises(ConnectionClosed, match="shut down"):
            while True:
                alice.next_event(WAIT)
        with pytest.raises(ConnectionClosed):  # and keeps saying so
            alice.next_event(0)


def test_next_event_needs_connect(address: tuple[str, int]) -> None:
    with pytest.raises(NetchatError, match="connect"):
        Client("alice", *address).next_event(0)


def test_reconnect_rejoins_under_the_same_name(make_server: ServerFactory) -> None:
    first = make_server()
    host, port = first.address
    with Client.connect(
        "alice", host, port, reconnect=True, backoff=0.05, max_backoff=0.2
    ) as alice:
        first.shutdown("restart")
        wait_for(alice, lambda f: isinstance(f, Info) and "reconnecting" in f.text)
        second = make_server(port=port)  # the server comes back on the same port
        welcome = wait_for(alice, lambda f: isinstance(f, Welcome))
        assert isinstance(welcome, Welcome) and welcome.name == "alice"
        assert alice.stats()["reconnects"] == 1
        alice.send_line("/stats")
        stats = wait_for(alice, lambda f: isinstance(f, Info) and f.text.startswith("stats"))
        assert isinstance(stats, Info) and stats.text.endswith("; reconnected 1 time")
        alice.say("back again")
        wait_for(alice, message_with("back again"))
        assert second.hub.names() == ("alice",)


def test_reconnect_gives_up_after_its_attempts(make_server: ServerFactory) -> None:
    server = make_server()
    recorder = Recorder()
    alice = Client("alice", *server.address, reconnect=True, reconnect_attempts=2, backoff=0.01)
    alice.start(recorder.on_event, recorder.on_closed)
    server.shutdown("gone for good")
    assert alice.wait(WAIT)
    assert recorder.closed and recorder.closed[0] is not None
    infos = [f.text for f in recorder.events if isinstance(f, Info)]
    assert any("giving up after 2" in text for text in infos)
    alice.close()


# --- the TCP transport on its own --------------------------------------------------------


@pytest.fixture
def raw_server() -> Iterator[tuple[TcpClientTransport, socket.socket]]:
    """A connected transport and the server end of its socket."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        transport = TcpClientTransport(*listener.getsockname())
        transport.connect()
        peer, _ = listener.accept()
        with peer:
            yield transport, peer
        transport.close()


def test_transport_skips_text_only_before_the_first_frame(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, peer = raw_server
    peer.sendall(b"Hello nc user\r\nType your name:\r\n" + encode_frame(Welcome("a")))
    assert transport.receive(WAIT) == Welcome("a")
    peer.sendall(b"not json\n" + encode_frame(Info("next")))
    with pytest.raises(RemoteProtocolError):
        transport.receive(WAIT)
    assert transport.receive(WAIT) == Info("next")  # still usable


def test_transport_reassembles_split_frames(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, peer = raw_server
    data = encode_frame(Info("Ёлка 🎄")) * 2
    for i in range(len(data)):  # one byte at a time, cutting UTF-8 sequences
        peer.sendall(data[i : i + 1])
    assert transport.receive(WAIT) == Info("Ёлка 🎄")
    assert transport.receive(WAIT) == Info("Ёлка 🎄")
    assert transport.stats()["bytes_in"] == len(data)


def test_transport_receive_timeout_returns_none(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, _ = raw_server
    assert transport.receive(timeout=0.05) is None


def test_transport_close_wakes_a_blocked_receive(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, _ = raw_server
    outcome: list[BaseException] = []

    def receive() -> None:
        try:
            transport.receive()
        except BaseException as exc:
            outcome.append(exc)

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    time.sleep(0.05)  # let it block (the test passes either way)
    transport.close()
    receiver.join(WAIT)
    assert not receiver.is_alive()
    assert isinstance(outcome[0], ConnectionClosed)
    with pytest.raises(ConnectionClosed):
        transport.send(Info("x"))


def test_transport_counts_what_it_sends(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, peer = raw_server
    transport.send(Info("one"))
    transport.send(Info("two"))
    expected = encode_frame(Info("one")) + encode_frame(Info("two"))
    received = b""
    peer.settimeout(WAIT)
    while len(received) < len(expected):
        received += peer.recv(65536)
    assert received == expected
    assert transport.stats()["bytes_out"] == len(expected)


def test_transport_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with listener:
        listener.listen()
        transport = TcpClientTransport("::1", listener.getsockname()[1])
        transport.connect()
        assert transport.address.startswith("[::1]:")
        transport.close()


def test_package_exports() -> None:
    assert netchat.Client is Client
    assert netchat.Server is Server
    for name in ("Rejected", "ConnectError", "Message", "Welcome", "ServerConfig", "Proto"):
        assert name in netchat.__all__


def test_close_while_reconnecting_ends_with_none(make_server: ServerFactory) -> None:
    server = make_server()
    recorder = Recorder()
    alice = Client("alice", *server.address, reconnect=True, backoff=30.0)
    alice.start(recorder.on_event, recorder.on_closed)
    server.shutdown("restart")
    deadline = time.monotonic() + WAIT
    while not any(isinstance(f, Info) and "reconnecting" in f.text for f in list(recorder.events)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    alice.close()  # interrupts the 15-30 s backoff at once
    assert time.monotonic() - started < 1.0
    assert alice.wait(0)
    assert recorder.closed == [None]
    assert receiver_threads() == []


def test_a_full_server_refuses_with_its_reason(make_server: ServerFactory) -> None:
    server = make_server(max_clients=1)
    with Client.connect("first", *server.address), pytest.raises(Rejected) as refused:
        Client.connect("second", *server.address)
    assert refused.value.code == "refused"
    assert "server full (at most 1 user)" in str(refused.value)


def test_events_stops_at_its_bounds_and_raises_when_the_session_ends(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    with Client.connect("bot", *server.address) as bot, Client.connect("alice", *server.address):
        welcome, joined = list(bot.events(max_events=2))
        assert isinstance(welcome, Welcome) and isinstance(joined, Joined)
        started = time.monotonic()
        assert list(bot.events(duration=0.2)) == []  # nothing more was said
        assert time.monotonic() - started >= 0.2
        server.shutdown("bye")
        with pytest.raises(ConnectionClosed):
            for _ in bot.events(duration=WAIT):
                pass


# --- close() racing a reconnect (issue 10, defect 3) ----------------------------------------


class ScriptedServer:
    """A netchat look-alike on 127.0.0.1: greets, reads the hello, then does what the
    test tells it. ``listen(0)`` so that a test can fill its backlog."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.address: tuple[str, int] = self.listener.getsockname()
        self.connections: list[socket.socket] = []

    def accept_and_greet(self) -> socket.socket:
        """Accept one connection, send the banner, read the hello (bounded)."""
        self.listener.settimeout(WAIT)
        conn, _ = self.listener.accept()
        self.connections.append(conn)
        conn.settimeout(WAIT)
        conn.sendall(banner_line("scripted"))
        hello = b""
        while not hello.endswith(b"\n"):
            chunk = conn.recv(4096)
            assert chunk, "the client left before saying hello"
            hello += chunk
        assert b'"t":"hello"' in hello
        return conn

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self.listener.close()


def closed_by_peer(conn: socket.socket) -> bool:
    """True once the other end closed ``conn`` (bounded wait)."""
    conn.settimeout(WAIT)
    try:
        while conn.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def receiver_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("netchat-client-")]


def wait_for_info(recorder: Recorder, words: str) -> None:
    deadline = time.monotonic() + WAIT
    while not any(isinstance(f, Info) and words in f.text for f in list(recorder.events)):
        assert time.monotonic() < deadline, recorder.events
        time.sleep(0.005)


def test_close_while_a_rejoin_waits_for_its_welcome_is_prompt_and_leaks_nothing() -> None:
    server = ScriptedServer()
    recorder = Recorder()
    alice = Client("alice", *server.address, reconnect=True, backoff=0.01, max_backoff=0.01)
    try:
        starter = threading.Thread(target=alice.start, args=(recorder.on_event, recorder.on_closed))
        starter.start()
        first = server.accept_and_greet()
        first.sendall(encode_frame(Welcome("alice", ("alice",))))
        starter.join(WAIT)
        first.close()  # the connection drops: the client rejoins
        second = server.accept_and_greet()  # ... and now waits for a welcome that never comes
        started = time.monotonic()
        alice.close()
        assert time.monotonic() - started < 1.0
        assert recorder.closed == [None]
        assert alice.wait(0)
        assert closed_by_peer(second)  # the new connection was closed, not left behind
        assert receiver_threads() == []
    finally:
        alice.close()
        server.close()


def test_close_during_a_rejoins_tcp_handshake_is_prompt() -> None:
    server = ScriptedServer()
    recorder = Recorder()
    alice = Client("alice", *server.address, reconnect=True, backoff=0.0, max_backoff=0.0)
    fillers: list[socket.socket] = []
    try:
        starter = threading.Thread(target=alice.start, args=(recorder.on_event, recorder.on_closed))
        starter.start()
        first = server.accept_and_greet()
        first.sendall(encode_frame(Welcome("alice", ("alice",))))
        starter.join(WAIT)
        # Fill the listener's backlog: the kernel now drops the rejoin's SYN, so its
        # connect() hangs as it would towards a machine that went off the network.
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(server.address)
            fillers.append(filler)
        first.close()
        wait_for_info(recorder, "reconnecting in 0.0 s")
        started = time.monotonic()
        alice.close()
        assert time.monotonic() - started < 1.0
        assert recorder.closed == [None]
        assert receiver_threads() == []
    finally:
        alice.close()
        for filler in fillers:
            filler.close()
        server.close()


def test_close_during_the_first_join_aborts_it() -> None:
    server = ScriptedServer()
    alice = Client("alice", *server.address)
    joiner, failure = start_in_background(alice)
    try:
        conn = server.accept_and_greet()  # the welcome never comes
        started = time.monotonic()
        alice.close()
        joiner.join(WAIT)
        assert time.monotonic() - started < 1.0
        assert [type(exc) for exc in failure] == [ConnectionClosed]
        assert closed_by_peer(conn)
    finally:
        server.close()


def test_close_during_a_udp_join_aborts_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, so no "port unreachable": it just never answers
        host, port = silent.getsockname()
        alice = Client("alice", host, port, proto=Proto.udp)
        joiner, failure = start_in_background(alice)
        silent.settimeout(WAIT)
        silent.recv(2048)  # its first cookie request: the join is under way
        started = time.monotonic()
        alice.close()
        joiner.join(WAIT)
        assert time.monotonic() - started < 1.0
        assert [type(exc) for exc in failure] == [ConnectionClosed]


# --- the greeting: netchat, a refusal, or a foreign server -----------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "undecided"),
        (b"netc", "undecided"),
        (b"netchat/1 ready: welcome", "undecided"),
        (b"netchat/1 ready: welcome to x!\r\n", "netchat"),
        (b"netchat/1\n{", "netchat"),
        (b"! server full\r\n", "refusal"),
        (b"!", "undecided"),
        (b"alice: hi", "foreign"),
        (b"Welcome to my chat\n", "foreign"),
        (b"netchat is great\n", "foreign"),
        ("Привет".encode(), "foreign"),
        (b"n" + b"x" * 5000, "foreign"),
    ],
)
def test_classify_greeting(data: bytes, kind: str) -> None:
    assert classify_greeting(data) == kind


def test_read_greeting_consumes_the_banner_and_keeps_what_follows(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, peer = raw_server
    peer.sendall(banner_line("x") + encode_frame(Info("right after")))
    greeting = transport.read_greeting(WAIT)
    assert greeting.netchat and greeting.version == 1
    assert transport.receive(WAIT) == Info("right after")


def test_read_greeting_hands_back_a_foreign_servers_bytes(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, peer = raw_server
    peer.sendall("bob: привет".encode())
    greeting = transport.read_greeting(WAIT)
    assert not greeting.netchat and greeting.data == "bob: привет".encode()


def test_read_greeting_of_a_silent_server_times_out_as_foreign(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, _ = raw_server
    assert transport.read_greeting(0.05).data == b""


def test_read_greeting_refuses_another_protocol_version(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, peer = raw_server
    peer.sendall(b"netchat/2 ready\r\n")
    with pytest.raises(ConnectError, match="protocol version 2; this client speaks version 1"):
        transport.read_greeting(WAIT)


def test_read_greeting_reports_a_refusal(
    raw_server: tuple[TcpClientTransport, socket.socket],
) -> None:
    transport, peer = raw_server
    peer.sendall(b"! too many connections from 127.0.0.1 (at most 1)\r\n")
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(Rejected, match="too many connections") as refused:
        transport.read_greeting(WAIT)
    assert refused.value.code == "refused"

"""The TCP server end to end: real sockets on 127.0.0.1, plain and structured clients."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from netchat.protocol.frames import (
    Error,
    Hello,
    Joined,
    Left,
    Message,
    Ping,
    PrivateMessage,
    Say,
    Shutdown,
    Welcome,
)
from tests.conftest import ServerFactory
from tests.wire import WAIT, FrameClient, LineClient, frame_client, plain_client


def test_plain_and_structured_clients_share_one_chat(make_server: ServerFactory) -> None:
    address = make_server().address
    alice = plain_client(address, "alice")
    bob = frame_client(address, "bob")
    carol = plain_client(address, "Карина")
    alice.expect(r"^\[..:..:..\] -!- bob joined$")
    alice.expect(r"^\[..:..:..\] -!- Карина joined$")

    carol.send_line("привет всем 👋🏽 — 你好")
    for plain in (alice, carol):
        plain.expect(r"^\[\d\d:\d\d:\d\d\] <Карина> привет всем 👋🏽 — 你好$")
    message = bob.next_frame(Message)
    assert isinstance(message, Message)
    assert (message.sender, message.text) == ("Карина", "привет всем 👋🏽 — 你好")

    bob.send_frame(Say("hi from bob"))
    alice.expect(r"<bob> hi from bob$")
    carol.expect(r"<bob> hi from bob$")


def test_every_member_sees_the_same_order_with_increasing_seq(make_server: ServerFactory) -> None:
    address = make_server(rate_limit=0).address
    clients = [frame_client(address, f"u{i}") for i in range(4)]

    def chatter(client: FrameClient, index: int) -> None:
        for n in range(25):
            client.send_frame(Say(f"{index}-{n}"))

    threads = [threading.Thread(target=chatter, args=(c, i)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    orders = []
    for client in clients:
        received = [client.next_frame(Message) for _ in range(100)]
        seqs = [m.seq for m in received if isinstance(m, Message)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 100
        orders.append([m.text for m in received if isinstance(m, Message)])
        # each sender's own messages stay in the order it sent them
        for index in range(4):
            mine = [t for t in orders[-1] if t.startswith(f"{index}-")]
            assert mine == [f"{index}-{n}" for n in range(25)]
    assert all(order == orders[0] for order in orders)


def test_sender_name_is_the_servers_record(make_server: ServerFactory) -> None:
    address = make_server().address
    alice = plain_client(address, "alice")
    carol = plain_client(address, "carol")
    carol.send_line("alice: I owe carol 100 euros")
    assert alice.expect("owe carol").endswith("<carol> alice: I owe carol 100 euros")
    bob = frame_client(address, "bob")
    bob.send_json({"v": 1, "t": "say", "text": "hi", "sender": "alice"})  # forged field is ignored
    assert alice.expect(r"> hi$").endswith("<bob> hi")


def test_control_characters_and_escapes_never_reach_other_terminals(
    make_server: ServerFactory,
) -> None:
    address = make_server().address
    alice = plain_client(address, "alice")
    mallory = frame_client(address, "mallory")
    mallory.send_frame(
        Say("x\n[12:00:00] <alice> forged\x1b[2J\x1b]0;owned\x07\u202eevil\r\x07end")
    )
    line = alice.expect(r"<mallory>")
    assert line.endswith("<mallory> x [12:00:00] <alice> forgedevil end")
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in line)
    assert all(not extra.startswith("[12:00:00] <alice>") for extra in alice.collect(0.3))


def test_private_messages_reach_only_their_target(make_server: ServerFactory) -> None:
    address = make_server().address
    alice = plain_client(address, "alice")
    bob = frame_client(address, "bob")
    eve = plain_client(address, "eve")
    alice.send_line("/msg bob the password is swordfish")
    private = bob.next_frame(PrivateMessage)
    assert isinstance(private, PrivateMessage)
    assert (private.sender, private.to, private.text) == (
        "alice",
        "bob",
        "the password is swordfish",
    )
    alice.expect(r"<alice -> bob> the password is swordfish$")  # the sender's own echo
    alice.send_line("public now")
    seen_by_eve = []
    seen_by_eve.append(eve.expect("public now"))
    seen_by_eve += eve.collect(0.3)
    assert not any("swordfish" in line for line in eve.lines + seen_by_eve)
    alice.send_line("/msg nobody hello")
    alice.expect(r"^\[..:..:..\] ! no user named 'nobody'")


def test_taken_and_invalid_names_get_an_error_and_a_suggestion(make_server: ServerFactory) -> None:
    address = make_server().address
    alice = plain_client(address, "alice")
    second = LineClient(address)
    second.expect("Type your name")
    second.send_line("ALICE")  # names are unique regardless of case
    second.expect(r"^\[..:..:..\] ! the name 'ALICE' is taken; try 'ALICE2'")
    second.send_line("bad name!")
    second.expect(r"^\[..:..:..\] ! a name may contain only")
    second.send_line("alice2")
    second.expect(r"Welcome, alice2!")

    structured = FrameClient(address)
    structured.send_frame(Hello("alice"))
    error = structured.next_frame(Error)
    assert isinstance(error, Error)
    assert (error.code, error.suggestion) == ("name-taken", "alice3")
    alice.close()


def test_commands_from_a_plain_client(make_server: ServerFactory) -> None:
    address = make_server().address
    alice = plain_client(address, "alice")
    bob = plain_client(address, "bob")
    alice.send_line("/who")
    alice.expect(r"^\[..:..:..\] -!- Online \(2\): alice, bob$")
    alice.send_line("/me waves")
    bob.expect(r"^\[\d\d:\d\d:\d\d\] \* alice waves$")
    alice.send_line("/nick alicia")
    bob.expect(r"^\[..:..:..\] -!- alice is now known as alicia$")
    bob.send_line("/nick alicia")
    bob.expect(r"^\[..:..:..\] ! the name 'alicia' is taken")
    bob.send_line("//slash at the start")
    alice.expect(r"<bob> /slash at the start$")
    bob.send_line("/frobnicate")
    bob.expect(r"^\[..:..:..\] ! unknown command /frobnicate")
    bob.send_line("/help")
    bob.expect(r"/msg NAME TEXT")
    bob.send_line("/quit see you")
    alice.expect(r"^\[..:..:..\] -!- bob left: see you$")
    assert bob.wait_closed()


def test_disconnects_are_announced(make_server: ServerFactory) -> None:
    address = make_server().address
    alice = plain_client(address, "alice")
    bob = plain_client(address, "bob")
    carol = frame_client(address, "carol")
    bob.close()
    alice.expect(r"^\[..:..:..\] -!- bob left$")
    carol.reset()
    alice.expect(r"^\[..:..:..\] -!- carol left \(connection lost\)$")
    alice.send_line("still here")
    alice.expect("<alice> still here")


def test_bad_input_gets_an_error_and_the_connection_survives(make_server: ServerFactory) -> None:
    address = make_server().address
    plain = plain_client(address, "plain")
    structured = frame_client(address, "structured")

    plain.send(b"caf\xe9 in latin-1\n")
    plain.expect(r"^\[..:..:..\] ! line dropped: not valid UTF-8")
    plain.send(b"x" * 70_000 + b"\n")
    plain.expect(r"^\[..:..:..\] ! line dropped: longer than 65536 bytes")

    for bad in (
        b"{not json",
        b"[1,2]",
        b'{"v":9,"t":"say","text":"x"}',
        b'{"v":1,"t":"zap"}',
        b'{"v":1,"t":"say"}',
    ):
        structured.send(bad + b"\n")
        error = structured.next_frame(Error)
        assert isinstance(error, Error) and error.code in {"malformed", "version", "unknown-type"}
    structured.send(b'{"v":1,"t":"say","text":"' + b"y" * 70_000 + b'"}\n')
    error = structured.next_frame(Error)
    assert isinstance(error, Error) and error.code == "too-large"
    structured.send_json({"v": 1, "t": "welcome", "name": "x"})
    error = structured.next_frame(Error)
    assert isinstance(error, Error) and error.code == "unexpected"

    plain.send_line("still fine")
    message = structured.next_frame(Message)
    assert isinstance(message, Message) and message.text == "still fine"


def test_a_line_that_never_ends_does_not_grow_memory(make_server: ServerFactory) -> None:
    address = make_server().address
    dripper = plain_client(address, "dripper")
    watcher = plain_client(address, "watcher")
    for _ in range(40):  # 40 x 64 KiB = 2.5 MiB with no newline
        dripper.send(b"z" * 65536)
    dripper.expect(r"^\[..:..:..\] ! line dropped: longer than")
    dripper.send(b"\nnormal again\n")
    watcher.expect(r"<dripper> normal again$")


def test_a_stalled_reader_does_not_delay_others_and_is_dropped(make_server: ServerFactory) -> None:
    address = make_server(rate_limit=0, max_queue=256 * 1024).address
    stalled = FrameClient.__new__(FrameClient)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(address)
    LineClient.__init__(stalled, address)  # a second, proper connection object …
    stalled.sock.close()
    stalled.sock = raw  # … that reads nothing from now on
    stalled.send_frame(Hello("stalled"))

    sender = frame_client(address, "sender")
    sender.discard_incoming()  # it must read its own echoes, or it would be too slow too
    reader = frame_client(address, "reader")
    payload = "p" * 3000
    total = 3000  # ~9 MB through the server: far past any kernel buffer on loopback
    received: list[int] = []
    departures: list[Left] = []

    def drain() -> None:
        while len(received) < total:
            frame = reader.next_frame()
            if isinstance(frame, Left):
                departures.append(frame)
            if isinstance(frame, Message) and frame.sender == "sender":
                received.append(int(frame.text.split(":")[0]))

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    for n in range(total):
        sender.send_frame(Say(f"{n}:{payload}"))
        if n % 20 == 19:  # keep the live reader's backlog small: only the stalled one grows
            deadline = time.monotonic() + WAIT
            while len(received) < n - 20 and time.monotonic() < deadline:
                time.sleep(0.001)
    drainer.join(timeout=60)
    assert received == list(range(total))  # every message, in order, to the live reader
    assert [(d.name, d.reason) for d in departures] == [("stalled", "dropped")]
    raw.close()


def test_connect_reset_cycles_leave_no_threads_or_descriptors(make_server: ServerFactory) -> None:
    server = make_server()
    address = server.address
    witness = plain_client(address, "witness")

    def counts() -> tuple[int, int]:
        return threading.active_count(), len(os.listdir("/proc/self/fd"))

    def settle(target: tuple[int, int]) -> tuple[int, int]:
        """The counts once they are back to ``target`` (a connection's thread and
        descriptor go a moment after its client), or at the deadline."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and counts() != target:
            time.sleep(0.02)
        return counts()

    time.sleep(0.2)  # the witness's own connection settles in
    baseline = counts()
    for n in range(200):
        client = LineClient(address)
        if n % 2:
            client.expect("Type your name")
            client.send_line(f"cycler{n}")
            client.expect("Welcome")
        client.reset()
    assert settle(baseline) == baseline
    witness.send_line("alive")
    witness.expect("<witness> alive")


def test_max_clients_and_per_address_caps_refuse_with_a_reason(make_server: ServerFactory) -> None:
    full = make_server(max_clients=2).address
    members = [plain_client(full, "one"), plain_client(full, "two")]
    third = LineClient(full)
    third.expect(r"^\[..:..:..\] ! server full \(at most 2 users\)")
    assert third.wait_closed()

    capped = make_server(max_per_address=1).address
    members.append(plain_client(capped, "first"))
    second = LineClient(capped)
    second.expect(
        r"^\[..:..:..\] ! too many connections from 127\.0\.0\.1 \(at most 1 connection\)"
    )
    assert second.wait_closed()
    assert all(not member.wait_closed(0.1) for member in members)  # members stay


def test_a_connection_that_never_registers_is_dropped(make_server: ServerFactory) -> None:
    # A pause of line_gap ends a line for clients that never send newlines; at 2 s it
    # cannot happen between the drips below, so they never make a line.
    address = make_server(registration_timeout=0.5, line_gap=2.0).address
    silent = LineClient(address)
    silent.expect(r"^\[..:..:..\] ! no name received in time; goodbye$")
    assert silent.wait_closed()
    dripping = LineClient(address)
    for _ in range(10):  # one byte every 0.1 s does not extend the deadline
        try:
            dripping.send(b"a")
        except OSError:
            break
        time.sleep(0.1)
    # The timeout tells the truth: bytes came, but never an end of line.
    dripping.expect(r"^\[..:..:..\] ! received [1-9] bytes? but no end of line; goodbye$")


def test_silent_structured_clients_are_pinged_then_dropped(make_server: ServerFactory) -> None:
    address = make_server(ping_interval=0.3).address
    watcher = plain_client(address, "watcher")
    silent = frame_client(address, "silent")
    ping = silent.next_frame(Ping)
    assert isinstance(ping, Ping)
    watcher.expect(r"^\[..:..:..\] -!- silent timed out$")
    # the plain watcher, silent just as long, is not dropped: nc cannot answer pings
    watcher.send_line("still here")
    watcher.expect("<watcher> still here")


def test_rate_limit_delays_excess_but_never_drops(make_server: ServerFactory) -> None:
    address = make_server(rate_limit=20, burst=2).address
    sender = frame_client(address, "fast")
    reader = frame_client(address, "reader")
    started = time.monotonic()
    for n in range(12):
        sender.send_frame(Say(str(n)))
    texts = []
    for _ in range(12):
        frame = reader.next_frame(Message)
        assert isinstance(frame, Message)
        texts.append(frame.text)
    assert texts == [str(n) for n in range(12)]
    # 10 messages beyond the burst at 20/s take at least 0.45 s: a lower bound, so
    # a slow machine cannot make it fail.
    assert time.monotonic() - started >= 0.45


def test_event_log_records_every_event(make_server: ServerFactory, tmp_path: Path) -> None:
    log_path = tmp_path / "events.jsonl"
    server = make_server(event_log=log_path)
    alice = plain_client(server.address, "alice")
    bob = plain_client(server.address, "bob")
    alice.send_line("hello")
    alice.send_line("/msg bob psst")
    bob.expect("psst")
    bob.send_line("/bogus")
    bob.expect(r"^\[..:..:..\] ! unknown command")
    alice.close()
    bob.expect(r"^\[..:..:..\] -!- alice left$")
    server.shutdown()
    events = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds == ["join", "join", "message", "private", "error", "leave", "shutdown"]
    assert events[2]["sender"] == "alice" and events[2]["text"] == "hello"


def test_shutdown_tells_everyone_and_closes(make_server: ServerFactory) -> None:
    server = make_server()
    plain = plain_client(server.address, "plain")
    structured = frame_client(server.address, "structured")
    waiting = LineClient(server.address)  # not yet registered
    waiting.expect("Type your name")
    threads_before = threading.active_count()
    server.shutdown("maintenance")
    plain.expect(r"^\[..:..:..\] -!- server is shutting down: maintenance$")
    frame = structured.next_frame(Shutdown)
    assert isinstance(frame, Shutdown) and frame.reason == "maintenance"
    for client in (plain, structured, waiting):
        assert client.wait_closed()
    assert threading.active_count() < threads_before
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1)


def test_ipv6_loopback(make_server: ServerFactory) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        server = make_server(host="::1")
    except OSError as exc:
        pytest.skip(f"::1 not available here: {exc}")
    alice = frame_client(server.address, "alice")
    bob = plain_client(server.address, "bob")
    joined = alice.next_frame(Joined)
    assert isinstance(joined, Joined) and joined.name == "bob"
    bob.send_line("over v6")
    message = alice.next_frame(Message)
    assert isinstance(message, Message) and message.text == "over v6"


def test_welcome_lists_users(make_server: ServerFactory) -> None:
    address = make_server(motd="be nice").address
    alice = plain_client(address, "alice")
    bob = FrameClient(address)
    bob.send_frame(Hello("bob"))
    welcome = bob.next_frame(Welcome)
    assert isinstance(welcome, Welcome)
    assert welcome.users == ("alice", "bob") and welcome.motd == "be nice"
    alice.close()


def test_plain_quit_says_goodbye_and_closes_at_once(make_server: ServerFactory) -> None:
    """Issue 10 #10: nc users got no goodbye, and the connection stayed open until Enter."""
    address = make_server().address
    watcher = plain_client(address, "watcher")
    nc = plain_client(address, "nc")
    watcher.expect(r"^\[..:..:..\] -!- nc joined$")
    nc.send_line("/quit off to lunch")
    start = time.monotonic()
    lines = nc.collect(WAIT / 2)  # returns when the server closes
    assert [line[11:] for line in lines] == ["-!- Goodbye, nc!"]
    assert time.monotonic() - start < WAIT / 2
    assert [line[11:] for line in watcher.collect(0.5)] == ["-!- nc left: off to lunch"]


def test_a_whole_plain_session_exact_transcript(make_server: ServerFactory) -> None:
    address = make_server(motd="be kind").address
    bob = plain_client(address, "bob")
    bob.expect(r"^\[..:..:..\] -!- be kind$")
    alice = LineClient(address)
    alice.send(b"alice\r\nhi bob\r\n/msg bob psst\r\n/me waves\r\n/nick alicia\r\n/who\r\n")
    alice.send(b"/frob\r\n/quit\r\n")
    stamp = r"\[\d\d:\d\d:\d\d\] "
    expected = [
        r"netchat/1 ready: welcome to netchat! Type your name and press Enter:",
        stamp + r"-!- Welcome, alice! Online \(2\): bob, alice\. Type /help for commands\.",
        stamp + r"-!- be kind",
        stamp + r"<alice> hi bob",
        stamp + r"<alice -> bob> psst",
        stamp + r"\* alice waves",
        stamp + r"-!- alice is now known as alicia",
        stamp + r"-!- Online \(2\): bob, alicia",
        stamp + r"! unknown command /frob; type /help for the list",
        stamp + r"-!- Goodbye, alicia!",
    ]
    lines = alice.collect(WAIT / 2)
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    bob_lines = bob.collect(0.5)
    assert [re.sub(stamp, "", line) for line in bob_lines] == [
        "-!- alice joined",
        "<alice> hi bob",
        "<alice -> bob> psst",
        "* alice waves",
        "-!- alice is now known as alicia",
        "-!- alicia left",
    ]

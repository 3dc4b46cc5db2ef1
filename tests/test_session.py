"""The sans-I/O server session, byte by byte, with no sockets (netchat/session.py).

Like h11's tests: a session and a hub wired in memory, fed every input whole, one byte
at a time and in hypothesis-chosen chunks, with a fake clock. Transcripts are compared
whole: a duplicated or reordered line fails.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.admission import Admission
from netchat.errors import LocalProtocolError
from netchat.hub import Hub, Outbound
from netchat.protocol.banner import banner_line, banner_wants_password
from netchat.protocol.frames import (
    Error,
    Frame,
    Hello,
    Joined,
    Left,
    Message,
    Ping,
    Pong,
    Quit,
    Say,
    Shutdown,
    Welcome,
    decode_frame,
    encode_frame,
)
from netchat.protocol.render import clock
from netchat.protocol.seal import PasswordVerifier
from netchat.session import (
    PHASE_MOVES,
    JoinedChat,
    Mode,
    Move,
    Phase,
    ServerSession,
    SessionPolicy,
    WantsClose,
)

TS = 1_700_000_000.0
BANNER = banner_line("netchat")
POLICY = SessionPolicy(rate_limit=0)  # most tests: no rate limit


def make_hub() -> Hub:
    """A hub whose clock stands still, so rendered timestamps are predictable."""
    return Hub(clock=lambda: TS, monotonic=itertools.count(0, 5).__next__)


STAMP = f"[{clock(TS)}] "  # every line a plain client reads starts with the time


def text(frame: Frame) -> bytes:
    return Outbound(frame, TS).text


def line(text: str) -> bytes:
    """A server line as a plain client reads it: the time, then ``text``."""
    return f"{STAMP}{text}\r\n".encode()


def json(frame: Frame) -> bytes:
    return encode_frame(frame)


class Pair:
    """A session and its hub in memory: bytes in, bytes out, time by hand."""

    def __init__(
        self, hub: Hub | None = None, policy: SessionPolicy = POLICY, now: float = 0.0
    ) -> None:
        self.hub = hub if hub is not None else make_hub()
        self.now = now
        self.session = ServerSession(self.hub, policy, peer="127.0.0.1:5000", now=now)
        self.decisions: list[object] = []

    def feed(self, data: bytes, chunks: Iterable[int] | None = None) -> None:
        """Feed ``data`` whole, or cut at the given chunk sizes."""
        if chunks is None:
            self.decisions += self.session.receive_data(data, self.now)
            return
        position = 0
        for size in chunks:
            if position >= len(data):
                break
            self.decisions += self.session.receive_data(data[position : position + size], self.now)
            position += size
        if position < len(data):
            self.decisions += self.session.receive_data(data[position:], self.now)

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.decisions += self.session.tick(self.now)

    def out(self) -> bytes:
        return self.session.data_to_send()

    def frames(self) -> list[Frame]:
        return [decode_frame(line) for line in self.out().splitlines()]


def watcher(hub: Hub) -> Pair:
    """A structured member already in the chat, with its welcome read."""
    pair = Pair(hub)
    pair.feed(json(Hello("watcher")))
    pair.out()
    return pair


def one_byte_at_a_time(data: bytes) -> list[int]:
    return [1] * len(data)


# --- plain clients -------------------------------------------------------------------------


@pytest.mark.parametrize("chunking", ["whole", "bytes"])
def test_a_plain_conversation_exact_transcript(chunking: str) -> None:
    hub = make_hub()
    other = watcher(hub)
    nc = Pair(hub)
    talk = "alice\r\nпривет, мир\r\n/me waves\r\n/quit see you\r\n".encode()
    nc.feed(talk, one_byte_at_a_time(talk) if chunking == "bytes" else None)
    assert nc.out() == b"".join(
        [
            BANNER,
            text(Welcome("alice", ("watcher", "alice"), "netchat")),
            text(Message("alice", "привет, мир", TS, 3)),
            text(Message("alice", "waves", TS, 4, action=True)),
            line("-!- Goodbye, alice!"),
        ]
    )
    assert other.frames() == [
        Joined("alice", TS, 2),
        Message("alice", "привет, мир", TS, 3),
        Message("alice", "waves", TS, 4, action=True),
        Left("alice", TS, 5, "quit", "see you"),
    ]
    assert nc.session.phase is Phase.CLOSING
    assert [type(e) for e in nc.decisions] == [JoinedChat, WantsClose]
    nc.feed(b"ignored after quit\r\n")
    assert nc.out() == b"" and other.out() == b""


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 12), max_size=80))
def test_any_chunking_gives_the_same_transcript(chunks: list[int]) -> None:
    hub = make_hub()
    other = watcher(hub)
    nc = Pair(hub)
    talk = b"bob\n" + "hi 👋".encode() + b"\r\n\n/who\n//not a command\n\xff\n"
    nc.feed(talk, chunks)
    assert nc.out() == b"".join(
        [
            BANNER,
            text(Welcome("bob", ("watcher", "bob"), "netchat")),
            text(Message("bob", "hi 👋", TS, 3)),
            line("-!- Online (2): watcher, bob"),
            text(Message("bob", "/not a command", TS, 4)),
            line("! line dropped: not valid UTF-8 (set your terminal to UTF-8)"),
        ]
    )
    assert [type(f) for f in other.frames()] == [Joined, Message, Message]


def test_a_taken_name_is_asked_again_and_a_bad_one_explained() -> None:
    hub = make_hub()
    watcher(hub)
    nc = Pair(hub)
    nc.feed(b"WATCHER\n")
    nc.feed(b"two words\n")
    nc.feed(b"\n")
    nc.feed(b"carol\n")
    assert nc.out().decode().splitlines() == [
        BANNER.decode().rstrip(),
        f"{STAMP}! the name 'WATCHER' is taken; try 'WATCHER2'. Type another name:",
        f"{STAMP}! a name may contain only letters, digits, '_', '-' and '.'; try 'two_words'."
        " Type another name:",
        *text(Welcome("carol", ("watcher", "carol"), "netchat")).decode().splitlines(),
    ]


def test_a_lab_client_names_itself_in_every_line() -> None:
    hub = make_hub()
    other = watcher(hub)
    lab = Pair(hub)
    lab.feed(b"alice: hello\n")
    lab.feed(b"alice: how are you?\n")
    lab.feed(b"bob: is not me\n")
    assert lab.session.member is not None and lab.session.member.name == "alice"
    assert other.frames() == [
        Joined("alice", TS, 2),
        Message("alice", "hello", TS, 3),
        Message("alice", "how are you?", TS, 4),
        Message("alice", "bob: is not me", TS, 5),
    ]


def test_a_lab_client_with_a_taken_name_is_told_which_name() -> None:
    hub = make_hub()
    watcher(hub)
    lab = Pair(hub)
    lab.feed(b"watcher: hi\n")
    assert lab.out() == BANNER + (
        line("! the name 'watcher' is taken; try 'watcher2'. Type another name:")
    )
    assert lab.session.phase is Phase.REGISTERING


def test_a_client_that_never_sends_a_newline_ends_lines_by_pausing() -> None:
    hub = make_hub()
    other = watcher(hub)
    lab = Pair(hub)
    lab.feed(b"alice: hi")  # sock.send(text.encode()): no newline, ever
    assert lab.session.phase is Phase.REGISTERING
    assert lab.session.next_deadline() == pytest.approx(POLICY.line_gap)
    lab.tick(POLICY.line_gap / 2)
    assert lab.session.phase is Phase.REGISTERING  # not yet: the line may go on
    lab.tick(POLICY.line_gap)
    lab.feed("как дела".encode()[:-1])  # the last character cut between two sends
    lab.tick(POLICY.line_gap)
    lab.feed("а".encode()[1:] + b"?")
    lab.tick(POLICY.line_gap)
    assert other.frames() == [
        Joined("alice", TS, 2),
        Message("alice", "hi", TS, 3),
        Message("alice", "как дел", TS, 4),
        Message("alice", "а?", TS, 5),
    ]


def test_one_newline_makes_a_connection_line_framed_for_good() -> None:
    hub = make_hub()
    other = watcher(hub)
    nc = Pair(hub)
    nc.feed(b"carol\n")
    nc.feed(b"a slow line ")
    nc.tick(5.0)  # however long it pauses, a line-framed client's line is not cut
    nc.feed(b"goes on\n")
    assert other.frames() == [
        Joined("carol", TS, 2),
        Message("carol", "a slow line goes on", TS, 3),
    ]


def test_registration_timeouts_tell_the_truth() -> None:
    policy = SessionPolicy(rate_limit=0, registration_timeout=5.0, line_gap=10.0)
    silent = Pair(policy=policy)
    silent.tick(5.0)
    assert silent.out() == BANNER + line("! no name received in time; goodbye")
    assert silent.session.phase is Phase.CLOSING
    dripping = Pair(policy=policy)
    for _ in range(12):
        dripping.feed(b"a")
        dripping.tick(0.5)
    assert dripping.out() == BANNER + line("! received 10 bytes but no end of line; goodbye")
    assert (
        dripping.session.close_reason
        == "registration timeout: received 10 bytes but no end of line"
    )


def test_plain_quit_says_goodbye_and_closes() -> None:
    nc = Pair()
    nc.feed(b"dave\n/quit\n")
    assert nc.out().endswith(line("-!- Goodbye, dave!"))
    assert nc.session.phase is Phase.CLOSING
    assert nc.decisions[-1] == WantsClose("quit")


def test_plain_stats_are_words_a_person_understands() -> None:
    nc = Pair()
    nc.feed(b"erin\nhello\n")
    nc.tick(65.0)
    sent = len(nc.out())
    nc.feed(b"/stats\n")
    assert (
        nc.out()
        == (
            f"{STAMP}-!- stats: connected 1m05s, you sent 1 message; 18 bytes received from you,"
            f" {sent} bytes sent to you\r\n"
        ).encode()
    )


def test_end_of_input_is_a_plain_goodbye() -> None:
    hub = make_hub()
    other = watcher(hub)
    nc = Pair(hub)
    nc.feed(b"frank\n")
    nc.feed(b"")
    assert other.frames() == [Joined("frank", TS, 2), Left("frank", TS, 3, "quit")]
    assert nc.session.phase is Phase.CLOSING


def test_a_lost_connection_is_announced_as_lost() -> None:
    hub = make_hub()
    other = watcher(hub)
    nc = Pair(hub)
    nc.feed(b"gina\n")
    nc.session.connection_lost("connection reset")
    assert other.frames() == [
        Joined("gina", TS, 2),
        Left("gina", TS, 3, "lost", "connection reset"),
    ]
    assert nc.session.phase is Phase.CLOSED
    assert nc.out() == b""


# --- structured clients ---------------------------------------------------------------------


@pytest.mark.parametrize("chunking", ["whole", "bytes"])
def test_a_structured_conversation_exact_transcript(chunking: str) -> None:
    hub = make_hub()
    other = watcher(hub)
    client = Pair(hub)
    talk = json(Hello("hana")) + json(Say("hi")) + json(Ping("x")) + json(Quit("later"))
    client.feed(talk, one_byte_at_a_time(talk) if chunking == "bytes" else None)
    assert client.session.mode is Mode.STRUCTURED
    out = client.out()
    assert out.startswith(BANNER)
    assert [decode_frame(line) for line in out[len(BANNER) :].splitlines()] == [
        Welcome("hana", ("watcher", "hana"), "netchat"),
        Message("hana", "hi", TS, 3),
        Pong("x"),
    ]
    assert other.frames() == [
        Joined("hana", TS, 2),
        Message("hana", "hi", TS, 3),
        Left("hana", TS, 4, "quit", "later"),
    ]


def test_structured_errors_before_and_after_joining() -> None:
    client = Pair()
    client.feed(json(Hello("ivan")) + b"{broken\n" + json(Hello("again")))
    frames = [decode_frame(line) for line in client.out()[len(BANNER) :].splitlines()]
    assert frames == [
        Welcome("ivan", ("ivan",), "netchat"),
        Error("malformed", "frame dropped: frame is not valid JSON"),
        Error("already-joined", "you have already joined"),
    ]


def test_a_first_line_that_looks_like_json_but_is_no_hello_makes_a_plain_client() -> None:
    client = Pair()
    client.feed(b'{"v":1,"t":"say","text":"x"}\n')
    assert client.session.mode is Mode.PLAIN
    assert client.session.phase is Phase.REGISTERING  # it was taken as a (bad) name


def test_silent_structured_members_are_pinged_then_time_out() -> None:
    hub = make_hub()
    other = watcher(hub)
    policy = SessionPolicy(rate_limit=0, ping_interval=10.0)
    client = Pair(hub, policy)
    client.feed(json(Hello("jo")))
    client.out()
    client.tick(10.0)
    client.tick(10.0)
    assert client.frames() == [Ping("1"), Ping("2")]
    client.tick(10.0)
    assert client.session.phase is Phase.CLOSING
    assert other.frames() == [Joined("jo", TS, 2), Left("jo", TS, 3, "timeout")]


def test_an_answer_resets_the_ping_count() -> None:
    client = Pair(policy=SessionPolicy(rate_limit=0, ping_interval=10.0))
    client.feed(json(Hello("kim")))
    for _ in range(5):
        client.tick(10.0)
        client.feed(json(Pong("1")))
    assert client.session.phase is Phase.JOINED


# --- limits ---------------------------------------------------------------------------------------


def test_a_stream_over_its_rate_is_paused_not_dropped() -> None:
    hub = make_hub()
    other = watcher(hub)
    client = Pair(hub, SessionPolicy(rate_limit=1.0, burst=3))
    client.feed(b"lee\none\ntwo\nthree\nfour\n")
    assert client.session.paused_until == pytest.approx(1.0)
    assert [f.text for f in other.frames() if isinstance(f, Message)] == ["one", "two"]
    client.tick(1.0)
    client.tick(1.0)
    assert [f.text for f in other.frames() if isinstance(f, Message)] == ["three", "four"]
    assert client.session.paused_until is None


def test_datagram_excess_is_dropped_and_said_once_then_summarised() -> None:
    hub = make_hub()
    other = watcher(hub)
    policy = SessionPolicy(stream=False, rate_limit=1.0, burst=2, error_window=10.0)
    member = Pair(hub, policy)
    member.session.receive_unit(json(Hello("max")), 0.0)
    for n in range(6):
        member.session.receive_unit(json(Say(f"flood {n}")), 0.0)
    frames = member.frames()
    warning = Error("rate-limited", "you are sending too fast (limit 1/s); message dropped")
    assert frames == [
        Welcome("max", ("watcher", "max"), "netchat"),
        Message("max", "flood 0", TS, 3),
        warning,
    ]
    member.tick(10.0)
    assert member.frames() == [
        Error("rate-limited", warning.text + " (repeated 4 more times)"),
    ]
    assert [f.text for f in other.frames() if isinstance(f, Message)] == ["flood 0"]
    assert member.session.counters["rate_limited"] == 5


def test_one_datagram_draws_one_reply_however_many_requests_it_packs() -> None:
    hub = make_hub()
    member = Pair(hub, SessionPolicy(stream=False, rate_limit=0))
    member.session.receive_unit(json(Hello("max")), 0.0)
    member.out()
    packed = [json(Ping("a")), json(Ping("b")), b"junk\n", json(Say("still said")), b"junk\n"]
    member.session.receive_datagram(packed, 0.0)
    assert member.frames() == [Pong("a"), Message("max", "still said", TS, 2)]
    assert member.session.counters["replies_suppressed"] == 3
    # The next datagram has a reply of its own; a stream has no such bound.
    member.session.receive_datagram([b"junk\n"], 0.0)
    assert member.frames() == [Error("malformed", "frame dropped: frame is not valid JSON")]


def test_repeated_identical_errors_are_summarised() -> None:
    client = Pair(policy=SessionPolicy(rate_limit=0, error_window=10.0))
    client.feed(b"nina\n")
    client.out()
    client.feed(b"/nope\n" * 50 + b"/other\n")
    assert client.out() == (
        line("! unknown command /nope; type /help for the list")
        + line("! unknown command /other; type /help for the list")
    )
    client.tick(10.0)
    assert client.out() == line(
        "! unknown command /nope; type /help for the list (repeated 49 more times)"
    )


def test_a_member_owed_more_than_max_queue_is_dropped() -> None:
    hub = make_hub()
    talker = watcher(hub)
    slow = Pair(hub, SessionPolicy(rate_limit=0, max_queue=70_000))
    slow.feed(json(Hello("slow")))
    talker.out()
    for n in range(20):
        talker.feed(json(Say("x" * 3900 + str(n))))
        talker.out()  # the talker keeps up
    assert slow.session.check_backlog() is False
    assert slow.session.abort and slow.session.phase is Phase.CLOSING
    assert slow.out() == b""
    assert talker.frames()[-1] == Left("slow", TS, 23, "dropped", "too slow")


@pytest.mark.parametrize(
    ("reason", "detail"), [("timeout", "not acknowledging for 15 s"), ("dropped", "too slow")]
)
def test_a_member_its_transport_cannot_deliver_to_leaves_once_with_the_reason(
    reason: str, detail: str
) -> None:
    hub = make_hub()
    other = watcher(hub)
    gone = Pair(hub)
    gone.feed(json(Hello("gone")))
    other.feed(json(Say("you there?")))
    decisions = gone.session.undeliverable(reason, detail)
    assert decisions == [WantsClose(detail, abort=True)]
    assert gone.session.undeliverable(reason, "again") == []  # once only
    assert (gone.session.abort, gone.session.phase) == (True, Phase.CLOSING)
    assert gone.out() == b""  # nothing more is owed to it
    assert other.frames() == [
        Joined("gone", TS, 2),
        Message("watcher", "you there?", TS, 3),
        Left("gone", TS, 4, reason, detail),
    ]
    gone.session.finished()
    assert other.frames() == []


def test_server_full_at_join_time() -> None:
    hub = make_hub()
    admission = Admission(max_clients=1)
    first = ServerSession(hub, POLICY, peer="a", now=0, admission=(admission, admission.admit("a")))
    second = ServerSession(
        hub, POLICY, peer="b", now=0, admission=(admission, admission.admit("b"))
    )
    first.receive_data(b"one\n", 0)
    second.receive_data(b"two\n", 0)
    assert second.data_to_send() == BANNER + line("! server full (at most 1 user); try again later")
    assert second.phase is Phase.CLOSING
    assert hub.names() == ("one",)


# --- shutdown --------------------------------------------------------------------------------------


def test_shutdown_is_one_notice_after_everything_owed() -> None:
    hub = make_hub()
    talker, listener, newcomer = watcher(hub), Pair(hub), Pair(hub)
    listener.feed(b"olga\n")
    newcomer.feed(b"pa")  # has not joined
    for n in range(100):
        talker.feed(json(Say(f"m{n}")))
    hub.shutdown("maintenance")
    for pair in (listener, newcomer):
        pair.session.close("server shutting down")
        pair.session.close("server shutting down")  # twice: still one notice
    lines = listener.out().decode().splitlines()
    assert lines[-101:] == [
        *[text(Message("watcher", f"m{n}", TS, n + 3)).decode().rstrip() for n in range(100)],
        f"{STAMP}-!- server is shutting down: maintenance",
    ]
    assert sum("shutting down" in line for line in lines) == 1
    assert newcomer.out() == BANNER + text(Shutdown("server shutting down"))
    assert listener.session.phase is newcomer.session.phase is Phase.CLOSING


# --- the state table -------------------------------------------------------------------------------


@given(st.sampled_from(list(Phase)), st.sampled_from(list(Move)), st.sampled_from(list(Mode)))
def test_every_phase_move_is_in_the_table_or_refused_naming_the_state(
    phase: Phase, move: Move, mode: Mode
) -> None:
    session = ServerSession(make_hub(), POLICY, peer="p", now=0)
    session.phase, session.mode = phase, mode
    if (phase, move) in PHASE_MOVES:
        session._move(move)
        assert session.phase is PHASE_MOVES[(phase, move)]
    else:
        with pytest.raises(LocalProtocolError) as refused:
            session._move(move)
        assert str(refused.value) == (
            f"can't {move.value} when mode={mode.value} and phase={phase.value}"
        )
        assert session.phase is phase


def test_closed_is_final() -> None:
    assert all(
        PHASE_MOVES[(Phase.CLOSED, move)] is Phase.CLOSED
        for move in Move
        if (Phase.CLOSED, move) in PHASE_MOVES
    )
    assert (Phase.CLOSED, Move.JOIN) not in PHASE_MOVES
    assert (Phase.JOINED, Move.JOIN) not in PHASE_MOVES


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20), st.booleans())
def test_any_bytes_leave_the_session_consistent(
    data: bytes, chunks: list[int], structured: bool
) -> None:
    hub = make_hub()
    other = watcher(hub)
    pair = Pair(hub, SessionPolicy(rate_limit=5.0, burst=5))
    prefix = json(Hello("zed")) if structured else b"zed\n"
    pair.feed(prefix + data, chunks)
    pair.tick(1.0)
    pair.out()
    assert pair.session.phase in (Phase.JOINED, Phase.CLOSING)
    # Whatever zed sent, the others only ever see chat events, never its errors.
    assert {f.TYPE for f in other.frames()} <= {"joined", "message", "left", "renamed"}


# --- a chat with a password (issue 6) ----------------------------------------------------------

PASSWORD = "сезам откройся"
#: Wrong passwords are paused after; these tests step the clock by hand.
LOCKED = SessionPolicy(rate_limit=0, password=PasswordVerifier(PASSWORD), password_delay=1.0)
LOCKED_BANNER = banner_line("netchat", password=True)
ASK_NAME = line("-!- password accepted. Type your name and press Enter:")


def test_the_banner_of_a_chat_with_a_password_asks_for_it() -> None:
    assert LOCKED_BANNER == (
        b"netchat/1 ready: welcome to netchat! This chat needs a password:"
        b" type it and press Enter:\r\n"
    )
    assert banner_wants_password(LOCKED_BANNER) and not banner_wants_password(BANNER)
    nc = Pair(policy=LOCKED)
    assert nc.session.phase is Phase.AUTHENTICATING
    assert nc.out() == LOCKED_BANNER


@pytest.mark.parametrize("chunking", ["whole", "bytes"])
def test_a_plain_client_gives_the_password_then_its_name_exact_transcript(chunking: str) -> None:
    hub = make_hub()
    other = watcher(hub)
    nc = Pair(hub, LOCKED)
    talk = f"{PASSWORD}\r\nалиса\r\nпривет\r\n".encode()
    nc.feed(talk, one_byte_at_a_time(talk) if chunking == "bytes" else None)
    assert nc.out() == b"".join(
        [
            LOCKED_BANNER,
            ASK_NAME,
            text(Welcome("алиса", ("watcher", "алиса"), "netchat")),
            text(Message("алиса", "привет", TS, 3)),
        ]
    )
    assert other.frames() == [Joined("алиса", TS, 2), Message("алиса", "привет", TS, 3)]
    assert [type(e) for e in nc.decisions] == [JoinedChat]


def test_a_wrong_password_is_said_paused_after_and_sees_no_chat() -> None:
    hub = make_hub()
    other = watcher(hub)
    nc = Pair(hub, LOCKED)
    # Everything after the wrong password waits for the pause; /who is not a command
    # here: before the password every line is a password.
    nc.feed(b"open sesame\n/who\n" + PASSWORD.encode() + b"\nbob\n")
    assert nc.out() == LOCKED_BANNER + line("! wrong password (2 tries left). Type the password:")
    assert nc.session.paused_until == pytest.approx(1.0)
    assert nc.session.phase is Phase.AUTHENTICATING
    nc.tick(1.0)
    assert nc.out() == line("! wrong password (1 try left). Type the password:")
    nc.tick(1.0)
    assert nc.out() == ASK_NAME + text(Welcome("bob", ("watcher", "bob"), "netchat"))
    assert other.frames() == [Joined("bob", TS, 2)]  # nothing before bob joined


def test_three_wrong_passwords_and_the_connection_is_closed_with_the_reason() -> None:
    hub = make_hub()
    other = watcher(hub)
    nc = Pair(hub, LOCKED)
    for guess in (b"one\n", b"two\n", b"three\n"):
        nc.feed(guess)
        nc.tick(1.0)
    assert nc.out() == b"".join(
        [
            LOCKED_BANNER,
            line("! wrong password (2 tries left). Type the password:"),
            line("! wrong password (1 try left). Type the password:"),
            line("! wrong password 3 times; goodbye"),
        ]
    )
    assert nc.session.phase is Phase.CLOSING
    assert nc.session.close_reason == "3 wrong passwords"
    assert nc.decisions == [WantsClose("3 wrong passwords")]
    nc.feed(PASSWORD.encode() + b"\nlate\n")  # too late: nothing more is read
    assert nc.out() == b"" and other.frames() == [] and hub.names() == ("watcher",)


def test_a_structured_client_gives_the_password_in_its_hello() -> None:
    hub = make_hub()
    other = watcher(hub)
    client = Pair(hub, LOCKED)
    client.feed(json(Say("before joining")) + json(Hello("hana")))
    assert client.session.mode is Mode.PLAIN  # a first line that is no hello: plain
    hub2 = make_hub()
    client = Pair(hub2, LOCKED)
    client.feed(json(Hello("hana")))
    client.feed(json(Say("not yet")))
    client.feed(json(Hello("hana", password="wrong")))
    client.tick(1.0)
    client.feed(json(Hello("hana", password=PASSWORD)) + json(Say("hi")))
    out = client.out()
    assert out.startswith(LOCKED_BANNER)
    assert [decode_frame(line) for line in out[len(LOCKED_BANNER) :].splitlines()] == [
        Error("needs-password", "this chat needs a password"),
        Error("not-joined", "join first: send a hello frame"),
        Error("bad-password", "wrong password (2 tries left)"),
        Welcome("hana", ("hana",), "netchat"),
        Message("hana", "hi", TS, 2),
    ]
    assert other.frames() == []  # the first hub never saw hana


def test_the_password_in_a_hello_is_never_shown() -> None:
    hello = Hello("hana", password="сезам")
    assert "сезам" not in repr(hello)
    assert json(Hello("hana")) == b'{"v":1,"t":"hello","name":"hana","client":""}\n'
    assert decode_frame(json(hello)) == hello


def test_a_password_typed_in_decomposed_form_is_the_same_password() -> None:
    policy = SessionPolicy(rate_limit=0, password=PasswordVerifier("café"))
    nc = Pair(policy=policy)
    nc.feed("cafe\u0301\nzoe\n".encode())
    assert nc.session.phase is Phase.JOINED


def test_no_password_in_time_is_the_truth_told() -> None:
    policy = dataclasses.replace(LOCKED, registration_timeout=5.0)
    silent = Pair(policy=policy)
    silent.tick(5.0)
    assert silent.out() == LOCKED_BANNER + line("! no password received in time; goodbye")
    guessing = Pair(policy=policy)
    guessing.feed(b"guess\n")
    guessing.tick(5.0)
    assert guessing.out().endswith(line("! no valid password received in time; goodbye"))
    assert guessing.session.phase is Phase.CLOSING


def test_a_server_shutting_down_tells_a_client_still_giving_its_password() -> None:
    hub = make_hub()
    nc = Pair(hub, LOCKED)
    hub.shutdown("maintenance")
    nc.session.close("server shutting down")
    assert nc.out() == LOCKED_BANNER + text(Shutdown("server shutting down"))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20), st.booleans())
def test_nothing_sent_before_the_password_reaches_or_reveals_the_chat(
    data: bytes, chunks: list[int], structured: bool
) -> None:
    hub = make_hub()
    other = watcher(hub)
    policy = dataclasses.replace(LOCKED, rate_limit=5.0, burst=5)
    pair = Pair(hub, policy)
    guess = json(Hello("zed", password="guess")) if structured else b"guess\n"
    pair.feed(guess + data.replace(PASSWORD.encode(), b""), chunks)
    for _ in range(4):
        pair.tick(1.0)
    out = pair.out().decode("utf-8")
    # Only the banner, prompts and errors: no welcome, no user list, no names.
    assert "watcher" not in out and "Online" not in out and '"welcome"' not in out
    assert other.frames() == [] and hub.names() == ("watcher",)
    assert pair.session.phase in (Phase.AUTHENTICATING, Phase.CLOSING)

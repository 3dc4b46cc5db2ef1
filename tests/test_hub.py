"""The hub: members, names and routing, with fake in-memory sessions (netchat/hub.py)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from netchat.errors import Rejected
from netchat.hub import Hub, Outbound
from netchat.protocol.commands import HELP_TEXT
from netchat.protocol.frames import (
    Act,
    Error,
    Frame,
    Hello,
    Help,
    Info,
    Joined,
    Left,
    Message,
    Nick,
    Ping,
    Pong,
    Private,
    PrivateMessage,
    Quit,
    Renamed,
    Say,
    Shutdown,
    UserList,
    Welcome,
    Who,
    decode_frame,
)
from netchat.protocol.limits import MAX_FRAME_BYTES, MAX_TEXT_CHARS
from netchat.protocol.text import name_problem


class FakeSession:
    """Records what the hub delivers; ``accept = False`` simulates a full backlog."""

    def __init__(self, peer: str = "127.0.0.1:5000") -> None:
        self._peer = peer
        self.outbound: list[Outbound] = []
        self.closed: list[str] = []
        self.accept = True
        self._lock = threading.Lock()

    @property
    def peer(self) -> str:
        return self._peer

    def deliver(self, out: Outbound) -> bool:
        with self._lock:
            if not self.accept:
                return False
            self.outbound.append(out)
            return True

    def close(self, reason: str) -> None:
        self.closed.append(reason)

    @property
    def frames(self) -> list[Frame]:
        return [out.frame for out in self.outbound]

    def of(self, cls: type[Frame]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, cls)]

    def clear(self) -> None:
        self.outbound.clear()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


@pytest.fixture
def events() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def hub(events: list[dict[str, Any]]) -> Hub:
    return Hub(server_name="test-server", motd="be nice", clock=Clock(), event_sink=events.append)


def join(hub: Hub, *names: str) -> list[FakeSession]:
    sessions = []
    for name in names:
        session = FakeSession(f"10.0.0.{len(hub) + 1}:4000")
        hub.join(session, name)
        sessions.append(session)
    for session in sessions:
        session.clear()
    return sessions


def seqs(session: FakeSession) -> list[int]:
    return [f.seq for f in session.frames if hasattr(f, "seq")]


# --- joining ---------------------------------------------------------------------


def test_join_welcomes_and_announces(hub: Hub) -> None:
    alice = FakeSession()
    welcome = hub.join(alice, "alice")
    assert welcome == Welcome("alice", ("alice",), "test-server", "be nice")
    assert alice.frames == [welcome]

    bob = FakeSession()
    hub.join(bob, "bob")
    assert bob.frames == [Welcome("bob", ("alice", "bob"), "test-server", "be nice")]
    (joined,) = alice.of(Joined)
    assert joined.name == "bob"
    assert joined.seq >= 1
    assert alice.frames[1:] == [joined]  # the joiner is not told about itself
    assert hub.names() == ("alice", "bob")
    assert len(hub) == 2
    assert hub.member_name(bob) == "bob"
    assert hub.member_name(FakeSession()) is None


def test_join_strips_whitespace(hub: Hub) -> None:
    session = FakeSession()
    assert hub.join(session, "  bob \r\n").name == "bob"
    assert hub.names() == ("bob",)


@pytest.mark.parametrize("taken", ["alice", "ALICE", "Alice", "ＡＬＩＣＥ"])
def test_name_taken_is_case_insensitive(hub: Hub, taken: str) -> None:
    (alice,) = join(hub, "alice")
    newcomer = FakeSession()
    with pytest.raises(Rejected) as info:
        hub.join(newcomer, taken)
    assert info.value.code == "name-taken"
    suggestion = info.value.suggestion
    assert suggestion is not None
    assert name_problem(suggestion) is None
    assert suggestion.casefold() != "alice"
    assert suggestion in str(info.value)
    assert newcomer.frames == []
    assert alice.frames == []  # nobody hears of a failed join
    hub.join(newcomer, suggestion)  # the suggestion really is free
    assert hub.names() == ("alice", suggestion)


def test_suggestion_skips_taken_names(hub: Hub) -> None:
    join(hub, "bob", "bob2", "Bob3")
    with pytest.raises(Rejected) as info:
        hub.join(FakeSession(), "BOB")
    assert info.value.suggestion == "BOB4"


@pytest.mark.parametrize(
    ("bad", "suggestion"),
    [
        ("", "guest"),
        ("a b", "a_b"),  # a number only when the cleaned name is taken (issue 7)
        ("-x", "x"),
        ("x" * 30, "x" * 24),
        ("\x1b[2Jeve", "eve"),
    ],
)
def test_bad_name_is_rejected_with_a_valid_suggestion(hub: Hub, bad: str, suggestion: str) -> None:
    with pytest.raises(Rejected) as info:
        hub.join(FakeSession(), bad)
    assert info.value.code == "bad-name"
    assert info.value.suggestion == suggestion
    assert name_problem(suggestion) is None
    assert len(hub) == 0


def test_joining_twice_is_refused(hub: Hub) -> None:
    session = FakeSession()
    hub.join(session, "alice")
    with pytest.raises(Rejected) as info:
        hub.join(session, "alice2")
    assert info.value.code == "already-joined"
    assert hub.names() == ("alice",)


def test_requests_before_joining_get_not_joined(hub: Hub) -> None:
    session = FakeSession()
    hub.handle(session, Say("hi"))
    assert session.frames == [Error("not-joined", "join first: send your name")]


# --- messages ----------------------------------------------------------------------


def test_sender_is_stamped_by_the_hub(hub: Hub) -> None:
    alice, bob, carol = join(hub, "alice", "bob", "carol")
    hub.handle(carol, Say("alice: hi"))
    for session in (alice, bob, carol):  # everyone, the sender included
        (message,) = session.frames
        assert isinstance(message, Message)
        assert message.sender == "carol"
        assert message.text == "alice: hi"
        assert not message.action
    assert alice.outbound[0] is bob.outbound[0] is carol.outbound[0]  # one Outbound


def test_action(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice, Act("waves"))
    (message,) = bob.frames
    assert message == Message("alice", "waves", message.ts, message.seq, action=True)


def test_text_is_sanitized_and_stripped(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice, Say("  hi\x1b[2J\r\n<bob> fake  "))
    (message,) = bob.of(Message)
    assert message.text == "hi <bob> fake"  # the line break became one space


@pytest.mark.parametrize("text", ["", "   ", "\x1b[2J", "\r\n"])
def test_empty_messages_are_not_sent(hub: Hub, text: str) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice, Say(text))
    hub.handle(alice, Act(text))
    assert alice.frames == bob.frames == []


def test_too_long_message_is_refused(hub: Hub, events: list[dict[str, Any]]) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice, Say("x" * (MAX_TEXT_CHARS + 1)))
    (error,) = alice.frames
    assert isinstance(error, Error)
    assert error.code == "too-long"
    assert bob.frames == []
    hub.handle(alice, Say("я" * MAX_TEXT_CHARS))  # exactly the limit is fine
    assert bob.of(Message)[0].text == "я" * MAX_TEXT_CHARS
    assert events[-2]["event"] == "error"


def test_timestamps_come_from_the_hub_clock(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice, Say("one"))
    hub.handle(alice, Say("two"))
    first, second = bob.of(Message)
    assert 1_700_000_000 < first.ts < second.ts


def test_seq_is_strictly_increasing_and_identical_for_everyone(hub: Hub) -> None:
    alice, bob, carol = join(hub, "alice", "bob", "carol")
    hub.handle(alice, Say("1"))
    hub.handle(bob, Act("2"))
    dave = FakeSession()
    hub.join(dave, "dave")
    hub.handle(carol, Nick("caroline"))
    hub.handle(dave, Say("3"))
    hub.leave(bob)
    hub.handle(alice, Say("4"))
    a = seqs(alice)
    assert a == sorted(set(a))
    assert len(a) == 7  # say, me, joined, renamed, say, left, say
    assert seqs(carol) == a
    assert seqs(dave) == a[3:]  # from its own join on, minus its own Joined
    assert seqs(bob) == a[:5]  # up to its own departure
    # Each event carries one seq for all: the same frame object for all recipients.
    assert alice.outbound[-1] is carol.outbound[-1] is dave.outbound[-1]


# --- private messages -----------------------------------------------------------------


def test_private_message_reaches_only_target_and_sender(hub: Hub) -> None:
    alice, bob, carol = join(hub, "alice", "bob", "carol")
    hub.handle(alice, Private("BOB", "psst"))
    (to_bob,) = bob.frames
    assert isinstance(to_bob, PrivateMessage)
    assert (to_bob.sender, to_bob.to, to_bob.text) == ("alice", "bob", "psst")
    assert alice.frames == [to_bob]  # the echo
    assert carol.frames == []


def test_private_message_to_self_is_delivered_once(hub: Hub) -> None:
    (alice,) = join(hub, "alice")
    hub.handle(alice, Private("alice", "note to self"))
    assert len(alice.of(PrivateMessage)) == 1


def test_private_message_to_nobody(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice, Private("zed\x1b[2J", "hi"))
    (error,) = alice.frames
    assert isinstance(error, Error)
    assert error.code == "no-such-user"
    assert "\x1b" not in error.text
    assert "zed" in error.text
    assert bob.frames == []


def test_private_seq_fits_in_the_global_order(hub: Hub) -> None:
    alice, bob, carol = join(hub, "alice", "bob", "carol")
    hub.handle(alice, Say("a"))
    hub.handle(alice, Private("bob", "b"))
    hub.handle(alice, Say("c"))
    assert seqs(bob) == sorted(seqs(bob))
    assert seqs(carol) == [seqs(bob)[0], seqs(bob)[2]]


# --- nick ------------------------------------------------------------------------------


def test_rename(hub: Hub, events: list[dict[str, Any]]) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(bob, Nick(" robert "))
    for session in (alice, bob):
        (renamed,) = session.frames
        assert isinstance(renamed, Renamed)
        assert (renamed.old, renamed.new) == ("bob", "robert")
    assert hub.names() == ("alice", "robert")
    assert hub.member_name(bob) == "robert"
    assert events[-1] == {
        "event": "rename",
        "old": "bob",
        "new": "robert",
        "ts": renamed.ts,
        "seq": renamed.seq,
    }
    # The new name is used from now on, and the old one is free.
    hub.handle(bob, Say("hi"))
    assert alice.of(Message)[0].sender == "robert"
    hub.handle(alice, Private("robert", "x"))
    assert len(bob.of(PrivateMessage)) == 1
    hub.join(FakeSession(), "bob")


def test_rename_collision_and_bad_name(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(bob, Nick("ALICE"))
    (error,) = bob.frames
    assert isinstance(error, Error)
    assert (error.code, error.suggestion) == ("name-taken", "ALICE2")
    bob.clear()
    hub.handle(bob, Nick("two words"))
    (error,) = bob.frames
    assert isinstance(error, Error)
    assert error.code == "bad-name"
    assert alice.frames == []
    assert hub.names() == ("alice", "bob")


def test_rename_to_own_name_in_other_case(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(bob, Nick("bob"))  # no change: nothing happens
    assert bob.frames == alice.frames == []
    hub.handle(bob, Nick("Bob"))
    (renamed,) = alice.frames
    assert isinstance(renamed, Renamed)
    assert (renamed.old, renamed.new) == ("bob", "Bob")
    assert hub.names() == ("alice", "Bob")


# --- other requests ----------------------------------------------------------------------


def test_who_help_ping(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(bob, Who())
    hub.handle(bob, Help())
    hub.handle(bob, Ping("t-42"))
    hub.handle(bob, Pong("whatever"))
    assert bob.frames == [UserList(("alice", "bob")), Info(HELP_TEXT), Pong("t-42")]
    assert alice.frames == []


def test_quit(hub: Hub, events: list[dict[str, Any]]) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(bob, Quit("bye\x1b[2J" + "x" * 300))
    (left,) = alice.frames
    assert isinstance(left, Left)
    assert (left.name, left.reason) == ("bob", "quit")
    assert left.detail.startswith("bye") and "\x1b" not in left.detail
    assert len(left.detail) <= 200
    assert bob.closed == ["quit"]
    assert hub.names() == ("alice",)
    assert events[-1]["event"] == "leave"


def test_leave_is_idempotent(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.leave(bob, "lost", "connection reset")
    hub.leave(bob, "lost")
    hub.leave(bob)
    hub.leave(FakeSession())  # never joined
    assert alice.frames == [
        Left("bob", alice.frames[0].ts, alice.frames[0].seq, "lost", "connection reset")
    ]
    hub.handle(bob, Say("ghost"))
    assert alice.of(Message) == []
    assert bob.of(Error)[0].code == "not-joined"


def test_client_cannot_send_server_frames(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice, Hello("again"))
    hub.handle(alice, Message("bob", "forged", 1.0, 999))
    hub.handle(alice, Joined("mallory", 1.0, 1))
    codes = [e.code for e in alice.of(Error)]
    assert codes == ["already-joined", "unexpected", "unexpected"]
    assert bob.frames == []


def test_report_error(hub: Hub, events: list[dict[str, Any]]) -> None:
    session = FakeSession()
    hub.report_error(session, "rate-limited", "slow down")
    assert session.frames == [Error("rate-limited", "slow down")]
    assert events[-1] == {
        "event": "error",
        "name": None,
        "peer": session.peer,
        "code": "rate-limited",
        "text": "slow down",
    }


# --- slow members ------------------------------------------------------------------------


def test_too_slow_member_is_dropped_and_others_keep_receiving(hub: Hub) -> None:
    alice, bob, carol = join(hub, "alice", "bob", "carol")
    bob.accept = False
    hub.handle(alice, Say("one"))
    assert bob.closed and "too slow" in bob.closed[0]
    assert hub.names() == ("alice", "carol")
    for session in (alice, carol):
        message, left = session.frames
        assert isinstance(message, Message) and message.text == "one"
        assert isinstance(left, Left)
        assert (left.name, left.reason) == ("bob", "dropped")
        assert left.seq > message.seq
    hub.handle(carol, Say("two"))
    assert [m.text for m in alice.of(Message)] == ["one", "two"]
    assert bob.frames == []


def test_cascading_drops_are_bounded(hub: Hub, events: list[dict[str, Any]]) -> None:
    sessions = join(hub, *[f"u{i}" for i in range(6)])
    for slow in sessions[1:4]:
        slow.accept = False
    hub.handle(sessions[0], Say("hi"))
    assert hub.names() == ("u0", "u4", "u5")
    for slow in sessions[1:4]:
        assert len(slow.closed) == 1
    for fine in (sessions[0], sessions[4], sessions[5]):
        lefts = fine.of(Left)
        assert sorted(left.name for left in lefts) == ["u1", "u2", "u3"]
        assert seqs(fine) == sorted(set(seqs(fine)))
    assert seqs(sessions[0]) == seqs(sessions[4]) == seqs(sessions[5])
    assert [e["name"] for e in events if e["event"] == "leave"] != []


def test_member_whose_welcome_cannot_be_queued(hub: Hub) -> None:
    (alice,) = join(hub, "alice")
    slow = FakeSession()
    slow.accept = False
    hub.join(slow, "slow")
    assert hub.names() == ("alice",)
    assert slow.closed
    # Alice hears of the join before the departure, in seq order, never the reverse.
    joined, left = alice.frames
    assert isinstance(joined, Joined) and isinstance(left, Left)
    assert joined.name == left.name == "slow"
    assert joined.seq < left.seq


def test_join_that_drops_a_slow_member_welcomes_first(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    bob.accept = False
    carol = FakeSession()
    welcome = hub.join(carol, "carol")
    assert carol.frames == [welcome]  # a client expects its welcome first
    assert welcome.users == ("alice", "carol")  # bob was dropped by the announcement
    assert [type(f) for f in alice.frames] == [Joined, Left]
    assert hub.names() == ("alice", "carol")


# --- shutdown -----------------------------------------------------------------------------


def test_shutdown(hub: Hub, events: list[dict[str, Any]]) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.shutdown("maintenance")
    for session in (alice, bob):
        assert session.frames == [Shutdown("maintenance")]
        assert session.closed == ["server shutting down"]
    assert alice.outbound[0] is bob.outbound[0]
    assert len(hub) == 0
    assert hub.names() == ()
    assert events[-1] == {"event": "shutdown", "reason": "maintenance", "members": 2}
    hub.leave(alice)  # a connection thread finishing late does no harm
    assert alice.frames == [Shutdown("maintenance")]


# --- events and encodings --------------------------------------------------------------------


def test_event_sink_gets_json_able_dicts(hub: Hub, events: list[dict[str, Any]]) -> None:
    alice, bob = join(hub, "alice", "Боб")
    hub.handle(alice, Say("привет 👋"))
    hub.handle(alice, Act("waves"))
    hub.handle(alice, Private("боб", "psst"))
    hub.handle(bob, Nick("bob"))
    hub.handle(alice, Private("nobody", "x"))
    hub.leave(bob, "lost")
    hub.shutdown()
    kinds = [e["event"] for e in events]
    assert kinds == [
        "join",
        "join",
        "message",
        "message",
        "private",
        "rename",
        "error",
        "leave",
        "shutdown",
    ]
    for event in events:
        assert json.loads(json.dumps(event, ensure_ascii=False)) == event
    assert events[0] == {
        "event": "join",
        "name": "alice",
        "peer": "10.0.0.1:4000",
        "ts": events[0]["ts"],
        "seq": events[0]["seq"],
    }
    assert events[2]["sender"] == "alice" and events[2]["text"] == "привет 👋"
    assert events[3]["action"] is True
    assert events[4]["to"] == "Боб"
    # Event seqs are the frames' seqs.
    message_seqs = [e["seq"] for e in events if "seq" in e]
    assert message_seqs == sorted(set(message_seqs))


def test_outbound_encodes_once() -> None:
    out = Outbound(Message("alice", "hi", 1_700_000_000.0, 1))
    first = out.json
    assert out.json is first
    assert decode_frame(first) == out.frame
    text = out.text
    assert out.text is text
    assert text.endswith(b"> hi\r\n")


# --- threads ------------------------------------------------------------------------------------


def test_concurrent_senders_see_one_order(hub: Hub) -> None:
    names = [f"user{i}" for i in range(6)]
    sessions = join(hub, *names)
    per_thread = 200
    barrier = threading.Barrier(len(sessions))

    def chatter(session: FakeSession, name: str) -> None:
        barrier.wait(timeout=10)
        for i in range(per_thread):
            if i % 50 == 25:
                hub.handle(session, Who())
            hub.handle(session, Say(f"{name} {i}"))

    threads = [
        threading.Thread(target=chatter, args=(s, n), daemon=True)
        for s, n in zip(sessions, names, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()

    total = per_thread * len(sessions)
    orders = [[(m.seq, m.sender, m.text) for m in s.of(Message)] for s in sessions]
    assert len(orders[0]) == total
    assert all(order == orders[0] for order in orders)
    assert [seq for seq, _, _ in orders[0]] == sorted({seq for seq, _, _ in orders[0]})
    for name in names:  # each sender's own messages stay in the order it sent them
        texts = [text for _, sender, text in orders[0] if sender == name]
        assert texts == [f"{name} {i}" for i in range(per_thread)]


def test_a_user_list_too_long_for_one_frame_is_cut_with_a_count() -> None:
    hub = Hub()
    sessions = [FakeSession(f"s{i}") for i in range(1100)]
    for i, session in enumerate(sessions):
        hub.join(session, f"{i:04d}" + "界" * 20)  # 24 characters, 64 bytes of UTF-8
    sessions[0].clear()
    hub.handle(sessions[0], Who())
    (users,) = sessions[0].of(UserList)
    assert users.users[-1].startswith("… ") and users.users[-1].endswith(" more")
    shown = len(users.users) - 1
    assert users.users[-1] == f"… {1100 - shown} more"
    assert users.users[:shown] == hub.names()[:shown]
    assert len(Outbound(users).json) <= MAX_FRAME_BYTES  # it encodes: no error for /who

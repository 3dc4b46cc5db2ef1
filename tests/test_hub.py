"""The hub: members, names and routing, read back from the members' streams (netchat/hub.py)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from netchat.errors import Rejected
from netchat.hub import PRESENCE_NAMES, WELCOME_NAMES, Hub, Member, Outbound
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
    Presence,
    Private,
    PrivateMessage,
    Renamed,
    Say,
    Shutdown,
    UserList,
    Welcome,
    Who,
    decode_frame,
)
from netchat.protocol.limits import MAX_FRAME_BYTES, MAX_TEXT_CHARS
from netchat.protocol.text import name_key, name_problem
from netchat.streamlog import WireFormat


class Clock:
    def __init__(self, start: float = 1_700_000_000.0, step: float = 0.5) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Inbox:
    """What one member has been sent, decoded from its JSON stream."""

    def __init__(self, hub: Hub, member: Member) -> None:
        self.hub = hub
        self.member = member
        self.frames: list[Frame] = []

    def read(self) -> list[Frame]:
        """Take what the member is owed; returns (and keeps) the new frames."""
        new = [decode_frame(line) for line in self.hub.take(self.member).splitlines()]
        self.frames += new
        return new

    def of(self, cls: type[Frame]) -> list[Any]:
        self.read()
        return [f for f in self.frames if isinstance(f, cls)]


@pytest.fixture
def records() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def hub(records: list[dict[str, Any]]) -> Hub:
    return Hub(
        server_name="test-server",
        motd="be nice",
        clock=Clock(),
        monotonic=Clock(0.0, 1.0),  # one second a step: no presence storm
        record=records.append,
    )


def join(hub: Hub, *names: str) -> list[Inbox]:
    """Members joined in order, with what they were sent so far read and forgotten."""
    inboxes = []
    for name in names:
        member = hub.join(name, peer=f"10.0.0.{len(hub) + 1}:4000", wire_format=WireFormat.JSON)
        inboxes.append(Inbox(hub, member))
    for inbox in inboxes:
        inbox.read()
        inbox.frames.clear()
    return inboxes


def seqs(frames: list[Frame]) -> list[int]:
    return [f.seq for f in frames if hasattr(f, "seq")]


# --- joining ---------------------------------------------------------------------


def test_join_welcomes_and_announces(hub: Hub) -> None:
    alice = Inbox(hub, hub.join("alice", peer="p", wire_format=WireFormat.JSON))
    assert alice.read() == [Welcome("alice", ("alice",), "test-server", "be nice")]
    bob = Inbox(hub, hub.join("bob", peer="p", wire_format=WireFormat.JSON))
    assert bob.read() == [Welcome("bob", ("alice", "bob"), "test-server", "be nice")]
    (joined,) = alice.read()  # the joiner is not told about itself; alice is, once
    assert isinstance(joined, Joined) and joined.name == "bob" and joined.seq >= 1
    assert hub.names() == ("alice", "bob")
    assert len(hub) == 2


def test_join_strips_whitespace(hub: Hub) -> None:
    assert hub.join("  bob \r\n", peer="p", wire_format=WireFormat.TEXT).name == "bob"
    assert hub.names() == ("bob",)


@pytest.mark.parametrize("taken", ["alice", "ALICE", "Alice", "ＡＬＩＣＥ"])
def test_name_taken_is_case_insensitive(hub: Hub, taken: str) -> None:
    (alice,) = join(hub, "alice")
    with pytest.raises(Rejected) as info:
        hub.join(taken, peer="p", wire_format=WireFormat.JSON)
    assert info.value.code == "name-taken"
    suggestion = info.value.suggestion
    assert suggestion is not None
    assert name_problem(suggestion) is None
    assert suggestion.casefold() != "alice"
    assert suggestion in str(info.value)
    assert alice.read() == []  # nobody hears of a failed join
    hub.join(suggestion, peer="p", wire_format=WireFormat.JSON)  # the suggestion really is free
    assert hub.names() == ("alice", suggestion)


def test_suggestion_skips_taken_names(hub: Hub) -> None:
    join(hub, "bob", "bob2", "Bob3")
    with pytest.raises(Rejected) as info:
        hub.join("BOB", peer="p", wire_format=WireFormat.JSON)
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
        hub.join(bad, peer="p", wire_format=WireFormat.JSON)
    assert info.value.code == "bad-name"
    assert info.value.suggestion == suggestion
    assert name_problem(suggestion) is None
    assert len(hub) == 0


def test_a_second_hello_is_refused(hub: Hub) -> None:
    (alice,) = join(hub, "alice")
    assert hub.handle(alice.member, Hello("alice2")) == Error(
        "already-joined", "you have already joined"
    )
    assert hub.names() == ("alice",)


def test_the_welcome_lists_at_most_a_hundred_names(hub: Hub) -> None:
    join(hub, *[f"u{i}" for i in range(WELCOME_NAMES + 20)])
    welcome = Inbox(hub, hub.join("later", peer="p", wire_format=WireFormat.JSON)).read()[0]
    assert isinstance(welcome, Welcome)
    assert welcome.users == (*[f"u{i}" for i in range(WELCOME_NAMES)], "… 21 more")
    everyone = hub.handle(hub.join("asker", peer="p", wire_format=WireFormat.JSON), Who())
    assert everyone is None  # /who lists everyone who fits in a frame


# --- messages ----------------------------------------------------------------------


def test_sender_is_stamped_by_the_hub(hub: Hub) -> None:
    alice, bob, carol = join(hub, "alice", "bob", "carol")
    assert hub.handle(carol.member, Say("alice: hi")) is None
    for inbox in (alice, bob, carol):  # everyone, the sender included
        (message,) = inbox.read()
        assert isinstance(message, Message)
        assert (message.sender, message.text, message.action) == ("carol", "alice: hi", False)


def test_action(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice.member, Act("waves"))
    (message,) = bob.read()
    assert isinstance(message, Message)
    assert message == Message("alice", "waves", message.ts, message.seq, action=True)


def test_text_is_sanitized_and_stripped(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice.member, Say("  hi\x1b[2J\r\n<bob> fake  "))
    (message,) = bob.of(Message)
    assert message.text == "hi <bob> fake"  # the line break became one space


@pytest.mark.parametrize("text", ["", "   ", "\x1b[2J", "\r\n"])
def test_empty_messages_are_not_sent(hub: Hub, text: str) -> None:
    alice, bob = join(hub, "alice", "bob")
    assert hub.handle(alice.member, Say(text)) is None
    assert hub.handle(alice.member, Act(text)) is None
    assert alice.read() == bob.read() == []


def test_too_long_message_is_refused(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    error = hub.handle(alice.member, Say("x" * (MAX_TEXT_CHARS + 1)))
    assert error is not None and error.code == "too-long"
    assert alice.read() == bob.read() == []  # the caller says the error, not the hub
    hub.handle(alice.member, Say("я" * MAX_TEXT_CHARS))  # exactly the limit is fine
    assert bob.of(Message)[0].text == "я" * MAX_TEXT_CHARS


def test_timestamps_come_from_the_hub_clock(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(alice.member, Say("one"))
    hub.handle(alice.member, Say("two"))
    first, second = bob.of(Message)
    assert 1_700_000_000 < first.ts < second.ts


def test_seq_is_strictly_increasing_and_identical_for_everyone(hub: Hub) -> None:
    alice, bob, carol = join(hub, "alice", "bob", "carol")
    hub.handle(alice.member, Say("1"))
    hub.handle(bob.member, Act("2"))
    (dave,) = join(hub, "dave")
    for inbox in (alice, bob, carol):  # forget what came before dave
        inbox.read()
        inbox.frames.clear()
    hub.handle(carol.member, Nick("caroline"))
    hub.handle(dave.member, Say("3"))
    hub.leave(bob.member)
    hub.handle(alice.member, Say("4"))
    for inbox in (alice, bob, carol, dave):
        inbox.read()
    a = seqs(alice.frames)
    assert a == sorted(set(a)) and len(a) == 4  # renamed, say, left, say
    assert seqs(carol.frames) == seqs(dave.frames) == a
    assert seqs(bob.frames) == a[:2]  # up to its own departure


# --- private messages -----------------------------------------------------------------


def test_private_message_reaches_only_target_and_sender(hub: Hub) -> None:
    alice, bob, carol = join(hub, "alice", "bob", "carol")
    assert hub.handle(alice.member, Private("BOB", "psst")) is None
    (to_bob,) = bob.read()
    assert isinstance(to_bob, PrivateMessage)
    assert (to_bob.sender, to_bob.to, to_bob.text) == ("alice", "bob", "psst")
    assert alice.read() == [to_bob]  # the echo
    assert carol.read() == []


def test_private_message_to_self_is_delivered_once(hub: Hub) -> None:
    (alice,) = join(hub, "alice")
    hub.handle(alice.member, Private("alice", "note to self"))
    assert len(alice.of(PrivateMessage)) == 1


def test_private_message_to_nobody(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    error = hub.handle(alice.member, Private("zed\x1b[2J", "hi"))
    assert error is not None and error.code == "no-such-user"
    assert "\x1b" not in error.text and "zed" in error.text
    assert bob.read() == []


def test_an_error_quoting_a_huge_name_still_fits_a_frame(hub: Hub) -> None:
    (alice,) = join(hub, "alice")
    error = hub.handle(alice.member, Private("\uffff" * 60_000, "hi"))
    assert error is not None and error.code == "no-such-user"
    hub.report_error(alice.member, "p", error)
    assert alice.read() == [error]  # encoded and delivered, not an exception


def test_private_seq_fits_in_the_global_order(hub: Hub) -> None:
    alice, bob, carol = join(hub, "alice", "bob", "carol")
    hub.handle(alice.member, Say("a"))
    hub.handle(alice.member, Private("bob", "b"))
    hub.handle(alice.member, Say("c"))
    assert seqs(bob.read()) == sorted(seqs(bob.frames))
    assert seqs(carol.read()) == [seqs(bob.frames)[0], seqs(bob.frames)[2]]


# --- nick ------------------------------------------------------------------------------


def test_rename(hub: Hub, records: list[dict[str, Any]]) -> None:
    alice, bob = join(hub, "alice", "bob")
    assert hub.handle(bob.member, Nick(" robert ")) is None
    renamed = Renamed("", "", 0.0, 0)
    for inbox in (alice, bob):
        (frame,) = inbox.read()
        assert isinstance(frame, Renamed) and (frame.old, frame.new) == ("bob", "robert")
        renamed = frame
    assert hub.names() == ("alice", "robert")
    assert bob.member.name == "robert"
    assert records[-1] == {
        "event": "rename",
        "old": "bob",
        "new": "robert",
        "ts": renamed.ts,
        "seq": renamed.seq,
    }
    hub.handle(bob.member, Say("hi"))  # the new name is used from now on
    assert alice.of(Message)[0].sender == "robert"
    hub.handle(alice.member, Private("robert", "x"))
    assert len(bob.of(PrivateMessage)) == 1
    hub.join("bob", peer="p", wire_format=WireFormat.JSON)  # and the old one is free


def test_rename_collision_and_bad_name(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    error = hub.handle(bob.member, Nick("ALICE"))
    assert error is not None and (error.code, error.suggestion) == ("name-taken", "ALICE2")
    error = hub.handle(bob.member, Nick("two words"))
    assert error is not None and error.code == "bad-name"
    assert alice.read() == bob.read() == []
    assert hub.names() == ("alice", "bob")


def test_rename_to_own_name_in_other_case(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.handle(bob.member, Nick("bob"))  # no change: nothing happens
    assert bob.read() == alice.read() == []
    hub.handle(bob.member, Nick("Bob"))
    (renamed,) = alice.read()
    assert isinstance(renamed, Renamed) and (renamed.old, renamed.new) == ("bob", "Bob")
    assert hub.names() == ("alice", "Bob")


# --- other requests ----------------------------------------------------------------------


def test_who_help_ping(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    for request in (Who(), Help(), Ping("t-42"), Pong("whatever")):
        assert hub.handle(bob.member, request) is None
    assert bob.read() == [UserList(("alice", "bob")), Info(HELP_TEXT), Pong("t-42")]
    assert alice.read() == []


def test_leave_is_idempotent_and_a_member_that_left_is_ignored(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    hub.leave(bob.member, "lost", "connection reset")
    hub.leave(bob.member, "lost")
    hub.leave(bob.member)
    (left,) = alice.read()
    assert isinstance(left, Left)
    assert left == Left("bob", left.ts, left.seq, "lost", "connection reset")
    assert hub.handle(bob.member, Say("ghost")) is None
    hub.send(bob.member, Info("too late"))
    assert alice.read() == bob.read() == []


def test_client_cannot_send_server_frames(hub: Hub) -> None:
    alice, bob = join(hub, "alice", "bob")
    errors = [
        hub.handle(alice.member, frame)
        for frame in (Hello("again"), Message("bob", "forged", 1.0, 999), Joined("mallory", 1.0, 1))
    ]
    assert [e.code for e in errors if e is not None] == [
        "already-joined",
        "unexpected",
        "unexpected",
    ]
    assert bob.read() == []


def test_report_error_records_it_and_tells_a_member(
    hub: Hub, records: list[dict[str, Any]]
) -> None:
    (alice,) = join(hub, "alice")
    hub.report_error(None, "10.9.9.9:1", Error("rate-limited", "slow down"))
    hub.report_error(alice.member, "10.0.0.1:4000", Error("bad-command", "nope"))
    assert alice.read() == [Error("bad-command", "nope")]
    assert records[-2:] == [
        {
            "event": "error",
            "name": None,
            "peer": "10.9.9.9:1",
            "code": "rate-limited",
            "text": "slow down",
        },
        {
            "event": "error",
            "name": "alice",
            "peer": "10.0.0.1:4000",
            "code": "bad-command",
            "text": "nope",
        },
    ]


# --- shutdown -----------------------------------------------------------------------------


def test_shutdown_comes_once_after_everything_owed(hub: Hub, records: list[dict[str, Any]]) -> None:
    alice, bob = join(hub, "alice", "bob")
    for n in range(3):
        hub.handle(alice.member, Say(f"m{n}"))
    hub.shutdown("maintenance")
    hub.shutdown("again")  # a second call changes nothing
    for inbox in (alice, bob):
        assert [type(f) for f in inbox.read()] == [Message, Message, Message, Shutdown]
        assert inbox.frames[-1] == Shutdown("maintenance")
    assert len(hub) == 0 and hub.names() == ()
    assert records[-1] == {"event": "shutdown", "reason": "maintenance", "members": 2}
    hub.leave(alice.member)  # a connection thread finishing late does no harm
    assert alice.read() == []
    with pytest.raises(Rejected) as refused:
        hub.join("carol", peer="p", wire_format=WireFormat.JSON)
    assert refused.value.code == "shutting-down"


# --- presence storms -------------------------------------------------------------------------


def test_a_join_storm_is_announced_in_gathered_notices() -> None:
    monotonic = Clock(0.0, 0.001)  # a thousand joins a second
    hub = Hub(clock=Clock(), monotonic=monotonic, presence_burst=4)
    (first,) = join(hub, "first")
    names = [f"n{i}" for i in range(10)]
    for name in names:
        hub.join(name, peer="p", wire_format=WireFormat.JSON)
    # Four arrivals (first's own included) came one by one; then the storm was gathered.
    frames = first.read()
    assert [f.name for f in frames if isinstance(f, Joined)] == names[:3]
    assert not [f for f in frames if isinstance(f, Presence)]
    due = hub.presence_due()
    assert due is not None
    hub.tick(due - 0.001)
    assert first.read() == []
    hub.tick(due)
    (notice,) = first.read()
    assert isinstance(notice, Presence)
    assert (notice.joined, notice.left) == (tuple(names[3:]), ())
    assert hub.presence_due() is None


def test_a_gathered_notice_comes_before_anything_said_after_it() -> None:
    hub = Hub(clock=Clock(), monotonic=Clock(0.0, 0.001), presence_burst=2)
    (first,) = join(hub, "first")
    late = [hub.join(f"n{i}", peer="p", wire_format=WireFormat.JSON) for i in range(4)]
    hub.leave(late[0])  # announced arrival, gathered departure
    hub.leave(late[3])  # came and went within one gathering: never mentioned
    hub.handle(late[2], Say("hello"))
    kinds = [type(f) for f in first.read()]
    assert kinds == [Joined, Presence, Message]  # first and n0 one by one, then gathered
    notice = first.frames[1]
    assert isinstance(notice, Presence)
    assert (notice.joined, notice.left) == (("n1", "n2"), ("n0",))
    assert hub.presence_due() is None


def test_a_gathered_notice_stays_within_a_frame() -> None:
    hub = Hub(clock=Clock(), monotonic=Clock(0.0, 0.0001), presence_burst=1)
    (first,) = join(hub, "first")
    for i in range(3000):
        hub.join(f"someone-long-name-{i}", peer="p", wire_format=WireFormat.JSON)
    hub.tick(1e9)
    notices = [f for f in first.read() if isinstance(f, Presence)]
    (notice,) = notices
    assert len(notice.joined) + notice.more_joined == 3000
    assert len(notice.joined) == PRESENCE_NAMES
    assert len(Outbound(notice).json) < MAX_FRAME_BYTES


# --- records and encodings --------------------------------------------------------------------


def test_records_are_json_able_dicts(hub: Hub, records: list[dict[str, Any]]) -> None:
    alice, bob = join(hub, "alice", "Боб")
    hub.handle(alice.member, Say("привет 👋"))
    hub.handle(alice.member, Act("waves"))
    hub.handle(alice.member, Private("боб", "psst"))
    hub.handle(bob.member, Nick("bob"))
    hub.leave(bob.member, "lost")
    hub.shutdown()
    kinds = [e["event"] for e in records]
    assert kinds == ["join", "join", "message", "message", "private", "rename", "leave", "shutdown"]
    for record in records:
        assert json.loads(json.dumps(record, ensure_ascii=False)) == record
    assert records[0] == {
        "event": "join",
        "name": "alice",
        "peer": "10.0.0.1:4000",
        "ts": records[0]["ts"],
        "seq": records[0]["seq"],
    }
    assert records[2]["sender"] == "alice" and records[2]["text"] == "привет 👋"
    assert records[3]["action"] is True
    assert records[4]["to"] == "Боб"
    record_seqs = [e["seq"] for e in records if "seq" in e]
    assert record_seqs == sorted(set(record_seqs))


def test_outbound_encodes_once() -> None:
    out = Outbound(Message("alice", "hi", 1_700_000_000.0, 1))
    first = out.json
    assert out.json is first
    assert decode_frame(first) == out.frame
    text = out.text
    assert out.text is text
    assert text.endswith(b"> hi\r\n")


def test_text_members_read_the_same_events_as_lines(hub: Hub) -> None:
    json_member = hub.join("alice", peer="p", wire_format=WireFormat.JSON)
    text_member = hub.join("bob", peer="p", wire_format=WireFormat.TEXT)
    hub.take(json_member)
    hub.take(text_member)
    hub.handle(json_member, Say("hi"))
    assert hub.take(text_member).endswith(b"<alice> hi\r\n")
    assert decode_frame(hub.take(json_member)).text == "hi"  # type: ignore[attr-defined]


# --- threads ------------------------------------------------------------------------------------


def test_concurrent_senders_see_one_order(hub: Hub) -> None:
    names = [f"user{i}" for i in range(6)]
    inboxes = join(hub, *names)
    per_thread = 200
    barrier = threading.Barrier(len(inboxes))

    def chatter(inbox: Inbox, name: str) -> None:
        barrier.wait(timeout=10)
        for i in range(per_thread):
            if i % 50 == 25:
                hub.handle(inbox.member, Who())
            hub.handle(inbox.member, Say(f"{name} {i}"))
            if i % 20 == 0:
                inbox.read()  # taking while others append

    threads = [
        threading.Thread(target=chatter, args=(inbox, name), daemon=True)
        for inbox, name in zip(inboxes, names, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    reference = None
    for inbox in inboxes:
        messages = [(m.seq, m.text) for m in inbox.of(Message)]
        assert len(messages) == len(names) * per_thread
        assert [s for s, _ in messages] == sorted(s for s, _ in messages)
        reference = reference or messages
        assert messages == reference  # one order for everyone


# --- a model of the hub -------------------------------------------------------------------------

NAMES = st.sampled_from(["ann", "Ann", "bob", "cléo", "Дима", "eve", "eve2", "bad name", ""])


class HubModel(RuleBasedStateMachine):
    """Joins, leaves, renames, messages and private messages in any order, checked
    against a model: every member gets each broadcast it should, exactly once, in one
    global order; names stay unique; a private message reaches its target only."""

    members = Bundle("members")

    def __init__(self) -> None:
        super().__init__()
        self.hub = Hub(clock=Clock(), monotonic=Clock(0.0, 1.0))
        self.inboxes: dict[int, Inbox] = {}  # id(member) -> inbox, present or not
        self.expected: dict[int, list[tuple[str, ...]]] = {}
        self.n = 0

    def _present(self) -> list[Member]:
        return [i.member for i in self.inboxes.values() if i.member.present]

    def _expect(self, who: list[Member], event: tuple[str, ...]) -> None:
        for member in who:
            self.expected[id(member)].append(event)

    @rule(target=members, name=NAMES)
    def join(self, name: str) -> object:
        taken = {name_key(m.name) for m in self._present()}
        valid = name_problem(name.strip()) is None and name_key(name.strip()) not in taken
        others = self._present()
        try:
            member = self.hub.join(name, peer="p", wire_format=WireFormat.JSON)
        except Rejected:
            assert not valid
            return multiple()
        assert valid
        self.inboxes[id(member)] = Inbox(self.hub, member)
        self.expected[id(member)] = [("welcome", member.name)]
        self._expect(others, ("joined", member.name))
        return member

    @rule(member=members)
    def say(self, member: Member) -> None:
        self.n += 1
        self.hub.handle(member, Say(f"m{self.n}"))
        if member.present:
            self._expect(self._present(), ("message", member.name, f"m{self.n}"))

    @rule(member=members, target_index=st.integers(0, 10))
    def whisper(self, member: Member, target_index: int) -> None:
        present = self._present()
        target = present[target_index % len(present)] if present else None
        self.n += 1
        to = target.name if target is not None else "nobody-here"
        error = self.hub.handle(member, Private(to, f"p{self.n}"))
        if not member.present:
            assert error is None
        elif target is None:
            assert error is not None
        else:
            assert error is None
            event = ("private", member.name, target.name, f"p{self.n}")
            self._expect([target] if target is member else [target, member], event)

    @rule(member=members, name=NAMES)
    def rename(self, member: Member, name: str) -> None:
        old = member.name
        taken = {name_key(m.name) for m in self._present() if m is not member}
        error = self.hub.handle(member, Nick(name))
        new = name.strip()
        if not member.present or new == old:
            assert error is None
        elif name_problem(new) is not None or name_key(new) in taken:
            assert error is not None
        else:
            assert error is None and member.name == new
            self._expect(self._present(), ("renamed", old, new))

    @rule(member=consumes(members), reason=st.sampled_from(["quit", "lost", "timeout"]))
    def leave(self, member: Member, reason: str) -> None:
        was_present = member.present
        self.hub.leave(member, reason)
        if was_present:
            self._expect(self._present(), ("left", member.name, reason))

    @precondition(lambda self: self.inboxes)
    @rule(data=st.data())
    def read_some(self, data: st.DataObject) -> None:
        inbox = data.draw(st.sampled_from(list(self.inboxes.values())))
        inbox.read()

    @invariant()
    def names_are_unique_and_as_modelled(self) -> None:
        names = self.hub.names()
        assert len({name_key(n) for n in names}) == len(names)
        assert sorted(names) == sorted(m.name for m in self._present())

    def teardown(self) -> None:
        for key, inbox in self.inboxes.items():
            inbox.read()
            got = [_summary(f) for f in inbox.frames]
            assert got == self.expected[key]
            assert seqs(inbox.frames) == sorted(set(seqs(inbox.frames)))


def _summary(frame: Frame) -> tuple[str, ...]:
    if isinstance(frame, Welcome):
        return ("welcome", frame.name)
    if isinstance(frame, Joined):
        return ("joined", frame.name)
    if isinstance(frame, Message):
        return ("message", frame.sender, frame.text)
    if isinstance(frame, PrivateMessage):
        return ("private", frame.sender, frame.to, frame.text)
    if isinstance(frame, Renamed):
        return ("renamed", frame.old, frame.new)
    if isinstance(frame, Left):
        return ("left", frame.name, frame.reason)
    return ("other", frame.TYPE)


HubModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_hub_against_its_model = HubModel.TestCase

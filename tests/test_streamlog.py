"""StreamLog: shared outbound streams with a cursor per member (no sockets)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.hub import Hub, Outbound
from netchat.protocol.frames import Info, Message, Say, Welcome, decode_frame
from netchat.protocol.render import render_text
from netchat.transport import streamlog
from netchat.transport.streamlog import StreamLog


class FakeSession:
    """A session that reads text (plain) or JSON (structured)."""

    def __init__(self, peer: str, structured: bool = False) -> None:
        self.peer = peer
        self.structured = structured
        self.direct: list[Outbound] = []
        self.closed: list[str] = []

    def deliver(self, out: Outbound) -> bool:
        self.direct.append(out)
        return True

    def close(self, reason: str) -> None:
        self.closed.append(reason)


def make_log() -> StreamLog:
    return StreamLog(lambda session: not getattr(session, "structured", False))


def message(n: int, text: str = "hi") -> Outbound:
    return Outbound(Message("alice", f"{text} {n}", 1.0, n))


def test_a_member_gets_broadcasts_from_its_join_on_with_its_own_frames_in_place() -> None:
    log = make_log()
    early, late = FakeSession("early"), FakeSession("late")
    log.add(early)
    log.broadcast(message(1))
    log.add(late)
    log.send(late, Outbound(Info("just for late")))
    log.broadcast(message(2))
    assert log.take(early) == message(1).text + message(2).text
    assert log.take(late) == Outbound(Info("just for late")).text + message(2).text
    assert log.take(early) == b"" and log.pending(early) == 0


def test_json_and_text_members_read_their_own_format() -> None:
    log = make_log()
    plain, structured = FakeSession("plain"), FakeSession("structured", structured=True)
    log.add(plain)
    log.add(structured)
    out = message(7, "привет")
    log.broadcast(out)
    assert log.take(plain) == render_text(out.frame, 0.0)  # a message shows its own ts
    assert decode_frame(log.take(structured)) == out.frame


def test_a_member_that_left_is_owed_what_came_before_and_nothing_after() -> None:
    log = make_log()
    leaving = FakeSession("leaving")
    log.add(leaving)
    log.broadcast(message(1))
    log.remove(leaving)
    log.broadcast(message(2))
    assert log.send(leaving, message(3)) is False  # not a member: the hub sends directly
    assert log.pending(leaving) == len(message(1).text)
    assert log.take(leaving) == message(1).text
    assert not log.owes(leaving)


def test_pending_counts_stream_bytes_and_patches_and_owes_agrees() -> None:
    log = make_log()
    member = FakeSession("m")
    assert not log.owes(member) and log.pending(member) == 0
    log.add(member)
    log.broadcast(message(1))
    log.send(member, message(2))
    assert log.owes(member)
    assert log.pending(member) == len(message(1).text) + len(message(2).text)


def test_a_format_nobody_reads_is_not_encoded() -> None:
    log = make_log()
    log.add(FakeSession("plain"))
    out = message(1)
    log.broadcast(out)
    object.__getattribute__(out, "text")  # the text slot was filled …
    with pytest.raises(AttributeError):
        object.__getattribute__(out, "json")  # … the JSON one never was


def test_the_stream_is_trimmed_once_everyone_has_read_it() -> None:
    log = make_log()
    fast, slow = FakeSession("fast"), FakeSession("slow")
    log.add(fast)
    log.add(slow)
    big = Outbound(Info("x" * 1000))
    for _ in range(3 * streamlog.TRIM_BYTES // 1000):
        log.broadcast(big)
        log.take(fast)
    # The slow member pins the stream: nothing it is owed was cut.
    assert log.pending(slow) == 3 * streamlog.TRIM_BYTES // 1000 * len(big.text)
    everything = log.take(slow)
    assert everything == big.text * (3 * streamlog.TRIM_BYTES // 1000)
    # Once both have read it, the stream is cut within TRIM_BYTES of further traffic.
    for _ in range(streamlog.TRIM_BYTES // 1000):
        log.broadcast(big)
        log.take(fast)
        log.take(slow)
    assert len(log._streams[True]) <= streamlog.TRIM_BYTES


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["broadcast", "send", "take", "join", "leave"]),
            st.integers(min_value=0, max_value=2),
        ),
        max_size=60,
    )
)
def test_every_member_receives_exactly_its_frames_in_order(ops: list[tuple[str, int]]) -> None:
    """Model check: concatenated takes equal what a per-member queue would hold."""
    log = make_log()
    sessions = [FakeSession(f"s{i}", structured=i == 1) for i in range(3)]
    member = [False] * 3
    expected: list[list[bytes]] = [[], [], []]
    received: list[bytes] = [b"", b"", b""]
    for n, (op, who) in enumerate(ops):
        session = sessions[who]
        if op == "join" and not member[who]:
            log.add(session)
            member[who] = True
        elif op == "leave" and member[who]:
            log.remove(session)
            member[who] = False
        elif op == "broadcast":
            out = message(n)
            log.broadcast(out)
            for i in range(3):
                if member[i]:
                    expected[i].append(out.json if sessions[i].structured else out.text)
        elif op == "send":
            out = Outbound(Info(f"for {who} #{n}"))
            if log.send(session, out):
                expected[who].append(out.json if session.structured else out.text)
            else:
                assert not member[who]
        elif op == "take":
            received[who] += log.take(session)
    for i in range(3):
        received[i] += log.take(sessions[i])
        assert received[i] == b"".join(expected[i])


def test_with_a_hub_members_get_welcome_broadcasts_and_errors_through_the_log() -> None:
    hub = Hub()
    log = make_log()
    hub.fanout = log
    alice, bob = FakeSession("alice"), FakeSession("bob", structured=True)
    hub.join(alice, "alice")
    hub.join(bob, "bob")
    hub.handle(alice, Say("hello"))
    hub.report_error(bob, "bad-command", "nope")
    stranger = FakeSession("stranger")
    hub.report_error(stranger, "not-joined", "join first")  # not a member: delivered directly
    assert [o.frame.TYPE for o in stranger.direct] == ["error"]
    frames = [decode_frame(line) for line in log.take(bob).splitlines()]
    assert isinstance(frames[0], Welcome)
    assert [f.TYPE for f in frames] == ["welcome", "message", "error"]
    text = log.take(alice).decode()
    assert "Welcome, alice!" in text and "-!- bob joined" in text and "<alice> hello" in text
    hub.leave(bob)
    hub.handle(alice, Say("after bob"))
    assert log.take(bob) == b""  # bob left before "after bob"
    hub.shutdown("bye")
    assert "server is shutting down: bye" in log.take(alice).decode()
    assert alice.closed == ["server shutting down"]


def test_concurrent_broadcasts_and_takes_lose_nothing() -> None:
    log = make_log()
    readers = [FakeSession(f"r{i}") for i in range(4)]
    for reader in readers:
        log.add(reader)
    lock = threading.Lock()  # stands in for the hub's lock: broadcasts are serialised
    total = 2000
    outs = [message(n) for n in range(total)]

    def produce() -> None:
        for out in outs:
            with lock:
                log.broadcast(out)

    received = {reader.peer: bytearray() for reader in readers}

    def consume(reader: FakeSession) -> None:
        for _ in range(20_000):  # bounded
            received[reader.peer] += log.take(reader)
            if len(received[reader.peer]) >= sum(len(o.text) for o in outs):
                return

    threads = [threading.Thread(target=produce)] + [
        threading.Thread(target=consume, args=(r,)) for r in readers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    whole = b"".join(o.text for o in outs)
    for reader in readers:
        received[reader.peer] += log.take(reader)
        assert bytes(received[reader.peer]) == whole

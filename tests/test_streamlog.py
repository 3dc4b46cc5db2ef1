"""StreamLog: shared outbound streams with a cursor per member (netchat/streamlog.py)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat import streamlog
from netchat.hub import Outbound
from netchat.protocol.frames import Info, Message, decode_frame
from netchat.protocol.render import render_text
from netchat.streamlog import Cursor, StreamLog, WireFormat

TEXT, JSON = WireFormat.TEXT, WireFormat.JSON


def message(n: int, text: str = "hi") -> Outbound:
    return Outbound(Message("alice", f"{text} {n}", 1.0, n))


def encoded(out: Outbound, cursor: Cursor) -> bytes:
    return out.text if cursor.format is TEXT else out.json


def test_a_member_gets_broadcasts_from_its_join_on_with_its_own_frames_in_place() -> None:
    log = StreamLog()
    early = log.open(TEXT)
    log.broadcast(message(1))
    late = log.open(TEXT)
    log.patch(late, Outbound(Info("just for late")))
    log.broadcast(message(2))
    assert log.take(early) == message(1).text + message(2).text
    assert log.take(late) == Outbound(Info("just for late")).text + message(2).text
    assert log.take(early) == b"" and log.owed(early) == 0


def test_json_and_text_members_read_their_own_format() -> None:
    log = StreamLog()
    plain, structured = log.open(TEXT), log.open(JSON)
    out = message(7, "привет")
    log.broadcast(out)
    assert log.take(plain) == render_text(out.frame, 0.0)  # a message shows its own ts
    assert decode_frame(log.take(structured)) == out.frame


def test_a_member_that_left_is_owed_what_came_before_and_nothing_after() -> None:
    log = StreamLog()
    leaving = log.open(TEXT)
    log.broadcast(message(1))
    log.stop(leaving)
    log.broadcast(message(2))
    log.patch(leaving, message(3))  # not a member any more: ignored
    assert log.owed(leaving) == len(message(1).text)
    assert log.take(leaving) == message(1).text
    assert not log.may_owe(leaving) and log.take(leaving) == b""


def test_owed_counts_stream_bytes_and_patches_and_may_owe_agrees() -> None:
    log = StreamLog()
    member = log.open(TEXT)
    assert not log.may_owe(member) and log.owed(member) == 0
    log.broadcast(message(1))
    log.patch(member, message(2))
    assert log.may_owe(member)
    assert log.owed(member) == len(message(1).text) + len(message(2).text)


def test_a_format_nobody_reads_is_not_encoded() -> None:
    log = StreamLog()
    log.open(TEXT)
    out = message(1)
    log.broadcast(out)
    object.__getattribute__(out, "text")  # the text slot was filled …
    with pytest.raises(AttributeError):
        object.__getattribute__(out, "json")  # … the JSON one never was


def test_a_closed_cursor_is_owed_nothing_and_pins_nothing() -> None:
    log = StreamLog()
    gone, reader = log.open(TEXT), log.open(TEXT)
    log.broadcast(message(1))
    log.close(gone)
    log.close(gone)  # idempotent
    assert log.take(gone) == b"" and log.owed(gone) == 0
    big = Outbound(Info("x" * 1000))
    for _ in range(2 * streamlog.TRIM_BYTES // 1000):
        log.broadcast(big)
        log.take(reader)
    assert log.owed(reader) == 0
    # `gone` never read, yet the stream was cut.
    assert len(log._text.data) + len(log._json.data) <= streamlog.TRIM_BYTES


def test_the_stream_is_trimmed_once_everyone_has_read_it() -> None:
    log = StreamLog()
    fast, slow = log.open(TEXT), log.open(TEXT)
    big = Outbound(Info("x" * 1000))
    rounds = 3 * streamlog.TRIM_BYTES // 1000
    for _ in range(rounds):
        log.broadcast(big)
        log.take(fast)
    # The slow member pins the stream: nothing it is owed was cut.
    assert log.owed(slow) == rounds * len(big.text)
    assert log.take(slow) == big.text * rounds
    # Once both have read it, the stream is cut within TRIM_BYTES of further traffic.
    for _ in range(streamlog.TRIM_BYTES // 1000):
        log.broadcast(big)
        log.take(fast)
        log.take(slow)
    assert log.owed(fast) == 0
    # Memory is the point here, so the test looks at the private buffers.
    assert len(log._text.data) + len(log._json.data) <= streamlog.TRIM_BYTES


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["broadcast", "patch", "take", "join", "leave"]),
            st.integers(min_value=0, max_value=2),
        ),
        max_size=60,
    )
)
def test_every_member_receives_exactly_its_frames_in_order(ops: list[tuple[str, int]]) -> None:
    """Model check: concatenated takes equal what a per-member queue would hold."""
    log = StreamLog()
    formats = [TEXT, JSON, TEXT]
    cursors: list[Cursor | None] = [None, None, None]
    past: list[list[Cursor]] = [[], [], []]  # a member may join again with a new cursor
    expected: list[list[bytes]] = [[], [], []]
    received: list[bytes] = [b"", b"", b""]
    for n, (op, who) in enumerate(ops):
        cursor = cursors[who]
        if op == "join" and cursor is None:
            cursors[who] = log.open(formats[who])
        elif op == "leave" and cursor is not None:
            log.stop(cursor)
            past[who].append(cursor)
            cursors[who] = None
        elif op == "broadcast":
            out = message(n)
            log.broadcast(out)
            for i in range(3):
                current = cursors[i]
                if current is not None:
                    expected[i].append(encoded(out, current))
        elif op == "patch" and cursor is not None:
            out = Outbound(Info(f"for {who} #{n}"))
            log.patch(cursor, out)
            expected[who].append(encoded(out, cursor))
        elif op == "take":
            for old in past[who]:
                received[who] += log.take(old)
            if cursor is not None:
                received[who] += log.take(cursor)
    for i in range(3):
        for old in past[i]:
            received[i] += log.take(old)
        current = cursors[i]
        if current is not None:
            received[i] += log.take(current)
        assert received[i] == b"".join(expected[i])


def test_concurrent_broadcasts_and_takes_lose_nothing() -> None:
    log = StreamLog()
    readers = [log.open(TEXT) for _ in range(4)]
    lock = threading.Lock()  # stands in for the hub's lock: broadcasts are serialised
    total = 2000
    outs = [message(n) for n in range(total)]
    whole = b"".join(o.text for o in outs)

    def produce() -> None:
        for out in outs:
            with lock:
                log.broadcast(out)

    received = [bytearray() for _ in readers]

    def consume(index: int) -> None:
        for _ in range(20_000):  # bounded
            received[index] += log.take(readers[index])
            if len(received[index]) >= len(whole):
                return

    threads = [threading.Thread(target=produce)] + [
        threading.Thread(target=consume, args=(i,)) for i in range(len(readers))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for index, reader in enumerate(readers):
        received[index] += log.take(reader)
        assert bytes(received[index]) == whole

"""The datagram layer, without sockets: codec, packing, sequencing, cookies, limiters."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.errors import RemoteProtocolError
from netchat.protocol import datagram as dg
from netchat.protocol.frames import Message, Say, decode_frame, encode_frame
from netchat.protocol.limits import MAX_DATAGRAM_BYTES

# --- codec -----------------------------------------------------------------------


@given(st.binary(max_size=2 * MAX_DATAGRAM_BYTES))
@settings(max_examples=500)
def test_any_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    try:
        dg.decode_datagram(data)
    except RemoteProtocolError as exc:
        assert exc.code


@given(st.integers(0, 255), st.binary(max_size=60))
def test_any_kind_byte_with_a_valid_prefix(kind: int, body: bytes) -> None:
    try:
        dg.decode_datagram(b"nc\x01" + bytes([kind]) + body)
    except RemoteProtocolError as exc:
        assert exc.code in {"unknown-kind", "malformed", "bad-utf8"}


def test_every_truncation_of_a_valid_datagram_is_handled() -> None:
    samples = [
        dg.encode_data(7, encode_frame(Say("hello")) + encode_frame(Say("again"))),
        dg.encode_hello(bytes(16), encode_frame(Say("x"))),
        dg.encode_accept(1, 100, "bob"),
        dg.encode_pong(1, 2),
        dg.encode_peer(b"abcdefgh", 3, encode_frame(Say("y"))),
    ]
    for full in samples:
        for cut in range(len(full)):
            with contextlib.suppress(RemoteProtocolError):
                dg.decode_datagram(full[:cut])


def test_round_trips() -> None:
    cookie = bytes(range(16))
    assert dg.decode_datagram(dg.encode_hello(cookie, b"{}")) == dg.Hello(cookie, b"{}")
    assert dg.decode_datagram(dg.encode_cookie(cookie)) == dg.Cookie(cookie)
    assert dg.decode_datagram(dg.encode_accept(1, 5000, "zoë")) == dg.Accept(1, 5000, "zoë")
    assert dg.decode_datagram(dg.encode_ping(3, 9)) == dg.Ping(3, 9)
    assert dg.decode_datagram(dg.encode_pong(3, 9)) == dg.Pong(3, 9)
    assert dg.decode_datagram(dg.encode_pong(3, 9, 2**64 - 1)) == dg.Pong(3, 9, 2**64 - 1)
    assert len(dg.encode_pong(3, 9, 0)) == len(dg.encode_pong(3, 9)) + 8
    report = dg.Report(10, 2, 9, 52_500, 410, 1, 64, 7, 1, 3)
    assert dg.decode_datagram(dg.encode_pong(3, 9, 5, report)) == dg.Pong(3, 9, 5, report)
    assert dg.decode_datagram(dg.encode_bye("quit")) == dg.Bye("quit")
    assert dg.decode_datagram(dg.encode_notice("not-joined")) == dg.Notice("not-joined")
    assert dg.decode_datagram(dg.encode_peer(b"12345678", 4, b"{}\n")) == dg.PeerData(
        b"12345678", 4, b"{}\n"
    )
    two = encode_frame(Say("a")) + encode_frame(Say("b"))
    assert dg.decode_datagram(dg.encode_data(10, two)) == dg.Data(
        10, (encode_frame(Say("a")), encode_frame(Say("b")))
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "magic"),
        (b"xx\x01\x05", "magic"),
        (b"nc\x02\x05" + bytes(9), "version"),
        (b"nc\x01\x63", "unknown-kind"),
        (b"nc\x01\x05\x00", "malformed"),  # truncated DATA header
        (dg.encode_data(1, b"no newline"), "malformed"),
        (dg.encode_data(1, b""), "malformed"),
        (b"nc\x01\x05" + bytes(8) + b"\x80" + b"{}\n", "malformed"),  # unknown flag
        (dg.encode_data(1, b"x" * MAX_DATAGRAM_BYTES), "too-large"),
    ],
)
def test_bad_datagrams_have_codes(data: bytes, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        dg.decode_datagram(data)
    assert info.value.code == code


def test_a_cookie_reply_is_never_larger_than_a_hello() -> None:
    assert len(dg.encode_cookie(bytes(16))) <= len(dg.encode_hello(dg.NO_COOKIE))
    assert len(dg.encode_notice("not-joined")) <= len(dg.encode_ping(0, 0))


# --- packing and reassembly ----------------------------------------------------------


def _frames(n: int, size: int = 40) -> list[bytes]:
    return [encode_frame(Message("a", "x" * size + str(i), 1.0, i)) for i in range(n)]


def _unpack(datagrams: list[bytes]) -> list[bytes]:
    reassembler = dg.Reassembler()
    out = []
    for raw in datagrams:
        assert len(raw) <= MAX_DATAGRAM_BYTES
        data = dg.decode_datagram(raw)
        assert isinstance(data, dg.Data)
        last = len(data.units) - 1
        for i, unit in enumerate(data.units):
            whole = reassembler.feed(unit, cont=i == 0 and data.cont, more=i == last and data.more)
            if whole is not None:
                out.append(whole)
    return out


def test_pack_batches_in_order_within_the_size_limit() -> None:
    frames = _frames(100)
    datagrams, next_seq = dg.pack_data(1, frames)
    assert next_seq == 101
    assert len(datagrams) < 20
    assert _unpack(datagrams) == frames


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=8))
def test_pack_fragments_large_frames_and_keeps_numbering(sizes: list[int]) -> None:
    frames = [encode_frame(Message("a", "é" * (size // 2), 1.0, 1)) for size in sizes]
    datagrams, next_seq = dg.pack_data(5, frames)
    assert _unpack(datagrams) == frames
    units = sum(len(d.units) for d in map(dg.decode_datagram, datagrams) if isinstance(d, dg.Data))
    assert next_seq == 5 + units


def test_reassembler_drops_a_frame_whose_piece_was_lost() -> None:
    big = encode_frame(Say("y" * 3000))
    small = encode_frame(Say("ok"))
    datagrams, _ = dg.pack_data(1, [big, small])
    decoded = [dg.decode_datagram(d) for d in datagrams]
    reassembler = dg.Reassembler()
    out = []
    for index, data in enumerate(decoded):
        assert isinstance(data, dg.Data)
        if index == 1:  # the middle piece is lost
            reassembler.gap()
            continue
        last = len(data.units) - 1
        for i, unit in enumerate(data.units):
            whole = reassembler.feed(unit, cont=i == 0 and data.cont, more=i == last and data.more)
            if whole is not None:
                out.append(whole)
    assert out == [small]
    assert decode_frame(out[0]) == Say("ok")


# --- sequence tracking -------------------------------------------------------------------


def test_in_order_delivery() -> None:
    tracker: dg.SequenceTracker[str] = dg.SequenceTracker()
    assert tracker.accept(1, "a", 0.0) == ["a"]
    assert tracker.accept(2, "b", 0.0) == ["b"]
    assert (tracker.delivered, tracker.lost, tracker.duplicates) == (2, 0, 0)


def test_duplicates_are_dropped_and_counted() -> None:
    tracker: dg.SequenceTracker[str] = dg.SequenceTracker()
    tracker.accept(1, "a", 0.0)
    assert tracker.accept(1, "a", 0.0) == []
    tracker.accept(3, "c", 0.0)
    assert tracker.accept(3, "c", 0.0) == []
    assert tracker.duplicates == 2


def test_reordering_within_the_window_is_repaired() -> None:
    tracker: dg.SequenceTracker[str] = dg.SequenceTracker()
    assert tracker.accept(2, "b", 0.0) == []
    assert tracker.accept(3, "c", 0.05) == []
    assert tracker.accept(1, "a", 0.1) == ["a", "b", "c"]
    assert tracker.reordered == 1
    assert tracker.lost == 0


def test_a_hole_becomes_a_gap_after_the_window() -> None:
    tracker: dg.SequenceTracker[str] = dg.SequenceTracker(reorder_window=0.2)
    tracker.accept(1, "a", 0.0)
    assert tracker.accept(4, "d", 1.0) == []
    assert tracker.deadline() == pytest.approx(1.2)
    assert tracker.poll(1.1) == []
    assert tracker.poll(1.2) == [dg.Gap(2), "d"]
    assert tracker.lost == 2
    assert tracker.accept(2, "b", 1.3) == []  # too late now
    assert tracker.late == 1


def test_buffer_overflow_forces_the_gap() -> None:
    tracker: dg.SequenceTracker[int] = dg.SequenceTracker(max_buffered=4)
    released: list[int | dg.Gap] = []
    for seq in range(3, 9):
        released += tracker.accept(seq, seq, 0.0)
    assert released[0] == dg.Gap(2)
    assert released[1:] == [3, 4, 5, 6, 7, 8]


def test_huge_forged_sequence_numbers_are_not_believed() -> None:
    tracker: dg.SequenceTracker[str] = dg.SequenceTracker()
    assert tracker.accept(2**63, "evil", 0.0) == []
    assert tracker.advance_to(2**64 - 1, 0.0) == []
    assert tracker.invalid == 2
    assert tracker.accept(1, "a", 1.0) == ["a"]
    assert tracker.lost == 0


def test_advance_to_reports_a_lost_tail() -> None:
    tracker: dg.SequenceTracker[str] = dg.SequenceTracker(reorder_window=0.2)
    tracker.accept(1, "a", 0.0)
    assert tracker.advance_to(4, 1.0) == []
    assert tracker.accept(2, "b", 1.1) == ["b"]
    assert tracker.poll(1.5) == [dg.Gap(1)]
    assert tracker.next_seq == 4


@given(
    st.permutations(list(range(1, 41))),
    st.sets(st.integers(1, 40), max_size=10),
    st.lists(st.integers(1, 40), max_size=10),
)
def test_tracker_never_delivers_twice_or_out_of_order(
    order: list[int], dropped: set[int], duplicated: list[int]
) -> None:
    tracker: dg.SequenceTracker[int] = dg.SequenceTracker(reorder_window=1.0)
    arrivals = [s for s in order if s not in dropped] + [d for d in duplicated if d not in dropped]
    delivered: list[int] = []
    lost = 0
    for step, seq in enumerate(arrivals):
        for item in tracker.accept(seq, seq, step * 0.01):
            if isinstance(item, dg.Gap):
                lost += item.count
            else:
                delivered.append(item)
    for item in tracker.advance_to(41, 100.0) + tracker.poll(200.0):
        if isinstance(item, dg.Gap):
            lost += item.count
        else:
            delivered.append(item)
    assert delivered == sorted(delivered)
    assert len(set(delivered)) == len(delivered)
    assert len(delivered) + lost == 40
    assert lost == tracker.lost


def test_replay_window() -> None:
    window = dg.ReplayWindow(size=8)
    assert window.check(1)
    assert window.check(3, 2)
    assert not window.check(3)
    assert window.check(2)
    assert window.check(20)
    assert not window.check(5)  # older than the window
    assert not window.check(20 + 10_000)
    assert (window.duplicates, window.invalid) == (2, 1)


# --- cookies and limiters ------------------------------------------------------------------


def _jar() -> dg.CookieJar:
    secrets = iter(bytes([n]) * 32 for n in range(1, 100))
    return dg.CookieJar(lifetime=30.0, random_bytes=lambda n: next(secrets))


def test_cookie_validates_for_its_address_only() -> None:
    jar = _jar()
    cookie = jar.issue("127.0.0.1", 5000, now=100.0)
    assert jar.verify(cookie, "127.0.0.1", 5000, now=101.0)
    assert not jar.verify(cookie, "127.0.0.1", 5001, now=101.0)
    assert not jar.verify(cookie, "127.0.0.2", 5000, now=101.0)


def test_cookie_expires_after_two_buckets() -> None:
    jar = _jar()
    cookie = jar.issue("127.0.0.1", 5000, now=100.0)  # bucket 3
    jar.issue("127.0.0.1", 1, now=125.0)  # bucket 4: the secret rotates
    assert jar.verify(cookie, "127.0.0.1", 5000, now=125.0)
    assert not jar.verify(cookie, "127.0.0.1", 5000, now=155.0)  # bucket 5


@given(st.binary(min_size=16, max_size=16))
def test_forged_cookies_fail(forged: bytes) -> None:
    jar = _jar()
    real = jar.issue("127.0.0.1", 5000, now=100.0)
    if forged != real:
        assert not jar.verify(forged, "127.0.0.1", 5000, now=100.0)
    assert not jar.verify(forged[:15], "127.0.0.1", 5000, now=100.0)


def test_source_limiter_is_fixed_size_and_refills() -> None:
    limiter = dg.SourceLimiter(rate=1.0, burst=2.0, slots=4)
    assert limiter.allow("127.0.0.1", 0.0)
    assert limiter.allow("127.0.0.1", 0.0)
    assert not limiter.allow("127.0.0.1", 0.0)
    assert limiter.allow("127.0.0.1", 1.0)
    for n in range(1000):
        limiter.allow(f"10.0.{n // 256}.{n % 256}", 2.0)
    assert len(limiter._tokens) == 4


def test_a_real_jump_is_followed_once_confirmed() -> None:
    tracker: dg.SequenceTracker[int] = dg.SequenceTracker(max_jump=100)
    tracker.accept(1, 1, 0.0)
    assert tracker.accept(5000, 5000, 0.0) == []
    assert tracker.accept(5001, 5001, 0.0) == []
    assert tracker.accept(5002, 5002, 0.0) == [dg.Gap(4998), 5000, 5001, 5002]
    assert tracker.next_seq == 5003


def test_replay_window_follows_a_confirmed_jump() -> None:
    window = dg.ReplayWindow(max_jump=100)
    assert window.check(1)
    assert not window.check(5000)
    assert not window.check(5001)
    assert window.check(5002)
    assert window.check(5003)
    assert not window.check(5002)


# --- bounded whatever numbers arrive (issue 6, item 1) ----------------------------------

JUMPS = [2**32, 2**62, 2**64 - 4]  # the last: the largest an 8-byte header can carry


def _peak_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("jump", JUMPS)
def test_a_believed_jump_does_not_grow_the_replay_window(jump: int) -> None:
    # A member jumping its numbers by 2**k made the relay build a 2**k-bit integer
    # (512 MiB for 2**32) before masking it to the window.
    window = dg.ReplayWindow()
    assert window.check(1)

    def jump_three_times() -> None:
        for n in range(3):  # RESYNC_AFTER agreeing units: believed
            window.check(jump + n)

    assert _peak_bytes(jump_three_times) < 64 * 1024
    assert window.highest == jump + 2
    assert window._seen.bit_length() <= window.size
    assert window.check(jump + 3) and not window.check(jump + 3)
    assert not window.check(1)  # the old numbers are far behind the window now


@pytest.mark.parametrize("jump", JUMPS)
def test_trackers_and_reassemblers_stay_small_after_huge_jumps(jump: int) -> None:
    tracker: dg.SequenceTracker[bytes] = dg.SequenceTracker()
    reassembler = dg.Reassembler()

    def feed() -> None:
        tracker.accept(1, b"a\n", 0.0)
        for n in range(10):
            for item in tracker.accept(jump + n, b"piece", 0.0):
                if isinstance(item, dg.Gap):
                    reassembler.gap()
                else:
                    reassembler.feed(item, cont=n > 0, more=True)
        tracker.advance_to(2 * jump, 0.1)
        tracker.poll(10.0)

    assert _peak_bytes(feed) < 64 * 1024
    assert tracker.buffered <= tracker.max_buffered
    assert tracker.lost == jump - 2


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 600)), max_size=40))
@settings(max_examples=200, deadline=None)
def test_replay_window_memory_is_bounded_for_any_numbers(checks: list[tuple[int, int]]) -> None:
    window = dg.ReplayWindow()
    for first, count in checks:
        window.check(first, count)
        assert window._seen.bit_length() <= window.size


def test_a_pong_report_saturates_and_must_be_whole() -> None:
    huge = dg.Report(2**40, -5, 0, 0, 0, 70_000, 64, 0, 0, 0)
    assert dg.decode_datagram(dg.encode_pong(1, 2, 0, huge)) == dg.Pong(
        1, 2, 0, dg.Report(2**32 - 1, 0, 0, 0, 0, 0xFFFF, 64, 0, 0, 0)
    )
    with pytest.raises(RemoteProtocolError) as info:
        dg.decode_datagram(dg.encode_pong(1, 2) + bytes(35))
    assert info.value.code == "malformed"

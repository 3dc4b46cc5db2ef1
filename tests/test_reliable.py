"""The reliable-UDP core (``--proto rudp``), without sockets: a fake clock and a simulated
link that drops, duplicates, delays and reorders datagrams as a schedule says."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netchat.errors import LocalProtocolError, RemoteProtocolError
from netchat.protocol import datagram as dg
from netchat.protocol import reliable as rel
from netchat.protocol.frames import Say, encode_frame
from netchat.protocol.limits import MAX_DATAGRAM_BYTES

ROOM = rel.ROOM
W = rel.DEFAULT_WINDOW


def say(text: str) -> bytes:
    return encode_frame(Say(text))


def decode_ack(datagram: bytes | None) -> dg.Ack:
    assert datagram is not None
    ack = dg.decode_datagram(datagram)
    assert isinstance(ack, dg.Ack)
    return ack


def decode_data(datagram: bytes) -> dg.Data:
    data = dg.decode_datagram(datagram)
    assert isinstance(data, dg.Data)
    return data


def ack(cumulative: int, *ranges: tuple[int, int], echo: int = 0, delay_us: int = 0) -> dg.Ack:
    return dg.Ack(cumulative, echo, delay_us, rel.DEFAULT_WINDOW, tuple(ranges))


def sent_one_by_one(sender: rel.Sender, frames: list[bytes], now: float) -> list[bytes]:
    """Send each frame in its own datagram (transmit after each send), as at chat rates."""
    datagrams = []
    for frame in frames:
        assert sender.send(frame)
        datagrams += sender.transmit(now)
    return datagrams


# --- the ACK codec -------------------------------------------------------------------


def test_ack_round_trips() -> None:
    for sample in [
        dg.Ack(1, 1, 0, 256),
        dg.Ack(10, 12, 4_999, 256, ((12, 13), (15, 40))),
        dg.Ack(2**63, 2**63 + 5, 2**32 - 1, 0xFFFF, ((2**63 + 1, 2**63 + 2),)),
    ]:
        assert dg.decode_datagram(dg.encode_ack(sample)) == sample


def test_the_largest_ack_fits_in_a_datagram() -> None:
    ranges = tuple((10 + 2 * i, 11 + 2 * i) for i in range(dg.MAX_SACK_RANGES))
    encoded = dg.encode_ack(dg.Ack(9, 9, 0, 256, ranges))
    assert len(encoded) == 27 + 8 * dg.MAX_SACK_RANGES <= MAX_DATAGRAM_BYTES
    assert dg.decode_datagram(encoded) == dg.Ack(9, 9, 0, 256, ranges)


def test_the_widest_ranges_round_trip() -> None:
    widest = dg.Ack(5, 5, 0, 1, ((5 + 0xFFFF_FFFF, 5 + 2 * 0xFFFF_FFFF),))
    assert dg.decode_datagram(dg.encode_ack(widest)) == widest


def test_ack_delay_is_clamped_to_its_field() -> None:
    assert decode_ack(dg.encode_ack(dg.Ack(1, 1, 2**40, 1))).delay_us == 2**32 - 1
    assert decode_ack(dg.encode_ack(dg.Ack(1, 1, -5, 1))).delay_us == 0


@pytest.mark.parametrize(
    "ranges",
    [
        ((5, 6),),  # at the cumulative point, which the ACK says is missing
        ((7, 7),),  # empty
        ((7, 9), (9, 10)),  # touching: should have been one range
        ((7, 9), (8, 12)),  # overlapping
        ((12, 13), (7, 8)),  # out of order
        ((6, 7 + 2**32),),  # longer than 4 bytes of length say
        ((5 + 2**32, 5 + 2**32 + 1),),  # further than 4 bytes of offset say
        tuple((7 + 2 * i, 8 + 2 * i) for i in range(dg.MAX_SACK_RANGES + 1)),
    ],
)
def test_encoding_a_bad_ack_is_a_local_error(ranges: tuple[tuple[int, int], ...]) -> None:
    with pytest.raises(LocalProtocolError):
        dg.encode_ack(dg.Ack(5, 5, 0, 256, ranges))


def _ack_bytes(count: int, body: bytes, cumulative: int = 100) -> bytes:
    header = dg.HEADERS[dg.Kind.ACK].pack(dg.MAGIC, 1, dg.Kind.ACK, cumulative, 1, 0, 256, count)
    return header + body


@pytest.mark.parametrize(
    "datagram",
    [
        _ack_bytes(1, b""),  # count says one range, body has none
        _ack_bytes(0, bytes(8)),  # trailing bytes
        _ack_bytes(1, bytes(7)),  # truncated range
        _ack_bytes(1, (0).to_bytes(4, "big") + (1).to_bytes(4, "big")),  # offset 0
        _ack_bytes(1, (1).to_bytes(4, "big") + (0).to_bytes(4, "big")),  # empty
        _ack_bytes(2, bytes.fromhex("00000001 00000002 00000003 00000001")),  # touching
        _ack_bytes(2, bytes.fromhex("00000005 00000001 00000002 00000001")),  # descending
        _ack_bytes(dg.MAX_SACK_RANGES + 1, bytes(8 * (dg.MAX_SACK_RANGES + 1))),
        _ack_bytes(0, b"")[:-1],  # truncated header
    ],
)
def test_decoding_a_bad_ack_is_malformed(datagram: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        dg.decode_datagram(datagram)
    assert caught.value.code == "malformed"


@given(st.binary(max_size=2 * MAX_DATAGRAM_BYTES))
@settings(max_examples=500)
def test_any_ack_body_decodes_to_a_well_formed_ack_or_raises(body: bytes) -> None:
    try:
        decoded = dg.decode_datagram(b"nc\x01\x0b" + body)
    except RemoteProtocolError as exc:
        assert exc.code in {"malformed", "too-large"}
        return
    assert isinstance(decoded, dg.Ack)
    assert len(decoded.ranges) <= dg.MAX_SACK_RANGES
    lowest = decoded.cumulative + 1
    for start, end in decoded.ranges:
        assert lowest <= start < end
        lowest = end + 1
    assert dg.decode_datagram(dg.encode_ack(decoded)) == decoded


@st.composite
def valid_acks(draw: st.DrawFn) -> dg.Ack:
    cumulative = draw(st.integers(0, 2**64 - 2**33))
    ranges = []
    lowest = cumulative + 1
    for _ in range(draw(st.integers(0, dg.MAX_SACK_RANGES))):
        start = lowest + draw(st.integers(0, 1000))
        end = start + draw(st.integers(1, 1000))
        ranges.append((start, end))
        lowest = end + 1
    return dg.Ack(
        cumulative,
        draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 0xFFFF)),
        tuple(ranges),
    )


@given(valid_acks())
def test_every_valid_ack_round_trips(sample: dg.Ack) -> None:
    assert dg.decode_datagram(dg.encode_ack(sample)) == sample


# --- the receiver --------------------------------------------------------------------


def test_in_order_datagrams_deliver_at_once_and_are_acknowledged_every_second_one() -> None:
    a, b, c = say("один"), say("два"), say("три")
    receiver = rel.Receiver()
    assert receiver.on_data(dg.Data(1, (a,)), now=10.0) == [a]
    assert receiver.take_ack(10.0) is None  # the first of two may wait ...
    assert receiver.next_deadline() == 10.0 + rel.MAX_ACK_DELAY  # ... this long at most
    assert receiver.on_data(dg.Data(2, (b, c)), now=10.001) == [b, c]
    assert receiver.next_deadline() == 10.001  # the second: due now
    assert decode_ack(receiver.take_ack(10.001)) == dg.Ack(4, 2, 0, W)
    assert receiver.next_deadline() is None
    assert receiver.take_ack(10.002) is None


def test_a_lone_datagram_is_acknowledged_after_the_ack_delay_with_that_delay() -> None:
    receiver = rel.Receiver()
    receiver.on_data(dg.Data(1, (say("hi"),)), now=1.0)
    assert receiver.take_ack(1.0049) is None
    assert decode_ack(receiver.take_ack(1.005)) == dg.Ack(2, 1, 5_000, W)


def test_out_of_order_units_are_held_then_delivered_in_order_with_sack_ranges() -> None:
    frames = [say(f"m{i}") for i in range(1, 7)]
    receiver = rel.Receiver()
    assert receiver.on_data(dg.Data(1, (frames[0],)), 0.0) == [frames[0]]
    assert receiver.on_data(dg.Data(3, (frames[2],)), 0.1) == []  # 2 is missing
    assert decode_ack(receiver.take_ack(0.1)) == dg.Ack(2, 3, 0, W, ((3, 4),))  # at once
    assert receiver.on_data(dg.Data(5, (frames[4], frames[5])), 0.2) == []
    assert decode_ack(receiver.take_ack(0.2)) == dg.Ack(2, 5, 0, W, ((3, 4), (5, 7)))
    assert receiver.buffered == 3
    assert receiver.on_data(dg.Data(2, (frames[1],)), 0.3) == frames[1:3]  # fills one hole
    assert decode_ack(receiver.take_ack(0.3)) == dg.Ack(4, 2, 0, W, ((5, 7),))
    assert receiver.on_data(dg.Data(4, (frames[3],)), 0.4) == frames[3:]
    assert decode_ack(receiver.take_ack(0.4)) == dg.Ack(7, 4, 0, W)
    assert receiver.stats() == {
        "received": 6,
        "delivered": 6,
        "duplicates": 0,
        "held_back": 3,
        "buffered": 0,
        "beyond_window": 0,
        "acks_sent": 4,
    }


def test_duplicates_are_discarded_and_acknowledged_at_once() -> None:
    a, b = say("a"), say("b")
    receiver = rel.Receiver()
    assert receiver.on_data(dg.Data(1, (a, b)), 0.0) == [a, b]
    receiver.take_ack(1.0)
    assert receiver.on_data(dg.Data(1, (a, b)), 2.0) == []  # our ACK may have been lost
    assert decode_ack(receiver.take_ack(2.0)) == dg.Ack(3, 1, 0, W)
    receiver.on_data(dg.Data(4, (a,)), 3.0)
    assert receiver.on_data(dg.Data(4, (a,)), 3.0) == []  # a held-back unit, twice
    assert receiver.duplicates == 3
    assert receiver.buffered == 1


def test_units_beyond_the_window_are_dropped_not_held() -> None:
    receiver = rel.Receiver(window=4)
    assert receiver.on_data(dg.Data(5, (say("far"),)), 0.0) == []  # 1 + 4: outside
    assert receiver.on_data(dg.Data(2**64 - 1, (say("absurd"),)), 0.0) == []
    assert (receiver.buffered, receiver.beyond_window) == (0, 2)
    assert receiver.on_data(dg.Data(4, (say("near"),)), 0.0) == []  # inside: held
    assert receiver.buffered == 1
    assert decode_ack(receiver.take_ack(0.0)) == dg.Ack(1, 4, 0, 4, ((4, 5),))


def test_an_ack_lists_the_highest_ranges_when_there_are_too_many() -> None:
    receiver = rel.Receiver(window=256)
    holes = dg.MAX_SACK_RANGES + 8
    for index in range(holes):
        receiver.on_data(dg.Data(3 + 2 * index, (say("x"),)), 0.0)
    sent = decode_ack(receiver.take_ack(0.0))
    expected = tuple((3 + 2 * i, 4 + 2 * i) for i in range(8, holes))
    assert sent == dg.Ack(1, 3 + 2 * (holes - 1), 0, 256, expected)


def test_any_holes_in_the_default_window_fit_in_one_ack() -> None:
    receiver = rel.Receiver()
    for offset in range(2, rel.DEFAULT_WINDOW + 1, 2):  # every other unit, to the edge
        receiver.on_data(dg.Data(offset, (say("x"),)), 0.0)
    sent = decode_ack(receiver.take_ack(0.0))
    assert len(sent.ranges) == dg.MAX_SACK_RANGES == rel.DEFAULT_WINDOW // 2
    assert sent.ranges == tuple((seq, seq + 1) for seq in range(2, rel.DEFAULT_WINDOW + 1, 2))


def test_take_ack_force_and_nothing_to_acknowledge() -> None:
    receiver = rel.Receiver()
    assert receiver.take_ack(0.0, force=True) is None  # nothing has arrived
    receiver.on_data(dg.Data(1, (say("x"),)), 0.0)
    assert decode_ack(receiver.take_ack(0.001, force=True)) == dg.Ack(2, 1, 1_000, W)
    assert decode_ack(receiver.take_ack(0.002, force=True)) == dg.Ack(2, 1, 2_000, W)


def test_a_fragmented_frame_is_reassembled_from_pieces_in_any_order() -> None:
    frame = say("Ж" * 1500)  # 3,000+ bytes of Cyrillic: three pieces
    pieces = [frame[i : i + ROOM] for i in range(0, len(frame), ROOM)]
    assert len(pieces) == 3
    receiver = rel.Receiver()
    assert receiver.on_data(dg.Data(3, (pieces[2],), cont=True), 0.0) == []
    assert receiver.on_data(dg.Data(1, (pieces[0],), more=True), 0.0) == []
    assert receiver.on_data(dg.Data(2, (pieces[1],), more=True, cont=True), 0.0) == [frame]


units = st.lists(
    st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"),
    min_size=1,
    max_size=4,
)


@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 1)),
            units,
            st.booleans(),
            st.booleans(),
        ),
        max_size=60,
    ),
    st.integers(1, 16),
)
def test_receiver_stays_bounded_and_in_order_whatever_arrives(
    datagrams: list[tuple[int, list[bytes], bool, bool]], window: int
) -> None:
    receiver = rel.Receiver(window=window)
    delivered = 0
    for now, (seq, payload, more, cont) in enumerate(datagrams):
        receiver.on_data(dg.Data(seq, tuple(payload), more, cont), float(now))
        assert receiver.buffered <= window - 1
        assert receiver.delivered >= delivered
        delivered = receiver.delivered
        assert receiver.next_expected == 1 + delivered
        ack_datagram = receiver.take_ack(float(now), force=True)
        decoded = decode_ack(ack_datagram)
        assert decoded.cumulative == receiver.next_expected
        assert len(decoded.ranges) <= dg.MAX_SACK_RANGES


# --- the sender: round trips and timers ----------------------------------------------


def test_units_are_batched_and_acknowledged_with_an_rtt_sample() -> None:
    a, b, c = say("a"), say("b"), say("c")
    sender = rel.Sender()
    for frame in (a, b, c):
        assert sender.send(frame)
    assert sender.transmit(1.0) == [dg.encode_data(1, a + b + c)]
    assert sender.transmit(1.0) == []
    assert sender.in_flight == 3
    sender.on_ack(ack(4, echo=1, delay_us=2_000), now=1.010)
    assert sender.idle
    assert (sender.acknowledged, sender.rtt_samples) == (3, 1)
    assert sender.srtt == pytest.approx(0.010)  # the first sample is taken whole
    assert sender.next_deadline() is None


def test_rtt_estimation_follows_rfc_6298_with_the_ack_delay_taken_out() -> None:
    sender = rel.Sender(min_rto=0.001)
    now = 0.0
    srtt = rttvar = 0.0
    for index, (rtt, delay_ms) in enumerate([(0.020, 0), (0.030, 4), (0.010, 5), (0.040, 50)]):
        sender.send(say(f"m{index}"))
        sender.transmit(now)
        sender.on_ack(ack(index + 2, echo=index + 1, delay_us=delay_ms * 1000), now + rtt)
        now += 1.0
        # The receiver's delay is capped at the max_ack_delay it promised (5 ms), and
        # not taken out when that would make the sample smaller than the minimum.
        delay = min(delay_ms / 1000, rel.MAX_ACK_DELAY)
        adjusted = rtt - delay if rtt - delay >= min(0.020, rtt) else rtt
        if index == 0:
            srtt, rttvar = rtt, rtt / 2
        else:
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - adjusted)
            srtt = 0.875 * srtt + 0.125 * adjusted
        assert sender.srtt == pytest.approx(srtt)
        assert sender.rto == pytest.approx(srtt + 4 * rttvar + rel.MAX_ACK_DELAY)


def test_the_rto_has_a_floor_and_starts_at_one_second() -> None:
    sender = rel.Sender()
    assert sender.rto == pytest.approx(0.333 + 4 * 0.1665 + rel.MAX_ACK_DELAY)
    sender.send(say("x"))
    sender.transmit(0.0)
    sender.on_ack(ack(2, echo=1), 0.0001)  # a 100 µs round trip on loopback
    assert sender.rto == rel.MIN_RTO


def test_karn_no_rtt_sample_from_a_retransmitted_unit() -> None:
    sender = rel.Sender(initial_rtt=0.010)
    sender.send(say("x"))
    sender.transmit(0.0)
    rto = sender.rto
    assert len(sender.transmit(rto)) == 1  # the retransmission
    sender.on_ack(ack(2, echo=1), rto + 0.001)
    assert sender.idle
    assert (sender.rtt_samples, sender.srtt) == (0, 0.010)


def test_rto_backs_off_exponentially_up_to_the_ceiling_and_recovers() -> None:
    frame = say("hello?")
    sender = rel.Sender(initial_rtt=0.100, max_rto=2.0)
    base = sender.rto  # 0.1 + 4 * 0.05 + 0.005 = 0.305 s
    assert sender.send(frame)
    assert sender.transmit(0.0) == [dg.encode_data(1, frame)]
    retransmitted_at = []
    now = 0.0
    for _ in range(6):
        deadline = sender.next_deadline()
        assert deadline is not None
        assert sender.transmit(deadline - 1e-9) == []  # not a moment early
        now = deadline
        assert sender.transmit(now) == [dg.encode_data(1, frame)]
        retransmitted_at.append(now)
    expected, t, rto = [], 0.0, base
    for _ in range(6):
        t += rto
        expected.append(t)
        rto = min(2 * rto, 2.0)
    assert retransmitted_at == pytest.approx(expected)  # 0.305, 0.915, 2.135, 4.135, ...
    assert sender.rto == 2.0
    assert (sender.timeouts, sender.retransmitted, sender.sent) == (6, 6, 1)
    # The link is back: the first ACK of something new ends the backoff.
    sender.on_ack(ack(2, echo=1), now + 0.01)
    assert sender.rto == pytest.approx(base)
    assert sender.rtt_samples == 0  # Karn: that ACK could answer any of 7 copies
    assert sender.idle and sender.next_deadline() is None


def test_packet_threshold_retransmits_only_the_lost_unit_without_waiting() -> None:
    frames = [say(f"m{i}") for i in range(1, 6)]
    sender = rel.Sender(initial_rtt=0.010)
    datagrams = sent_one_by_one(sender, frames, now=0.0)
    assert datagrams == [dg.encode_data(i, f) for i, f in enumerate(frames, 1)]
    # Datagram 1 is lost; 2..4 arrive: three later datagrams acknowledged.
    sender.on_ack(ack(1, (2, 5), echo=4), now=0.011)
    assert sender.transmit(0.011) == [dg.encode_data(1, frames[0])]
    assert (sender.lost, sender.retransmitted) == (1, 1)
    sender.on_ack(ack(6, echo=1), now=0.022)
    assert sender.idle
    assert sender.acknowledged == 5


def test_time_threshold_retransmits_after_nine_eighths_of_an_rtt() -> None:
    frames = [say("first"), say("second")]
    sender = rel.Sender(initial_rtt=0.010)
    sent_one_by_one(sender, frames, now=0.0)
    sender.on_ack(ack(1, (2, 3), echo=2), now=0.010)  # only one later datagram: wait
    assert sender.lost == 0
    loss_time = 9 / 8 * 0.010  # max(srtt, latest rtt) = 10 ms
    assert sender.next_deadline() == pytest.approx(loss_time)
    assert sender.transmit(loss_time - 1e-6) == []
    assert sender.transmit(loss_time + 1e-9) == [dg.encode_data(1, frames[0])]
    assert sender.timeouts == 0  # found by the loss timer, not the RTO


def test_sacked_units_are_never_retransmitted_after_a_timeout() -> None:
    frames = [say(f"m{i}") for i in range(1, 4)]
    sender = rel.Sender(initial_rtt=0.010)
    sent_one_by_one(sender, frames, now=0.0)
    sender.on_ack(ack(1, (3, 4), echo=3), now=0.010)  # 1 and 2 missing, 3 arrived
    deadline = sender.next_deadline()
    assert deadline is not None
    assert sender.transmit(deadline) == [dg.encode_data(1, frames[0] + frames[1])]


def test_a_fragmented_frame_goes_out_as_pieces_and_only_a_lost_piece_again() -> None:
    frame = say("Привет, мир! " * 200)  # about 4.6 KB of Cyrillic
    pieces = [frame[i : i + ROOM] for i in range(0, len(frame), ROOM)]
    sender = rel.Sender(initial_rtt=0.010)
    assert sender.send(frame)
    sent = sender.transmit(0.0)
    last = len(pieces)
    assert sent == [
        dg.encode_data(i, piece, more=i < last, cont=i > 1) for i, piece in enumerate(pieces, 1)
    ]
    receiver = rel.Receiver()
    delivered = []
    for i, datagram in enumerate(sent, 1):
        if i != 2:  # the second piece is lost
            delivered += receiver.on_data(decode_data(datagram), 0.005)
    assert delivered == []
    sender.on_ack(decode_ack(receiver.take_ack(0.005)), 0.010)
    assert sender.transmit(0.010) == []  # two later datagrams arrived: not yet proof
    assert sender.next_deadline() == pytest.approx(9 / 8 * 0.010)
    again = sender.transmit(9 / 8 * 0.010)
    assert again == [dg.encode_data(2, pieces[1], more=True, cont=True)]
    assert receiver.on_data(decode_data(again[0]), 0.015) == [frame]
    assert sender.retransmitted == 1


# --- the sender: flow control and failure ---------------------------------------------


def test_the_window_bounds_units_in_flight_and_the_rest_waits() -> None:
    frames = [say(f"m{i:02}") for i in range(10)]
    sender = rel.Sender(window=4)
    for frame in frames:
        assert sender.send(frame)
    assert sender.transmit(0.0) == [dg.encode_data(1, b"".join(frames[:4]))]
    assert (sender.in_flight, sender.backlog) == (4, 6)
    sender.on_ack(dg.Ack(3, 1, 0, 4), 0.01)  # two acknowledged: two more may go
    assert sender.transmit(0.01) == [dg.encode_data(5, b"".join(frames[4:6]))]
    sender.on_ack(dg.Ack(5, 1, 0, 2), 0.02)  # the receiver shrinks its window to 2
    assert sender.transmit(0.02) == []  # units 5 and 6 fill it
    assert sender.in_flight == 2
    sender.on_ack(dg.Ack(7, 5, 0, 0), 0.03)  # a zero window counts as one: probes go on
    assert sender.transmit(0.03) == [dg.encode_data(7, frames[6])]


def test_a_sender_whose_backlog_passes_max_queue_fails_as_too_slow() -> None:
    frame = say("x" * 80)
    sender = rel.Sender(window=2, max_queue=10 * len(frame))
    for _ in range(10):
        assert sender.send(frame)
    sender.transmit(0.0)
    assert sender.queued_bytes == 10 * len(frame)
    assert not sender.send(frame)
    assert sender.failure == rel.Failure(
        "too-slow", f"too slow: over {10 * len(frame)} bytes unacknowledged"
    )
    assert (sender.queued_bytes, sender.backlog, sender.in_flight) == (0, 0, 0)
    assert not sender.send(say("later"))
    assert sender.transmit(1.0) == []
    assert sender.next_deadline() is None


def test_acknowledged_bytes_make_room_again() -> None:
    frame = say("x" * 80)
    sender = rel.Sender(max_queue=2 * len(frame))
    assert sender.send(frame) and sender.send(frame)
    sender.transmit(0.0)
    sender.on_ack(ack(2, echo=1), 0.01)
    assert sender.queued_bytes == len(frame)
    assert sender.send(frame)
    assert sender.failure is None


def test_a_silent_receiver_is_declared_dead_after_dead_after_seconds() -> None:
    sender = rel.Sender(dead_after=15.0)
    sender.send(say("anyone?"))
    sender.transmit(100.0)
    first_rto = sender.rto  # 1 s and the ack delay: no RTT sample yet
    retransmitted_at = []
    now = 100.0
    for _ in range(50):  # retransmissions at each backed-off RTO, then the verdict
        deadline = sender.next_deadline()
        if deadline is None:
            break
        assert sender.failure is None
        now = deadline
        if sender.transmit(now):
            retransmitted_at.append(now)
    assert now == 115.0
    assert sender.failure == rel.Failure("dead", "no ack for 15 s")
    # RTO, 2 RTO, then the 4 s ceiling.
    after = [100 + first_rto, 100 + 3 * first_rto]
    after += [after[-1] + 4.0, after[-1] + 8.0]
    assert retransmitted_at == pytest.approx(after)
    assert sender.transmit(120.0) == []


def test_from_a_lan_rto_the_backoff_probes_three_times_in_the_last_ten_seconds() -> None:
    sender = rel.Sender()
    sender.send(say("first"))
    sender.transmit(0.0)
    sender.on_ack(ack(2, echo=1), 0.0002)  # a LAN round trip: the RTO falls to its floor
    assert sender.rto == rel.MIN_RTO
    sender.send(say("lost, and lost again"))
    sender.transmit(1.0)
    probes = []
    for _ in range(50):
        deadline = sender.next_deadline()
        if deadline is None:
            break
        if sender.transmit(deadline):
            probes.append(round(deadline - 1.0, 6))
    assert probes == [0.05, 0.15, 0.35, 0.75, 1.55, 3.15, 6.35, 10.35, 14.35]
    assert sender.failure == rel.Failure("dead", "no ack for 15 s")


def test_progress_restarts_the_dead_peer_clock_and_idleness_stops_it() -> None:
    sender = rel.Sender(dead_after=15.0)
    sender.send(say("one"))
    sender.send(say("two"))
    sender.transmit(0.0)
    sender.on_ack(ack(2, echo=1), 10.0)  # late, but something new
    sender.transmit(24.9)
    assert sender.failure is None
    sender.on_ack(ack(3), 24.95)
    assert sender.idle
    assert sender.next_deadline() is None  # nothing in flight: silence is fine
    sender.send(say("three"))
    sender.transmit(1000.0)
    sender.transmit(1014.99)
    assert sender.failure is None


def test_bad_frames_are_refused_locally() -> None:
    sender = rel.Sender()
    for bad in (b"", b"no newline", b"two\nlines\n", b"\n" + b"x\n"):
        with pytest.raises(LocalProtocolError):
            sender.send(bad)
    with pytest.raises(LocalProtocolError) as caught:
        sender.send(b"x" * 70_000 + b"\n")
    assert caught.value.code == "too-large"


def test_an_ack_for_units_never_sent_is_ignored_and_counted() -> None:
    frames = [say("a"), say("b")]
    sender = rel.Sender()
    sent_one_by_one(sender, frames, now=0.0)
    sender.on_ack(ack(50), 0.01)  # cumulative beyond anything sent
    sender.on_ack(ack(1, (2, 99)), 0.01)  # a range reaching beyond: clipped
    assert sender.invalid_acks == 2
    assert sender.acknowledged == 1
    assert sender.in_flight == 2
    sender.on_ack(ack(3), 0.02)
    sender.on_ack(ack(2), 0.03)  # an old ACK overtaken by the newer one: harmless
    assert sender.idle and sender.acknowledged == 2


@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 1)),
            st.lists(
                st.tuples(st.integers(-5, 60), st.integers(-5, 60)), max_size=dg.MAX_SACK_RANGES
            ),
            st.integers(0, 0xFFFF),
            st.integers(0, 40),
        ),
        max_size=30,
    )
)
def test_sender_survives_any_ack_and_stays_bounded(
    acks: list[tuple[int, list[tuple[int, int]], int, int]],
) -> None:
    sender = rel.Sender(window=8, max_queue=100_000)
    for index in range(30):
        sender.send(say(f"m{index}"))
    now = 0.0
    for cumulative, ranges, window, echo in acks:
        now += 0.01
        sender.transmit(now)
        sender.on_ack(dg.Ack(cumulative, echo, 0, window, tuple(ranges)), now)
        assert 0 <= sender.in_flight <= 8
        assert sender.queued_bytes >= 0
        assert sender.rto <= rel.MAX_RTO
    # Then an honest receiver: whatever those ACKs did, every unit goes through once.
    for _ in range(200):
        now += 0.01
        sender.transmit(now)
        sender.on_ack(dg.Ack(sender.next_unit - sender.backlog, 0, 0, 8), now)
        if sender.idle:
            break
    assert sender.idle and sender.failure is None
    assert sender.sent == sender.acknowledged == 30
    assert sender.queued_bytes == 0


# --- sender and receiver over a simulated link ----------------------------------------


@dataclass(order=True)
class _InTransit:
    arrival: float
    order: int
    datagram: bytes = field(compare=False)
    to_receiver: bool = field(compare=False)


@dataclass
class Fate:
    """What the link does to one datagram: drop it, or deliver it ``copies`` times,
    each after ``delay`` seconds more than the link's base delay (so it may overtake)."""

    drop: bool = False
    copies: int = 1
    delay: float = 0.0


@dataclass
class Outcome:
    delivered: list[bytes]
    sender: rel.Sender
    receiver: rel.Receiver
    finished_at: float


def run_link(
    frames: list[bytes],
    data_fates: list[Fate],
    ack_fates: list[Fate],
    *,
    offer_gaps: list[float] | None = None,
    window: int = rel.DEFAULT_WINDOW,
    base_delay: float = 0.001,
    max_events: int = 100_000,
    runs: list[int] | None = None,
) -> Outcome:
    """Drive a Sender and a Receiver through a lossy link with a fake clock.

    Each datagram, in each direction, takes the next fate from its schedule; once a
    schedule runs out the link is perfect, so a correct pair must finish. After
    every event the frames delivered so far must be a prefix of those sent. With
    ``runs`` (frames per offer), the frames are offered in runs to ``send_frames``,
    as the relay does, instead of one by one to ``send``.
    """
    sender = rel.Sender(window=window, max_queue=10_000_000, dead_after=1e9)
    receiver = rel.Receiver(window=window)
    fates = {True: iter(data_fates), False: iter(ack_fates)}
    wire: list[_InTransit] = []
    order = 0
    if runs is None:
        chunks = [[frame] for frame in frames]
    else:
        chunks, rest = [], list(frames)
        for size in runs:
            chunks.append(rest[:size])
            rest = rest[size:]
        assert not rest and all(chunks), "runs must cut the frames into non-empty runs"
    gaps = offer_gaps or [0.0] * len(chunks)
    offers = list(zip(_cumulative(gaps), chunks, strict=True))
    delivered: list[bytes] = []
    now = 0.0

    def put(datagram: bytes, to_receiver: bool) -> None:
        nonlocal order
        fate = next(fates[to_receiver], Fate())
        if fate.drop:
            return
        for copy in range(fate.copies):
            order += 1
            arrival = now + base_delay + fate.delay + copy * 0.0001
            heapq.heappush(wire, _InTransit(arrival, order, datagram, to_receiver))

    for _ in range(max_events):
        while offers and offers[0][0] <= now:
            chunk = offers.pop(0)[1]
            assert sender.send(chunk[0]) if runs is None else sender.send_frames(b"".join(chunk))
        for datagram in sender.transmit(now):
            put(datagram, True)
        if (ack_datagram := receiver.take_ack(now)) is not None:
            put(ack_datagram, False)
        assert 0 <= sender.in_flight <= window
        assert receiver.buffered <= window - 1
        if not offers and sender.idle and len(delivered) == len(frames):
            return Outcome(delivered, sender, receiver, now)
        times = [t for t in (sender.next_deadline(), receiver.next_deadline()) if t is not None]
        if wire:
            times.append(wire[0].arrival)
        if offers:
            times.append(offers[0][0])
        assert times, "nothing left to happen, but the transfer is not finished"
        now = max(now, min(times))
        while wire and wire[0].arrival <= now:
            item = heapq.heappop(wire)
            decoded = dg.decode_datagram(item.datagram)
            if item.to_receiver:
                assert isinstance(decoded, dg.Data)
                delivered += receiver.on_data(decoded, now)
                assert delivered == frames[: len(delivered)]
            else:
                assert isinstance(decoded, dg.Ack)
                sender.on_ack(decoded, now)
    raise AssertionError(f"not finished after {max_events} events: {len(delivered)} delivered")


def _cumulative(gaps: list[float]) -> Iterator[float]:
    total = 0.0
    for gap in gaps:
        total += gap
        yield total


def test_a_clean_link_delivers_everything_without_retransmitting() -> None:
    frames = [say(f"сообщение {i}") for i in range(200)]
    outcome = run_link(frames, [], [], offer_gaps=[0.0005] * 200)
    assert outcome.delivered == frames
    assert outcome.sender.retransmitted == 0
    assert outcome.sender.sent == outcome.sender.acknowledged == 200
    assert outcome.receiver.duplicates == 0


def _seeded_fates(rng: random.Random, count: int, loss: float, dup: float) -> list[Fate]:
    fates = []
    for _ in range(count):
        if rng.random() < loss:
            fates.append(Fate(drop=True))
        else:
            copies = 2 if rng.random() < dup else 1
            fates.append(Fate(copies=copies, delay=rng.choice([0.0, 0.0, 0.0, 0.004, 0.02])))
    return fates


@pytest.mark.parametrize("loss", [0.0, 0.05, 0.30, 0.50])
def test_seeded_loss_duplication_and_reordering_deliver_exactly_once_in_order(
    loss: float,
) -> None:
    rng = random.Random(f"rudp-{loss}")
    frames = [say(f"{i}: " + "я" * rng.randrange(1, 1200)) for i in range(300)]
    outcome = run_link(
        frames,
        _seeded_fates(rng, 3000, loss, 0.05),
        _seeded_fates(rng, 3000, loss, 0.05),
        offer_gaps=[rng.choice([0.0, 0.0005, 0.01]) for _ in frames],
        window=32,
    )
    assert outcome.delivered == frames
    assert outcome.sender.failure is None
    if loss:
        assert outcome.sender.retransmitted > 0


fates = st.builds(
    Fate,
    drop=st.booleans(),
    copies=st.integers(1, 3),
    delay=st.sampled_from([0.0, 0.0, 0.0005, 0.003, 0.03, 0.3]),
)


@given(
    frames=st.lists(
        st.text(st.sampled_from("abcЖяё€👋 "), min_size=1, max_size=900).map(say),
        min_size=1,
        max_size=25,
    ),
    data_fates=st.lists(fates, max_size=80),
    ack_fates=st.lists(fates, max_size=80),
    offer_gaps=st.lists(st.sampled_from([0.0, 0.0002, 0.002, 0.05]), min_size=25, max_size=25),
    window=st.integers(1, 12),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_loss_duplication_reordering_and_delay_schedule_delivers_exactly_once_in_order(
    frames: list[bytes],
    data_fates: list[Fate],
    ack_fates: list[Fate],
    offer_gaps: list[float],
    window: int,
) -> None:
    outcome = run_link(
        frames, data_fates, ack_fates, offer_gaps=offer_gaps[: len(frames)], window=window
    )
    assert outcome.delivered == frames
    assert outcome.sender.failure is None
    assert outcome.sender.acknowledged == outcome.sender.sent
    assert outcome.receiver.delivered == outcome.sender.sent


def _runs(sizes: list[int], total: int) -> list[int]:
    """``sizes`` cut down (or padded with ones) to add up to ``total``."""
    runs: list[int] = []
    for size in sizes:
        size = min(size, total - sum(runs))
        if size:
            runs.append(size)
    return runs + [1] * (total - sum(runs))


@given(
    frames=st.lists(
        st.text(st.sampled_from("abcЖяё€👋 "), min_size=1, max_size=900).map(say),
        min_size=1,
        max_size=40,
    ),
    sizes=st.lists(st.integers(1, 12), max_size=40),
    data_fates=st.lists(fates, max_size=80),
    ack_fates=st.lists(fates, max_size=80),
    gap=st.sampled_from([0.0, 0.0002, 0.002, 0.05]),
    window=st.integers(1, 40),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_runs_of_frames_are_delivered_exactly_once_in_order_whatever_the_link_does(
    frames: list[bytes],
    sizes: list[int],
    data_fates: list[Fate],
    ack_fates: list[Fate],
    gap: float,
    window: int,
) -> None:
    runs = _runs(sizes, len(frames))
    outcome = run_link(
        frames, data_fates, ack_fates, offer_gaps=[gap] * len(runs), window=window, runs=runs
    )
    assert outcome.delivered == frames
    assert outcome.sender.failure is None
    assert outcome.sender.acknowledged == outcome.sender.sent == outcome.receiver.delivered


def test_frames_queued_together_go_out_together_and_count_as_units() -> None:
    frames = [say(f"сообщение {i}") for i in range(6)]
    sender = rel.Sender()
    assert sender.send_frames(b"".join(frames))
    assert (sender.backlog, sender.next_unit, sender.queued_bytes) == (6, 7, len(b"".join(frames)))
    assert sender.transmit(0.0) == [dg.encode_data(1, b"".join(frames))]
    assert (sender.sent, sender.datagrams, sender.in_flight) == (6, 1, 6)
    sender.on_ack(ack(7, echo=1), 0.01)
    assert (sender.acknowledged, sender.queued_bytes, sender.idle) == (6, 0, True)


def test_a_long_run_is_cut_at_frame_boundaries_and_a_long_frame_into_pieces() -> None:
    small = [say("я" * 200) for _ in range(6)]  # 428 bytes each: two fit in a datagram
    big = say("ж" * 1750)  # 3,528 bytes: three pieces, the last too long to share
    pieces = [big[i : i + ROOM] for i in range(0, len(big), ROOM)]
    assert len(pieces) == 3 and len(pieces[2]) + len(small[3]) > ROOM
    sender = rel.Sender()
    assert sender.send_frames(b"".join([*small[:3], big, *small[3:]]))
    assert sender.backlog == 3 + len(pieces) + 3
    assert sender.transmit(0.0) == [
        dg.encode_data(1, small[0] + small[1]),
        dg.encode_data(3, small[2]),
        dg.encode_data(4, pieces[0], more=True),
        dg.encode_data(5, pieces[1], more=True, cont=True),
        dg.encode_data(6, pieces[2], cont=True),
        dg.encode_data(7, small[3] + small[4]),
        dg.encode_data(9, small[5]),
    ]


def test_a_smaller_room_leaves_space_for_what_the_transport_adds() -> None:
    sealed_room = rel.ROOM - 24  # what a sealed datagram leaves for units
    sender = rel.Sender(room=sealed_room)
    frames = [say("ы" * 150) for _ in range(8)]
    big = say("ж" * 3000)
    assert sender.send(big)
    assert sender.send_frames(b"".join(frames))
    sent = [decode_data(datagram) for datagram in sender.transmit(0.0)]
    assert all(sum(map(len, data.units)) <= sealed_room for data in sent)
    assert b"".join(b"".join(data.units) for data in sent) == big + b"".join(frames)
    assert max(len(data.units) for data in sent) == 3  # 3 × 328 bytes fit, 4 do not
    with pytest.raises(ValueError):
        rel.Sender(room=rel.ROOM + 1)


def test_sending_frames_checks_only_the_final_newline() -> None:
    sender = rel.Sender()
    assert sender.send_frames(b"")
    assert sender.backlog == 0
    with pytest.raises(LocalProtocolError):
        sender.send_frames(say("a") + b'{"v":1}')


def test_an_ack_ending_inside_a_datagram_frees_its_start_and_resends_only_the_rest() -> None:
    frames = [say(f"m{i}") for i in range(6)]
    sender = rel.Sender(initial_rtt=0.010)
    sender.send_frames(b"".join(frames))
    sender.transmit(0.0)
    sender.on_ack(ack(4, echo=1), 0.010)  # say the receiver's window took three only
    assert (sender.acknowledged, sender.in_flight) == (3, 3)
    assert sender.queued_bytes == len(b"".join(frames[3:]))
    deadline = sender.next_deadline()
    assert deadline is not None
    assert sender.transmit(deadline) == [dg.encode_data(4, b"".join(frames[3:]))]
    assert (sender.retransmitted, sender.timeouts) == (3, 1)


def test_sack_ranges_inside_a_datagram_spare_exactly_the_units_they_cover() -> None:
    frames = [say(f"m{i}") for i in range(6)]
    sender = rel.Sender(initial_rtt=0.010)
    sender.send_frames(b"".join(frames))
    sender.transmit(0.0)
    # Units 3, 4 and 6 arrived (from earlier copies, say), 1, 2 and 5 did not.
    sender.on_ack(ack(1, (3, 5), (6, 7), echo=3), 0.010)
    assert sender.acknowledged == 3
    deadline = sender.next_deadline()
    assert deadline is not None
    assert sender.transmit(deadline) == [
        dg.encode_data(1, frames[0] + frames[1]),
        dg.encode_data(5, frames[4]),
    ]
    sender.on_ack(ack(7, echo=1), deadline + 0.01)
    assert (sender.acknowledged, sender.sent, sender.retransmitted) == (6, 6, 3)
    assert sender.idle


def test_an_ack_ending_inside_a_datagram_found_lost_leaves_the_rest_to_resend() -> None:
    frames = [say(f"m{i}") for i in range(9)]
    sender = rel.Sender(initial_rtt=0.010)
    sender.send_frames(b"".join(frames[:6]))
    sender.transmit(0.0)  # units 1-6 in one datagram
    sent_one_by_one(sender, frames[6:], 0.0)  # units 7, 8 and 9, one datagram each
    sender.on_ack(ack(1, (7, 10), echo=9), 0.010)  # three later datagrams: 1-6 is lost
    assert sender.lost == 6
    sender.on_ack(ack(4, (7, 10), echo=9), 0.011)  # before it is resent, 1-3 show up
    assert sender.transmit(0.011) == [dg.encode_data(4, b"".join(frames[3:6]))]
    assert (sender.acknowledged, sender.retransmitted) == (6, 3)


def test_lost_datagrams_that_follow_each_other_are_resent_as_one() -> None:
    frames = [say(f"m{i}") for i in range(4)]
    sender = rel.Sender(initial_rtt=0.010)
    sent_one_by_one(sender, frames, 0.0)
    deadline = sender.next_deadline()
    assert deadline is not None
    assert sender.transmit(deadline) == [dg.encode_data(1, b"".join(frames))]
    sender.on_ack(ack(3, echo=1), deadline + 0.01)  # an early copy of units 1 and 2
    assert (sender.acknowledged, sender.in_flight) == (2, 2)
    sender.on_ack(ack(5, echo=1), deadline + 0.02)
    assert (sender.acknowledged, sender.idle) == (4, True)


def test_total_loss_ends_in_a_dead_verdict_not_a_hang() -> None:
    sender = rel.Sender(dead_after=2.0)
    sender.send(say("into the void"))
    now = 0.0
    for _ in range(100):
        sender.transmit(now)  # everything it sends is lost
        deadline = sender.next_deadline()
        if deadline is None:
            break
        now = deadline
    assert sender.failure == rel.Failure("dead", "no ack for 2 s")
    assert now == 2.0


def test_constructor_limits() -> None:
    for bad in ({"window": 0}, {"window": 70_000}, {"min_rto": 0}, {"max_rto": 0.01}):
        with pytest.raises(ValueError):
            rel.Sender(**bad)
    for bad in ({"window": 0}, {"ack_every": 0}, {"max_ack_delay": -1}):
        with pytest.raises(ValueError):
            rel.Receiver(**bad)
    assert rel.Sender(window=rel.MAX_WINDOW).window == rel.MAX_WINDOW
    assert rel.Receiver(window=rel.MAX_WINDOW).window == rel.MAX_WINDOW

"""The impairment model (netchat/impair.py), driven by a fake clock: no sockets, no sleeping.

Time is a number the tests choose; a link is offered datagrams at given moments and
asked what is due at later ones. Whole output transcripts are compared, so a
duplicated, dropped or reordered datagram that should not be fails a test.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.errors import InvalidParameter
from netchat.impair import (
    DRAWS_PER_DATAGRAM,
    TCP_MIN_RTO,
    DatagramLink,
    GilbertElliott,
    Impairment,
    LossModel,
    StreamLink,
    format_bandwidth,
    link_random,
    parse_bandwidth,
    parse_probability,
)


def datagrams(count: int) -> list[bytes]:
    return [f"d{i:05d} привет".encode() for i in range(count)]


def run_link(
    impairment: Impairment, items: list[bytes], *, spacing: float = 0.001, seed_name: str = "t"
) -> tuple[list[tuple[float, bytes]], DatagramLink]:
    """Offer ``items`` every ``spacing`` seconds, then release everything; the transcript
    is every (release time, datagram) in delivery order."""
    link = DatagramLink(impairment, link_random(impairment.seed, seed_name, "up"))
    out: list[tuple[float, bytes]] = []
    now = 0.0
    for index, item in enumerate(items):
        now = index * spacing
        link.offer(item, now)
        out.extend((now, released) for released in link.release(now))
    for _ in range(100_000):  # bounded: each round releases at least one datagram
        due = link.next_due()
        if due is None:
            break
        now = max(now, due)
        out.extend((now, released) for released in link.release(now))
    assert link.held == 0
    return out, link


def survivors(impairment: Impairment, count: int) -> list[int]:
    out, _ = run_link(impairment, datagrams(count))
    return sorted({int(data[1:6]) for _, data in out})


# --- settings as people type them ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.05", 0.05),
        ("5%", 0.05),
        (" 5 % ", 0.05),
        ("0", 0.0),
        ("100%", 1.0),
        ("1", 1.0),
        (".5", 0.5),
        ("2.5%", 0.025),
    ],
)
def test_probabilities_are_fractions_or_percentages(text: str, value: float) -> None:
    assert parse_probability(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["150%", "1.5", "-1", "abc", "", "5%%", "five"])
def test_bad_probabilities_are_refused_with_the_forms_that_work(text: str) -> None:
    with pytest.raises(InvalidParameter, match=r"0\.05|5%"):
        parse_probability(text, "loss")


@pytest.mark.parametrize(
    ("text", "bits"),
    [("1mbit", 1e6), ("256kbit", 256e3), ("2.5Mbit", 2.5e6), ("64000", 64e3), ("1gbit", 1e9)],
)
def test_bandwidth_is_a_bit_rate(text: str, bits: float) -> None:
    assert parse_bandwidth(text) == bits
    assert parse_bandwidth(format_bandwidth(bits)) == bits


@pytest.mark.parametrize("text", ["10mbps", "0", "0kbit", "fast", "1 tbit", ""])
def test_bad_bandwidth_is_refused(text: str) -> None:
    with pytest.raises(InvalidParameter, match="bandwidth"):
        parse_bandwidth(text)


@pytest.mark.parametrize(
    "fields",
    [
        {"loss": 1.5},
        {"duplicate": -0.1},
        {"reorder": 2},
        {"delay": -1},
        {"jitter": math.inf},
        {"bandwidth": -5},
        {"queue_bytes": 0},
        {"loss": 0.9, "loss_model": LossModel.gilbert_elliott, "burst": 2},
        {"loss": 0.1, "loss_model": LossModel.gilbert_elliott, "burst": 0.5},
    ],
)
def test_impossible_impairments_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        Impairment(**fields)  # type: ignore[arg-type]


def test_describe_says_what_happens() -> None:
    assert Impairment().describe() == "none"
    text = Impairment(
        loss=0.05, loss_model=LossModel.gilbert_elliott, burst=4, delay=0.02, jitter=0.005, seed=3
    ).describe()
    assert text == "loss 5% (Gilbert–Elliott, bursts of 4), delay 20 ms ± 5 ms (seed 3)"


@given(
    loss=st.floats(min_value=0.001, max_value=0.8),
    burst=st.floats(min_value=1.0, max_value=50.0),
)
def test_gilbert_elliott_from_rate_has_that_average_loss(loss: float, burst: float) -> None:
    if loss > burst / (burst + 1):
        with pytest.raises(InvalidParameter):
            GilbertElliott.from_rate(loss, burst)
        return
    chain = GilbertElliott.from_rate(loss, burst)
    assert chain.average_loss == pytest.approx(loss)
    assert 1 / chain.r == pytest.approx(burst)


# --- datagram links ---------------------------------------------------------------------


def test_a_clean_link_delivers_everything_at_once_in_order() -> None:
    items = datagrams(20)
    out, link = run_link(Impairment(), items)
    assert out == [(i * 0.001, item) for i, item in enumerate(items)]
    counters = link.counters.as_dict()
    assert counters["offered"] == counters["released"] == 20
    assert counters["dropped"] == counters["duplicated"] == counters["reordered"] == 0


def test_every_datagram_takes_the_same_number_of_draws() -> None:
    # Whatever happens to them, 10 datagrams use exactly 10 × DRAWS_PER_DATAGRAM numbers,
    # so the generator is where a fresh one would be after that many draws.
    impairment = Impairment(loss=0.5, duplicate=0.5, reorder=0.5, delay=0.01, jitter=0.01, seed=9)
    link = DatagramLink(impairment, link_random(9, "x", "up"))
    for index, item in enumerate(datagrams(10)):
        link.offer(item, index * 0.001)
    reference = link_random(9, "x", "up")
    for _ in range(10 * DRAWS_PER_DATAGRAM):
        reference.random()
    assert link._rng.random() == reference.random()


def test_the_same_seed_drops_the_same_datagrams() -> None:
    lossy = Impairment(loss=0.2, seed=42)
    first = survivors(lossy, 1000)
    assert first == survivors(lossy, 1000)
    assert first != survivors(Impairment(loss=0.2, seed=43), 1000)
    # Binomial(1000, 0.8): the mean is 800 and the standard deviation 12.6.
    assert 750 <= len(first) <= 850


@settings(max_examples=40, deadline=None)
@given(
    duplicate=st.floats(0, 1),
    reorder=st.floats(0, 1),
    delay=st.floats(0, 0.05),
    jitter=st.floats(0, 0.05),
)
def test_other_knobs_never_change_which_datagrams_are_lost(
    duplicate: float, reorder: float, delay: float, jitter: float
) -> None:
    plain = survivors(Impairment(loss=0.3, seed=5), 300)
    busy = Impairment(
        loss=0.3, duplicate=duplicate, reorder=reorder, delay=delay, jitter=jitter, seed=5
    )
    assert survivors(busy, 300) == plain


def test_bernoulli_and_gilbert_elliott_differ_in_burstiness_not_in_rate() -> None:
    def loss_runs(impairment: Impairment) -> tuple[float, float]:
        kept = set(survivors(impairment, 50_000))
        lost = [i not in kept for i in range(50_000)]
        runs = []
        length = 0
        for is_lost in lost:
            if is_lost:
                length += 1
            elif length:
                runs.append(length)
                length = 0
        return sum(lost) / len(lost), sum(runs) / len(runs)

    rate, mean_run = loss_runs(Impairment(loss=0.1, seed=1))
    assert rate == pytest.approx(0.1, abs=0.01)
    assert mean_run == pytest.approx(1 / 0.9, abs=0.05)  # geometric runs: 1/(1-p)
    rate, mean_run = loss_runs(
        Impairment(loss=0.1, loss_model=LossModel.gilbert_elliott, burst=5, seed=1)
    )
    assert rate == pytest.approx(0.1, abs=0.02)
    assert mean_run == pytest.approx(5, rel=0.15)


def test_delay_and_jitter_stay_within_delay_plus_or_minus_jitter() -> None:
    impairment = Impairment(delay=0.050, jitter=0.010, seed=3)
    link = DatagramLink(impairment, link_random(3, "t", "up"))
    sent_at = {}
    for index, item in enumerate(datagrams(200)):
        link.offer(item, index * 0.005)
        sent_at[item] = index * 0.005
    assert link.release(0.039) == []  # nothing can arrive before delay - jitter
    now, seen = 0.039, []
    while (due := link.next_due()) is not None:
        now = due
        for item in link.release(now):
            seen.append(item)
            assert 0.040 - 1e-9 <= now - sent_at[item] <= 0.060 + 1e-9
    assert sorted(seen) == sorted(sent_at)
    assert link.counters.reordered > 0  # ±10 ms of jitter over 5 ms spacing reorders


def test_duplicates_arrive_twice_and_are_counted() -> None:
    items = datagrams(50)
    out, link = run_link(Impairment(duplicate=1.0), items)
    assert [data for _, data in out] == [item for item in items for _ in (0, 1)]
    assert link.counters.duplicated == 50
    assert link.counters.reordered == 0  # a copy is not a reordering


def test_a_reordered_datagram_is_overtaken_by_the_next_one() -> None:
    impairment = Impairment(reorder=0.3, seed=11)
    items = datagrams(200)
    out, link = run_link(impairment, items)
    delivered = [data for _, data in out]
    assert sorted(delivered) == items  # nothing lost, nothing doubled
    inversions = 0
    highest = -1
    for data in delivered:
        index = int(data[1:6])
        if index < highest:
            inversions += 1
        highest = max(highest, index)
    assert inversions == link.counters.reordered > 30  # about 0.3 × 200


def test_a_held_datagram_with_nobody_to_overtake_it_waits_at_most_the_hold() -> None:
    link = DatagramLink(Impairment(reorder=1.0, reorder_hold=0.05), link_random(1, "t", "up"))
    link.offer(b"only", 1.0)
    assert link.release(1.049) == []
    assert link.next_due() == pytest.approx(1.05)
    assert link.release(1.05) == [b"only"]
    assert link.counters.reordered == 0  # held, but nothing overtook it


def test_a_bandwidth_limit_spaces_datagrams_and_a_full_queue_drops() -> None:
    # 8 kbit/s = 1,000 bytes/s: a 250-byte datagram takes 0.25 s on the wire.
    link = DatagramLink(Impairment(bandwidth=8_000, queue_bytes=750), link_random(1, "t", "up"))
    for index in range(6):
        link.offer(bytes([index]) * 250, 0.0)
    assert link.counters.overflow == 3  # 750 bytes fit in the queue, the rest do not
    released = [(moment, link.release(moment)) for moment in (0.2499, 0.25, 0.5, 0.75, 10.0)]
    assert released == [
        (0.2499, []),
        (0.25, [bytes([0]) * 250]),
        (0.5, [bytes([1]) * 250]),
        (0.75, [bytes([2]) * 250]),
        (10.0, []),
    ]


@settings(max_examples=60, deadline=None)
@given(
    loss=st.floats(0, 1),
    duplicate=st.floats(0, 1),
    reorder=st.floats(0, 1),
    delay=st.floats(0, 0.1),
    jitter=st.floats(0, 0.1),
    seed=st.integers(0, 2**32),
    gaps=st.lists(st.floats(0, 0.02), min_size=1, max_size=60),
)
def test_a_link_only_ever_delivers_what_it_was_given(
    loss: float,
    duplicate: float,
    reorder: float,
    delay: float,
    jitter: float,
    seed: int,
    gaps: list[float],
) -> None:
    impairment = Impairment(
        loss=loss, duplicate=duplicate, reorder=reorder, delay=delay, jitter=jitter, seed=seed
    )
    link = DatagramLink(impairment, link_random(seed, "h", "up"))
    now, offered_at = 0.0, {}
    out: list[bytes] = []
    for index, gap in enumerate(gaps):
        now += gap
        out += link.release(now)
        item = index.to_bytes(2, "big")
        offered_at[item] = now
        link.offer(item, now)
    while (due := link.next_due()) is not None:
        released = link.release(due)
        for item in released:
            assert due >= offered_at[item]  # never before it was sent
        out += released
    c = link.counters
    assert len(out) == c.released == c.offered - c.dropped - c.overflow + c.duplicated
    for item in set(out):
        assert item in offered_at
        assert out.count(item) <= 2


# --- stream links -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=30),
    loss=st.floats(0, 1),
    delay=st.floats(0, 0.1),
    jitter=st.floats(0, 0.1),
    bandwidth=st.sampled_from([0.0, 64e3, 1e6]),
    seed=st.integers(0, 1000),
)
def test_a_stream_keeps_every_byte_in_order(
    chunks: list[bytes], loss: float, delay: float, jitter: float, bandwidth: float, seed: int
) -> None:
    impairment = Impairment(loss=loss, delay=delay, jitter=jitter, bandwidth=bandwidth, seed=seed)
    link = StreamLink(impairment, link_random(seed, "s", "up"))
    out = bytearray()
    last_due = 0.0
    for index, chunk in enumerate(chunks):
        link.offer(chunk, index * 0.001)
    assert link.held_bytes == sum(map(len, chunks))
    while (due := link.next_due()) is not None:
        assert due >= last_due  # a stream never overtakes itself
        last_due = due
        for piece in link.release(due):
            out += piece
    assert bytes(out) == b"".join(chunks)
    assert link.held_bytes == 0


class Scripted(random.Random):
    """A generator that returns the numbers it is given, to choose fates exactly."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


LOST, KEPT, NO_JITTER = 0.0, 0.99, 0.5  # draws: loss first, then delay


def test_a_lost_segment_is_recovered_when_a_later_one_reveals_it() -> None:
    delay = 0.01
    link = StreamLink(
        Impairment(loss=0.1, delay=delay), Scripted([LOST, NO_JITTER, KEPT, NO_JITTER])
    )
    link.offer(b"first", 0.0)
    link.offer(b"second", 0.05)
    recovered = 0.05 + 3 * delay  # the second one's ACK shows the hole: one RTT, then over
    assert link.next_due() == pytest.approx(recovered)
    assert link.release(recovered - 1e-6) == []  # "second" is due, but waits behind "first"
    assert link.release(recovered) == [b"first", b"second"]
    assert link.counters.stalls == 1


def test_a_lost_segment_with_nothing_after_it_waits_for_the_tail_loss_probe() -> None:
    delay = 0.01
    link = StreamLink(Impairment(loss=0.1, delay=delay), Scripted([LOST, NO_JITTER]))
    link.offer(b"last words", 1.0)
    assert link.tail_stall == pytest.approx(TCP_MIN_RTO + 4 * delay)
    due = 1.0 + delay + TCP_MIN_RTO + 4 * delay
    assert link.release(due - 1e-6) == []
    assert link.release(due) == [b"last words"]


def test_every_chunk_lost_means_every_chunk_waits_for_a_probe() -> None:
    link = StreamLink(Impairment(loss=1.0), link_random(1, "s", "up"))
    link.offer(b"a", 0.0)
    link.offer(b"b", 0.001)
    assert link.release(0.1999) == []
    assert link.release(0.201) == [b"a", b"b"]
    assert link.counters.stalls == 2


def test_a_throttled_stream_takes_its_serialisation_time() -> None:
    link = StreamLink(Impairment(bandwidth=8_000), link_random(1, "s", "up"))  # 1,000 B/s
    link.offer(b"a" * 500, 0.0)
    link.offer(b"b" * 500, 0.0)
    assert link.release(0.49) == []
    assert link.release(0.5) == [b"a" * 500]
    assert link.release(1.0) == [b"b" * 500]

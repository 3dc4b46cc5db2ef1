"""What a benchmark receiver counts (netchat/bench/measure.py): no sockets, chosen times."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netchat.bench.measure import ReceiverTally, Summary, parse_payload, payload, percentile
from netchat.bench.params import BenchParams, expand_protos, parse_hostport, proto_names
from netchat.errors import InvalidParameter
from netchat.transport.base import Proto

TOKEN = "0123abcd"
MS = 1_000_000


@example(sender=1, number=2, sent_ns=3, size=len(f"nb {TOKEN} 1 2 3") + 1)
@given(
    sender=st.integers(0, 999),
    number=st.integers(0, 99_999),
    sent_ns=st.integers(0, 2**63),
    size=st.integers(0, 4000),
)
def test_a_payload_says_who_sent_which_message_when(
    sender: int, number: int, sent_ns: int, size: int
) -> None:
    text = payload(TOKEN, sender, number, sent_ns, size)
    assert parse_payload(text, TOKEN) == (sender, number, sent_ns)
    stamp = f"nb {TOKEN} {sender} {number} {sent_ns}"
    assert len(text) == max(size, len(stamp))
    assert parse_payload(text, "ffffffff") is None  # another run's message


@pytest.mark.parametrize(
    "text", ["hello", "nb 0123abcd", "nb 0123abcd 1 2", "nb 0123abcd a 2 3", "/nb 0123abcd 1 2 3"]
)
def test_chat_that_is_not_a_benchmark_message_is_ignored(text: str) -> None:
    assert parse_payload(text, TOKEN) is None


def test_duplicates_are_counted_apart_from_reordering() -> None:
    tally = ReceiverTally(senders=2, messages=5, own_sender=None)
    arrivals = [(0, 0), (0, 2), (0, 1), (0, 2), (1, 0), (0, 1), (1, 1)]
    for index, (sender, number) in enumerate(arrivals):
        tally.record(sender, number, sent_ns=0, arrived_ns=(index + 1) * MS)
    assert (tally.delivered, tally.duplicates, tally.out_of_order) == (5, 2, 1)
    assert tally.expected == 10


def test_a_receivers_own_messages_are_not_deliveries() -> None:
    tally = ReceiverTally(senders=3, messages=4, own_sender=1)
    tally.record(1, 0, 0, MS)
    tally.record(2, 0, 0, MS)
    tally.record(7, 0, 0, MS)  # no such sender in this run
    assert (tally.delivered, tally.foreign, tally.expected) == (1, 1, 8)


def test_jitter_is_the_rfc3550_estimator() -> None:
    tally = ReceiverTally(senders=1, messages=4)
    # transit times 10, 14, 12, 20 ms: |D| = 4, 2, 8
    for number, transit in enumerate((10, 14, 12, 20)):
        tally.record(0, number, sent_ns=number * 100 * MS, arrived_ns=(number * 100 + transit) * MS)
    jitter = 0.0
    for d in (4, 2, 8):
        jitter += (d * MS - jitter) / 16
    assert tally.jitters_ns() == [pytest.approx(jitter)]
    summary = Summary.of([tally])
    assert summary.jitter_ms == pytest.approx(jitter / MS)
    assert (summary.p50_ms, summary.max_ms) == (12.0, 20.0)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (0.5, 0.95, 0.99, 1.0)] == [50.0, 95.0, 99.0, 100.0]
    assert percentile([7.0], 0.99) == 7.0


def test_a_summary_adds_receivers_up() -> None:
    first = ReceiverTally(senders=1, messages=3)
    second = ReceiverTally(senders=1, messages=3)
    for number in range(3):
        first.record(0, number, 0, (number + 1) * MS)
    second.record(0, 2, 0, 5 * MS)
    second.record(0, 2, 0, 6 * MS)
    summary = Summary.of([first, second])
    assert (summary.expected, summary.delivered, summary.duplicates) == (6, 4, 1)
    assert (summary.first_ns, summary.last_ns) == (MS, 5 * MS)
    assert len(summary.cdf_ms) == 101
    assert summary.cdf_ms[0] == 1.0 and summary.cdf_ms[-1] == 5.0


# --- parameters -------------------------------------------------------------------------


def test_all_is_every_transport_netchat_has_then_peer() -> None:
    assert proto_names() == [proto.value for proto in Proto] + ["peer"]
    assert expand_protos("all") == tuple(proto_names())
    assert expand_protos(" UDP, tcp,udp ") == ("udp", "tcp")


@pytest.mark.parametrize("text", ["", "smtp", "tcp,,x", " , "])
def test_unknown_transports_are_refused_with_the_choices(text: str) -> None:
    with pytest.raises(InvalidParameter, match="choose from tcp"):
        expand_protos(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9", ("::1", 9)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_host_and_port(text: str, address: tuple[str, int]) -> None:
    assert parse_hostport(text) == address


@pytest.mark.parametrize("text", ["8080", "host:", ":80", "h:99999", "[::1]", "[::1]8080", "h:-1"])
def test_bad_host_and_port(text: str) -> None:
    with pytest.raises(InvalidParameter, match="HOST:PORT"):
        parse_hostport(text)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"clients": 1}, "at least 2"),
        ({"senders": 0}, "--senders"),
        ({"senders": 11}, "--senders"),
        ({"messages": 0}, "--messages"),
        ({"rate": -1}, "--rate"),
        ({"size": 10}, "--size"),
        ({"size": 5000}, "--size"),
        ({"slow": 9}, "--slow"),
        ({"protos": ("tcp", "peer"), "target": ("127.0.0.1", 1)}, "peers have none"),
        ({"protos": ("tcp",), "target": ("127.0.0.1", 1), "max_queue": 5}, "--max-queue"),
    ],
)
def test_bad_workloads_are_refused_before_anything_starts(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidParameter, match=message):
        BenchParams(**fields)  # type: ignore[arg-type]

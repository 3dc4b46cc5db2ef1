"""``netchat bench`` end to end: seeded tiny workloads over real processes on 127.0.0.1.

Each row starts a real server process (``python -m netchat server``), the impairment
relay and the clients in worker processes, so every test here takes a few seconds;
the workloads are as small as the statistics allow. Figures are never asserted as
performance: only what must hold on any machine (everything delivered, counts
consistent, losses within the binomial spread, the same seed giving the same losses).
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netchat.bench import BenchParams, run_bench
from netchat.bench.runner import ProtoResult, late_note
from netchat.impair import Impairment
from netchat.transport.base import Proto
from tests.conftest import ServerFactory

ROOT = Path(__file__).resolve().parent.parent


def one_row(proto: str, **fields: object) -> ProtoResult:
    [row] = run_bench(BenchParams(protos=(proto,), **fields))  # type: ignore[arg-type]
    assert row.ok, row.error
    return row


def test_without_impairment_every_transport_delivers_everything_once_in_order() -> None:
    rows = run_bench(
        BenchParams(protos=("tcp", "udp", "peer"), clients=4, senders=2, messages=30, rate=60)
    )
    for row in rows:
        assert row.ok, f"{row.proto}: {row.error}"
        assert row.expected == 2 * 30 * 3
        summary = (row.delivered, row.lost, row.duplicates, row.reordered, row.late)
        assert summary == (row.expected, 0, 0, 0, 0), row.proto
        assert row.notes == [], row.proto
        assert row.p50_ms is not None and row.p50_ms <= (row.p99_ms or 0) <= (row.max_ms or 0)
        assert row.wire_packets and row.wire_bytes and row.wire_bytes > row.wire_packets
        assert all(
            v == 0
            for way in row.injected.values()
            for k, v in way.items()
            if k in ("dropped", "duplicated", "stalls")
        )
    tcp, udp, peer = rows
    assert (tcp.wire_unit, udp.wire_unit, peer.wire_unit) == ("segment", "datagram", "datagram")
    # Fan-out: each message is one datagram up and, unless the relay packs several
    # messages together under load, one down per member (4, the sender included);
    # multicast sends one per message (plus presence announcements).
    assert udp.injected["up"]["released"] == 2 * 30
    assert udp.wire_packets is not None
    assert 2 * 30 * 2 <= udp.wire_packets <= 2 * 30 * (1 + 4)
    assert peer.wire_packets is not None and 2 * 30 <= peer.wire_packets < udp.wire_packets
    assert tcp.server_cpu_s is not None and udp.server_cpu_s is not None
    assert peer.server_cpu_s is None


def test_tcp_delivers_everything_under_any_impairment() -> None:
    impairment = Impairment(
        loss=0.2, delay=0.005, jitter=0.005, duplicate=0.1, reorder=0.1, bandwidth=2e6, seed=3
    )
    row = one_row("tcp", clients=4, senders=2, messages=30, rate=50, impairment=impairment)
    assert (row.delivered, row.lost, row.duplicates, row.reordered) == (row.expected, 0, 0, 0)
    assert row.expected == 2 * 30 * 3
    stalls = row.injected["up"]["stalls"] + row.injected["down"]["stalls"]
    assert stalls > 0  # the losses were there, as retransmission stalls
    assert any("cannot drop TCP segments" in note for note in row.notes)
    assert any("do not apply to a byte stream" in note for note in row.notes)


def test_udp_under_20_percent_loss_delivers_about_64_percent() -> None:
    # A relayed message crosses two links, each losing 20 %: (1 - 0.2)^2 = 0.64 arrive.
    # One sender, M = 100 messages, K = 5 receivers. The uplink loss hits all K copies
    # at once, so the spread is wider than a plain binomial: per message the delivered
    # count X*B (X ~ Bernoulli(q), B ~ Binomial(K, q), q = 0.8) has variance
    # K q^2 p + K^2 q^3 p = 3.2, so the fraction has a standard deviation of
    # sqrt(100 * 3.2) / 500 = 0.036; four of them around 0.64 gives 0.497–0.783.
    row = one_row(
        "udp", clients=6, senders=1, messages=100, rate=100, impairment=Impairment(loss=0.2, seed=1)
    )
    assert row.expected == 500
    fraction = row.delivered / row.expected
    assert 0.64 - 4 * 0.036 <= fraction <= 0.64 + 4 * 0.036
    assert row.lost == row.expected - row.delivered
    up, down = row.injected["up"], row.injected["down"]
    assert up["offered"] >= 100 and up["dropped"] > 0 and down["dropped"] > 0
    assert row.duplicates == 0 and row.duplicates_shown == 0


def test_rudp_delivers_everything_once_in_order_under_loss_duplication_and_reordering() -> None:
    impairment = Impairment(loss=0.2, duplicate=0.05, reorder=0.05, seed=5)
    row = one_row("rudp", clients=4, senders=2, messages=30, rate=60, impairment=impairment)
    assert row.expected == 2 * 30 * 3
    shown = (row.delivered, row.lost, row.duplicates_shown, row.out_of_order_shown, row.late)
    assert shown == (row.expected, 0, 0, 0, 0)
    up, down = row.injected["up"], row.injected["down"]
    assert up["dropped"] > 0 and down["dropped"] > 0  # the losses were there, and repaired
    assert row.duplicates > 0  # retransmissions and injected copies, discarded by rudp
    assert row.wire_unit == "datagram" and row.notes == []


def test_a_reliable_transport_missing_deliveries_at_the_end_is_called_late() -> None:
    assert late_note("rudp", 40) == (
        "rudp repairs loss: the 40 missing deliveries were still waiting for a"
        " retransmission when the row ended (nothing new for the drain time); a longer"
        " --drain shows them arrive"
    )
    assert late_note("tcp", 3) is not None
    assert late_note("udp", 40) is None and late_note("peer", 40) is None
    assert late_note("rudp", 0) is None


def test_the_same_seed_gives_the_same_losses_twice() -> None:
    params = BenchParams(
        protos=("udp",), clients=4, senders=1, messages=40, rate=25,
        impairment=Impairment(loss=0.2, seed=11),
    )  # fmt: skip
    first, second = run_bench(params)[0], run_bench(params)[0]
    assert first.ok and second.ok, (first.error, second.error)
    assert first.lost > 0
    assert (first.delivered, first.lost) == (second.delivered, second.lost)
    for way in ("up", "down"):
        assert first.injected[way]["dropped"] == second.injected[way]["dropped"]


@pytest.mark.parametrize("proto", ["udp", "peer"])
def test_duplicates_and_reordering_are_counted_when_injected(proto: str) -> None:
    impairment = Impairment(duplicate=0.15, reorder=0.15, seed=2)
    row = one_row(proto, clients=4, senders=1, messages=60, rate=60, impairment=impairment)
    assert row.duplicates > 0 and row.reordered > 0
    assert row.duplicates_shown == 0  # netchat's sequence numbers drop every copy
    assert row.lost == 0 and row.delivered == row.expected  # nothing was lost, only mixed up
    injected = row.injected["down"]
    assert injected["duplicated"] > 0 and injected["reordered"] > 0


def test_a_running_server_is_measured_and_a_row_that_cannot_run_says_why(
    make_server: ServerFactory,
) -> None:
    server = make_server(Proto.tcp, rate_limit=0, max_per_address=0)
    params = BenchParams(
        protos=("udp", "tcp"), clients=3, senders=1, messages=20, rate=100, target=server.address
    )
    udp, tcp = run_bench(params)
    assert not udp.ok and "no answer" in udp.error  # nothing serves UDP on that port
    assert tcp.ok, tcp.error
    assert tcp.delivered == tcp.expected == 20 * 2
    assert tcp.server_cpu_s is not None  # found by its port: this very process


# --- the command --------------------------------------------------------------------------


def documented_json_keys() -> dict[str, str]:
    """The result keys and their types, from the table in docs/TRANSPORTS.md."""
    text = (ROOT / "docs" / "TRANSPORTS.md").read_text()
    section = text.split("### The JSON document", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| ([a-z ]+?) \|", section, re.MULTILINE)
    assert rows, "no key table under 'The JSON document'"
    return {key: kind.strip() for key, kind in rows}


TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "list": list,
    "object": dict,
}


def test_json_prints_one_document_of_the_documented_shape(tmp_path: Path) -> None:
    out_csv = tmp_path / "rows.csv"
    command = [
        sys.executable, "-m", "netchat", "bench", "--proto", "tcp,peer", "--clients", "3",
        "--senders", "1", "--messages", "10", "--rate", "100", "--loss", "5%", "--json",
        "--csv", str(out_csv),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # the whole of stdout, nothing else
    assert set(document) >= {"params", "results"}
    assert document["params"]["loss"] == 0.05 and document["params"]["protos"] == ["tcp", "peer"]
    documented = documented_json_keys()
    assert [row["proto"] for row in document["results"]] == ["tcp", "peer"]
    for row in document["results"]:
        assert set(row) == set(documented)
        for key, kind in documented.items():
            allowed = tuple(
                t for name in kind.split(" or ") if name != "null" for t in _types(name)
            )
            if row[key] is None:
                assert "null" in kind, key
            else:
                assert isinstance(row[key], allowed), (key, row[key])
        for name in ("delivered", "expected", "lost", "duplicates", "reordered"):
            assert row[name] >= 0
        assert math.isclose(
            row["delivered_pct"], 100 * row["delivered"] / row["expected"], rel_tol=1e-3
        )
    with out_csv.open() as rows:
        table = list(csv.DictReader(rows))
    assert [row["proto"] for row in table] == ["tcp", "peer"]
    assert [int(row["delivered"]) for row in table] == [r["delivered"] for r in document["results"]]


def _types(name: str) -> tuple[type, ...]:
    found = TYPES[name]
    return found if isinstance(found, tuple) else (found,)

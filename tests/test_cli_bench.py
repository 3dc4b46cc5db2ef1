"""``netchat bench`` and ``netchat impair`` on the command line, with typer's CliRunner.

The benchmark itself is replaced by a recording fake here (it is run for real in
test_bench.py); these tests check parsing, errors before anything starts, and what
goes to stdout.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import netchat.bench.report
import netchat.bench.runner
from netchat.bench.params import BenchParams
from netchat.bench.runner import ProtoResult
from netchat.cli import app
from netchat.client import Client
from netchat.impair import LossModel
from netchat.protocol.frames import Message
from netchat.transport.base import Proto
from tests.conftest import ServerFactory

runner = CliRunner()


def flat(output: str) -> str:
    """Output with rich's box drawing and line wrapping undone."""
    return " ".join(output.replace("│", " ").split())


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BenchParams]]:
    """Record the parameters instead of running; answer with one canned row per proto."""
    calls: list[BenchParams] = []

    def run_bench(params: BenchParams, progress: Any = None) -> list[ProtoResult]:
        calls.append(params)
        return [
            ProtoResult(
                proto,
                clients=params.clients,
                sent=10,
                expected=20,
                delivered=19,
                lost=1,
                delivered_pct=95.0,
                p50_ms=1.5,
                p99_ms=3.0,
                cdf_ms=[1.0] * 101,
            )
            for proto in params.protos
        ]

    monkeypatch.setattr(netchat.bench.runner, "run_bench", run_bench)
    yield calls


def test_options_become_the_benchmark_parameters(fake_run: list[BenchParams]) -> None:
    result = runner.invoke(
        app,
        ["bench", "--proto", "udp,peer", "--clients", "7", "--senders", "3", "--messages", "9",
         "--rate", "0", "--size", "200", "--loss", "5%", "--loss-model", "gilbert-elliott",
         "--burst", "4", "--delay", "20", "--jitter", "5", "--dup", "0.01", "--reorder", "2%",
         "--bandwidth", "1mbit", "--seed", "42", "--slow", "1", "--slow-delay", "30"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [params] = fake_run
    assert params.protos == ("udp", "peer")
    assert (params.clients, params.senders, params.messages, params.rate, params.size) == (
        7, 3, 9, 0.0, 200,
    )  # fmt: skip
    imp = params.impairment
    assert (imp.loss, imp.loss_model, imp.burst, imp.seed) == (
        0.05,
        LossModel.gilbert_elliott,
        4,
        42,
    )
    assert (imp.delay, imp.jitter, imp.duplicate, imp.reorder) == (0.02, 0.005, 0.01, 0.02)
    assert imp.bandwidth == 1e6
    assert (params.slow, params.slow_delay) == (1, 0.03)


def test_all_is_the_default_and_the_global_proto_is_honoured(fake_run: list[BenchParams]) -> None:
    assert runner.invoke(app, ["bench"]).exit_code == 0
    assert runner.invoke(app, ["--proto", "udp", "bench"]).exit_code == 0
    assert [p.protos for p in fake_run] == [("tcp", "udp", "rudp", "peer"), ("udp",)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--loss", "150%"], "out of range"),
        (["--dup", "lots"], "a percentage like 5%"),
        (["--bandwidth", "10mbps"], "bit rate"),
        (["--senders", "20"], "--senders must be between 1 and --clients"),
        (["--clients", "1"], "at least 2"),
        (["--proto", "tcp,smtp"], "unknown protocol 'smtp'"),
        (["--target", "nowhere"], "HOST:PORT"),
        (["--target", "127.0.0.1:9", "--proto", "peer"], "peers have none"),
        (["--loss", "60%", "--loss-model", "gilbert-elliott", "--burst", "1"], "at most 50% loss"),
        (["--csv", "/no/such/folder/x.csv"], "does not exist"),
        (["--delay", "-5"], "milliseconds"),
    ],
)
def test_bad_parameters_fail_before_anything_starts(
    fake_run: list[BenchParams], argv: list[str], message: str
) -> None:
    result = runner.invoke(app, ["bench", *argv])
    assert result.exit_code == 2, result.output
    assert message in flat(result.output)
    assert fake_run == []


def test_plot_without_matplotlib_says_how_to_get_it(
    fake_run: list[BenchParams], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(netchat.bench.report, "plot_available", lambda: False)
    result = runner.invoke(app, ["bench", "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert 'pip install "netchat[plot]"' in result.output
    assert fake_run == []


def test_json_is_the_only_thing_on_stdout(fake_run: list[BenchParams], tmp_path: Path) -> None:
    out_csv = tmp_path / "rows.csv"
    result = runner.invoke(app, ["bench", "--proto", "tcp,udp", "--json", "--csv", str(out_csv)])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert [row["proto"] for row in document["results"]] == ["tcp", "udp"]
    assert document["results"][0]["delivered"] == 19
    assert "cdf_ms" not in document["results"][0]
    assert document["params"]["protos"] == ["tcp", "udp"]
    assert out_csv.read_text().splitlines()[0].startswith("proto,error,notes,")
    assert len(out_csv.read_text().splitlines()) == 3


def test_the_table_has_one_row_per_transport(fake_run: list[BenchParams]) -> None:
    result = runner.invoke(app, ["bench", "--proto", "tcp,peer"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("netchat bench: 10 clients")
    assert lines[1].split()[:3] == ["proto", "delivered", "lost"]
    assert [line.split()[0] for line in lines[2:4]] == ["tcp", "peer"]
    assert lines[2].split()[1:4] == ["19/20", "(95.0%)", "1"]


def test_a_row_that_failed_makes_the_exit_status_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_bench(params: BenchParams, progress: Any = None) -> list[ProtoResult]:
        return [ProtoResult("tcp", error="the server did not start: boom")]

    monkeypatch.setattr(netchat.bench.runner, "run_bench", run_bench)
    result = runner.invoke(app, ["bench", "--proto", "tcp"])
    assert result.exit_code == 1
    assert "tcp: could not run: the server did not start: boom" in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nope", "--upstream", "127.0.0.1:8080"], "--listen must be HOST:PORT"),
        (["--listen", "127.0.0.1:0", "--upstream", "x:99999"], "--upstream must be HOST:PORT"),
        (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--loss", "2"], "out of range"),
    ],
)
def test_impair_refuses_bad_settings(argv: list[str], message: str) -> None:
    result = runner.invoke(app, ["impair", *argv])
    assert result.exit_code == 2
    assert message in flat(result.output)


def test_impair_says_when_it_cannot_listen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(
            app, ["impair", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1"]
        )
    assert result.exit_code == 1
    assert f"cannot relay 127.0.0.1:{port} -> 127.0.0.1:1" in result.output


def test_impair_relays_a_real_chat_and_reports_at_exit(make_server: ServerFactory) -> None:
    server = make_server(Proto.udp, max_per_address=0, rate_limit=0)
    host, port = server.address
    command = [
        sys.executable, "-m", "netchat", "impair", "--proto", "udp", "--listen", "127.0.0.1:0",
        "--upstream", f"{host}:{port}", "--dup", "100%", "--seed", "3",
    ]  # fmt: skip
    relay = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert relay.stderr is not None
        first = relay.stderr.readline()  # the process prints this once it is listening
        match = re.search(r"impairing udp 127\.0\.0\.1:(\d+) -> ", first)
        assert match, first
        assert "duplicate 100% (seed 3)" in first
        relay_port = int(match.group(1))
        with (
            Client.connect("alice", "127.0.0.1", relay_port, Proto.udp) as alice,
            Client.connect("bob", "127.0.0.1", relay_port, Proto.udp) as bob,
        ):
            alice.say("привет через плохую сеть")
            shown = []
            for frame in bob.events(duration=2.0):
                if isinstance(frame, Message):
                    shown.append((frame.sender, frame.text))
                    break
            time.sleep(0.3)  # a duplicate shown to bob would be queued by now
            while (late := bob.next_event(timeout=0.05)) is not None:
                if isinstance(late, Message):
                    shown.append((late.sender, late.text))
            assert shown == [("alice", "привет через плохую сеть")]
            assert bob.stats()["duplicates"] >= 1  # every datagram came twice
    finally:
        relay.send_signal(signal.SIGINT)
        _out, rest = relay.communicate(timeout=10)
    assert relay.returncode == 0
    assert "stopped; flows=" in rest and "duplicated=" in rest


@pytest.mark.parametrize(
    ("proto", "named"), [("tcp", "tcp"), ("udp", "udp"), ("rudp", r"rudp \(over udp\)")]
)
def test_impair_names_the_transport_it_relays(proto: str, named: str) -> None:
    command = [
        sys.executable, "-m", "netchat", "impair", "--proto", proto, "--listen", "127.0.0.1:0",
        "--upstream", "127.0.0.1:9", "--delay", "5",
    ]  # fmt: skip
    relay = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert relay.stderr is not None
        first = relay.stderr.readline()
        assert re.match(rf"netchat: impairing {named} 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:9: ", first)
    finally:
        relay.send_signal(signal.SIGINT)
        relay.communicate(timeout=10)
    assert relay.returncode == 0


def test_plot_draws_a_png_when_matplotlib_is_there(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from netchat.bench.report import write_plot

    rows = [
        ProtoResult("tcp", expected=20, delivered=20, cdf_ms=[1.0 + i / 10 for i in range(101)]),
        ProtoResult("udp", expected=20, delivered=17, lost=3, duplicates=1, cdf_ms=[2.0] * 101),
        ProtoResult("peer", error="could not run"),
    ]
    out = tmp_path / "bench.png"
    write_plot(out, rows, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

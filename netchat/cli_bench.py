"""The ``netchat bench`` and ``netchat impair`` commands.

Kept apart from :mod:`netchat.cli` (which attaches them with :func:`register`) so the
chat commands and these two can change without stepping on each other. Bodies stay
thin: options become :class:`~netchat.bench.BenchParams` or an
:class:`~netchat.impair.Impairment` (every check runs before anything starts), and
the work is done by :mod:`netchat.bench` and :mod:`netchat.transport.impair_relay`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .errors import InvalidParameter, NetchatError
from .impair import Impairment, LossModel, parse_bandwidth, parse_probability
from .transport.base import Proto

if TYPE_CHECKING:
    from .bench.runner import ProtoResult


def _probability(what: str) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if not isinstance(value, str):  # a default, already a number
            return float(value)
        try:
            return parse_probability(value, what)
        except InvalidParameter as exc:
            raise typer.BadParameter(str(exc)) from None

    return convert


def _bandwidth(value: Any) -> float:
    if not isinstance(value, str):
        return float(value)
    try:
        return parse_bandwidth(value)
    except InvalidParameter as exc:
        raise typer.BadParameter(str(exc)) from None


def _non_negative_ms(value: float) -> float:
    if not value >= 0:
        raise typer.BadParameter("must be a number of milliseconds >= 0")
    return value


# Options shared by both commands: the impairment, as people type it.
LossOption = Annotated[
    float,
    typer.Option(
        "--loss",
        help="Datagram loss per direction: 0.05 or 5%.",
        parser=_probability("loss"),
        metavar="P",
    ),
]
LossModelOption = Annotated[
    LossModel,
    typer.Option(
        "--loss-model", help="Independent losses, or Gilbert–Elliott bursts (as on Wi-Fi)."
    ),
]
BurstOption = Annotated[
    float,
    typer.Option(min=1, help="Mean loss-burst length in datagrams (gilbert-elliott)."),
]
DelayOption = Annotated[
    float, typer.Option(help="One-way delay per direction, ms.", callback=_non_negative_ms)
]
JitterOption = Annotated[
    float,
    typer.Option(help="Each delay is drawn from delay ± jitter, ms.", callback=_non_negative_ms),
]
DupOption = Annotated[
    float,
    typer.Option(
        "--dup",
        help="Duplicated datagrams: 0.01 or 1%.",
        parser=_probability("duplication"),
        metavar="P",
    ),
]
ReorderOption = Annotated[
    float,
    typer.Option(
        help="Datagrams held back until the next one overtakes them: 0.05 or 5%.",
        parser=_probability("reordering"),
        metavar="P",
    ),
]
BandwidthOption = Annotated[
    float,
    typer.Option(
        help="Bottleneck rate per direction, e.g. 256kbit or 1mbit (default: no limit).",
        parser=_bandwidth,
        metavar="RATE",
        show_default=False,
    ),
]
SeedOption = Annotated[
    int, typer.Option(help="Seed of every random choice: the same seed, the same losses.")
]


def _impairment(
    *,
    loss: float,
    loss_model: LossModel,
    burst: float,
    delay: float,
    jitter: float,
    dup: float,
    reorder: float,
    bandwidth: float,
    seed: int,
) -> Impairment:
    """The options as an :class:`Impairment`; a bad combination is a usage error."""
    try:
        return Impairment(
            loss=loss,
            loss_model=loss_model,
            burst=burst,
            delay=delay / 1000,
            jitter=jitter / 1000,
            duplicate=dup,
            reorder=reorder,
            bandwidth=bandwidth,
            seed=seed,
        )
    except InvalidParameter as exc:
        raise _usage_error(str(exc)) from None


def _global_proto(ctx: typer.Context) -> Proto | None:
    """The ``--proto`` given before the command (``netchat --proto udp bench``), if any."""
    parent = ctx.parent
    if parent is None:
        return None
    source = parent.get_parameter_source("proto")
    if source is None or source.name != "COMMANDLINE":
        return None
    value = parent.params.get("proto")
    return Proto(value) if value is not None else None


def _usage_error(message: str) -> typer.Exit:
    typer.echo(f"netchat: {message}", err=True)
    return typer.Exit(code=2)


def bench(
    ctx: typer.Context,
    proto: Annotated[
        str | None,
        typer.Option(
            "--proto",
            help="Comma-separated transports, or all (every transport netchat has, and peer).",
        ),
    ] = None,
    clients: Annotated[
        int, typer.Option(help="Chat members per transport, senders included.")
    ] = 10,
    senders: Annotated[int, typer.Option(help="How many of them send.")] = 2,
    messages: Annotated[int, typer.Option(help="Messages each sender sends.")] = 100,
    rate: Annotated[
        float, typer.Option(help="Messages per second per sender (0 = as fast as possible).")
    ] = 50.0,
    size: Annotated[int, typer.Option(help="Bytes of text per message (ASCII).")] = 100,
    loss: LossOption = 0.0,
    loss_model: LossModelOption = LossModel.bernoulli,
    burst: BurstOption = 3.0,
    delay: DelayOption = 0.0,
    jitter: JitterOption = 0.0,
    dup: DupOption = 0.0,
    reorder: ReorderOption = 0.0,
    bandwidth: BandwidthOption = 0.0,
    seed: SeedOption = 1,
    slow: Annotated[
        int, typer.Option(help="Receivers that read slowly (the last clients; never senders).")
    ] = 0,
    slow_delay: Annotated[
        float,
        typer.Option(
            help="Milliseconds a slow receiver spends on each message.", callback=_non_negative_ms
        ),
    ] = 10.0,
    max_queue: Annotated[
        int | None,
        typer.Option(help="--max-queue (bytes) of the server the bench starts."),
    ] = None,
    drain: Annotated[
        float | None,
        typer.Option(help="Seconds without a delivery after the last send before a row ends."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="Measure a running server at HOST:PORT instead of starting one."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout, and nothing else.")
    ] = False,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write the rows to this CSV file.")
    ] = None,
    plot_path: Annotated[
        Path | None,
        typer.Option("--plot", help='Also draw a PNG (needs: pip install "netchat\\[plot]").'),
    ] = None,
) -> None:
    """Compare the transports: the same chat workload over each, side by side.

    Starts a server on 127.0.0.1 in its own process (or uses --target), puts the
    seeded impairment relay in front of it, connects real netchat clients from
    another process, and reports delivery, duplicates, order, jitter (RFC 3550),
    latency, wire cost and server CPU per delivered message.
    """
    from .bench.params import BenchParams, expand_protos, parse_hostport

    impairment = _impairment(
        loss=loss,
        loss_model=loss_model,
        burst=burst,
        delay=delay,
        jitter=jitter,
        dup=dup,
        reorder=reorder,
        bandwidth=bandwidth,
        seed=seed,
    )
    chosen = _global_proto(ctx)
    proto_text = proto if proto is not None else (chosen.value if chosen else "all")
    try:
        params = BenchParams(
            protos=expand_protos(proto_text),
            clients=clients,
            senders=senders,
            messages=messages,
            rate=rate,
            size=size,
            impairment=impairment,
            target=parse_hostport(target, "--target") if target is not None else None,
            slow=slow,
            slow_delay=slow_delay / 1000,
            max_queue=max_queue,
            drain=drain,
        )
    except InvalidParameter as exc:
        raise _usage_error(str(exc)) from None
    _check_outputs(csv_path, plot_path)

    from .bench.report import json_document, print_table, write_csv, write_plot
    from .bench.runner import run_bench

    title = (
        f"netchat bench: {params.clients} clients, {params.senders} sender(s) ×"
        f" {params.messages} messages at {f'{params.rate:g}/s' if params.rate else 'full speed'},"
        f" {params.size} B; impairment: {params.impairment.describe()}"
    )

    def on_terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through the runner, which stops its processes

    previous = signal.signal(signal.SIGTERM, on_terminate)
    try:
        results = _run_with_progress(run_bench, params)
    except KeyboardInterrupt:
        typer.echo("netchat: bench interrupted; every process it started was stopped", err=True)
        raise typer.Exit(code=130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if json_output:
        typer.echo(json.dumps(json_document(params, results), indent=2, ensure_ascii=False))
        if sys.stderr.isatty():
            print_table(results, title, sys.stderr, rich=True)
    else:
        print_table(results, title, sys.stdout, rich=sys.stdout.isatty())
    try:
        if csv_path is not None:
            write_csv(csv_path, results)
            typer.echo(f"netchat: wrote {csv_path}", err=True)
        if plot_path is not None:
            write_plot(plot_path, results, title)
            typer.echo(f"netchat: wrote {plot_path}", err=True)
    except NetchatError as exc:
        typer.echo(f"netchat: {exc}", err=True)
        raise typer.Exit(code=1) from None
    if any(not result.ok for result in results):
        raise typer.Exit(code=1)


def _check_outputs(csv_path: Path | None, plot_path: Path | None) -> None:
    """Refuse, before anything runs, outputs that could not be written at the end."""
    from .bench.report import PLOT_HINT, plot_available

    for path, option in ((csv_path, "--csv"), (plot_path, "--plot")):
        if path is not None and not path.resolve().parent.is_dir():
            raise _usage_error(f"{option}: the folder {path.parent} does not exist")
    if plot_path is not None and not plot_available():
        raise _usage_error(f"--plot: {PLOT_HINT}")


def _run_with_progress(run: Callable[..., list[ProtoResult]], params: Any) -> list[ProtoResult]:
    """Run the benchmark with a progress bar on a terminal, one line per row otherwise."""
    if not sys.stderr.isatty():

        def announce(proto: str, delivered: int, expected: int) -> None:
            if proto not in announced:
                announced.add(proto)
                typer.echo(f"netchat bench: running {proto} …", err=True)

        announced: set[str] = set()
        return run(params, announce)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:>6}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("deliveries"),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(proto: str, delivered: int, expected: int) -> None:
            if proto not in tasks:
                tasks[proto] = bar.add_task(proto, total=expected)
            bar.update(tasks[proto], completed=delivered, total=expected)

        return run(params, update)


def impair(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option(help="Where clients connect: HOST:PORT.")],
    upstream: Annotated[str, typer.Option(help="The real server: HOST:PORT.")],
    proto: Annotated[
        Proto | None,
        typer.Option("--proto", help="tcp relays a stream; udp (and rudp) relay datagrams."),
    ] = None,
    loss: LossOption = 0.0,
    loss_model: LossModelOption = LossModel.bernoulli,
    burst: BurstOption = 3.0,
    delay: DelayOption = 0.0,
    jitter: JitterOption = 0.0,
    dup: DupOption = 0.0,
    reorder: ReorderOption = 0.0,
    bandwidth: BandwidthOption = 0.0,
    seed: SeedOption = 1,
    stats_interval: Annotated[
        float, typer.Option(min=0, help="Print the counters every this many seconds (0 = at exit).")
    ] = 0.0,
) -> None:
    """Put a bad network between clients and a server: loss, delay, jitter, duplicates,
    reordering, a bandwidth limit — seeded, in each direction. TCP streams are delayed,
    jittered and throttled (bytes of a stream cannot be dropped: loss becomes a stall)."""
    from .bench.params import parse_hostport
    from .transport.impair_relay import make_impair_relay
    from .transport.registry import ip_protocol, is_stream

    chosen = proto or _global_proto(ctx) or Proto.tcp
    impairment = _impairment(
        loss=loss,
        loss_model=loss_model,
        burst=burst,
        delay=delay,
        jitter=jitter,
        dup=dup,
        reorder=reorder,
        bandwidth=bandwidth,
        seed=seed,
    )
    try:
        listen_address = parse_hostport(listen, "--listen")
        upstream_address = parse_hostport(upstream, "--upstream")
    except InvalidParameter as exc:
        raise _usage_error(str(exc)) from None
    stream = is_stream(chosen)
    try:
        relay = make_impair_relay(stream, listen_address, upstream_address, impairment)
    except OSError as exc:
        typer.echo(f"netchat: cannot relay {listen} -> {upstream}: {exc.strerror or exc}", err=True)
        raise typer.Exit(code=1) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Both signals are caught before the banner is printed: the banner tells a
    # script "ready", and a Ctrl-C that follows it at once must still stop cleanly.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=relay.serve_forever, name="impair-relay", daemon=True)
    try:
        thread.start()
        host, port = relay.address
        kind = (
            chosen.value
            if chosen.value == ip_protocol(chosen)
            else f"{chosen.value} (over {ip_protocol(chosen)})"
        )
        typer.echo(
            f"netchat: impairing {kind} {host}:{port} -> {upstream}: {impairment.describe()}"
            " (Ctrl-C to stop)",
            err=True,
        )
        if stream and (impairment.duplicate or impairment.reorder):
            typer.echo("netchat: duplication and reordering do not apply to a TCP stream", err=True)
        while not stop.wait(stats_interval or 0.5):
            if stats_interval:
                typer.echo(f"netchat: {_counters_line(relay.stats())}", err=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        relay.shutdown()
        thread.join(timeout=5)
    typer.echo(f"netchat: stopped; {_counters_line(relay.stats())}", err=True)


def _counters_line(stats: dict[str, object]) -> str:
    parts = [f"flows={stats.get('flows', 0)}"]
    for way in ("up", "down"):
        counters = stats.get(way)
        if isinstance(counters, dict):
            shown = ("offered", "dropped", "duplicated", "reordered", "stalls", "released")
            parts.append(f"{way}: " + " ".join(f"{k}={counters.get(k, 0)}" for k in shown))
    return "; ".join(parts)


def register(app: typer.Typer) -> None:
    """Attach ``bench`` and ``impair`` to the ``netchat`` command."""
    app.command("bench")(bench)
    app.command("impair")(impair)

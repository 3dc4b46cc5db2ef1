"""Running the benchmark: one row per transport, each in processes of its own.

Strategy
--------
For each transport the runner starts, then tears down:

1. the **server**: ``python -m netchat server --proto P --port 0`` with rate limits and
   per-address caps off (its ``serving … on HOST:PORT`` line gives the port), unless
   ``--target`` names a running one;
2. the **impairment relay** (a worker process, see :mod:`netchat.bench.worker`) in
   front of it, unarmed, for every server transport: it impairs, and it counts what
   crosses the wire on the server's side (datagrams, or TCP segments from the
   kernel's ``TCP_INFO``);
3. the **clients** (another worker process), which join one after another over the
   clean path and say ``joined``.

Then the relay is armed, the server's and relay's CPU times are read from ``/proc``,
the clients are told ``go``; when they report ``done`` the counters are read again
and the relay is disarmed, so everyone leaves over a clean path. Peers have no server
and no relay: their workers impair what each peer receives.

A row that cannot run (the server will not start, a client cannot join) becomes a
row with its ``error`` set, and the next transport runs anyway. Every process a row
starts is ended before the next row begins, by its own id.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import queue
import random
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from ..errors import BenchError
from ..impair import TCP_MIN_RTO
from ..transport.base import Proto
from ..transport.registry import is_reliable, is_stream
from .params import PEER, BenchParams
from .worker import impairment_to_json

#: Seconds a started server has to print its address.
SERVER_START = 15.0
#: Seconds a worker has to get ready (a relay to bind, clients to join: per client).
WORKER_START = 15.0
JOIN_PER_CLIENT = 1.0
#: IPv4 + UDP headers, added to each datagram's payload for the wire byte count.
UDP_HEADER_BYTES = 28
#: IPv4 + TCP headers (the timestamp option, on by default on Linux, adds 12 more).
TCP_HEADER_BYTES = 40
TCP_TIMESTAMP_BYTES = 12

ProgressCallback = Callable[[str, int, int], None]
"""``progress(proto, delivered, expected)``, called as deliveries are counted."""


@dataclass
class ProtoResult:
    """One row of the report: what one transport did with the workload."""

    proto: str
    error: str = ""
    notes: list[str] = field(default_factory=list)
    clients: int = 0
    sent: int = 0
    refused: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    delivered_pct: float | None = None
    duplicates: int = 0
    reordered: int = 0
    duplicates_shown: int = 0
    out_of_order_shown: int = 0
    late: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    jitter_ms: float | None = None
    msgs_per_s: float | None = None
    duration_s: float | None = None
    wire_unit: str = ""
    wire_packets: int | None = None
    wire_bytes: int | None = None
    wire_packets_per_msg: float | None = None
    wire_bytes_per_msg: float | None = None
    server_cpu_s: float | None = None
    server_cpu_us_per_msg: float | None = None
    relay_cpu_s: float | None = None
    harness_cpu_s: float | None = None
    disconnected: int = 0
    injected: dict[str, dict[str, int]] = field(default_factory=dict)
    slow: dict[str, Any] | None = None
    #: latency at 0 %, 1 %, …, 100 % of deliveries, for the plot (not in JSON or CSV)
    cdf_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


# --- /proc -------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid``, all its threads, in seconds.

    Nanosecond-resolution ``schedstat`` of every thread when Linux has it (a thread
    that ends meanwhile takes its share along, so short-lived threads are missed);
    otherwise ``/proc/PID/stat``, counted in clock ticks (10 ms). ``None`` elsewhere.
    """
    task_dir = Path(f"/proc/{pid}/task")
    try:
        total_ns = 0
        for task in task_dir.iterdir():
            total_ns += int((task / "schedstat").read_text().split()[0])
        return total_ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def find_local_server(port: int, stream: bool) -> int | None:
    """The id of a process of ours with a socket bound to ``port`` (Linux ``/proc``), so
    ``--target`` can still measure server CPU when the server runs on this machine."""
    inodes: set[str] = set()
    tables = ("tcp", "tcp6") if stream else ("udp", "udp6")
    for table in tables:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if int(local.rsplit(":", 1)[1], 16) == port and (not stream or state == "0A"):
                    inodes.add(inode)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return int(proc.name)
    return None


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tcp_header_bytes() -> int:
    """Header bytes of one IPv4 TCP segment on this machine (timestamps on or off)."""
    try:
        timestamps = Path("/proc/sys/net/ipv4/tcp_timestamps").read_text().strip() != "0"
    except OSError:
        timestamps = True
    return TCP_HEADER_BYTES + (TCP_TIMESTAMP_BYTES if timestamps else 0)


# --- processes ---------------------------------------------------------------------------


def _tail(path: Path, lines: int = 4) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])


def _stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


class Worker:
    """A :mod:`netchat.bench.worker` process and its JSON-lines conversation."""

    def __init__(self, name: str, spec: dict[str, Any], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        self._reports: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "netchat.bench.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                encoding="utf-8",
                bufsize=1,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin: IO[str] = self.proc.stdin
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name=f"bench-{name}", daemon=True
        )
        self._reader.start()
        self.send(spec)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stdout: TextIO) -> None:
        for line in stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self._reports.put(json.loads(line))
        self._reports.put(None)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._stdin.write(json.dumps(message) + "\n")
            self._stdin.flush()
        except (OSError, ValueError) as exc:
            raise BenchError(f"the {self.name} process is gone ({self._why()})") from exc

    def expect(
        self,
        kind: str,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Wait for a report of ``kind``; progress reports go to ``on_progress`` meanwhile.

        Raises:
            BenchError: the worker reported an error, died, or was silent too long.
        """
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                item = self._reports.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                self._reports.put(None)
                raise BenchError(f"the {self.name} process ended ({self._why()})")
            if item.get("report") == "error":
                raise BenchError(str(item.get("message", "unknown error")))
            if item.get("report") == kind:
                return item
            if item.get("report") == "progress" and on_progress is not None:
                on_progress(item)
        raise BenchError(f"the {self.name} process did not answer '{kind}' within {timeout:.0f} s")

    def request(self, command: str, answer: str) -> dict[str, Any]:
        """Send ``command`` and wait (briefly) for the ``answer`` report."""
        self.send({"cmd": command})
        return self.expect(answer, WORKER_START)

    def _why(self) -> str:
        code = self.proc.poll()
        tail = _tail(self.log)
        status = f"exit code {code}" if code is not None else "still running"
        return f"{status}{': ' + tail if tail else ''}"

    def stop(self) -> None:
        with contextlib.suppress(BenchError):
            self.send({"cmd": "quit"})
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            _stop(self.proc)


_SERVING = re.compile(r"serving (\S+) on (.+):(\d+)")


class ServerProcess:
    """``python -m netchat server`` on 127.0.0.1, port chosen by the system."""

    def __init__(self, proto: str, params: BenchParams, logdir: Path) -> None:
        self.log = logdir / f"server-{proto}.log"
        command = [
            sys.executable, "-m", "netchat", "server", "--proto", proto,
            "--host", "127.0.0.1", "--port", "0",
            "--rate-limit", "0", "--max-per-address", "0",
            "--max-clients", str(max(1024, params.clients + 16)),
            "--log-level", "WARNING",
        ]  # fmt: skip
        if params.max_queue is not None:
            command += ["--max-queue", str(params.max_queue)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.address = self._wait_address()

    def _wait_address(self) -> tuple[str, int]:
        deadline = time.monotonic() + SERVER_START
        while time.monotonic() < deadline:
            match = _SERVING.search(self.log.read_text(errors="replace"))
            if match:
                return match.group(2).strip("[]"), int(match.group(3))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        _stop(self.proc)
        raise BenchError(f"the server did not start: {_tail(self.log) or 'no output'}")

    def stop(self) -> None:
        _stop(self.proc)


# --- one row ------------------------------------------------------------------------------


def _is_stream(proto: str) -> bool:
    """Whether ``proto`` runs over a TCP stream (else over UDP datagrams), as the
    transport registry says; peers are datagrams."""
    return proto != PEER and is_stream(Proto(proto))


def late_note(proto: str, lost: int) -> str | None:
    """What to say of deliveries missing at the end of a row of a transport that
    repairs loss (no member having lost its session): they were late, not lost."""
    if not lost or proto == PEER or not is_reliable(Proto(proto)):
        return None
    return (
        f"{proto} repairs loss: the {lost} missing deliveries were still waiting for a"
        " retransmission when the row ended (nothing new for the drain time); a longer"
        " --drain shows them arrive"
    )


def _drain_seconds(params: BenchParams, proto: str) -> float:
    """How long to wait for stragglers after deliveries stop, from the impairment."""
    if params.drain is not None:
        return params.drain
    imp = params.impairment
    worst_path = 2 * (imp.delay + imp.jitter) + imp.reorder_hold
    if _is_stream(proto) and imp.loss:
        worst_path += TCP_MIN_RTO + 4 * imp.delay  # a tail-loss probe
    return 1.0 + 2 * worst_path + params.slow_delay * (params.slow > 0)


def _settle_seconds(params: BenchParams) -> float:
    """How long to keep counting after the last delivery when copies may still come."""
    imp = params.impairment
    if not imp.duplicate:
        return 0.0
    return 2 * (imp.delay + imp.jitter) + imp.reorder_hold + 0.1


def _hard_limit(params: BenchParams, drain: float) -> float:
    sending = params.messages / params.rate if params.rate else 0.0
    slow_work = params.slow_delay * params.senders * params.messages if params.slow else 0.0
    return sending + slow_work + drain + 60.0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _counter_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    return {
        key: int(value) - int(before.get(key, 0))
        for key, value in after.items()
        if isinstance(value, int)
    }


def _cpu_delta(pid: int | None, before: float | None) -> float | None:
    if pid is None or before is None:
        return None
    after = process_cpu_seconds(pid)
    return None if after is None else after - before


def run_proto(
    proto: str,
    params: BenchParams,
    logdir: Path,
    progress: ProgressCallback | None = None,
) -> ProtoResult:
    """Measure one transport with ``params``; failures become the row's ``error``."""
    row = ProtoResult(proto, clients=params.clients)
    server: ServerProcess | None = None
    relay: Worker | None = None
    clients: Worker | None = None
    try:
        drain = _drain_seconds(params, proto)
        spec: dict[str, Any] = {
            "role": "clients",
            "proto": proto,
            "clients": params.clients,
            "senders": params.senders,
            "messages": params.messages,
            "rate": params.rate,
            "size": params.size,
            "token": secrets.token_hex(4),
            "slow": params.slow,
            "slow_delay": params.slow_delay,
            "drain": drain,
            "settle": _settle_seconds(params),
            "hard_limit": _hard_limit(params, drain),
            "impairment": impairment_to_json(params.impairment),
        }
        server_pid: int | None = None
        if proto == PEER:
            # A group and port of our own, so no other run (or chat) is heard.
            group = f"239.255.{random.randint(1, 254)}.{random.randint(1, 254)}"
            spec["peer"] = {"group": group, "port": _free_udp_port()}
        else:
            if params.target is not None:
                upstream = params.target
                if _is_loopback(upstream[0]):
                    server_pid = find_local_server(upstream[1], _is_stream(proto))
                if server_pid is None:
                    row.notes.append("server CPU not measured: --target is not a process here")
            else:
                server = ServerProcess(proto, params, logdir)
                upstream, server_pid = server.address, server.proc.pid
            relay = Worker(
                f"relay-{proto}",
                {
                    "role": "relay",
                    "stream": _is_stream(proto),
                    "listen": ["127.0.0.1", 0],
                    "upstream": list(upstream),
                    "impairment": impairment_to_json(params.impairment),
                },
                logdir,
            )
            host, port = relay.expect("ready", WORKER_START)["address"]
            spec["host"], spec["port"] = host, int(port)
        clients = Worker(f"clients-{proto}", spec, logdir)
        clients.expect("joined", WORKER_START + JOIN_PER_CLIENT * params.clients)

        relay_before: dict[str, Any] = {}
        if relay is not None:
            relay_before = relay.request("arm", "armed")["stats"]
        server_cpu = process_cpu_seconds(server_pid) if server_pid is not None else None
        relay_cpu = process_cpu_seconds(relay.pid) if relay is not None else None
        clients.send({"cmd": "go"})

        def on_progress(event: dict[str, Any]) -> None:
            if progress is not None:
                progress(proto, int(event["delivered"]), int(event["expected"]))

        done = clients.expect("done", spec["hard_limit"] + 30, on_progress)
        row.server_cpu_s = _cpu_delta(server_pid, server_cpu)
        row.relay_cpu_s = _cpu_delta(relay.pid if relay is not None else None, relay_cpu)
        relay_after: dict[str, Any] = {}
        if relay is not None:
            relay_after = relay.request("disarm", "disarmed")["stats"]
        _fill(row, params, done["result"], relay_before, relay_after)
        if server is not None and server.proc.poll() is not None:
            row.notes.append(f"the server exited during the run: {_tail(server.log)}")
    except BenchError as exc:
        row.error = str(exc)
    except OSError as exc:
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        for process in (clients, relay, server):
            if process is not None:
                process.stop()
    return row


def _fill(
    row: ProtoResult,
    params: BenchParams,
    result: dict[str, Any],
    relay_before: dict[str, Any],
    relay_after: dict[str, Any],
) -> None:
    summary = result["summary"]
    row.sent = int(result["sent"])
    row.refused = int(result["refused"])
    row.expected = int(summary["expected"])
    row.delivered = int(summary["delivered"])
    row.lost = max(0, row.expected - row.delivered)
    row.delivered_pct = 100.0 * row.delivered / row.expected if row.expected else None
    transport = result["transport"]
    # What the network did, as netchat's own sequence numbers saw it (UDP, peers), plus
    # anything that got past them to the user.
    row.duplicates = int(transport["duplicates"]) + int(summary["duplicates"])
    row.reordered = int(transport["reordered"]) + int(summary["out_of_order"])
    row.duplicates_shown = int(summary["duplicates"])
    row.out_of_order_shown = int(summary["out_of_order"])
    row.late = int(transport["late"])
    for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "jitter_ms"):
        setattr(row, key, summary[key])
    row.cdf_ms = list(summary["cdf_ms"])
    first, last = result["first_send_ns"], summary["last_ns"]
    if first is not None and last is not None and last > first:
        row.duration_s = (last - first) / 1e9
        row.msgs_per_s = row.delivered / row.duration_s
    row.harness_cpu_s = float(result["harness_cpu_s"])
    row.disconnected = int(result["disconnected"])
    if result["slow"] is not None:
        row.slow = {
            "receivers": params.slow,
            "expected": result["slow"]["expected"],
            "delivered": result["slow"]["delivered"],
            "p50_ms": result["slow"]["p50_ms"],
            "p99_ms": result["slow"]["p99_ms"],
            "others_p50_ms": result["fast"]["p50_ms"],
            "others_p99_ms": result["fast"]["p99_ms"],
        }
    if row.disconnected:
        reasons = "; ".join(result["disconnect_reasons"])
        row.notes.append(f"{row.disconnected} client(s) lost their session: {reasons}")
    elif (note := late_note(row.proto, row.lost)) is not None:
        row.notes.append(note)
    if row.refused:
        row.notes.append(
            f"{row.refused} message(s) refused by the sending client (too large for one"
            " datagram) and not counted as expected"
        )
    if result["send_errors"]:
        row.notes.append(f"{result['send_errors']} sender(s) stopped on an error")
    _fill_wire(row, params, result, relay_before, relay_after)
    if row.server_cpu_s is not None and row.delivered:
        row.server_cpu_us_per_msg = 1e6 * row.server_cpu_s / row.delivered
    imp = params.impairment
    if _is_stream(row.proto) and not imp.is_null:
        if imp.loss:
            row.notes.append(
                "a userspace relay cannot drop TCP segments: each lost segment is emulated"
                " as Linux recovers it, its bytes (and all behind them) arriving after the"
                " retransmission: about 3 one-way delays after a later segment reveals the"
                f" hole, else after a {1000 * (TCP_MIN_RTO + 4 * imp.delay):.0f} ms"
                " tail-loss probe"
            )
        if imp.duplicate or imp.reorder:
            row.notes.append("duplication and reordering do not apply to a byte stream")


def _fill_wire(
    row: ProtoResult,
    params: BenchParams,
    result: dict[str, Any],
    relay_before: dict[str, Any],
    relay_after: dict[str, Any],
) -> None:
    if row.proto == PEER:
        wire = result["wire"] or {}
        row.wire_unit = "datagram"
        row.wire_packets = int(wire.get("wire_datagrams", 0))
        row.wire_bytes = int(wire.get("wire_bytes", 0)) + UDP_HEADER_BYTES * row.wire_packets
        row.injected = {
            "down": {
                key[len("link_") :]: value for key, value in wire.items() if key.startswith("link_")
            }
        }
    elif relay_after:
        up = _counter_delta(relay_before.get("up", {}), relay_after.get("up", {}))
        down = _counter_delta(relay_before.get("down", {}), relay_after.get("down", {}))
        row.injected = {"up": up, "down": down}
        info = _counter_delta(relay_before.get("tcp_info", {}), relay_after.get("tcp_info", {}))
        if _is_stream(row.proto) and info:
            row.wire_unit = "segment"
            row.wire_packets = info["segs_in"] + info["segs_out"]
            payload = info["bytes_acked"] + info["bytes_received"]
            row.wire_bytes = payload + tcp_header_bytes() * row.wire_packets
        elif _is_stream(row.proto):
            row.wire_unit = "chunk"
            row.wire_packets = up.get("released", 0) + down.get("offered", 0)
            row.wire_bytes = up.get("released_bytes", 0) + down.get("offered_bytes", 0)
            row.notes.append("no TCP_INFO here: wire counts are relay reads, payload bytes only")
        else:
            row.wire_unit = "datagram"
            row.wire_packets = up.get("released", 0) + down.get("offered", 0)
            payload = up.get("released_bytes", 0) + down.get("offered_bytes", 0)
            row.wire_bytes = payload + UDP_HEADER_BYTES * row.wire_packets
    if row.wire_packets is not None and row.delivered:
        row.wire_packets_per_msg = row.wire_packets / row.delivered
        row.wire_bytes_per_msg = (row.wire_bytes or 0) / row.delivered


def run_bench(params: BenchParams, progress: ProgressCallback | None = None) -> list[ProtoResult]:
    """Run every transport of ``params`` one after another.

    Args:
        params: the workload and the impairment.
        progress: told ``(proto, delivered, expected)`` while a row runs.

    Returns:
        One result per transport, in order; a transport that could not run has its
        ``error`` set and the others still ran.
    """
    results: list[ProtoResult] = []
    with tempfile.TemporaryDirectory(prefix="netchat-bench-") as tmp:
        for proto in params.protos:
            results.append(run_proto(proto, params, Path(tmp), progress))
    return results

"""Fan-out benchmark: N raw TCP clients, S of them senders, every line goes to everyone.

Runs the same workload against each target (netchat, ``ncat --chat``, and the
pure-Python select() baseline in select_chat_server.py) and prints one table.

    python benchmarks/fanout.py --clients 100 --senders 10 --messages 200 \\
        --targets netchat,ncat,select [--json out.json]

Process layout, chosen so the harness does not starve the server on 2 cores:
the main process only starts servers and prints; one client process reads every
socket through a single ``selectors`` loop; a sender process (forked from it
after the readiness barrier) writes the payload lines on the senders' sockets.

Latency crosses processes: the sender stamps ``time.perf_counter_ns()`` and the
receiver subtracts it from its own. On Linux, CPython implements perf_counter
with clock_gettime(CLOCK_MONOTONIC), one clock for the whole system (checked at
run time in ``check_clock``), so the difference between processes is valid.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from tempfile import TemporaryDirectory

HOST = "127.0.0.1"  # the only address this benchmark ever connects to
HERE = Path(__file__).resolve().parent
TARGETS = ("netchat", "ncat", "select")
SETUP_S = 120.0  # bound on connecting all clients
BARRIER_S = 30.0  # bound on the SYNC readiness barrier
WINDOW = 8  # connections allowed to wait for the server's accept() at once
# The lookahead rejects a line cut short after the timestamp digits: ncat --chat
# prefixes every read() chunk, not every line, so a line split across two TCP reads
# arrives as "BENCH 3 12 1234<user5> 5678" and must count as mangled, not delivered.
PAYLOAD = re.compile(rb"BENCH (\d+) (\d+) (\d+)(?=[ \r\n])")
CTX = multiprocessing.get_context("fork")  # children inherit sockets and rlimits


class BenchError(Exception):
    """A target could not be measured; the message says why."""


@dataclass(frozen=True)
class Workload:
    clients: int
    senders: int
    messages: int
    size: int
    rate: float  # messages/s per sender; 0 means as fast as possible
    timeout: float  # how long to wait for deliveries after the last send
    echo: bool = True  # does the server send a line back to its own sender?


@dataclass
class Result:
    target: str
    clients: int
    sent: int = 0
    expected: int = 0
    received: int = 0
    out_of_order: list[int] = field(default_factory=list)  # per sender id
    duplicates: int = 0
    malformed: int = 0
    disconnects: int = 0
    deliveries_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    wall_s: float = 0.0  # first send -> last delivery (or give-up)
    setup_s: float = 0.0  # connect + barrier
    receiver_cpu_s: float = 0.0  # harness receive loop's own CPU while measuring
    server_cpu_s: float = 0.0  # the server process's CPU (user + system) while measuring
    error: str = ""

    @property
    def server_us_per_delivery(self) -> float:
        """Server CPU per delivery: its cost, whoever the bottleneck of the run was."""
        return 1e6 * self.server_cpu_s / self.received if self.received else 0.0

    @property
    def delivered_pct(self) -> float:
        return 100.0 * self.received / self.expected if self.expected else 0.0


def checkout_of(target: str) -> Path:
    """``netchat@DIR`` runs the netchat checkout in DIR (to compare two versions in
    one run); plain ``netchat`` runs this one."""
    return Path(target.partition("@")[2] or HERE.parent)


def server_command(target: str, port: int) -> list[str]:
    if target.partition("@")[0] == "netchat":
        # --max-queue as the select server's 16 MiB limit, so no target drops a client
        # that the others would keep.
        flags = "--max-clients 5000 --max-per-address 0 --rate-limit 0 --max-queue 16777216 --log-level WARNING"
        return [sys.executable, "-m", "netchat", "server", *f"--host {HOST} --port {port}".split(),
                *flags.split()]  # fmt: skip
    if target == "ncat":
        # --max-conns: ncat's own default cap is 100 connections.
        return ["ncat", "--chat", "--listen", "--max-conns", "5000", HOST, str(port)]
    server = str(HERE / "select_chat_server.py")
    return [sys.executable, server, "--host", HOST, "--port", str(port)]


class Receiver:
    """All client sockets in one selectors loop; counts payload lines as they arrive."""

    def __init__(self, port: int, w: Workload, server_pid: int) -> None:
        self.port, self.w, self.server_pid = port, w, server_pid
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.bufs: list[bytes] = [b""] * w.clients
        self.synced = [False] * w.clients
        self.n_synced = 0
        self.unseen: set[int] = set()  # connected, but no byte from the server yet
        self.last = [-1] * (w.clients * w.senders)  # last msg_no per (receiver, sender)
        self.latencies: list[int] = []
        self.res = Result("", w.clients, out_of_order=[0] * w.senders)
        self.last_rx_ns = 0
        self.send_report: tuple[int, int, int, str] | None = None

    def connect(self, name: str, data: int) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(name.encode() + b"\n")  # first line = name (netchat, select)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, data)
        return sock

    def connect_all(self) -> None:
        """Connect every client, never more than WINDOW ahead of the server's accept().

        A connection counts as accepted once any byte (greeting, announce) arrives on
        it. Without this window a fast connect loop overflows a small listen backlog
        (ncat uses 10): SYNs get dropped and each retry costs 1 s, then 3 s, ...
        """
        deadline = time.monotonic() + SETUP_S
        for rid in range(self.w.clients):
            stall = time.monotonic() + 2.0
            while len(self.unseen) >= WINDOW and time.monotonic() < stall:
                self.pump(0.02)  # also drains join notices so no server blocks on us
            if len(self.unseen) >= WINDOW:
                self.unseen.clear()  # a server that greets nobody: stop pacing on it
            if time.monotonic() > deadline:
                raise BenchError(f"only {rid} clients connected in {SETUP_S:.0f} s")
            self.socks.append(self.connect(f"b{rid:04d}", rid))
            self.unseen.add(rid)
            self.pump(0)

    def barrier(self) -> None:
        """Send SYNC lines until every client has seen one: the server is fully joined."""
        ctl = self.connect("bsync", -1)
        deadline, next_sync, k = time.monotonic() + BARRIER_S, 0.0, 0
        try:
            while self.n_synced < self.w.clients:
                now = time.monotonic()
                if now > deadline:
                    raise BenchError(
                        f"barrier: only {self.n_synced}/{self.w.clients} "
                        f"clients saw a SYNC line within {BARRIER_S:.0f} s"
                    )
                if now >= next_sync:
                    k, next_sync = k + 1, now + 0.2
                    with contextlib.suppress(BlockingIOError):  # next tick retries
                        ctl.send(f"SYNC {k}\n".encode())
                self.pump(0.05)
        finally:
            self.sel.unregister(ctl)
            ctl.close()
        settle = time.monotonic() + 0.5  # let late SYNCs and "left" notices drain first
        while time.monotonic() < settle:
            self.pump(0.05)

    def pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                self.read_report(key.fileobj)  # type: ignore[arg-type]
            else:
                self.read(key.fileobj, key.data)  # type: ignore[arg-type]

    def read_report(self, conn: Connection) -> None:
        try:
            self.send_report = conn.recv()
        except EOFError:
            self.send_report = (0, 0, 0, "sender process died without reporting")
        self.sel.unregister(conn)

    def read(self, sock: socket.socket, rid: int) -> None:
        try:
            data = sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        now = time.perf_counter_ns()  # one stamp per recv: cheaper, and it is the arrival time
        if not data:
            self.sel.unregister(sock)
            self.res.disconnects += 1
        elif rid >= 0:
            self.unseen.discard(rid)
            self.handle(rid, data, now)

    def handle(self, rid: int, data: bytes, now: int) -> None:
        buf = self.bufs[rid] + data
        cut = buf.rfind(b"\n") + 1
        self.bufs[rid], buf = buf[cut:], buf[:cut]  # only complete lines are parsed
        if not self.synced[rid] and b"SYNC " in buf:
            self.synced[rid] = True
            self.n_synced += 1
        # One regex pass in C per chunk, searching anywhere in each line (server formats
        # vary): ~40% cheaper than splitting lines in Python, so the harness stays light.
        found = PAYLOAD.findall(buf)
        res, last, base = self.res, self.last, rid * self.w.senders
        res.malformed += buf.count(b"BENCH ") - len(found)
        for sid_b, no_b, ts_b in found:
            sid, no = int(sid_b), int(no_b)
            if sid >= self.w.senders:
                res.malformed += 1
                continue
            res.received += 1
            self.latencies.append(now - int(ts_b))
            prev = last[base + sid]
            if no > prev:
                last[base + sid] = no
            elif no == prev:
                res.duplicates += 1
            else:
                res.out_of_order[sid] += 1
        if found:
            self.last_rx_ns = now

    def measure(self) -> tuple[int, int]:
        """Fork the sender, receive until done; return (sent, first send ns)."""
        reader, writer = CTX.Pipe(duplex=False)
        proc = CTX.Process(target=send_loop, args=(self.socks[: self.w.senders], self.w, writer))
        per_msg = self.w.clients - (0 if self.w.echo else 1)
        planned = self.w.senders * self.w.messages * per_msg
        send_budget = self.w.messages / self.w.rate if self.w.rate else self.w.timeout
        hard_deadline = time.monotonic() + send_budget + 2 * self.w.timeout + 10
        done_at, cpu0 = math.inf, time.process_time()
        server_cpu0 = process_cpu_s(self.server_pid)
        proc.start()
        try:
            writer.close()
            self.sel.register(reader, selectors.EVENT_READ, None)
            while time.monotonic() < min(done_at, hard_deadline):
                # Also wait for the sender's report: the last lines can beat it here.
                if self.res.received >= planned and self.send_report is not None:
                    break
                self.pump(0.1)
                if self.send_report is not None and done_at == math.inf:
                    done_at = time.monotonic() + self.w.timeout
        finally:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.res.receiver_cpu_s = time.process_time() - cpu0
        self.res.server_cpu_s = process_cpu_s(self.server_pid) - server_cpu0
        if self.send_report is None:
            raise BenchError("sender process never reported (hard deadline hit)")
        sent, t0, _t_end, err = self.send_report
        self.res.error = err
        self.res.expected = sent * per_msg
        return sent, t0

    def summarize(self, sent: int, t0: int) -> None:
        res, lat = self.res, sorted(self.latencies)
        res.sent = sent
        end = self.last_rx_ns or time.perf_counter_ns()
        res.wall_s = (end - t0) / 1e9 if t0 else 0.0
        res.deliveries_per_s = res.received / res.wall_s if res.wall_s > 0 else 0.0
        if lat:
            res.p50_ms, res.p99_ms = percentile(lat, 0.50), percentile(lat, 0.99)
            res.max_ms = lat[-1] / 1e6


def percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in ms."""
    return sorted_ns[max(0, math.ceil(q * len(sorted_ns)) - 1)] / 1e6


def payload(sid: int, msg_no: int, size: int) -> bytes:
    line = f"BENCH {sid} {msg_no} {time.perf_counter_ns()}"  # ASCII: ncat escapes the rest
    pad = size - len(line) - 2  # " " + padding + "\n" makes the line `size` bytes
    return (line + " " + "x" * pad + "\n").encode() if pad > 0 else (line + "\n").encode()


def send_loop(socks: list[socket.socket], w: Workload, out: Connection) -> None:
    """Sender process: round-robin over senders, full speed or `rate` msgs/s each."""
    for sock in socks:
        sock.settimeout(w.timeout)  # a server that stops reading cannot hang us forever
    sent, err, t0 = 0, "", time.perf_counter_ns()
    try:
        for msg_no in range(w.messages):
            if w.rate:
                time.sleep(max(0.0, t0 / 1e9 + msg_no / w.rate - time.perf_counter()))
            for sid, sock in enumerate(socks):
                sock.sendall(payload(sid, msg_no, w.size))
                sent += 1
    except OSError as exc:
        err = f"sender stopped after {sent} messages: {exc!r}"
    out.send((sent, t0, time.perf_counter_ns(), err))
    out.close()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def client_main(port: int, w: Workload, target: str, server_pid: int, out: Connection) -> None:
    """Client process: connect, barrier, measure, send a Result back to the parent."""
    rx = Receiver(port, w, server_pid)
    try:
        t_setup = time.monotonic()
        rx.connect_all()
        rx.barrier()
        rx.res.setup_s = time.monotonic() - t_setup
        rx.summarize(*rx.measure())
    except (BenchError, OSError) as exc:
        rx.res.error = f"{type(exc).__name__}: {exc}"
    rx.res.target = target
    out.send(rx.res)
    out.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()[-5:]
    return " / ".join(lines) or "(empty)"


def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode} before accepting")
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as probe:
                # Wait for the greeting before closing: ncat 7.93 quits altogether when
                # a connection is gone by the time it accepts it (getpeername fails).
                probe.settimeout(1.0)
                with contextlib.suppress(OSError):
                    probe.recv(4096)
            return
        except OSError:
            time.sleep(0.1)
    raise BenchError("server did not accept connections within 10 s")


def run_target(target: str, w: Workload, logdir: Path) -> Result:
    port, log = free_port(), logdir / (target.replace("/", "_") + ".log")
    with log.open("wb") as logf:
        cmd = server_command(target, port)
        try:
            # cwd: `python -m netchat` then runs this checkout, installed or not.
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=checkout_of(target)
            )
        except OSError as exc:  # e.g. ncat not installed: a row saying so, not a crash
            return Result(target, w.clients, error=f"cannot start {cmd[0]}: {exc}")
    try:
        wait_listening(proc, port)
        res = run_clients(target, port, w, proc.pid)
        if proc.poll() is not None:
            res.error += f" server exited with {proc.returncode} during the run"
    except BenchError as exc:
        res = Result(target, w.clients, error=str(exc))
    finally:
        stop(proc)
    if res.error:  # the server's own words are usually the best clue
        res.error += " | server log tail: " + log_tail(log)
    return res


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def run_clients(target: str, port: int, w: Workload, server_pid: int) -> Result:
    reader, writer = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=client_main, args=(port, w, target, server_pid, writer))
    budget = SETUP_S + BARRIER_S + 3 * w.timeout + (w.messages / w.rate if w.rate else 0) + 30
    proc.start()
    try:
        writer.close()
        if not reader.poll(budget):
            raise BenchError(f"client process gave no result within {budget:.0f} s")
        res: Result = reader.recv()
        return res
    except EOFError as exc:
        raise BenchError(f"client process died (exit code {proc.exitcode})") from exc
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


ROW_HEADERS = ["target", "clients", "sent", "expected", "received", "delivered %"]
ROW_HEADERS += ["out-of-order (total/worst sender)", "deliveries/s", "p50 ms", "p99 ms"]
ROW_HEADERS += ["max ms", "wall s", "server CPU µs/delivery"]


def row(r: Result) -> list[str]:
    if not r.sent:  # nothing was measured: the error printed under the table says why
        return [r.target, str(r.clients), *["-"] * (len(ROW_HEADERS) - 2)]
    ooo = f"{sum(r.out_of_order)}/{max(r.out_of_order, default=0)}"
    counts = f"{r.clients} {r.sent} {r.expected} {r.received} {r.delivered_pct:.2f} {ooo}"
    rates = f"{r.deliveries_per_s:,.0f} {r.p50_ms:.1f} {r.p99_ms:.1f} {r.max_ms:.1f} {r.wall_s:.2f}"
    rates += f" {r.server_us_per_delivery:.3f}"
    return [r.target, *counts.split(), *rates.split()]


def print_table(results: list[Result], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(" | ".join(ROW_HEADERS))
        for r in results:
            print(" | ".join(row(r)))
    else:
        table = Table(title=title)
        for i, header in enumerate(ROW_HEADERS):
            table.add_column(header, justify="left" if i == 0 else "right")
        for r in results:
            table.add_row(*row(r))
        Console(width=200).print(table)
    for r in results:
        if r.error:
            print(f"{r.target}: {r.error}")
        if r.malformed or r.duplicates or r.disconnects:
            print(f"{r.target}: {r.malformed} mangled payload lines (not counted), "
                  f"{r.duplicates} duplicates, {r.disconnects} clients disconnected")  # fmt: skip
    print(
        "expected = sent x clients (sender gets its own line back); for ncat, "
        "sent x (clients - 1): ncat --chat does not echo to the sender."
    )


def check_clock() -> None:
    impl = time.get_clock_info("perf_counter").implementation
    if "CLOCK_MONOTONIC" not in impl:  # cross-process latency would be meaningless
        print(f"warning: perf_counter is {impl}, latencies may be wrong", file=sys.stderr)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:  # children (servers, client process) inherit the raised limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="TCP chat fan-out benchmark")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--senders", type=int, default=10)
    p.add_argument("--messages", type=int, default=200, help="messages per sender")
    p.add_argument("--targets", default="netchat,ncat,select")
    p.add_argument("--size", type=int, default=0, help="pad payload lines to this many bytes")
    p.add_argument("--rate", type=float, default=0.0, help="msgs/s per sender (0 = full speed)")
    p.add_argument("--timeout", type=float, default=60.0, help="wait after last send (s)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    bad = {t for t in args.targets.split(",") if t.partition("@")[0] not in TARGETS}
    if bad or not 1 <= args.senders <= args.clients:
        p.error(f"unknown targets {sorted(bad)}" if bad else "need 1 <= senders <= clients")
    return args


def main() -> None:
    args = parse_args()
    raise_nofile()
    check_clock()
    results: list[Result] = []
    base = Workload(args.clients, args.senders, args.messages, args.size, args.rate, args.timeout)
    with TemporaryDirectory(prefix="fanout-") as tmp:
        for target in args.targets.split(","):
            w = dataclasses.replace(base, echo=target != "ncat")
            print(f"running {target} ...", file=sys.stderr)
            results.append(run_target(target, w, Path(tmp)))
    title = (
        f"fan-out: {args.clients} clients, {args.senders} senders x {args.messages} "
        f"messages, rate={args.rate or 'max'}, size={args.size or 'min'}"
    )
    print_table(results, title)
    if args.json:
        doc = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "argv": sys.argv,
            "python": sys.version,
            "cpus": os.cpu_count(),
            "results": [asdict(r) | {"delivered_pct": r.delivered_pct} for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()

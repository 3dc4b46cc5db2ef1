"""Join storm: N plain clients connect at once; how long until every one is welcomed?

    python benchmarks/joinstorm.py --clients 2000 [--targets netchat,netchat@DIR] [--runs 3]

A class connecting at the start of a lesson is the case: every client connects, sends
its name as soon as the server's first byte arrives, and waits for its ``Welcome``
line. The harness opens every connection without waiting for the others (non-blocking
``connect`` in one selectors loop, in a process of its own) and reports, per target:

- ``all joined s``: from the first connect to the last welcome;
- ``p50 / p99 join ms``: per client, from its connect to its welcome;
- ``notice bytes``: what the clients received in all, until the last welcome — the
  cost of telling everyone about everyone (one notice per arrival is O(N²));
- ``server CPU s``: user+system time of the server process during the storm (/proc).

``netchat@DIR`` runs the checkout in DIR, so two versions are compared in one run.
Only 127.0.0.1 is ever connected to; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
DEADLINE_S = 60.0


@dataclass
class Outcome:
    target: str
    clients: int
    joined: int = 0
    all_joined_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    notice_bytes: int = 0
    server_cpu_s: float = 0.0
    error: str = ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(target: str, port: int, clients: int) -> subprocess.Popen[bytes]:
    checkout = Path(target.partition("@")[2] or HERE.parent)
    command = [
        sys.executable, "-m", "netchat", "server", "--host", HOST, "--port", str(port),
        "--max-clients", str(clients + 100), "--max-per-address", "0", "--rate-limit", "0",
        "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=checkout, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1) as probe:
                probe.recv(100)  # the banner: it serves
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the server did not start within 10 s")


def storm(port: int, clients: int) -> tuple[list[float], int]:
    """Connect ``clients`` at once; the seconds each took to be welcomed, and bytes read."""
    selector = selectors.DefaultSelector()
    started: dict[int, float] = {}
    names: dict[int, bytes] = {}
    buffers: dict[int, bytes] = {}
    welcomed: list[float] = []
    total_bytes = 0
    for n in range(clients):
        sock = socket.socket()
        sock.setblocking(False)
        code = sock.connect_ex((HOST, port))
        if code not in (0, errno.EINPROGRESS):
            raise RuntimeError(f"connect failed: {os.strerror(code)}")
        started[sock.fileno()] = time.perf_counter()
        names[sock.fileno()] = f"s{n:05d}".encode()
        buffers[sock.fileno()] = b""
        selector.register(sock, selectors.EVENT_READ, "new")
    deadline = time.monotonic() + DEADLINE_S
    while len(welcomed) < clients and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            fd = sock.fileno()
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                continue
            total_bytes += len(data)
            if key.data == "new":  # the banner: answer with the name
                sock.sendall(names[fd] + b"\n")
                selector.modify(sock, selectors.EVENT_READ, "joining")
            if key.data != "joined":
                buffers[fd] += data
                if b"Welcome, " + names[fd] in buffers[fd]:
                    welcomed.append(time.perf_counter() - started[fd])
                    buffers[fd] = b""
                    selector.modify(sock, selectors.EVENT_READ, "joined")
    for key in list(selector.get_map().values()):
        with contextlib.suppress(OSError):
            key.fileobj.close()  # type: ignore[union-attr]
    return welcomed, total_bytes


def run(target: str, clients: int) -> Outcome:
    outcome = Outcome(target, clients)
    port = free_port()
    proc = start_server(target, port, clients)
    try:
        before = cpu_seconds(proc.pid)
        began = time.perf_counter()
        welcomed, outcome.notice_bytes = storm(port, clients)
        outcome.server_cpu_s = cpu_seconds(proc.pid) - before
        outcome.joined = len(welcomed)
        if welcomed:
            ordered = sorted(welcomed)
            outcome.all_joined_s = (
                max(welcomed) if len(welcomed) == clients else time.perf_counter() - began
            )
            outcome.p50_ms = 1000 * statistics.median(ordered)
            outcome.p99_ms = 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        if len(welcomed) < clients:
            outcome.error = f"only {len(welcomed)} of {clients} welcomed within {DEADLINE_S:g} s"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--targets", default="netchat")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.clients + 100:
        parser.error(f"the open-files limit ({hard}) is below clients + 100")
    print(
        f"{'target':32} {'joined':>7} {'all joined s':>12} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'notice MB':>10} {'server CPU s':>12}"
    )
    for _ in range(args.runs):
        for target in args.targets.split(","):
            o = run(target, args.clients)
            print(
                f"{o.target:32} {o.joined:>7} {o.all_joined_s:>12.2f} {o.p50_ms:>8.0f}"
                f" {o.p99_ms:>8.0f} {o.notice_bytes / 1e6:>10.1f} {o.server_cpu_s:>12.2f}"
                + (f"  ({o.error})" if o.error else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()

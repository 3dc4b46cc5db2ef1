"""Round trips between two Python processes over loopback UDP, with busy threads in the
answering process — the measurement behind rudp's RTO floor (``reliable.MIN_RTO``).

    python benchmarks/loopback_rtt.py [--busy 0,1,2] [--count 3000]

For each number of busy threads, a forked responder echoes datagrams from one thread
while that many other threads spin in pure Python (holding the GIL, as a relay's
other threads do when it is busy); this process sends a 60-byte datagram, waits for
the echo, and records the round trip. Prints the median, p99, p99.9 and maximum.
Everything goes to 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import threading
import time
from multiprocessing.connection import Connection

HOST = "127.0.0.1"


def respond(busy: int, seconds: float, ports: Connection) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(0.5)
    ports.send(sock.getsockname()[1])
    end = time.monotonic() + seconds

    def spin() -> None:
        total = 0
        while time.monotonic() < end:
            total += sum(range(200))

    for _ in range(busy):
        threading.Thread(target=spin, daemon=True).start()
    while time.monotonic() < end:
        try:
            data, address = sock.recvfrom(2048)
        except TimeoutError:
            continue
        sock.sendto(data, address)
    sock.close()


def measure(busy: int, count: int, seconds: float = 20.0) -> list[float]:
    """Round trips in milliseconds, at most ``count`` of them and for at most ``seconds``."""
    ports, child_ports = multiprocessing.Pipe()
    responder = multiprocessing.get_context("fork").Process(
        target=respond, args=(busy, seconds + 5, child_ports), daemon=True
    )
    responder.start()
    target = (HOST, ports.recv())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    rtts = []
    end = time.monotonic() + seconds
    try:
        for _ in range(count):
            if time.monotonic() > end:
                break
            start = time.perf_counter()
            sock.sendto(b"x" * 60, target)
            try:
                sock.recv(2048)
            except TimeoutError:
                continue
            rtts.append((time.perf_counter() - start) * 1000)
            time.sleep(0.0005)
    finally:
        sock.close()
        responder.kill()
        responder.join(timeout=5)
    return sorted(rtts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", default="0,1,2", help="busy threads, comma-separated")
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    for busy in (int(item) for item in args.busy.split(",")):
        rtts = measure(busy, args.count)
        if not rtts:
            print(f"busy threads {busy}: no answer")
            continue

        def quantile(q: float, rtts: list[float] = rtts) -> float:
            return rtts[min(len(rtts) - 1, int(q * len(rtts)))]

        print(
            f"busy threads {busy}: {len(rtts)} round trips, median {quantile(0.5):.3f} ms,"
            f" p99 {quantile(0.99):.3f}, p99.9 {quantile(0.999):.3f}, max {rtts[-1]:.3f}"
        )


if __name__ == "__main__":
    main()

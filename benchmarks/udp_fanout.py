"""UDP fan-out benchmark: relay deliveries/s against raw Python ``sendto`` datagrams/s.

    python benchmarks/udp_fanout.py [--peers 100] [--duration 3] [--text-size 60]
        [--offered-rate 20000] [--json out.json]

Everything runs on 127.0.0.1 in one invocation, against the same receivers:

1. **raw sendto**: one Python thread sends a datagram the size of a relayed chat
   message to each of the N receiver sockets in turn, as fast as it can. This is
   the ceiling for any pure-Python relay: one ``sendto`` per peer per message.
2. **relay, unbatched**: a :class:`~netchat.transport.udp_relay.UdpRelayServer` in
   this process (its receive and housekeeping threads) with N validated members and
   one more, the driver, in a forked process that sends ``say`` datagrams as fast
   as it can. The relay takes one datagram at a time off its socket, so every
   message goes out as one datagram per peer.
3. **relay, batched** (the shipped configuration): the relay drains up to 64
   waiting datagrams before flushing, so under load each peer gets several
   messages per datagram (in order, within 1200 bytes).

A *delivery* is one chat frame handed to one peer (counted by the relay, as
``units_out``); the receivers are never read, so the kernel drops what overflows
their buffers, the same way in every phase. Rate limiting is off. The figure that
matters is deliveries/s relative to raw datagrams/s; the issue's target is at
least 70 % at 100 peers. Results vary with the machine; the relay shares the GIL
with nothing else in its process but the main thread, which sleeps.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netchat.hub import Hub
from netchat.protocol import datagram as dg
from netchat.protocol.frames import Hello, Message, Say, encode_frame
from netchat.transport import udp_relay
from netchat.transport.base import ServerConfig

HOST = "127.0.0.1"  # the only address this benchmark ever sends to


def make_receivers(count: int) -> list[socket.socket]:
    receivers = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        receivers.append(sock)
    return receivers


def raw_sendto(receivers: list[socket.socket], datagram: bytes, duration: float) -> float:
    """Datagrams per second one Python thread sends, round-robin over the receivers."""
    addresses = [sock.getsockname() for sock in receivers]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    sent = 0
    start = time.perf_counter()
    end = start + duration
    while time.perf_counter() < end:
        for address in addresses:
            try:
                sender.sendto(datagram, address)
            except BlockingIOError:
                continue
            sent += 1
    elapsed = time.perf_counter() - start
    sender.close()
    return sent / elapsed


def join(sock: socket.socket, relay_address: tuple[str, int], name: str) -> None:
    """The cookie handshake by hand (the receivers never run a client transport),
    retried because the relay rate-limits cookies per source address."""
    sock.settimeout(0.2)
    for _ in range(100):
        try:
            sock.sendto(dg.encode_hello(dg.NO_COOKIE), relay_address)
            cookie = dg.decode_datagram(sock.recv(2048))
            if not isinstance(cookie, dg.Cookie):
                continue
            sock.sendto(dg.encode_hello(cookie.cookie, encode_frame(Hello(name))), relay_address)
            if isinstance(dg.decode_datagram(sock.recv(2048)), dg.Accept):
                sock.setblocking(False)
                return
        except TimeoutError:
            continue
    raise SystemExit(f"{name} could not join the relay")


def drive(relay_address: tuple[str, int], text: str, seconds: float, rate: float) -> None:
    """In the forked driver process: join, then offer ``rate`` says per second, in
    bursts every millisecond. Paced rather than flat out, so the driver leaves the
    CPU to the relay (the raw phase has no driver to compete with); the rate is far
    above what the relay can take, so it is saturated either way."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    join(sock, relay_address, "driver")
    seq = 1
    burst = max(1, int(rate / 1000))
    start = time.monotonic()
    end = start + seconds
    while (now := time.monotonic()) < end:
        due = int((now - start) * rate)
        while seq <= due:
            for _ in range(burst):
                try:
                    sock.sendto(dg.encode_data(seq, encode_frame(Say(text))), relay_address)
                except BlockingIOError:
                    break
                seq += 1
        try:  # our own copies of the chat: read and drop them
            while True:
                sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            pass
        time.sleep(0.001)


def drain(receivers: list[socket.socket]) -> None:
    for sock in receivers:
        sock.setblocking(False)
        try:
            while True:
                sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            pass


def relay_phase(
    receivers: list[socket.socket], text: str, duration: float, batch: int, rate: float
) -> dict[str, float]:
    udp_relay.RECEIVE_BATCH = batch
    config = ServerConfig(host=HOST, port=0, rate_limit=0, max_clients=10_000, max_per_address=0)
    relay = udp_relay.UdpRelayServer(Hub(), config, heartbeat_interval=600)
    server = threading.Thread(target=relay.serve_forever, daemon=True)
    server.start()
    for index, sock in enumerate(receivers):
        join(sock, relay.address, f"peer{index}")
    warmup = 0.5
    driver = multiprocessing.get_context("fork").Process(
        target=drive, args=(relay.address, text, warmup + duration + 0.5, rate), daemon=True
    )
    driver.start()
    time.sleep(warmup)
    before = relay.stats()
    start = time.perf_counter()
    time.sleep(duration)
    after = relay.stats()
    elapsed = time.perf_counter() - start
    driver.join(timeout=duration + 10)
    relay.shutdown("benchmark over")
    server.join(timeout=10)
    deliveries = after.get("units_out", 0) - before.get("units_out", 0)
    datagrams = after.get("datagrams_out", 0) - before.get("datagrams_out", 0)
    messages = after.get("datagrams_in", 0) - before.get("datagrams_in", 0)
    drain(receivers)  # forget what the relay sent, for the next phase
    return {
        "deliveries_per_s": deliveries / elapsed,
        "datagrams_per_s": datagrams / elapsed,
        "messages_in_per_s": messages / elapsed,
        "frames_per_datagram": deliveries / datagrams if datagrams else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--text-size", type=int, default=60)
    parser.add_argument(
        "--offered-rate", type=float, default=20_000, help="says per second the driver offers"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    text = "x" * args.text_size
    sample = encode_frame(Message(f"peer{args.peers}", text, time.time(), 123456))
    datagram = dg.encode_data(123456, sample)
    receivers = make_receivers(args.peers)
    raw = raw_sendto(receivers, datagram, args.duration)
    drain(receivers)
    unbatched = relay_phase(receivers, text, args.duration, 1, args.offered_rate)
    batched = relay_phase(receivers, text, args.duration, 64, args.offered_rate)
    results = {
        "peers": args.peers,
        "datagram_bytes": len(datagram),
        "raw_sendto_datagrams_per_s": raw,
        "relay_unbatched": unbatched,
        "relay_batched": batched,
        "unbatched_vs_raw": unbatched["deliveries_per_s"] / raw,
        "batched_vs_raw": batched["deliveries_per_s"] / raw,
    }
    print(f"peers: {args.peers}, datagram: {len(datagram)} bytes, {args.duration:g} s per phase")
    print(f"raw sendto:        {raw:12,.0f} datagrams/s")
    for label, phase in (("relay, unbatched:", unbatched), ("relay, batched:  ", batched)):
        ratio = phase["deliveries_per_s"] / raw
        print(
            f"{label} {phase['deliveries_per_s']:12,.0f} deliveries/s  ({ratio:.0%} of raw)"
            f"  {phase['datagrams_per_s']:,.0f} datagrams/s,"
            f" {phase['frames_per_datagram']:.1f} frames/datagram,"
            f" {phase['messages_in_per_s']:,.0f} messages in/s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    for sock in receivers:
        sock.close()


if __name__ == "__main__":
    main()

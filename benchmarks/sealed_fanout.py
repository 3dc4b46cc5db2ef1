"""What a password costs the UDP relay: fan-out with and without sealing, in one run.

    python benchmarks/sealed_fanout.py [--peers 100] [--duration 3] [--text-size 60]
        [--offered-rate 20000] [--rounds 1] [--json out.json]

The same N receiver sockets on 127.0.0.1 join four relays in turn (each a
:class:`~netchat.transport.udp_relay.UdpRelayServer` in this process), and a forked
driver process sends ``say`` datagrams to each as fast as the relay takes them, as in
``udp_fanout.py``:

1. open chat, unbatched (one message per datagram: one ``sendto`` per delivery);
2. sealed chat (``password=``), unbatched: one seal per delivery, the worst case;
3. open chat, batched (the shipped configuration: up to 64 waiting datagrams drained
   before a flush, so each datagram to a peer carries several messages);
4. sealed chat, batched: one seal per *datagram*, however many messages it holds.

The sealed receivers and driver join with the real sealed handshake (scrypt once for
the run, then a HELLO and ACCEPT each) and the driver seals every datagram it sends.
A *delivery* is one chat frame handed to one peer (the relay's ``units_out``). **Server
CPU per delivery** is this process's CPU time over the measured window (the relay's
thread; the main thread sleeps, the driver is another process) divided by the
deliveries in it. Receivers are never read: the kernel drops what overflows them, the
same way in every phase. Rate limiting is off. Results vary with the machine and its
load; compare the phases of one run, not runs on different machines. With
``--rounds N`` the four phases run N times, interleaved (so a change in the machine's
load touches all of them alike), and each figure is the median over the rounds.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from udp_fanout import HOST, drain, make_receivers, offer_says

from netchat.hub import Hub
from netchat.protocol import datagram as dg
from netchat.protocol import seal
from netchat.protocol.envelope import CLEAR, ClientKeys, Envelope
from netchat.protocol.frames import Hello, encode_frame
from netchat.transport import udp_relay
from netchat.transport.base import ServerConfig

PASSWORD = "correct horse battery staple"


@functools.lru_cache(maxsize=4)
def derive_once(password: str, salt: bytes) -> seal.ChatKey:
    """scrypt once per relay for every receiver (each would otherwise pay ~80 ms)."""
    return seal.ChatKey.derive(password, salt)


def join(
    sock: socket.socket, relay_address: tuple[str, int], name: str, password: str | None
) -> Envelope:
    """The join by hand (the receivers run no client transport), retried because the
    relay rate-limits cookies per source address. Returns the session's envelope."""
    sock.settimeout(0.2)
    for _ in range(100):
        keys = ClientKeys(password, derive=derive_once) if password else None
        try:
            request = dg.encode_hello(dg.NO_COOKIE) if keys is None else keys.cookie_request()
            sock.sendto(request, relay_address)
            answer = sock.recv(2048)
            if keys is None:
                cookie = dg.decode_datagram(answer)
                if not isinstance(cookie, dg.Cookie):
                    continue
                hello = dg.encode_hello(cookie.cookie, encode_frame(Hello(name)))
                sock.sendto(hello, relay_address)
                if isinstance(dg.decode_datagram(sock.recv(2048)), dg.Accept):
                    sock.setblocking(False)
                    return CLEAR
                continue
            salted = keys.take_cookie(answer)
            if salted is None:
                continue
            sock.sendto(keys.hello(salted, encode_frame(Hello(name))), relay_address)
            plain, envelope = keys.finish(sock.recv(2048))
            if isinstance(dg.decode_datagram(plain), dg.Accept):
                sock.setblocking(False)
                return envelope
        except (TimeoutError, ValueError):
            continue
    raise SystemExit(f"{name} could not join the relay")


def drive(
    relay_address: tuple[str, int], text: str, seconds: float, rate: float, password: str | None
) -> None:
    """In the forked driver: join, then offer ``rate`` says per second in 1 ms bursts
    (paced, so the driver leaves the CPU to the relay), sealing each when sealed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    envelope = join(sock, relay_address, "driver", password)
    offer_says(sock, relay_address, text, seconds, rate, seal=envelope.seal)


def relay_phase(
    receivers: list[socket.socket],
    text: str,
    duration: float,
    batch: int,
    rate: float,
    password: str | None,
) -> dict[str, float]:
    udp_relay.RECEIVE_BATCH = batch
    config = ServerConfig(
        host=HOST,
        port=0,
        rate_limit=0,
        max_clients=10_000,
        max_per_address=0,
        password=password or "",
    )
    relay = udp_relay.UdpRelayServer(Hub(), config, heartbeat_interval=600)
    server = threading.Thread(target=relay.serve_forever, daemon=True)
    server.start()
    for index, sock in enumerate(receivers):
        join(sock, relay.address, f"peer{index}", password)
    warmup = 0.5
    driver = multiprocessing.get_context("fork").Process(
        target=drive,
        args=(relay.address, text, warmup + duration + 0.5, rate, password),
        daemon=True,
    )
    driver.start()
    time.sleep(warmup)
    before = relay.stats()
    cpu_before = time.process_time()
    start = time.perf_counter()
    time.sleep(duration)
    after = relay.stats()
    cpu = time.process_time() - cpu_before
    elapsed = time.perf_counter() - start
    driver.join(timeout=duration + 10)
    if driver.is_alive():
        driver.kill()
    relay.shutdown("benchmark over")
    server.join(timeout=10)
    deliveries = after.get("units_out", 0) - before.get("units_out", 0)
    datagrams = after.get("datagrams_out", 0) - before.get("datagrams_out", 0)
    messages = after.get("datagrams_in", 0) - before.get("datagrams_in", 0)
    drain(receivers)
    return {
        "deliveries_per_s": deliveries / elapsed,
        "datagrams_per_s": datagrams / elapsed,
        "messages_in_per_s": messages / elapsed,
        "frames_per_datagram": deliveries / datagrams if datagrams else 0.0,
        "cpu_seconds": cpu,
        "cpu_us_per_delivery": cpu / deliveries * 1e6 if deliveries else 0.0,
        "cpu_us_per_datagram": cpu / datagrams * 1e6 if datagrams else 0.0,
        "forged": after.get("forged", 0),
        "replayed": after.get("replayed", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--text-size", type=int, default=60)
    parser.add_argument(
        "--offered-rate", type=float, default=20_000, help="says per second the driver offers"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the phases; medians")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    text = "x" * args.text_size
    receivers = make_receivers(args.peers)
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(max(1, args.rounds)):
        for batch, batched in ((1, "unbatched"), (64, "batched")):
            for password, label in ((None, "open"), (PASSWORD, "sealed")):
                result = relay_phase(
                    receivers, text, args.duration, batch, args.offered_rate, password
                )
                runs.setdefault(f"{label}, {batched}", []).append(result)
    phases = {
        name: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for name, results in runs.items()
    }
    print(
        f"peers: {args.peers}, text: {args.text_size} bytes, {args.duration:g} s per phase,"
        f" median of {max(1, args.rounds)} round(s)"
    )
    for name, phase in phases.items():
        print(
            f"{name + ':':20} {phase['deliveries_per_s']:10,.0f} deliveries/s"
            f"  {phase['cpu_us_per_delivery']:6.2f} µs CPU/delivery"
            f"  {phase['cpu_us_per_datagram']:6.2f} µs CPU/datagram"
            f"  {phase['frames_per_datagram']:4.1f} frames/datagram"
            f"  {phase['messages_in_per_s']:8,.0f} messages in/s"
        )
    for batched in ("unbatched", "batched"):
        open_, sealed = phases[f"open, {batched}"], phases[f"sealed, {batched}"]
        print(
            f"sealing, {batched}: {sealed['deliveries_per_s'] / open_['deliveries_per_s']:.0%}"
            f" of the open relay's deliveries/s,"
            f" +{sealed['cpu_us_per_delivery'] - open_['cpu_us_per_delivery']:.2f} µs CPU"
            " per delivery"
        )
    if args.json:
        results = {
            "peers": args.peers,
            "text_size": args.text_size,
            "duration": args.duration,
            "python": platform.python_version(),
            "argv": sys.argv,
            "phases": phases,
            "rounds": runs,
        }
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    for sock in receivers:
        sock.close()


if __name__ == "__main__":
    main()

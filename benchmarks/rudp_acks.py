"""What acknowledgements cost a relay: the ``--proto rudp`` core against plain UDP fan-out.

    python benchmarks/rudp_acks.py [--peers 100] [--duration 3] [--text-size 60]
        [--window 64] [--cpu-only] [--json out.json]

Two measurements, both on 127.0.0.1 only:

1. **CPU per operation** (one thread, no sockets, best of 5 runs): what
   the relay's thread spends per delivery on plain UDP (pack a header), per delivery
   on rudp (:meth:`Sender.send` and :meth:`Sender.transmit`), per ACK it handles
   (decode it, :meth:`Sender.on_ack`), and per ``sendto``/``recvfrom`` of a small
   datagram on loopback. With these, a relay's cost per delivery is
   ``send + pack + sendto`` on UDP and
   ``send + transmit + sendto + (recvfrom + ack) / datagrams-per-ACK`` on rudp.
   Then the same per delivery for 100 members, one or six frames per datagram and an
   ACK every one or two datagrams, timing only the relay's side.
2. **Fan-out over sockets**: a relay thread in this process broadcasts chat frames to
   N peer sockets served by a forked process (a Receiver per peer in the rudp
   phases, ACKs sent after each drained socket and when ``max_ack_delay`` passes).
   Phases: bare UDP, a ``sendto`` loop flat out (the receivers count what survives
   their socket buffers; netchat's UDP relay does more per delivery than this, so
   it is a ceiling, not the relay); rudp acknowledging every datagram; rudp
   acknowledging every second datagram or after 5 ms (the default). The rudp relay broadcasts whenever no
   peer's window is full, so the slowest peer paces the run as on TCP, and
   retransmits on its timers. Deliveries are frames counted by the receivers.

This isolates the reliability core: there is no hub, no JSON decoding of requests,
and no join, and frames are queued one by one (``Sender.send``). It chose the ACK
frequency (module docstring of :mod:`netchat.protocol.reliable`) before the transport
was wired in; ``benchmarks/udp_fanout.py`` measures the wired relay against the UDP
relay, the issue's target being rudp fan-out at 100 members at least half of UDP's.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netchat.protocol import datagram as dg
from netchat.protocol import reliable as rel
from netchat.protocol.frames import Message, encode_frame

HOST = "127.0.0.1"  # the only address this benchmark ever sends to
WINDOW = [rel.DEFAULT_WINDOW]  # --window: the rudp senders' window
_DATA_HEADER = dg.HEADERS[dg.Kind.DATA]


# --- 1. CPU per operation --------------------------------------------------------------


def best_us(make_call: Callable[[], Callable[[], object]], number: int) -> float:
    """Microseconds per call, best of 5 runs, each on fresh state from ``make_call``."""
    best = float("inf")
    for _ in range(5):
        call = make_call()
        start = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, time.perf_counter() - start)
    return best / number * 1e6


def cpu_costs(frame: bytes, number: int = 20_000) -> dict[str, float]:
    clock = itertools.count()

    def plain() -> Callable[[], object]:
        pack = _DATA_HEADER.pack
        return lambda: pack(dg.MAGIC, dg.DATAGRAM_VERSION, dg.Kind.DATA, 7, 0) + frame

    def rudp_send() -> Callable[[], object]:
        # A window wider than the run, so every call sends (the steady state of a
        # member whose ACKs keep up); ACKs are timed apart, below.
        sender = rel.Sender(window=rel.MAX_WINDOW, max_queue=1 << 30)

        def call() -> list[bytes]:
            sender.send(frame)
            return sender.transmit(next(clock) * 1e-6)

        return call

    def rudp_ack() -> Callable[[], object]:
        sender = rel.Sender(window=rel.MAX_WINDOW, max_queue=1 << 30)
        for _ in range(number):
            sender.send(frame)
            sender.transmit(0.0)
        acks = iter(
            [
                dg.encode_ack(dg.Ack(seq + 1, seq, 0, rel.DEFAULT_WINDOW))
                for seq in range(1, number + 1)
            ]
        )

        def call() -> None:
            ack = dg.decode_datagram(next(acks))
            assert isinstance(ack, dg.Ack)
            sender.on_ack(ack, 0.001)

        return call

    units = (frame,)

    def rudp_receive() -> Callable[[], object]:
        receiver = rel.Receiver(ack_every=1, max_ack_delay=0.0)
        seqs = itertools.count(1)

        def call() -> bytes | None:
            receiver.on_data(dg.Data(next(seqs), units), 0.0)
            return receiver.take_ack(0.0)

        return call

    def loopback_pair() -> Callable[[], object]:
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind((HOST, 0))
        b.bind((HOST, 0))
        sockets.extend((a, b))
        target = b.getsockname()
        datagram = _DATA_HEADER.pack(dg.MAGIC, dg.DATAGRAM_VERSION, dg.Kind.DATA, 7, 0) + frame

        def call() -> None:
            a.sendto(datagram, target)
            b.recvfrom(2048)

        return call

    sockets: list[socket.socket] = []
    costs = {
        "plain_pack_us": best_us(plain, number),
        "rudp_send_transmit_us": best_us(rudp_send, number),
        "rudp_ack_decode_handle_us": best_us(rudp_ack, number),
        "rudp_receive_and_ack_us": best_us(rudp_receive, number),
        "sendto_plus_recvfrom_us": best_us(loopback_pair, number // 4),
    }
    for sock in sockets:
        sock.close()
    return costs


def per_delivery_us(frame: bytes, members: int, batch: int, ack_every: int) -> dict[str, float]:
    """Relay-side CPU per delivery, sockets aside: ``batch`` frames to each of ``members``
    senders, one transmit each (so ``batch`` frames share datagrams, as the relay
    packs a backlog), then the ACKs their receivers (run here, untimed) sent back."""
    senders = [rel.Sender(max_queue=1 << 30) for _ in range(members)]
    receivers = [rel.Receiver(ack_every=ack_every) for _ in range(members)]
    send_s = transmit_s = ack_s = 0.0
    deliveries = acks = 0
    now = 0.0
    for _ in range(max(1, 1800 // batch)):
        now += 0.001
        start = time.perf_counter()
        for _ in range(batch):
            for sender in senders:
                sender.send(frame)
        send_s += time.perf_counter() - start
        start = time.perf_counter()
        out = [sender.transmit(now) for sender in senders]
        transmit_s += time.perf_counter() - start
        deliveries += batch * members
        replies = []
        for receiver, datagrams in zip(receivers, out, strict=True):
            for datagram in datagrams:
                data = dg.decode_datagram(datagram)
                assert isinstance(data, dg.Data)
                receiver.on_data(data, now)
            replies.append(receiver.take_ack(now + 0.0002))
        start = time.perf_counter()
        for sender, reply in zip(senders, replies, strict=True):
            if reply is not None:
                ack = dg.decode_datagram(reply)
                assert isinstance(ack, dg.Ack)
                sender.on_ack(ack, now + 0.0003)
                acks += 1
        ack_s += time.perf_counter() - start
    scale = 1e6 / deliveries
    return {
        "send_us": send_s * scale,
        "transmit_us": transmit_s * scale,
        "ack_us": ack_s * scale,
        "total_us": (send_s + transmit_s + ack_s) * scale,
        "acks_per_delivery": acks / deliveries,
    }


# --- 2. fan-out over sockets -------------------------------------------------------------


def serve_peers(
    count: int,
    mode: str,
    ack_every: int,
    max_ack_delay: float,
    seconds: float,
    ports: Connection,
    done: Connection,
) -> None:
    """In the forked process: ``count`` peer sockets, counting frames (and acknowledging
    them in the rudp modes), for at most ``seconds``."""
    selector = selectors.DefaultSelector()
    socks = []
    receivers = []
    for index in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
        socks.append(sock)
        receivers.append(rel.Receiver(ack_every=ack_every, max_ack_delay=max_ack_delay))
    ports.send([sock.getsockname()[1] for sock in socks])
    relay_address = ports.recv()
    frames = 0
    owed: set[int] = set()
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end and not done.poll():
        for key, _ in selector.select(0.001):
            index = key.data
            sock = socks[index]
            for _ in range(256):
                try:
                    data = sock.recv(2048)
                except (BlockingIOError, InterruptedError):
                    break
                if mode == "udp":
                    frames += 1
                    continue
                decoded = dg.decode_datagram(data)
                assert isinstance(decoded, dg.Data)
                frames += len(receivers[index].on_data(decoded, now))
            if mode != "udp":
                owed.add(index)
        if mode != "udp":
            now = time.monotonic()
            for index in list(owed):
                receiver = receivers[index]
                ack = receiver.take_ack(now)
                if ack is not None:
                    socks[index].sendto(ack, relay_address)
                if receiver.next_deadline() is None:
                    owed.discard(index)
    done.send((frames, sum(receiver.duplicates for receiver in receivers)))
    for sock in socks:
        sock.close()


def fanout_phase(
    peers: int, frame: bytes, mode: str, ack_every: int, max_ack_delay: float, duration: float
) -> dict[str, float]:
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    relay.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    relay.bind((HOST, 0))
    relay.setblocking(False)
    ports_parent, ports_child = multiprocessing.Pipe()
    done_parent, done_child = multiprocessing.Pipe()
    worker = multiprocessing.get_context("fork").Process(
        target=serve_peers,
        args=(peers, mode, ack_every, max_ack_delay, duration + 10, ports_child, done_child),
        daemon=True,
    )
    worker.start()
    addresses = [(HOST, port) for port in ports_parent.recv()]
    ports_parent.send(relay.getsockname())
    counters = {"sent_units": 0, "datagrams_out": 0, "acks_in": 0, "retransmitted": 0}
    stop = threading.Event()

    def run() -> None:
        if mode == "udp":
            plain_relay(relay, addresses, frame, stop, counters)
        else:
            rudp_relay(relay, addresses, frame, stop, counters)

    thread = threading.Thread(target=run)
    start = time.perf_counter()
    thread.start()
    time.sleep(duration)
    stop.set()
    thread.join(timeout=10)
    elapsed = time.perf_counter() - start
    time.sleep(0.2)  # the last datagrams reach the receivers
    done_parent.send("stop")
    received, duplicates = done_parent.recv() if done_parent.poll(10) else (0, 0)
    worker.join(timeout=10)
    if worker.is_alive():
        worker.kill()
    relay.close()
    return {
        "received_per_s": received / elapsed,
        "sent_per_s": counters["sent_units"] / elapsed,
        "datagrams_out_per_s": counters["datagrams_out"] / elapsed,
        "acks_in_per_s": counters["acks_in"] / elapsed,
        "retransmitted": counters["retransmitted"],
        "duplicates_at_receivers": duplicates,
    }


def plain_relay(
    relay: socket.socket,
    addresses: list[tuple[str, int]],
    frame: bytes,
    stop: threading.Event,
    counters: dict[str, int],
) -> None:
    """The UDP relay's hot path: one header and one sendto per peer per message."""
    seqs = [1] * len(addresses)
    pack = _DATA_HEADER.pack
    sent = 0
    while not stop.is_set():
        for index, address in enumerate(addresses):
            seq = seqs[index]
            seqs[index] = seq + 1
            try:
                relay.sendto(
                    pack(dg.MAGIC, dg.DATAGRAM_VERSION, dg.Kind.DATA, seq, 0) + frame, address
                )
            except BlockingIOError:
                continue
            sent += 1
    counters["sent_units"] = counters["datagrams_out"] = sent


def rudp_relay(
    relay: socket.socket,
    addresses: list[tuple[str, int]],
    frame: bytes,
    stop: threading.Event,
    counters: dict[str, int],
) -> None:
    """A Sender per peer: take ACKs, broadcast when every window has room, run timers."""
    senders = [rel.Sender(window=WINDOW[0], max_queue=1 << 30) for _ in addresses]
    by_address = {address: index for index, address in enumerate(addresses)}
    blocked: set[int] = set()
    next_timers = 0.0
    while not stop.is_set():
        now = time.monotonic()
        for _ in range(1024):
            try:
                data, source = relay.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            ack = dg.decode_datagram(data)
            assert isinstance(ack, dg.Ack)
            index = by_address[source[:2]]
            counters["acks_in"] += 1
            sender = senders[index]
            sender.on_ack(ack, now)
            for datagram in sender.transmit(now):
                relay.sendto(datagram, source)
                counters["datagrams_out"] += 1
            if sender.backlog == 0:
                blocked.discard(index)
        if not blocked:
            for index, sender in enumerate(senders):
                sender.send(frame)
                for datagram in sender.transmit(now):
                    # A full socket buffer loses the datagram: the timers resend it.
                    with contextlib.suppress(BlockingIOError):
                        relay.sendto(datagram, addresses[index])
                    counters["datagrams_out"] += 1
                if sender.backlog:
                    blocked.add(index)
        elif now >= next_timers:
            next_timers = now + 0.001
            for index, sender in enumerate(senders):
                deadline = sender.next_deadline()
                if deadline is not None and deadline <= now:
                    for datagram in sender.transmit(now):
                        relay.sendto(datagram, addresses[index])
                        counters["datagrams_out"] += 1
        else:
            time.sleep(0)  # let the GIL go; ACKs are on their way
    counters["sent_units"] = sum(sender.sent for sender in senders)
    counters["retransmitted"] = sum(sender.retransmitted for sender in senders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--text-size", type=int, default=60)
    parser.add_argument("--window", type=int, default=rel.DEFAULT_WINDOW, help="rudp window")
    parser.add_argument("--cpu-only", action="store_true", help="skip the socket phases")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    WINDOW[0] = args.window

    frame = encode_frame(Message("peer1", "x" * args.text_size, time.time(), 123456))
    costs = cpu_costs(frame)
    print(f"frame: {len(frame)} bytes; CPU per call, best of 5 (µs):")
    for key, value in costs.items():
        print(f"  {key:28} {value:7.2f}")
    model = {}
    print(f"relay-side CPU per delivery to {args.peers} members, sockets aside, best of 3 (µs):")
    for batch in (1, 6):
        for ack_every in (1, 2):
            row = min(
                (per_delivery_us(frame, args.peers, batch, ack_every) for _ in range(3)),
                key=lambda result: result["total_us"],
            )
            model[f"batch_{batch}_ack_every_{ack_every}"] = row
            print(
                f"  {batch} frame(s)/datagram, ACK every {ack_every}: send {row['send_us']:.2f}"
                f" + transmit {row['transmit_us']:.2f} + ACKs {row['ack_us']:.2f}"
                f" = {row['total_us']:.2f}  ({row['acks_per_delivery']:.3f} ACKs/delivery)"
            )
    results: dict[str, object] = {"cpu_us": costs, "per_delivery": model}
    if args.cpu_only:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return
    phases = {
        "udp_bare_sendto": fanout_phase(args.peers, frame, "udp", 1, 0.0, args.duration),
        "rudp_ack_every_1": fanout_phase(args.peers, frame, "rudp", 1, 0.0, args.duration),
        "rudp_ack_every_2": fanout_phase(
            args.peers, frame, "rudp", rel.ACK_EVERY, rel.MAX_ACK_DELAY, args.duration
        ),
    }
    udp = phases["udp_bare_sendto"]
    print(f"fan-out to {args.peers} peers, {args.duration:g} s per phase:")
    for name, phase in phases.items():
        print(
            f"  {name:16} sent {phase['sent_per_s']:10,.0f}/s  received {phase['received_per_s']:10,.0f}/s"
            f"  ({phase['received_per_s'] / udp['sent_per_s']:.0%} of bare UDP)"
            f"  ACKs in {phase['acks_in_per_s']:9,.0f}/s  retransmitted {phase['retransmitted']:,}"
            f" (of which duplicates at the receivers {phase['duplicates_at_receivers']:,})"
        )
    results["fanout"] = phases
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The impairment relays over real sockets on 127.0.0.1 (ports chosen by the OS).

Both ends of every test are plain sockets the test owns, so the whole transcript of
what crossed the relay can be compared. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from netchat.impair import DatagramLink, Impairment, link_random
from netchat.transport.impair_relay import (
    MAX_BACKLOG,
    tcp_info,
)
from tests.conftest import ImpairRelayFactory

LOOPBACK = "127.0.0.1"
DEADLINE = 10.0


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(DEADLINE)
    return sock


def receive_all(
    sock: socket.socket, count: int, quiet: float = 0.3, first: float = DEADLINE
) -> list[tuple[bytes, tuple[str, int]]]:
    """Up to ``count`` datagrams; waits ``first`` seconds for the first one, then stops
    ``quiet`` seconds after the last one."""
    got: list[tuple[bytes, tuple[str, int]]] = []
    sock.settimeout(first)
    end = time.monotonic() + DEADLINE
    while len(got) < count and time.monotonic() < end:
        try:
            data, address = sock.recvfrom(70_000)
        except TimeoutError:
            break
        got.append((data, address))
        sock.settimeout(quiet)
    sock.settimeout(DEADLINE)
    return got


# --- UDP ---------------------------------------------------------------------------------


def test_udp_passes_every_datagram_both_ways_unchanged(
    start_impair_relay: ImpairRelayFactory,
) -> None:
    server = udp_socket()
    relay = start_impair_relay(False, server.getsockname(), Impairment())
    alice, bob = udp_socket(), udp_socket()
    alice.sendto("привет от alice".encode(), relay.address)
    first, alice_seen_as = server.recvfrom(2048)
    bob.sendto(b"hi from bob", relay.address)
    second, bob_seen_as = server.recvfrom(2048)
    assert (first, second) == ("привет от alice".encode(), b"hi from bob")
    # Each client is one address at the server, and none of them the relay's own.
    assert alice_seen_as != bob_seen_as
    assert relay.address not in (alice_seen_as, bob_seen_as)
    server.sendto(b"to alice", alice_seen_as)
    server.sendto(b"to bob", bob_seen_as)
    assert receive_all(alice, 5) == [(b"to alice", relay.address)]
    assert receive_all(bob, 5) == [(b"to bob", relay.address)]
    stats = relay.stats()
    assert stats["flows"] == 2
    assert stats["up"]["released"] == 2 and stats["down"]["released"] == 2  # type: ignore[index]


def test_udp_loss_is_the_models_for_that_seed_every_time(
    start_impair_relay: ImpairRelayFactory,
) -> None:
    impairment = Impairment(loss=0.3, seed=77)
    model = DatagramLink(impairment, link_random(77, "flow0", "up"))
    for number in range(100):
        model.offer(b"%d" % number, 0.0)
    predicted = sorted(int(data) for data in model.release(0.0))
    for _attempt in range(2):
        server = udp_socket()
        relay = start_impair_relay(False, server.getsockname(), impairment)
        client = udp_socket()
        for number in range(100):
            client.sendto(b"%d" % number, relay.address)
            time.sleep(0.0005)  # keep it well within the socket buffers
        got = sorted(int(data) for data, _ in receive_all(server, 100))
        assert got == predicted
        assert relay.stats()["up"]["dropped"] == 100 - len(predicted)  # type: ignore[index]
    assert 55 <= len(predicted) <= 85  # Binomial(100, 0.7): 70 ± 4.6


def test_an_unarmed_relay_passes_everything_until_armed(
    start_impair_relay: ImpairRelayFactory,
) -> None:
    server = udp_socket()
    relay = start_impair_relay(False, server.getsockname(), Impairment(loss=1.0), armed=False)
    client = udp_socket()
    client.sendto(b"before", relay.address)
    assert receive_all(server, 1)[0][0] == b"before"
    relay.arm()
    client.sendto(b"lost", relay.address)
    assert receive_all(server, 1, first=0.5) == []
    relay.arm(False)
    client.sendto(b"after", relay.address)
    assert receive_all(server, 1)[0][0] == b"after"
    assert relay.stats()["up"]["dropped"] == 1  # type: ignore[index]


def test_udp_duplicates_and_delay_reach_the_other_side(
    start_impair_relay: ImpairRelayFactory,
) -> None:
    server = udp_socket()
    relay = start_impair_relay(False, server.getsockname(), Impairment(duplicate=1.0, delay=0.05))
    client = udp_socket()
    sent = time.monotonic()
    client.sendto(b"twice", relay.address)
    got = receive_all(server, 2)
    assert [data for data, _ in got] == [b"twice", b"twice"]
    assert time.monotonic() - sent >= 0.05


# --- TCP ---------------------------------------------------------------------------------


class Upstream:
    """A TCP server socket that accepts one connection; the test drives it."""

    def __init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(DEADLINE)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return host, port

    def accept(self) -> socket.socket:
        conn, _ = self.listener.accept()
        conn.settimeout(DEADLINE)
        return conn


def read_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


@pytest.mark.parametrize(
    "impairment",
    [
        Impairment(),
        Impairment(delay=0.01, jitter=0.01, seed=2),
        Impairment(loss=0.5, delay=0.005, seed=3),
        Impairment(bandwidth=20e6, jitter=0.002, seed=4),
    ],
    ids=["clean", "jitter", "loss-stalls", "throttled"],
)
def test_tcp_delivers_every_byte_in_order_both_ways(
    start_impair_relay: ImpairRelayFactory, impairment: Impairment
) -> None:
    upstream = Upstream()
    relay = start_impair_relay(True, upstream.address, impairment)
    client = socket.create_connection(relay.address, timeout=DEADLINE)
    server = upstream.accept()
    # Multi-byte text cut at arbitrary points by the chunking, both ways at once.
    up_data = ("Привет, мир! " * 30_000).encode()
    down_data = ("你好 " * 40_000).encode()

    def send_all_then_end(sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    writers = [
        threading.Thread(target=send_all_then_end, args=(client, up_data)),
        threading.Thread(target=send_all_then_end, args=(server, down_data)),
    ]
    for writer in writers:
        writer.start()
    received_up = read_until_eof(server)
    received_down = read_until_eof(client)
    for writer in writers:
        writer.join(timeout=DEADLINE)
    assert received_up == up_data
    assert received_down == down_data
    stats = relay.stats()
    assert stats["up"]["released_bytes"] == len(up_data)  # type: ignore[index]
    assert stats["down"]["released_bytes"] == len(down_data)  # type: ignore[index]
    client.close()
    server.close()


def test_tcp_closing_either_side_closes_the_other(start_impair_relay: ImpairRelayFactory) -> None:
    upstream = Upstream()
    relay = start_impair_relay(True, upstream.address, Impairment(delay=0.01))
    client = socket.create_connection(relay.address, timeout=DEADLINE)
    server = upstream.accept()
    client.sendall(b"bye\n")
    client.close()
    assert read_until_eof(server) == b"bye\n"
    server.close()
    end = time.monotonic() + DEADLINE
    while relay.stats()["flows"] and time.monotonic() < end:
        time.sleep(0.02)
    assert relay.stats()["flows"] == 0


def test_tcp_stops_reading_a_direction_that_cannot_drain(
    start_impair_relay: ImpairRelayFactory,
) -> None:
    upstream = Upstream()
    # 80 kbit/s: the relay can pass on only 10 kB a second to the server.
    relay = start_impair_relay(True, upstream.address, Impairment(bandwidth=80e3))
    client = socket.create_connection(relay.address, timeout=DEADLINE)
    server = upstream.accept()
    client.setblocking(False)
    offered = 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # push until the kernel's buffers say stop
        try:
            offered += client.send(b"x" * 65536)
        except BlockingIOError:
            time.sleep(0.05)
    taken = relay.stats()["up"]["offered_bytes"]  # type: ignore[index]
    # The relay read at most its backlog limit (plus one read) beyond what the slow
    # link let through; the rest waits in kernel buffers, so TCP pushes back.
    assert taken <= MAX_BACKLOG + 65536 + 2 * 10_000
    assert offered > taken
    client.close()
    server.close()


def test_tcp_info_counts_segments_on_the_server_side(
    start_impair_relay: ImpairRelayFactory,
) -> None:
    upstream = Upstream()
    relay = start_impair_relay(True, upstream.address, Impairment())
    client = socket.create_connection(relay.address, timeout=DEADLINE)
    server = upstream.accept()
    for _ in range(20):
        client.sendall(b"line\n")
        assert server.recv(100) == b"line\n"
    info = relay.stats()["tcp_info"]
    if not info:
        pytest.skip("this kernel has no TCP_INFO segment counters")
    assert info["bytes_acked"] >= 100  # type: ignore[index]
    assert info["segs_out"] >= 20  # type: ignore[index]
    direct = tcp_info(client)
    assert direct is not None and direct["segs_out"] >= 20
    client.close()
    server.close()


def test_tcp_relay_refuses_nothing_when_the_server_is_gone(
    start_impair_relay: ImpairRelayFactory,
) -> None:
    upstream = Upstream()
    address = upstream.address
    upstream.listener.close()  # nobody listens there any more
    relay = start_impair_relay(True, address, Impairment())
    client = socket.create_connection(relay.address, timeout=DEADLINE)
    assert read_until_eof(client) == b""  # closed on us, and the relay is still serving
    assert relay.stats()["upstream_errors"] == 1
    again = socket.create_connection(relay.address, timeout=DEADLINE)
    assert read_until_eof(again) == b""
    client.close()
    again.close()

"""What sealing costs: microseconds per datagram to seal and to open, and the key schedule.

    python benchmarks/seal_cost.py [--rounds 20000] [--scrypt-rounds 5] [--json out.json]

Everything runs in this process, without sockets. For each payload size (a short chat
line, a mid-size batch, a full 1,200-byte datagram) it times
:meth:`~netchat.protocol.seal.Sealer.seal_datagram` and
:meth:`~netchat.protocol.seal.Opener.open` (counter, replay window and the
ChaCha20-Poly1305 call included), then the refusals a flood would cause (a replay, a
forgery, a forgery from an unknown peer instance, which also costs an HKDF), the relay's side
of a join (open the HELLO, an X25519 key pair and exchange, seal the ACCEPT), and the
key schedule: one scrypt derivation (the cost of one password guess) and one HKDF
(one session key). For comparison it times the bare AEAD calls of ChaCha20-Poly1305
and AES-256-GCM on the same sizes. Each figure is the median of 5 timed batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from netchat.errors import RemoteProtocolError
from netchat.protocol import datagram as dg
from netchat.protocol import seal
from netchat.protocol.limits import MAX_DATAGRAM_BYTES

BATCHES = 5


def per_call_us(work: Callable[[], object], rounds: int) -> float:
    """Median over BATCHES batches of the time one call takes, in microseconds."""
    results = []
    for _ in range(BATCHES):
        start = time.perf_counter()
        for _ in range(rounds):
            work()
        results.append((time.perf_counter() - start) / rounds * 1e6)
    return statistics.median(results)


def refused(work: Callable[[], object]) -> Callable[[], None]:
    def attempt() -> None:
        try:
            work()
        except RemoteProtocolError:
            return
        raise AssertionError("a refusal was expected")

    return attempt


def time_one_size(key: seal.TrafficKey, size: int, rounds: int, results: dict[str, float]) -> None:
    """Seal, open and the bare AEADs for DATA datagrams carrying ``size`` payload bytes."""
    plain = dg.encode_data(1, b"x" * (size - 1) + b"\n")
    sealer = seal.Sealer(key)
    results[f"seal {size} B"] = per_call_us(lambda: sealer.seal_datagram(plain), rounds)
    wires = [sealer.seal_datagram(plain) for _ in range(BATCHES * rounds)]
    opener = seal.Opener(key)
    feed = iter(wires)
    results[f"open {size} B"] = per_call_us(lambda: opener.open(next(feed)), rounds)
    chacha = ChaCha20Poly1305(os.urandom(32))
    aes = AESGCM(os.urandom(32))
    nonce, body = bytes(12), plain[4:]
    results[f"bare ChaCha20-Poly1305 encrypt {size} B"] = per_call_us(
        lambda: chacha.encrypt(nonce, body, b"nc\x02\x05"), rounds
    )
    results[f"bare AES-256-GCM encrypt {size} B"] = per_call_us(
        lambda: aes.encrypt(nonce, body, b"nc\x02\x05"), rounds
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20000, help="calls per timed batch")
    parser.add_argument("--scrypt-rounds", type=int, default=5, help="scrypt derivations")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 1_000_000))

    results: dict[str, float] = {}
    chat_key = seal.ChatKey(os.urandom(seal.KEY_BYTES), os.urandom(seal.SALT_BYTES))
    to_server, _ = chat_key.relay_keys(os.urandom(32), os.urandom(32), os.urandom(32))
    room = MAX_DATAGRAM_BYTES - seal.SEAL_OVERHEAD - dg.DATA_HEADER_BYTES
    for size in (60, 500, room):
        time_one_size(to_server, size, rounds, results)

    plain = dg.encode_data(1, b"x" * 59 + b"\n")
    sealer, opener = seal.Sealer(to_server), seal.Opener(to_server)
    wire = sealer.seal_datagram(plain)
    opener.open(wire)
    results["refuse a replay (60 B)"] = per_call_us(refused(lambda: opener.open(wire)), rounds)
    forged = wire[:-1] + bytes([wire[-1] ^ 1])
    fresh = iter(range(10**9))
    results["refuse a forgery (60 B)"] = per_call_us(
        refused(lambda: seal.Opener(to_server).open(forged)), rounds
    )
    peers = seal.PeerOpeners(chat_key)
    stranger = seal.ChatKey(os.urandom(32), chat_key.salt)

    def stranger_datagram() -> bytes:
        instance = next(fresh).to_bytes(8, "big")
        frame = b'{"v":1,"t":"say","text":"spam"}\n'
        sealer = seal.Sealer(stranger.peer_key(instance))
        return sealer.seal_datagram(dg.encode_peer(instance, 1, frame))

    strangers = [stranger_datagram() for _ in range(BATCHES * rounds // 10)]
    feed = iter(strangers)
    results["refuse a stranger's PEER datagram (HKDF + tag)"] = per_call_us(
        refused(lambda: peers.open(next(feed))), rounds // 10
    )
    join = seal.ClientHandshake(chat_key, bytes(range(1, 17)), b'{"v":1,"t":"hello","name":"a"}\n')
    accept = dg.encode_accept(1, 5000, "a")

    def relay_side_of_a_join() -> None:
        fields = seal.hello_fields(join.datagram)
        seal.open_hello(chat_key, join.datagram)
        seal.answer_hello(chat_key, fields.client_ephemeral, accept)

    results["relay's side of a join (open HELLO, X25519, seal ACCEPT)"] = per_call_us(
        relay_side_of_a_join, rounds // 10
    )
    results["HKDF-SHA256, one traffic key"] = per_call_us(
        lambda: chat_key.peer_key(b"instance"), rounds // 10
    )
    scrypt_ms = []
    for _ in range(max(1, min(args.scrypt_rounds, 50))):
        start = time.perf_counter()
        seal.ChatKey.derive("correct horse battery staple", os.urandom(seal.SALT_BYTES))
        scrypt_ms.append((time.perf_counter() - start) * 1000)
    scrypt_median_us = statistics.median(scrypt_ms) * 1000

    width = max(len(name) for name in results) + 2
    for name, value in results.items():
        print(f"{name:<{width}}{value:8.2f} µs")
    print(
        f"{'scrypt N=2^15 r=8 p=1 (32 MiB), one guess':<{width}}"
        f"{scrypt_median_us / 1000:8.1f} ms (runs: {', '.join(f'{m:.1f}' for m in scrypt_ms)})"
    )
    if args.json:
        report = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": sys.argv,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "results_us": results,
            "scrypt_ms": scrypt_ms,
        }
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

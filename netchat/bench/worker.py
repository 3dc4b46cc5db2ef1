"""The benchmark's helper processes: ``python -m netchat.bench.worker``.

Strategy
--------
``netchat bench`` keeps the clients, the impairment relay and the server each in a
process of its own, so they do not share a GIL (or a core's worth of scheduling)
with the process that measures them. This module is what runs in the first two.

It talks JSON lines: the first line on standard input says what to be (the *spec*),
later lines are commands (``{"cmd": "go"}``), and every line it writes on standard
output is a report (``{"report": "joined", …}``). Nothing else is written on standard
output; logging goes to standard error, which the benchmark keeps for error reports.

* ``relay``: an :mod:`~netchat.transport.impair_relay` relay, started unarmed so the
  clients join over a clean path; ``arm``/``disarm`` switch the impairment on and off
  and answer with the relay's counters, ``stats`` answers with them, ``quit`` stops.
* ``clients``: N real netchat endpoints (:class:`~netchat.client.Client` for server
  transports, :class:`~netchat.peer.Peer` for ``peer``), joined one after another
  (so the relay numbers their flows in the same order every run); then ``joined``.
  On ``go`` the senders send, every member tallies what it receives
  (:mod:`netchat.bench.measure`), ``progress`` events follow, and ``done`` carries
  the result. ``quit`` closes every endpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, TextIO

from ..errors import NetchatError
from ..impair import DatagramLink, Impairment, LossModel, link_random
from ..protocol import datagram as dg
from ..protocol.frames import Error, Frame, Message
from ..transport.base import ChatEndpoint, Proto
from .measure import ReceiverTally, Summary, parse_payload, payload
from .params import PEER

log = logging.getLogger("netchat.bench.worker")

#: Seconds the worker waits for the benchmark's next command before giving up.
COMMAND_TIMEOUT = 300.0
#: Seconds between two progress events.
PROGRESS_INTERVAL = 0.2
#: Seconds peers have to hear each other before the run is declared impossible.
PEER_DISCOVERY = 15.0
#: Counters of the endpoints' transports that say what the network did.
TRANSPORT_COUNTERS = ("lost", "duplicates", "reordered", "late")


def impairment_to_json(impairment: Impairment) -> dict[str, Any]:
    """Every field of ``impairment``, exactly (seconds, not milliseconds)."""
    fields = asdict(impairment)
    fields["loss_model"] = impairment.loss_model.value
    return fields


def impairment_from_json(data: dict[str, Any]) -> Impairment:
    """The inverse of :func:`impairment_to_json`."""
    return Impairment(**{**data, "loss_model": LossModel(data["loss_model"])})


class Channel:
    """JSON lines in (a reader thread queues them) and out (one line per event)."""

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self._out = stdout
        self._out_lock = threading.Lock()
        self._commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stdin = stdin

    def first(self) -> dict[str, Any]:
        line = self._stdin.readline()
        if not line:
            raise SystemExit("no spec on standard input")
        spec: dict[str, Any] = json.loads(line)
        threading.Thread(target=self._read, name="bench-commands", daemon=True).start()
        return spec

    def _read(self) -> None:
        for line in self._stdin:
            if line.strip():
                self._commands.put(json.loads(line))
        self._commands.put(None)  # the benchmark went away

    def report(self, kind: str, **fields: Any) -> None:
        with self._out_lock:
            self._out.write(json.dumps({"report": kind, **fields}) + "\n")
            self._out.flush()

    def command(self, timeout: float = COMMAND_TIMEOUT) -> str:
        """The next command's name; ``quit`` if the benchmark went away or fell silent."""
        try:
            item = self._commands.get(timeout=timeout)
        except queue.Empty:
            return "quit"
        return "quit" if item is None else str(item.get("cmd", ""))


# --- relay role ------------------------------------------------------------------------


def run_relay(spec: dict[str, Any], channel: Channel) -> int:
    from ..transport.impair_relay import make_impair_relay

    impairment = impairment_from_json(spec["impairment"])
    try:
        relay = make_impair_relay(
            bool(spec["stream"]),
            (spec["listen"][0], int(spec["listen"][1])),
            (spec["upstream"][0], int(spec["upstream"][1])),
            impairment,
            armed=False,
        )
    except OSError as exc:
        channel.report("error", message=f"the impairment relay cannot start: {exc}")
        return 1
    thread = threading.Thread(target=relay.serve_forever, name="impair-relay", daemon=True)
    thread.start()
    channel.report("ready", address=list(relay.address))
    try:
        while True:
            command = channel.command()
            if command == "arm":
                relay.arm(True)
                channel.report("armed", stats=relay.stats())
            elif command == "disarm":
                stats = relay.stats()
                relay.arm(False)
                channel.report("disarmed", stats=stats)
            elif command == "stats":
                channel.report("stats", stats=relay.stats())
            elif command == "quit":
                return 0
    finally:
        relay.shutdown()
        thread.join(timeout=5)


# --- clients role ----------------------------------------------------------------------


class PeerGate:
    """A peer's receive-side impairment (:class:`~netchat.impair.DatagramFilter`) that
    also counts what crosses the wire: every datagram a peer sends comes back to it
    through the loopback, so its own copies are exactly what it put on the network.

    Unarmed, datagrams pass straight through; armed, they cross a seeded
    :class:`~netchat.impair.DatagramLink` named after the peer's number.
    """

    def __init__(self, index: int, impairment: Impairment) -> None:
        self.index = index
        self.impairment = impairment
        self.own_instance = b""
        self.wire_datagrams = 0
        self.wire_bytes = 0
        self.copies = 0
        self._lock = threading.Lock()
        self._link: DatagramLink | None = None
        self._armed = False
        self._passing: list[tuple[bytes, object]] = []

    def arm(self, armed: bool = True) -> None:
        with self._lock:
            self._armed = armed
            if armed:
                rng = link_random(self.impairment.seed, f"peer{self.index}", "down")
                self._link = DatagramLink(self.impairment, rng)

    def counters(self) -> dict[str, int]:
        with self._lock:
            link = self._link.counters.as_dict() if self._link is not None else {}
            return {
                "wire_datagrams": self.wire_datagrams,
                "wire_bytes": self.wire_bytes,
                "copies": self.copies,
                **{f"link_{k}": v for k, v in link.items()},
            }

    def offer(self, datagram: bytes, now: float, tag: object = None) -> None:
        with self._lock:
            self.copies += 1
            with contextlib.suppress(NetchatError):
                decoded = dg.decode_datagram(datagram)
                if isinstance(decoded, dg.PeerData) and decoded.instance == self.own_instance:
                    self.wire_datagrams += 1
                    self.wire_bytes += len(datagram)
            if self._armed and self._link is not None:
                self._link.offer(datagram, now, tag)
            else:
                self._passing.append((datagram, tag))

    def release_tagged(self, now: float) -> list[tuple[bytes, object]]:
        with self._lock:
            out, self._passing = self._passing, []
            if self._link is not None:
                out += self._link.release_tagged(now)
            return out

    def next_due(self) -> float | None:
        with self._lock:
            if self._passing:
                return 0.0
            return self._link.next_due() if self._link is not None else None


class Member:
    """One benchmark endpoint: tallies what it receives, remembers how it ended."""

    def __init__(self, index: int, tally: ReceiverTally, token: str, slow_delay: float) -> None:
        self.index = index
        self.tally = tally
        self.token = token
        self.slow_delay = slow_delay
        self.refused = 0
        self.closing = False
        self.ended: str | None = None
        self.endpoint: ChatEndpoint | None = None

    def on_event(self, frame: Frame) -> None:
        arrived = time.monotonic_ns()  # first thing: the arrival time is the measurement
        if isinstance(frame, Message):
            parsed = parse_payload(frame.text, self.token)
            if parsed is not None:
                self.tally.record(parsed[0], parsed[1], parsed[2], arrived)
                if self.slow_delay:
                    time.sleep(self.slow_delay)  # a slow reader: this thread stops reading
        elif isinstance(frame, Error) and frame.code == "too-large":
            self.refused += 1  # the transport would not send one of our messages

    def on_closed(self, reason: str | None) -> None:
        if not self.closing:
            self.ended = reason or "session ended"


def _endpoint(spec: dict[str, Any], index: int, gate: PeerGate | None) -> ChatEndpoint:
    if spec["proto"] == PEER:
        from ..peer import Peer

        assert gate is not None
        peer = Peer(
            f"p{index:03d}",
            group=spec["peer"]["group"],
            port=int(spec["peer"]["port"]),
            interface="127.0.0.1",
            impairment=gate,
        )
        gate.own_instance = peer.instance
        return peer
    from ..client import Client

    return Client(f"b{index:03d}", spec["host"], int(spec["port"]), Proto(spec["proto"]))


def _transport_totals(members: list[Member]) -> dict[str, int]:
    totals = dict.fromkeys(TRANSPORT_COUNTERS, 0)
    for member in members:
        if member.endpoint is None:
            continue
        with contextlib.suppress(Exception):  # a closed endpoint may have no counters left
            stats = member.endpoint.stats()
            for key in TRANSPORT_COUNTERS:
                totals[key] += int(stats.get(key, 0))
    return totals


def _wait_for_peers(members: list[Member]) -> None:
    deadline = time.monotonic() + PEER_DISCOVERY
    others = len(members) - 1
    while time.monotonic() < deadline:
        heard = [m.endpoint.stats().get("peers", 0) for m in members if m.endpoint is not None]
        if min(heard, default=0) >= others:
            return
        time.sleep(0.05)
    raise NetchatError(
        f"the peers did not all hear each other within {PEER_DISCOVERY:g} s"
        " (multicast on 127.0.0.1 must be allowed on this machine)"
    )


class _Senders:
    """The sending thread: round robin over the senders, paced or flat out."""

    def __init__(self, members: list[Member], spec: dict[str, Any]) -> None:
        self.members = members
        self.messages = int(spec["messages"])
        self.rate = float(spec["rate"])
        self.size = int(spec["size"])
        self.token = str(spec["token"])
        self.sent = [0] * len(members)
        self.errors = [0] * len(members)
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-senders", daemon=True)

    def _run(self) -> None:
        count = len(self.members)
        broken = [False] * count
        start = time.monotonic()
        try:
            for number in range(self.messages):
                for sender, member in enumerate(self.members):
                    if self.rate:
                        # Senders spread evenly over each interval rather than all at once.
                        due = start + (number + sender / count) / self.rate
                        pause = due - time.monotonic()
                        if pause > 0:
                            time.sleep(pause)
                    if broken[sender] or member.endpoint is None:
                        continue
                    stamp = time.monotonic_ns()
                    text = payload(self.token, sender, number, stamp, self.size)
                    try:
                        member.endpoint.send_line(text)
                    except NetchatError as exc:
                        self.errors[sender] += 1
                        broken[sender] = True
                        log.warning("sender %d stopped: %s", sender, exc)
                        continue
                    self.sent[sender] += 1
                    if self.first_ns is None:
                        self.first_ns = stamp
                    self.last_ns = stamp
        finally:
            self.finished.set()


def run_clients(spec: dict[str, Any], channel: Channel) -> int:
    clients, senders = int(spec["clients"]), int(spec["senders"])
    messages, slow = int(spec["messages"]), int(spec["slow"])
    token = str(spec["token"])
    impairment = impairment_from_json(spec["impairment"])
    members: list[Member] = []
    gates: list[PeerGate] = []
    started = time.monotonic()
    try:
        for index in range(clients):
            is_slow = index >= clients - slow
            own = index if index < senders else None
            tally = ReceiverTally(senders, messages, own)
            member = Member(index, tally, token, float(spec["slow_delay"]) if is_slow else 0.0)
            gate = PeerGate(index, impairment) if spec["proto"] == PEER else None
            if gate is not None:
                gates.append(gate)
            endpoint = _endpoint(spec, index, gate)
            endpoint.start(member.on_event, member.on_closed)
            member.endpoint = endpoint
            members.append(member)
        if spec["proto"] == PEER:
            _wait_for_peers(members)
    except NetchatError as exc:
        channel.report("error", message=f"client {len(members)} could not join: {exc}")
        _close_all(members)
        return 1
    channel.report("joined", clients=len(members), setup_s=time.monotonic() - started)
    if channel.command() != "go":
        _close_all(members)
        return 0
    result = _measure(spec, members, gates, channel)
    channel.report("done", result=result)
    channel.command()  # quit (or the benchmark went away)
    _close_all(members)
    channel.report("closed")
    return 0


def _measure(
    spec: dict[str, Any], members: list[Member], gates: list[PeerGate], channel: Channel
) -> dict[str, Any]:
    senders_count = int(spec["senders"])
    drain, hard_limit = float(spec["drain"]), float(spec["hard_limit"])
    settle = float(spec.get("settle", 0.0))
    for gate in gates:
        gate.arm()
    gates_before = [gate.counters() for gate in gates]
    transport_before = _transport_totals(members)
    cpu_before = time.process_time()
    senders = _Senders(members[:senders_count], spec)
    planned = senders_count * int(spec["messages"]) * (len(members) - 1)
    begun = time.monotonic()
    senders.thread.start()
    last_total, last_change = -1, time.monotonic()
    while True:
        time.sleep(PROGRESS_INTERVAL)
        delivered = sum(m.tally.delivered for m in members)
        total = delivered + sum(m.tally.duplicates for m in members)
        now = time.monotonic()
        if total != last_total:
            last_total, last_change = total, now
        channel.report("progress", sent=sum(senders.sent), delivered=delivered, expected=planned)
        if not senders.finished.is_set():
            continue
        refused = sum(m.refused for m in members[:senders_count])
        due = (sum(senders.sent) - refused) * (len(members) - 1)
        # Everything arrived (and, when copies are injected, the late copies too), or
        # nothing has for the drain time, or the run took too long.
        complete = delivered >= due and now - last_change >= settle
        if complete or now - last_change >= drain or now - begun >= hard_limit:
            break
    cpu = time.process_time() - cpu_before
    transport_after = _transport_totals(members)
    gates_after = [gate.counters() for gate in gates]
    for gate in gates:
        gate.arm(False)
    for member in members:
        # Only what was really sent can be expected: a message the transport refused
        # (too large for a datagram) is counted apart, not as lost.
        member.tally.expected = sum(
            senders.sent[s] - members[s].refused
            for s in range(senders_count)
            if s != member.tally.own_sender
        )
    slow = int(spec["slow"])
    fast_members = members[: len(members) - slow]
    slow_members = members[len(members) - slow :] if slow else []
    reasons = sorted({m.ended for m in members if m.ended is not None})
    result: dict[str, Any] = {
        "sent": sum(senders.sent),
        "refused": sum(m.refused for m in members[:senders_count]),
        "send_errors": sum(senders.errors),
        "summary": asdict(Summary.of(m.tally for m in members)),
        "fast": asdict(Summary.of(m.tally for m in fast_members)) if slow else None,
        "slow": asdict(Summary.of(m.tally for m in slow_members)) if slow else None,
        "transport": {k: transport_after[k] - transport_before[k] for k in TRANSPORT_COUNTERS},
        "disconnected": sum(m.ended is not None for m in members),
        "disconnect_reasons": reasons[:3],
        "first_send_ns": senders.first_ns,
        "last_send_ns": senders.last_ns,
        "harness_cpu_s": cpu,
        "wire": None,
    }
    if gates:
        wire = {
            key: sum(
                after[key] - before.get(key, 0)
                for before, after in zip(gates_before, gates_after, strict=True)
            )
            for key in gates_after[0]
        }
        result["wire"] = wire
    return result


def _close_all(members: list[Member]) -> None:
    for member in members:
        member.closing = True
    endpoints = [m.endpoint for m in members if m.endpoint is not None]
    if not endpoints:
        return
    with ThreadPoolExecutor(max_workers=16) as pool:
        for endpoint in endpoints:
            pool.submit(_quietly(endpoint.close))


def _quietly(action: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            action()
        except Exception:  # closing is best effort: the process ends next anyway
            log.debug("close failed", exc_info=True)

    return run


def main() -> int:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    channel = Channel(sys.stdin, sys.stdout)
    spec = channel.first()
    role = spec.get("role")
    if role == "relay":
        return run_relay(spec, channel)
    if role == "clients":
        return run_clients(spec, channel)
    channel.report("error", message=f"unknown role {role!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""What a benchmark run is asked to do, checked before anything starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InvalidParameter
from ..impair import Impairment
from ..protocol.limits import MAX_TEXT_CHARS
from ..transport.base import Proto

#: The serverless transport; every other row is a member of :class:`Proto`.
PEER = "peer"
#: Shortest payload: the stamp ``nb <token> <sender> <number> <nanoseconds>``.
MIN_SIZE = 48


def proto_names() -> list[str]:
    """Every transport netchat has: each :class:`Proto` member (so one added later is
    measured too), then the serverless peers."""
    return [proto.value for proto in Proto] + [PEER]


def expand_protos(text: str) -> tuple[str, ...]:
    """``tcp,udp`` or ``all`` → the rows to run, in the order given, without repeats.

    Raises:
        InvalidParameter: an unknown name, or nothing at all.
    """
    known = proto_names()
    chosen: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        names = known if name == "all" else [name]
        for item in names:
            if item not in known:
                raise InvalidParameter(
                    f"unknown protocol {raw.strip()!r}: choose from {', '.join(known)} or all"
                )
            if item not in chosen:
                chosen.append(item)
    if not chosen:
        raise InvalidParameter(f"no protocol given: choose from {', '.join(known)} or all")
    return tuple(chosen)


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """``127.0.0.1:8080``, ``localhost:8080`` or ``[::1]:8080`` → (host, port).

    Raises:
        InvalidParameter: no port, or a port outside 0–65535.
    """
    value = text.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep:
            port_text = ""
    else:
        host, _sep, port_text = value.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidParameter(
            f"{what} must be HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080), not {text!r}"
        )
    return host, int(port_text)


@dataclass(frozen=True)
class BenchParams:
    """One ``netchat bench`` invocation.

    Args:
        protos: rows to run (see :func:`expand_protos`).
        clients: chat members per row, senders included (at least 2).
        senders: how many of them send.
        messages: messages each sender sends.
        rate: messages per second per sender; 0 sends as fast as the transport lets us.
        size: bytes of each message's text (ASCII), at least :data:`MIN_SIZE`.
        impairment: what the network does, per direction (seed included).
        target: measure this running server instead of starting one.
        slow: how many receivers are slow (the last ones; never senders).
        slow_delay: seconds a slow receiver spends on each message.
        max_queue: the started server's ``--max-queue`` (bytes); ``None`` keeps its default.
        drain: seconds without a new delivery after the last send before the run ends;
            ``None`` picks one from the impairment.

    Raises:
        InvalidParameter: a value is out of range or the combination makes no sense.
    """

    protos: tuple[str, ...] = field(default_factory=lambda: tuple(proto_names()))
    clients: int = 10
    senders: int = 2
    messages: int = 100
    rate: float = 50.0
    size: int = 100
    impairment: Impairment = field(default_factory=Impairment)
    target: tuple[str, int] | None = None
    slow: int = 0
    slow_delay: float = 0.01
    max_queue: int | None = None
    drain: float | None = None

    def __post_init__(self) -> None:
        if not self.protos:
            raise InvalidParameter("no protocol to run")
        for name in self.protos:
            if name not in proto_names():
                raise InvalidParameter(f"unknown protocol {name!r}")
        if self.clients < 2:
            raise InvalidParameter("--clients must be at least 2: someone has to receive")
        if not 1 <= self.senders <= self.clients:
            raise InvalidParameter(
                f"--senders must be between 1 and --clients ({self.clients}), not {self.senders}"
            )
        if self.messages < 1:
            raise InvalidParameter("--messages must be at least 1")
        if not (self.rate >= 0 and self.rate < float("inf")):
            raise InvalidParameter("--rate must be a number >= 0 (0 = as fast as possible)")
        if not MIN_SIZE <= self.size <= MAX_TEXT_CHARS:
            raise InvalidParameter(
                f"--size must be between {MIN_SIZE} (the timestamp needs room) and"
                f" {MAX_TEXT_CHARS} (netchat's longest message), not {self.size}"
            )
        if self.slow < 0 or self.senders + self.slow > self.clients:
            raise InvalidParameter(
                f"--slow must be between 0 and clients - senders ({self.clients - self.senders});"
                " senders are never slow"
            )
        if not self.slow_delay >= 0:
            raise InvalidParameter("--slow-delay must be >= 0")
        if self.max_queue is not None and self.max_queue < 1:
            raise InvalidParameter("--max-queue must be at least 1 byte")
        if self.drain is not None and not self.drain > 0:
            raise InvalidParameter("--drain must be above 0 seconds")
        if self.target is not None and PEER in self.protos:
            raise InvalidParameter(
                "--target measures a running server, and peers have none: name the server's"
                " protocol with --proto (e.g. --proto udp)"
            )
        if self.target is not None and self.max_queue is not None:
            raise InvalidParameter("--max-queue applies to a server the bench starts, not --target")

    def as_dict(self) -> dict[str, object]:
        """The settings as they appear under ``params`` in the JSON document."""
        return {
            "protos": list(self.protos),
            "clients": self.clients,
            "senders": self.senders,
            "messages": self.messages,
            "rate": self.rate,
            "size": self.size,
            **self.impairment.as_dict(),
            "target": f"{self.target[0]}:{self.target[1]}" if self.target else None,
            "slow": self.slow,
            "slow_delay_ms": self.slow_delay * 1000,
            "max_queue": self.max_queue,
            "drain_s": self.drain,
        }

    def replace(self, **changes: object) -> BenchParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

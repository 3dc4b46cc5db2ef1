"""The transport abstraction: what the server and the client need of TCP or UDP.

Like CPython's socketserver, where UDP differs from TCP only in how a request is
obtained, the hub and the client code are written once against these interfaces and
``--proto`` only chooses the implementation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

from ..errors import ConfigError, LocalProtocolError
from ..protocol.frames import Frame
from ..protocol.limits import MAX_FRAME_BYTES
from .registry import Proto

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ChatEndpoint",
    "ClientTransport",
    "ClosedHandler",
    "EventHandler",
    "Proto",
    "ServerConfig",
    "ServerTransport",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class ServerConfig:
    """Every tunable of a server; the CLI maps its options onto these fields.

    Validated on construction, so nonsense fails at once with a clear message.

    Raises:
        ConfigError: a value that cannot work, naming the field and the allowed range.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: most members at once; the next connection is refused with a reason
    max_clients: int = 1024
    #: most connections from one IP address (0 = no cap)
    max_per_address: int = 64
    #: most connections that have not joined yet; past it the oldest is let go
    max_pending: int = 128
    #: bytes a member may be owed before it is dropped as too slow
    max_queue: int = 1024 * 1024
    #: lines per second per client (0 = unlimited), and the burst allowed
    rate_limit: float = 20.0
    burst: int = 100
    #: seconds a new connection has to send its name
    registration_timeout: float = 30.0
    #: seconds of silence before a ping; a member silent for 3 intervals is dropped
    ping_interval: float = 30.0
    #: seconds of quiet that end a line for a plain client that never sends newlines
    line_gap: float = 0.15
    #: UDP: take the lab's plain text datagram clients (from LAN addresses only) …
    accept_plain: bool = False
    #: … or from any address (a spoofed source could aim the chat at a victim)
    accept_plain_anywhere: bool = False
    server_name: str = "netchat"
    motd: str = ""
    #: the chat's shared secret ("" = an open chat): TCP asks for it before a name,
    #: UDP seals every datagram under keys derived from it (never shown in a repr)
    password: str = dataclasses.field(default="", repr=False)

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", "float") and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise ConfigError(f"{field.name} must be a number, not {value!r}", field=field.name)
            if field.type == "str" and not isinstance(value, str):
                raise ConfigError(f"{field.name} must be text, not {value!r}", field=field.name)
        _check_range("port", self.port, 0, 65535)
        _check_range("max_clients", self.max_clients, 1)
        _check_range("max_per_address", self.max_per_address, 0)
        _check_range("max_pending", self.max_pending, 1)
        # A member must be able to be owed at least one whole frame (its welcome).
        _check_range("max_queue", self.max_queue, MAX_FRAME_BYTES)
        _check_range("rate_limit", self.rate_limit, 0)
        _check_range("burst", self.burst, 1)
        _check_range("registration_timeout", self.registration_timeout, 0.1)
        _check_range("ping_interval", self.ping_interval, 0.1)
        _check_range("line_gap", self.line_gap, 0.01, 10)
        if not self.server_name.strip():
            raise ConfigError("server_name must not be empty", field="server_name")
        if self.password:
            _check_password(self.password)
            if self.accept_plain:
                raise ConfigError(
                    "accept_plain cannot be used with a password: plain datagram clients"
                    " cannot prove they know it",
                    field="accept_plain",
                )


def _check_password(password: str) -> None:
    from ..protocol.seal import normalize_password  # loads cryptography: only when needed

    try:
        normalize_password(password)
    except LocalProtocolError as exc:
        raise ConfigError(str(exc), field="password") from None


def _check_range(name: str, value: float, low: float, high: float = math.inf) -> None:
    if not (low <= value <= high) or value != value:  # value != value: NaN
        allowed = f"at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
        raise ConfigError(f"{name} must be {allowed}, not {value!r}", field=name)


class ServerTransport(Protocol):
    """A bound server transport that feeds a hub."""

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the real port when 0 was asked for."""
        ...

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` is called (from another thread)."""
        ...

    def shutdown(self, reason: str = "") -> None:
        """Tell members the server is going away, stop serving and release everything."""
        ...


class ClientTransport(Protocol):
    """A client's connection to a server, moving whole frames."""

    def connect(self) -> None:
        """Open the connection. Raises :class:`~netchat.errors.ConnectError`."""
        ...

    def send(self, frame: Frame) -> None:
        """Send one frame. Raises :class:`~netchat.errors.TransportError`."""
        ...

    def receive(self, timeout: float | None = None) -> Frame | None:
        """Block for the next frame; ``None`` if ``timeout`` passed first.

        Raises:
            ConnectionClosed: the server went away (or :meth:`close` was called).
        """
        ...

    def close(self) -> None:
        """Close the connection; a blocked :meth:`receive` raises ConnectionClosed."""
        ...

    def stats(self) -> dict[str, int]:
        """Transport counters for ``/stats`` (UDP: lost, duplicates, reordered, …)."""
        ...


#: Called for every frame a chat endpoint receives (messages, notices, errors).
EventHandler = Callable[[Frame], None]
#: Called once when an endpoint's session ends: ``None`` after a normal /quit or
#: close(), else a one-line reason ("server closed the connection", …).
ClosedHandler = Callable[["str | None"], None]


class ChatEndpoint(Protocol):
    """What the console (interactive or pipe mode) drives: a client or a serverless peer."""

    @property
    def name(self) -> str:
        """The name we are known by now (it changes with /nick or a collision)."""
        ...

    def start(self, on_event: EventHandler, on_closed: ClosedHandler) -> None:
        """Connect, join, and start the receiver thread that calls ``on_event``.

        Raises:
            ConnectError: the server (or the network) could not be reached.
            Rejected: the join was refused (name taken or invalid, server full).
        """
        ...

    def send_line(self, line: str) -> None:
        """Send what the user typed: a message or a ``/command``.

        Raises:
            CommandError: the line is a malformed or unknown command.
            TransportError: the connection is gone.
        """
        ...

    def stats(self) -> dict[str, int]:
        """Counters for ``/stats``."""
        ...

    def close(self) -> None:
        """Leave (sending /quit when still connected) and stop the receiver thread."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the session has ended; True if it has."""
        ...

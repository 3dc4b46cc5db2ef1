"""The transports netchat has: the one place a new one is added.

Each :class:`Proto` names a transport; :data:`TRANSPORTS` says where its server and
client classes live. They are imported only when used, so ``import netchat`` (and a
client) never loads the server side. ``--proto``, ``netchat bench --proto all`` and
``Server``/``Client`` all read this table; docs/ARCHITECTURE.md lists what else a new
transport needs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from ..hub import Hub
    from .base import ClientTransport, ServerConfig, ServerTransport


class Proto(str, Enum):
    """The transport a server or client uses (``--proto``)."""

    tcp = "tcp"
    udp = "udp"
    rudp = "rudp"


@dataclass(frozen=True)
class TransportEntry:
    """Where a transport's classes live, as ``"module:Class"`` (imported when used).

    ``server`` is built as ``Server(hub, config)`` and ``client`` as
    ``Client(host, port, connect_timeout=seconds)``, plus ``password=`` for a datagram
    client in a chat with one (it seals; a stream client's password goes in its
    hello). ``stream`` says whether it runs over TCP (a byte stream: ``nc`` can join,
    a plain client sends lines) or over UDP (datagrams); ``reliable``, whether it
    repairs loss (a message missing at the end of a measurement is then late, not lost).
    """

    summary: str
    server: str
    client: str
    stream: bool
    reliable: bool


TRANSPORTS: dict[Proto, TransportEntry] = {
    Proto.tcp: TransportEntry(
        "threaded TCP server: a thread per connection, reliable and ordered",
        "netchat.transport.tcp:TcpServer",
        "netchat.transport.tcp_client:TcpClientTransport",
        stream=True,
        reliable=True,
    ),
    Proto.udp: TransportEntry(
        "UDP relay: learns members from their datagrams; loss is reported, not repaired",
        "netchat.transport.udp_relay:UdpRelayServer",
        "netchat.transport.udp_client:UdpClientTransport",
        stream=False,
        reliable=False,
    ),
    Proto.rudp: TransportEntry(
        "reliable UDP relay: the UDP relay plus acknowledgements, retransmission and order",
        "netchat.transport.rudp_relay:RudpRelayServer",
        "netchat.transport.rudp_client:RudpClientTransport",
        stream=False,
        reliable=True,
    ),
}


def is_stream(proto: Proto) -> bool:
    """Whether ``proto`` runs over TCP (else over UDP datagrams)."""
    return TRANSPORTS[Proto(proto)].stream


def is_reliable(proto: Proto) -> bool:
    """Whether ``proto`` repairs loss (TCP, rudp) or only reports it (UDP)."""
    return TRANSPORTS[Proto(proto)].reliable


def ip_protocol(proto: Proto) -> str:
    """``"tcp"`` or ``"udp"``: what a firewall rule for ``proto`` names."""
    return "tcp" if is_stream(proto) else "udp"


def _load(dotted: str) -> Any:
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def make_server_transport(proto: Proto, hub: Hub, config: ServerConfig) -> ServerTransport:
    """The bound server transport for ``proto``.

    Raises:
        OSError: the address cannot be bound.
    """
    return cast("ServerTransport", _load(TRANSPORTS[Proto(proto)].server)(hub, config))


def make_client_transport(
    proto: Proto,
    host: str,
    port: int,
    *,
    connect_timeout: float = 10.0,
    password: str | None = None,
) -> ClientTransport:
    """A client transport for ``proto``, not yet connected.

    Args:
        password: for a datagram transport, the chat's password (it seals every
            datagram); a stream transport takes none.
    """
    factory = _load(TRANSPORTS[Proto(proto)].client)
    options: dict[str, Any] = {"connect_timeout": connect_timeout}
    if password:
        options["password"] = password
    return cast("ClientTransport", factory(host, port, **options))

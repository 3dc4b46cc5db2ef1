"""Shared fixtures: real servers on 127.0.0.1 with ephemeral ports, always shut down."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from netchat.hub import Hub
from netchat.impair import Impairment
from netchat.server import Server
from netchat.transport.base import Proto, ServerConfig
from netchat.transport.impair_relay import TcpImpairRelay, UdpImpairRelay, make_impair_relay
from netchat.transport.udp_relay import UdpRelayServer

ServerFactory = Callable[..., Server]
RelayFactory = Callable[..., UdpRelayServer]
ImpairRelayFactory = Callable[..., "UdpImpairRelay | TcpImpairRelay"]


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    """``make_server(proto=Proto.tcp, event_log=None, **ServerConfig fields)`` → a running server."""
    servers: list[Server] = []

    def factory(proto: Proto = Proto.tcp, event_log: Any = None, **config: Any) -> Server:
        config.setdefault("host", "127.0.0.1")
        config.setdefault("port", 0)
        server = Server(ServerConfig(**config), proto, event_log=event_log).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.shutdown("test over")


@pytest.fixture
def server(make_server: ServerFactory) -> Server:
    """A TCP server with default limits."""
    return make_server()


@pytest.fixture
def make_relay() -> Iterator[RelayFactory]:
    """``make_relay(heartbeat_interval=5.0, relay_class=UdpRelayServer, **ServerConfig
    fields)`` → a bare UDP (or rudp) relay, no :class:`Server` around it, running on its
    own thread."""
    started: list[tuple[UdpRelayServer, threading.Thread]] = []

    def make(
        heartbeat_interval: float = 5.0,
        relay_class: type[UdpRelayServer] = UdpRelayServer,
        **config: Any,
    ) -> UdpRelayServer:
        relay = relay_class(
            Hub(),
            ServerConfig(host="127.0.0.1", port=0, **config),
            heartbeat_interval=heartbeat_interval,
        )
        thread = threading.Thread(target=relay.serve_forever, daemon=True)
        thread.start()
        started.append((relay, thread))
        return relay

    yield make
    for relay, thread in started:
        relay.shutdown("test over")
        thread.join(timeout=10.0)
        assert not thread.is_alive()


@pytest.fixture
def start_impair_relay() -> Iterator[ImpairRelayFactory]:
    """``start_impair_relay(stream, upstream, impairment, armed=True)`` → a running
    impairment relay on 127.0.0.1 in front of ``upstream``."""
    running: list[tuple[UdpImpairRelay | TcpImpairRelay, threading.Thread]] = []

    def start(
        stream: bool, upstream: tuple[str, int], impairment: Impairment, armed: bool = True
    ) -> UdpImpairRelay | TcpImpairRelay:
        relay = make_impair_relay(stream, ("127.0.0.1", 0), upstream, impairment, armed=armed)
        thread = threading.Thread(target=relay.serve_forever, daemon=True)
        thread.start()
        running.append((relay, thread))
        return relay

    yield start
    for relay, thread in running:
        relay.shutdown()
        thread.join(timeout=10.0)
        assert not thread.is_alive()

"""Shared fixtures: real servers on 127.0.0.1 with ephemeral ports, always shut down."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from netchat.server import Server
from netchat.transport.base import Proto, ServerConfig

ServerFactory = Callable[..., Server]


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

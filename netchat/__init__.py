"""netchat: a multi-user chat for local networks and networking classes, over TCP or UDP.

The public API::

    from netchat import Client, Server, ServerConfig

    with Server(ServerConfig(port=0)).start() as server:
        with Client.connect("alice", *server.address) as alice:
            alice.say("hello")

Importing ``netchat`` stays cheap: the server (and the terminal UI, which needs
prompt_toolkit) are loaded only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import Client
from .errors import (
    CommandError,
    ConnectError,
    ConnectionClosed,
    FrameTooLarge,
    LocalProtocolError,
    NetchatError,
    ProtocolError,
    Rejected,
    RemoteProtocolError,
    TransportError,
    TransportTimeout,
)
from .protocol.frames import *  # noqa: F403
from .protocol.frames import __all__ as _frames_all
from .transport.base import DEFAULT_HOST, DEFAULT_PORT, ChatEndpoint, Proto, ServerConfig

if TYPE_CHECKING:
    from .server import Server

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Client",
    "Server",
    "ServerConfig",
    "Proto",
    "ChatEndpoint",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "NetchatError",
    "ProtocolError",
    "RemoteProtocolError",
    "LocalProtocolError",
    "FrameTooLarge",
    "CommandError",
    "TransportError",
    "ConnectError",
    "ConnectionClosed",
    "TransportTimeout",
    "Rejected",
    *_frames_all,
]


def __getattr__(name: str) -> Any:
    # The server pulls in the hub, the TCP and UDP transports and the event log;
    # clients and bots should not pay for that on ``import netchat``.
    if name == "Server":
        from .server import Server

        return Server
    raise AttributeError(f"module 'netchat' has no attribute {name!r}")

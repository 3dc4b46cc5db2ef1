"""The ``netchat`` command: ``server``, ``client`` and ``peer``.

Command bodies stay thin: they map options onto the library (:class:`Server`,
:class:`Client`, :class:`Peer`) and the console, which are tested on their own.
``--proto`` is accepted both before the command (``netchat --proto udp server``) and
after it (``netchat server --proto udp``); the one after the command wins.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .transport.base import DEFAULT_HOST, DEFAULT_PORT, ChatEndpoint, Proto, ServerConfig

app = typer.Typer(
    name="netchat",
    help="A multi-user chat for local networks and networking classes, over TCP or UDP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass
class GlobalOptions:
    """What the callback saw before the command."""

    proto: Proto = Proto.tcp
    log_level: str | None = None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"netchat {__version__}")
        raise typer.Exit()


def _check_log_level(value: str | None) -> str | None:
    if value is not None and value.upper() not in LOG_LEVELS:
        raise typer.BadParameter(f"choose from {', '.join(LOG_LEVELS)}")
    return value.upper() if value is not None else None


ProtoOption = Annotated[
    Proto | None,
    typer.Option("--proto", help="Transport (default: tcp, or the one given before the command)."),
]
LogLevelOption = Annotated[
    str | None,
    typer.Option("--log-level", help="DEBUG, INFO, WARNING, ERROR.", callback=_check_log_level),
]
NoColorOption = Annotated[
    bool, typer.Option("--no-color", help="No colour (also when NO_COLOR is set).")
]
PlainOption = Annotated[
    bool, typer.Option("--plain", help="Pipe mode: plain lines in and out, even on a terminal.")
]


@app.callback()
def main_options(
    ctx: typer.Context,
    proto: Annotated[
        Proto, typer.Option("--proto", help="Transport for the command that follows.")
    ] = Proto.tcp,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            help="DEBUG, INFO, WARNING, ERROR (default: INFO for the server, else WARNING).",
            callback=_check_log_level,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Show the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """A multi-user chat for local networks and networking classes, over TCP or UDP."""
    ctx.obj = GlobalOptions(proto=proto, log_level=log_level)


def _globals(ctx: typer.Context) -> GlobalOptions:
    return ctx.obj if isinstance(ctx.obj, GlobalOptions) else GlobalOptions()


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str) -> typer.Exit:
    typer.echo(f"netchat: {message}", err=True)
    return typer.Exit(code=1)


@app.command()
def server(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 serves the LAN.")
    ] = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port (0 picks a free one).")
    ] = DEFAULT_PORT,
    proto: ProtoOption = None,
    max_clients: Annotated[int, typer.Option(min=1, help="Most users at once.")] = 1024,
    max_per_address: Annotated[
        int, typer.Option(min=0, help="Most connections per IP (0 = no cap).")
    ] = 64,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Outbound bytes queued per user before dropping it.")
    ] = 1024 * 1024,
    rate_limit: Annotated[
        float, typer.Option(min=0, help="Messages per second per user (0 = no limit).")
    ] = 20.0,
    burst: Annotated[int, typer.Option(min=1, help="Messages a user may send in a burst.")] = 100,
    registration_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to send a name.")
    ] = 30.0,
    ping_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds of silence before a ping.")
    ] = 30.0,
    motd: Annotated[str, typer.Option(help="Message of the day, shown to each joining user.")] = "",
    event_log: Annotated[
        Path | None, typer.Option(help="Append every chat event to this JSON-lines file.")
    ] = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run a chat server."""
    from .server import Server  # the server's modules load only for this command

    options = _globals(ctx)
    chosen = proto or options.proto
    # A server operator wants to see joins and leaves; a chat user does not.
    _setup_logging(log_level or options.log_level or "INFO")
    config = ServerConfig(
        host=host,
        port=port,
        max_clients=max_clients,
        max_per_address=max_per_address,
        max_queue=max_queue,
        rate_limit=rate_limit,
        burst=burst,
        registration_timeout=registration_timeout,
        ping_interval=ping_interval,
        motd=motd,
    )
    try:
        chat_server = Server(config, chosen, event_log=event_log)
    except OSError as exc:
        # os.strerror, not exc.strerror: socket.create_server appends the address to it.
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise _fail(f"cannot serve {chosen.value} on {host}:{port}: {reason}") from None
    bound_host, bound_port = chat_server.address
    typer.echo(
        f"netchat: serving {chosen.value} on {bound_host}:{bound_port} (Ctrl-C to stop)", err=True
    )
    if bound_host in ("127.0.0.1", "::1", "localhost"):
        typer.echo("netchat: only this machine can join; --host 0.0.0.0 serves the LAN", err=True)
    chat_server.serve_forever()


@app.command()
def client(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Your name in the chat.")] = None,
    host: Annotated[str, typer.Option(help="Server address.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Server port.")] = DEFAULT_PORT,
    proto: ProtoOption = None,
    reconnect: Annotated[
        bool, typer.Option("--reconnect", help="Rejoin automatically if the connection drops.")
    ] = False,
    no_color: NoColorOption = False,
    plain: PlainOption = False,
) -> None:
    """Join a chat server."""
    from .client import Client
    from .console import color_allowed, run_console

    options = _globals(ctx)
    _setup_logging(options.log_level or "WARNING")
    name = _require_name(name, plain)
    endpoint = Client(name, host, port, proto or options.proto, reconnect=reconnect)
    raise typer.Exit(run_console(endpoint, plain=plain, color=color_allowed(no_color)))


@app.command()
def peer(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Your name in the chat.")] = None,
    group: Annotated[str, typer.Option(help="Multicast group to join.")] = "239.255.80.80",
    port: Annotated[int, typer.Option(min=1, max=65535, help="UDP port of the group.")] = 8081,
    interface: Annotated[
        str | None, typer.Option(help="Address of the network interface to use.")
    ] = None,
    broadcast: Annotated[
        bool, typer.Option("--broadcast", help="Use LAN broadcast instead of multicast.")
    ] = False,
    ttl: Annotated[
        int, typer.Option(min=0, max=255, help="Multicast hops (1 = this LAN only).")
    ] = 1,
    no_color: NoColorOption = False,
    plain: PlainOption = False,
) -> None:
    """Chat without a server: every peer on the LAN multicasts to the others (UDP)."""
    from .console import color_allowed, run_console
    from .peer import Peer

    _setup_logging(_globals(ctx).log_level or "WARNING")
    name = _require_name(name, plain)
    endpoint: ChatEndpoint = Peer(
        name, group=group, port=port, interface=interface, broadcast=broadcast, ttl=ttl
    )
    raise typer.Exit(run_console(endpoint, plain=plain, color=color_allowed(no_color)))


def _require_name(name: str | None, plain: bool) -> str:
    """``--name``, or ask for it on a terminal; pipe mode cannot ask."""
    if name:
        return name
    if plain or not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise typer.BadParameter("is required when input is not a terminal", param_hint="'--name'")
    default = os.environ.get("USER") or os.environ.get("USERNAME") or ""
    answer: str = typer.prompt("Your name", default=default or None)
    return answer.strip()


def main() -> None:
    """Entry point of the ``netchat`` script."""
    app()


# `netchat bench` and `netchat impair` (issue 8) live in their own module.
from .cli_bench import register as _register_bench_commands  # noqa: E402

_register_bench_commands(app)

"""The ``netchat`` command: ``server``, ``client`` and ``peer``.

Command bodies stay thin: they map options onto the library (:class:`Server`,
:class:`Client`, :class:`Peer`) and the console, which are tested on their own.
``--proto`` is accepted both before the command (``netchat --proto udp server``) and
after it (``netchat server --proto udp``); the one after the command wins.

Options are parsed by small functions of our own rather than by typer's type
conversion, so every error speaks of ports, seconds and names (not of a validation
library's types), and flags show no value placeholder in ``--help``: what the help
shows can be typed literally. ``-h`` is ``--help``. Options that contradict each
other are refused with the reason rather than one silently winning.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from . import __version__
from .errors import ConfigError, NetchatError
from .logqueue import setup_queued_logging
from .plain_client import plural
from .transport.base import DEFAULT_HOST, DEFAULT_PORT, ChatEndpoint, Proto, ServerConfig
from .transport.registry import ip_protocol, is_reliable, is_stream

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_GROUP = "239.255.80.80"
DEFAULT_PEER_PORT = 8081


def _hide_flag_placeholders(params: list[Any]) -> None:
    """Flags take no value, so their help shows none: typer would show ``<bool>``, and
    ``--reconnect <bool>`` reads as if it wanted ``--reconnect true``."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _Group(TyperGroup):
    """The ``netchat`` group: its flags and those of every command, whoever adds the
    command, are shown without a value placeholder."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            # get_params includes the help option, which the command makes once and keeps.
            _hide_flag_placeholders(command.get_params(ctx))
        return command

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        _hide_flag_placeholders(params)
        return params


app = typer.Typer(
    name="netchat",
    cls=_Group,
    help="A multi-user chat for local networks and networking classes, over TCP or UDP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# --- option values -------------------------------------------------------------------


#: ``tcp|udp|rudp``: every transport, as ``--help`` shows it.
PROTO_CHOICES = "|".join(proto.value for proto in Proto)


def parse_proto(text: str | Proto) -> Proto:
    """``tcp``, ``udp`` or ``rudp``, in any case."""
    if isinstance(text, Proto):
        return text
    try:
        return Proto(text.strip().lower())
    except ValueError:
        *others, last = [proto.value for proto in Proto]
        choices = f"{', '.join(others)} or {last}"
        raise typer.BadParameter(f"{text!r} is not a transport; choose {choices}") from None


def _number(text: str | float, kind: Callable[[str], float], what: str) -> float:
    if not isinstance(text, str):
        return text  # a default value, not typed by the user
    try:
        value = kind(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not {what}") from None
    if value != value or value in (float("inf"), float("-inf")):  # nan, inf
        raise typer.BadParameter(f"{text!r} is not {what}")
    return value


def port_parser(lowest: int) -> Callable[[str | int], int]:
    """A parser for ports from ``lowest`` (0: pick a free one) to 65535."""

    def parse(text: str | int) -> int:
        port = int(_number(text, int, "a port number"))
        if not lowest <= port <= 65535:
            raise typer.BadParameter(f"{port} is not a port number ({lowest} to 65535)")
        return port

    return parse


def whole_number(lowest: int, highest: int | None = None) -> Callable[[str | int], int]:
    """A parser for whole numbers from ``lowest`` (to ``highest``)."""

    def parse(text: str | int) -> int:
        value = int(_number(text, int, "a whole number"))
        if value < lowest or (highest is not None and value > highest):
            bound = f"from {lowest} to {highest}" if highest is not None else f"{lowest} or more"
            raise typer.BadParameter(f"{value} is out of range: give {bound}")
        return value

    return parse


def decimal_number(lowest: float, unit: str = "") -> Callable[[str | float], float]:
    """A parser for numbers (``2.5``) of at least ``lowest``."""

    def parse(text: str | float) -> float:
        value = _number(text, float, "a number")
        if value < lowest:
            raise typer.BadParameter(f"{value:g} is too small: give {lowest:g}{unit} or more")
        return value

    return parse


def _check_log_level(value: str | None) -> str | None:
    if value is not None and value.upper() not in LOG_LEVELS:
        raise typer.BadParameter(
            f"{value!r} is not a log level; choose from {', '.join(LOG_LEVELS)}"
        )
    return value.upper() if value is not None else None


# --- shared options ----------------------------------------------------------------------


@dataclass
class GlobalOptions:
    """What the callback saw before the command (``proto`` is None unless given)."""

    proto: Proto | None = None
    log_level: str | None = None


PROTO_HELP = (
    "Transport: tcp, udp or rudp (reliable UDP) (default: tcp, or the one given before"
    " the command)."
)
ProtoOption = Annotated[
    Proto | None,
    typer.Option("--proto", parser=parse_proto, metavar=PROTO_CHOICES, help=PROTO_HELP),
]
LogLevelOption = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR.",
        callback=_check_log_level,
    ),
]
NameOption = Annotated[
    str | None, typer.Option("--name", metavar="NAME", help="Your name in the chat.")
]
NoColorOption = Annotated[
    bool, typer.Option("--no-color", help="No colour (also when NO_COLOR is set).")
]
PipeOption = Annotated[
    bool,
    typer.Option("--pipe", help="One line per event, even on a terminal (as when piped)."),
]


def _check_password(value: str | None) -> str | None:
    """An empty password means none; an unusable one is refused (without echoing it)."""
    if not value:
        return None
    from .errors import LocalProtocolError
    from .protocol.seal import normalize_password

    try:
        normalize_password(value)
    except LocalProtocolError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


PasswordOption = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar="NETCHAT_PASSWORD",
        show_envvar=True,
        show_default=False,
        metavar="SECRET",
        callback=_check_password,
        help=(
            "The chat's password: only those who know it can read or write the chat."
            " Prefer the environment variable: a command line is visible to every user"
            " of this machine (ps)."
        ),
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"netchat {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    proto: Annotated[
        Proto | None,
        typer.Option(
            "--proto",
            parser=parse_proto,
            metavar=PROTO_CHOICES,
            help="Transport for the command that follows (default: tcp).",
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            metavar="LEVEL",
            help="DEBUG, INFO, WARNING, ERROR (default: INFO for the server, else WARNING).",
            callback=_check_log_level,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Show the version and exit.",
            callback=_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """A multi-user chat for local networks and networking classes, over TCP or UDP."""
    ctx.obj = GlobalOptions(proto=proto, log_level=log_level)


def _globals(ctx: typer.Context) -> GlobalOptions:
    return ctx.obj if isinstance(ctx.obj, GlobalOptions) else GlobalOptions()


def _setup_logging(level: str) -> None:
    # Through a queue: a blocked stderr must not stall the server's threads.
    setup_queued_logging(level)


def raise_fd_limit() -> None:
    """Raise the soft open-files limit to the hard one: each client costs a descriptor,
    and the common default of 1024 would cap a server below ``--max-clients``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):  # not permitted here
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _fail(message: str) -> typer.Exit:
    typer.echo(f"netchat: {message}", err=True)
    return typer.Exit(code=1)


# --- server --------------------------------------------------------------------------------


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def join_instructions(proto: Proto, host: str, port: int, addresses: list[str]) -> list[str]:
    """What a server serving the LAN prints for its students: the exact commands.

    Args:
        proto: what the server serves.
        host: the address it listens on (a wildcard means every address).
        port: the port it listens on.
        addresses: this machine's LAN addresses (for a wildcard ``host``).
    """
    if _is_loopback(host):
        return ["only this machine can join; --host 0.0.0.0 serves the LAN"]
    reachable = addresses if _is_wildcard(host) else [host]
    if not reachable:
        return ["this machine has no LAN address yet: is it connected to a network?"]
    command = "netchat client" if proto is Proto.tcp else f"netchat --proto {proto.value} client"
    port_option = "" if port == DEFAULT_PORT else f" --port {port}"
    where = plural(len(reachable), "address", "addresses")
    lines = [f"students join with one of these ({where} of this machine):"]
    for address in reachable:
        lines.append(f"  {command} --host {address}{port_option} --name YOU")
        if is_stream(proto):
            lines.append(f"  nc {address} {port}")
    ip = ip_protocol(proto)
    lines.append(
        f"if they cannot connect, a firewall may block the port: open {port}/{ip}"
        f" (for example: sudo ufw allow {port}/{ip})"
    )
    return lines


@app.command()
def server(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(metavar="ADDRESS", help="Address to listen on; 0.0.0.0 serves the LAN."),
    ] = DEFAULT_HOST,
    port: Annotated[
        int,
        typer.Option(
            show_default=True,
            parser=port_parser(0),
            metavar="PORT",
            help="Port (0 picks a free one).",
        ),
    ] = DEFAULT_PORT,
    proto: ProtoOption = None,
    max_clients: Annotated[
        int,
        typer.Option(
            show_default=True, parser=whole_number(1), metavar="N", help="Most users at once."
        ),
    ] = 1024,
    max_per_address: Annotated[
        int,
        typer.Option(
            show_default=True,
            parser=whole_number(0),
            metavar="N",
            help="Most connections per IP (0 = no cap).",
        ),
    ] = 64,
    max_pending: Annotated[
        int,
        typer.Option(
            show_default=True,
            parser=whole_number(1),
            metavar="N",
            help="Connections that have not joined yet before the oldest is let go.",
        ),
    ] = 128,
    max_queue: Annotated[
        int,
        typer.Option(
            show_default=True,
            parser=whole_number(65536),
            metavar="BYTES",
            help="Outbound bytes queued per user before dropping it.",
        ),
    ] = 1024 * 1024,
    rate_limit: Annotated[
        float,
        typer.Option(
            show_default=True,
            parser=decimal_number(0),
            metavar="PER_SECOND",
            help="Messages per second per user (0 = no limit).",
        ),
    ] = 20.0,
    burst: Annotated[
        int,
        typer.Option(
            show_default=True,
            parser=whole_number(1),
            metavar="N",
            help="Messages a user may send in a burst.",
        ),
    ] = 100,
    registration_timeout: Annotated[
        float,
        typer.Option(
            show_default=True,
            parser=decimal_number(0.1, " s"),
            metavar="SECONDS",
            help="Seconds to send a name.",
        ),
    ] = 30.0,
    ping_interval: Annotated[
        float,
        typer.Option(
            show_default=True,
            parser=decimal_number(0.1, " s"),
            metavar="SECONDS",
            help="Seconds of silence before a ping.",
        ),
    ] = 30.0,
    line_gap: Annotated[
        float,
        typer.Option(
            show_default=True,
            parser=decimal_number(0.01, " s"),
            metavar="SECONDS",
            help="TCP: quiet that ends a line for clients that never send a newline.",
        ),
    ] = 0.15,
    accept_plain: Annotated[
        bool,
        typer.Option(
            "--accept-plain",
            help="UDP: let the lab's plain 'NAME: text' datagram clients join (LAN addresses only).",
        ),
    ] = False,
    accept_plain_anywhere: Annotated[
        bool,
        typer.Option(
            "--accept-plain-anywhere",
            help="UDP: take plain clients from any address (a spoofed source could aim the chat at a victim).",
        ),
    ] = False,
    motd: Annotated[
        str,
        typer.Option(metavar="TEXT", help="Message of the day, shown to each joining user."),
    ] = "",
    event_log: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Append every chat event to this JSON-lines file."),
    ] = None,
    password: PasswordOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run a chat server."""
    from .netif import lan_addresses
    from .server import Server  # the server's modules load only for this command

    options = _globals(ctx)
    chosen = proto or options.proto or Proto.tcp
    # A server operator wants to see joins and leaves; a chat user does not.
    _setup_logging(log_level or options.log_level or "INFO")
    config = _server_config(
        host=host,
        port=port,
        max_clients=max_clients,
        max_per_address=max_per_address,
        max_pending=max_pending,
        max_queue=max_queue,
        rate_limit=rate_limit,
        burst=burst,
        registration_timeout=registration_timeout,
        ping_interval=ping_interval,
        line_gap=line_gap,
        accept_plain=accept_plain or accept_plain_anywhere,
        accept_plain_anywhere=accept_plain_anywhere,
        motd=motd,
        password=password or "",
    )
    if (accept_plain or accept_plain_anywhere) and is_stream(chosen):
        raise typer.BadParameter(
            "plain datagram clients are a UDP matter: TCP takes plain clients (nc, lab"
            " programs) always; add --proto udp",
            param_hint="'--accept-plain'",
        )
    raise_fd_limit()
    try:
        chat_server = Server(config, chosen, event_log=event_log)
    except NetchatError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        # os.strerror, not exc.strerror: socket.create_server appends the address to it.
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise _fail(f"cannot serve {chosen.value} on {host}:{port}: {reason}") from None
    bound_host, bound_port = chat_server.address

    def announce() -> None:
        typer.echo(
            f"netchat: serving {chosen.value} on {bound_host}:{bound_port} (Ctrl-C to stop)",
            err=True,
        )
        addresses = lan_addresses() if _is_wildcard(bound_host) else []
        for line in join_instructions(chosen, bound_host, bound_port, addresses):
            typer.echo(f"netchat: {line}", err=True)
        for line in password_notes(chosen) if password else []:
            typer.echo(f"netchat: {line}", err=True)

    chat_server.serve_forever(on_ready=announce)


def password_notes(proto: Proto) -> list[str]:
    """What a server with a password tells its operator: how others give it, and (TCP)
    what it does not protect."""
    notes = ["this chat needs a password: others give it with NETCHAT_PASSWORD or --password"]
    if is_stream(proto):
        notes.append(
            "over TCP the password and the chat cross the network in clear: it keeps"
            " strangers out, not eavesdroppers (--proto udp seals everything)"
        )
    return notes


# --- client and peer ---------------------------------------------------------------------


@app.command()
def client(
    ctx: typer.Context,
    name: NameOption = None,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Server address.")] = DEFAULT_HOST,
    port: Annotated[
        int,
        typer.Option(show_default=True, parser=port_parser(1), metavar="PORT", help="Server port."),
    ] = DEFAULT_PORT,
    proto: ProtoOption = None,
    reconnect: Annotated[
        bool,
        typer.Option("--reconnect", help="Rejoin automatically if the connection drops."),
    ] = False,
    plain: Annotated[
        bool,
        typer.Option(
            "--plain",
            help=(
                "Plain-line mode, for a lab server that does not speak netchat: send"
                " 'NAME: text' lines (UDP: datagrams), show what arrives. Chosen"
                " automatically for a TCP server that does not greet as netchat does."
            ),
        ),
    ] = False,
    password: PasswordOption = None,
    no_color: NoColorOption = False,
    pipe: PipeOption = False,
) -> None:
    """Join a chat server (netchat's, or a lab server that relays plain text)."""
    from .client import Client
    from .console import color_allowed, run_console

    options = _globals(ctx)
    chosen = proto or options.proto or Proto.tcp
    if plain and reconnect:
        raise typer.BadParameter(
            "plain-line mode does not reconnect; leave out --reconnect or --plain",
            param_hint="'--reconnect'",
        )
    if plain and password:
        raise typer.BadParameter(
            "plain-line mode is for servers that are not netchat, which cannot check a"
            " password; leave out --plain or the password (--password, NETCHAT_PASSWORD)",
            param_hint="'--password'",
        )
    if plain and is_reliable(chosen) and not is_stream(chosen):
        raise typer.BadParameter(
            "a lab server that does not speak netchat cannot acknowledge anything;"
            " use --proto udp --plain",
            param_hint="'--plain'",
        )
    _setup_logging(options.log_level or "WARNING")
    name = _require_name(name, pipe)

    def make(who: str) -> ChatEndpoint:
        return Client(who, host, port, chosen, reconnect=reconnect, plain=plain, password=password)

    code = run_console(make(name), pipe=pipe, color=color_allowed(no_color), renamed=make)
    raise typer.Exit(code)


@app.command()
def peer(
    ctx: typer.Context,
    name: NameOption = None,
    group: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help=(
                f"Multicast group to join (default {DEFAULT_GROUP}); with --broadcast,"
                " the broadcast address to send to (default 255.255.255.255)."
            ),
        ),
    ] = None,
    port: Annotated[
        int,
        typer.Option(
            show_default=True,
            parser=port_parser(1),
            metavar="PORT",
            help="UDP port of the group.",
        ),
    ] = DEFAULT_PEER_PORT,
    interface: Annotated[
        str | None,
        typer.Option(
            metavar="NAME_OR_ADDRESS",
            help="Network interface to use, by name (eth0, lo) or IPv4 address.",
        ),
    ] = None,
    broadcast: Annotated[
        bool,
        typer.Option("--broadcast", help="Use LAN broadcast instead of multicast."),
    ] = False,
    ttl: Annotated[
        int,
        typer.Option(
            show_default=True,
            parser=whole_number(0, 255),
            metavar="HOPS",
            help="Multicast hops (1 = this LAN only).",
        ),
    ] = 1,
    password: PasswordOption = None,
    no_color: NoColorOption = False,
    pipe: PipeOption = False,
) -> None:
    """Chat without a server: every peer on the LAN multicasts to the others (UDP)."""
    from .console import color_allowed, run_console
    from .errors import UnknownInterface
    from .netif import resolve_interface
    from .peer import Peer

    options = _globals(ctx)
    if options.proto is Proto.tcp:
        raise typer.BadParameter(
            "peers chat over UDP multicast or broadcast; leave out --proto tcp",
            param_hint="'--proto'",
        )
    if broadcast and group is not None and _is_multicast(group):
        raise typer.BadParameter(
            f"{group} is a multicast group, but --broadcast sends to a broadcast address;"
            " leave out one of --group and --broadcast (or give a broadcast address)",
            param_hint="'--group'",
        )
    address = None
    if interface is not None:
        try:
            address = resolve_interface(interface)
        except UnknownInterface as exc:
            raise typer.BadParameter(str(exc), param_hint="'--interface'") from None
    _setup_logging(options.log_level or "WARNING")
    name = _require_name(name, pipe)

    def make(who: str) -> ChatEndpoint:
        return Peer(
            who,
            group=group or DEFAULT_GROUP,
            port=port,
            interface=address,
            broadcast=broadcast,
            ttl=ttl,
            password=password,
        )

    code = run_console(make(name), pipe=pipe, color=color_allowed(no_color), renamed=make)
    raise typer.Exit(code)


def _server_config(**fields: object) -> ServerConfig:
    try:
        return ServerConfig(**fields)  # type: ignore[arg-type]
    except ConfigError as exc:
        # Name the option the user typed, not the library's field.
        option = "--" + exc.field.replace("_", "-")
        raise typer.BadParameter(str(exc).replace(exc.field, option, 1)) from None


def _is_multicast(group: str) -> bool:
    try:
        return ipaddress.ip_address(group).is_multicast
    except ValueError:
        return False


def _require_name(name: str | None, pipe: bool) -> str:
    """``--name``, or ask for it on a terminal; pipe mode cannot ask."""
    if name:
        return name
    if pipe or not (sys.stdin.isatty() and sys.stdout.isatty()):
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

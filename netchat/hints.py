"""What to tell someone whose client could not reach a server.

Strategy
--------
A refused connection usually means one of three things in a classroom: the server is
not started, it was started on another port, or it serves the other transport. So
the hint is the exact command that starts the server the client was looking for
(``netchat --proto udp server --port 9000``, with the options the client used), and
a word about ``--proto``.

When a UDP client gets no netchat answer, one TCP connection to the same port tells
which of these it is (a netchat server's banner arrives at once) and is harmless:
nothing is sent on it. The opposite probe is not made: a datagram sent to a lab UDP
relay would be forwarded into its chat as garbage, so a refused TCP client gets the
``--proto udp`` advice as a suggestion instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time

from .errors import ConnectError, ForeignServer, NetchatError, Rejected
from .protocol.banner import banner_version
from .protocol.text import sanitize_text
from .transport.base import DEFAULT_PORT, Proto
from .transport.registry import is_stream

#: Seconds the TCP probe may take (connect, then the banner).
PROBE_TIMEOUT = 0.5

_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", ""})


def _is_this_machine(host: str) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_command(proto: Proto, host: str, port: int) -> str:
    """The command that starts the server a client of ``proto`` at ``host:port`` looks for.

    Run on the server's machine: a remote ``host`` means serving the LAN.
    """
    words = ["netchat"]
    if proto is not Proto.tcp:
        words += ["--proto", proto.value]
    words.append("server")
    if not _is_this_machine(host):
        words += ["--host", "0.0.0.0"]
    elif host not in _LOCAL_NAMES:
        words += ["--host", host]  # ::1, 127.0.0.2: what the client asked for
    if port != DEFAULT_PORT:
        words += ["--port", str(port)]
    return " ".join(words)


def start_hint(proto: Proto, host: str, port: int) -> str:
    """``is the server running? start one with: …`` (``… there …`` for a remote host)."""
    command = server_command(proto, host, port)
    if _is_this_machine(host):
        return f"is the server running? start one with: {command}"
    return f"is a server running on {host}? start one there with: {command}"


def probe_tcp(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """What listens for TCP at ``host:port``: ``"netchat"``, ``"other"`` or None (nothing).

    Connects, reads for at most ``timeout`` seconds and sends nothing.
    """
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with sock:
        data = b""
        while b"\n" not in data and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    return "netchat" if banner_version(data.split(b"\n", 1)[0]) is not None else "other"


def connect_failure_hint(exc: NetchatError, proto: Proto, host: str, port: int) -> str | None:
    """A hint to add after the message of ``exc``, which a client of ``proto`` got when
    joining ``host:port``; None when there is nothing useful to add."""
    if not isinstance(exc, ConnectError):
        return None
    if isinstance(exc, ForeignServer):
        if proto is Proto.rudp:  # a lab server cannot acknowledge: plain UDP it is
            return "for a lab UDP server that is not netchat, use --proto udp --plain"
        return "for a lab UDP server that is not netchat, add --plain"
    refused = isinstance(exc.__cause__, ConnectionRefusedError)
    if is_stream(proto):
        if not refused:
            return None
        return f"{start_hint(proto, host, port)}; if it serves UDP, join with --proto udp"
    silent = str(exc).startswith("no answer from")
    if not (refused or silent):
        return None
    found = probe_tcp(host, port)
    if found == "netchat":
        return f"a netchat TCP server listens on that port: leave out --proto {proto.value}"
    if found == "other":
        return (
            "a TCP server that is not netchat listens on that port:"
            f" leave out --proto {proto.value}"
        )
    hint = start_hint(proto, host, port)
    if silent:
        plain = "use --proto udp --plain" if proto is Proto.rudp else "add --plain"
        hint += f"; for a lab UDP server that is not netchat, {plain}"
    return hint


#: What the CLI says when a chat with a password refuses us (the server's own words
#: name no option, since bots use the library too).
PASSWORD_REFUSALS = {
    "needs-password": "this chat needs a password: --password or NETCHAT_PASSWORD",
    "bad-password": "wrong password (check --password or NETCHAT_PASSWORD)",
}


def failure_message(exc: NetchatError, target: tuple[Proto, str, int] | None = None) -> str:
    """The one line shown (after ``netchat:``) when a client cannot start.

    Args:
        exc: what :meth:`~netchat.client.Client.start` raised.
        target: the client's (proto, host, port), for the hint; without it the hint
            can only be generic.
    """
    if isinstance(exc, Rejected) and exc.code in PASSWORD_REFUSALS:
        return PASSWORD_REFUSALS[exc.code]
    text = sanitize_text(str(exc))
    if target is not None:
        hint = connect_failure_hint(exc, *target)
    elif isinstance(exc, ConnectError) and isinstance(exc.__cause__, ConnectionRefusedError):
        hint = "is the server running?"
    else:
        hint = None
    return f"{text} — {hint}" if hint else text

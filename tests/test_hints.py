"""The hints a client prints when it cannot reach a server: exact commands, --proto."""

from __future__ import annotations

import socket

import pytest

from netchat.errors import ConnectError, ForeignServer, Rejected
from netchat.hints import connect_failure_hint, failure_message, probe_tcp, server_command
from netchat.transport.base import Proto
from tests.conftest import ServerFactory
from tests.labservers import RawRelay


@pytest.mark.parametrize(
    ("proto", "host", "port", "command"),
    [
        (Proto.tcp, "127.0.0.1", 8080, "netchat server"),
        (Proto.tcp, "localhost", 9000, "netchat server --port 9000"),
        (Proto.udp, "127.0.0.1", 8080, "netchat --proto udp server"),
        (Proto.udp, "127.0.0.1", 9000, "netchat --proto udp server --port 9000"),
        (Proto.tcp, "::1", 8080, "netchat server --host ::1"),
        (Proto.tcp, "192.0.2.10", 8080, "netchat server --host 0.0.0.0"),
        (Proto.udp, "chat.example", 7000, "netchat --proto udp server --host 0.0.0.0 --port 7000"),
    ],
)
def test_server_command_is_the_one_the_client_looked_for(
    proto: Proto, host: str, port: int, command: str
) -> None:
    assert server_command(proto, host, port) == command


def refused(message: str) -> ConnectError:
    error = ConnectError(message)
    error.__cause__ = ConnectionRefusedError()
    return error


def test_refused_tcp_on_another_machine() -> None:
    hint = connect_failure_hint(refused("x"), Proto.tcp, "192.0.2.10", 9000)
    assert hint == (
        "is a server running on 192.0.2.10? start one there with:"
        " netchat server --host 0.0.0.0 --port 9000; if it serves UDP, join with --proto udp"
    )


def test_no_hint_for_other_failures() -> None:
    assert connect_failure_hint(ConnectError("timed out"), Proto.tcp, "127.0.0.1", 1) is None
    assert connect_failure_hint(Rejected("taken"), Proto.tcp, "127.0.0.1", 1) is None
    assert failure_message(Rejected("the name 'a' is taken")) == "the name 'a' is taken"


def test_a_foreign_udp_server_gets_the_plain_hint() -> None:
    error = ForeignServer("udp://127.0.0.1:9: does not speak netchat")
    assert failure_message(error, (Proto.udp, "127.0.0.1", 9)).endswith(
        " — for a lab UDP server that is not netchat, add --plain"
    )


def test_failure_message_sanitises_and_without_target_stays_generic() -> None:
    error = refused("cannot connect to evil\x1b[2J:1: connection refused")
    assert failure_message(error) == (
        "cannot connect to evil:1: connection refused — is the server running?"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_probe_tells_netchat_from_other_tcp_servers(make_server: ServerFactory) -> None:
    server = make_server()
    assert probe_tcp(*server.address) == "netchat"
    relay = RawRelay(greeting=b"hello\n")
    try:
        assert probe_tcp(*relay.address) == "other"
        relay.wait_for_clients(0)  # the probe sent nothing and left
        assert relay.received == []
    finally:
        relay.close()
    assert probe_tcp("127.0.0.1", free_port()) is None


def test_a_silent_udp_port_with_nothing_on_tcp_gets_both_hints() -> None:
    port = free_port()
    hint = connect_failure_hint(
        ConnectError(f"no answer from udp://127.0.0.1:{port} within 5 s"),
        Proto.udp,
        "127.0.0.1",
        port,
    )
    assert hint == (
        f"is the server running? start one with: netchat --proto udp server --port {port};"
        " for a lab UDP server that is not netchat, add --plain"
    )


def test_rudp_hints_name_rudp_and_send_lab_servers_to_plain_udp(
    make_server: ServerFactory,
) -> None:
    assert (
        server_command(Proto.rudp, "127.0.0.1", 9000) == "netchat --proto rudp server --port 9000"
    )
    foreign = ForeignServer("udp://127.0.0.1:9: does not speak netchat")
    assert failure_message(foreign, (Proto.rudp, "127.0.0.1", 9)).endswith(
        " — for a lab UDP server that is not netchat, use --proto udp --plain"
    )
    port = free_port()
    silent = ConnectError(f"no answer from rudp://127.0.0.1:{port} within 5 s")
    assert connect_failure_hint(silent, Proto.rudp, "127.0.0.1", port) == (
        f"is the server running? start one with: netchat --proto rudp server --port {port};"
        " for a lab UDP server that is not netchat, use --proto udp --plain"
    )
    server = make_server()  # netchat over TCP on the port the rudp client tried
    assert connect_failure_hint(silent, Proto.rudp, *server.address) == (
        "a netchat TCP server listens on that port: leave out --proto rudp"
    )

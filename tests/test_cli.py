"""The ``netchat`` command line: parsing, --help and errors, with typer's CliRunner.

The networking behind the commands is replaced by recording fakes here; it is
tested through the library (test_client.py) and the real binary (test_console.py).
"""

from __future__ import annotations

import socket
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

import netchat.client
import netchat.console
import netchat.netif
import netchat.server
from netchat import __version__
from netchat.cli import app
from netchat.netif import Interface
from netchat.transport.base import Proto, ServerConfig

runner = CliRunner()

FAKE_INTERFACES = [
    Interface("lo", "127.0.0.1"),
    Interface("eth0", "192.0.2.10"),
    Interface("wlan0", "198.51.100.7"),
    Interface("tun0", None),
]


class FakeServer:
    """Records how the CLI built it; serve_forever returns at once."""

    made: ClassVar[list[FakeServer]] = []

    def __init__(self, config: ServerConfig, proto: Proto = Proto.tcp, *, event_log: Any = None):
        self.config = config
        self.proto = proto
        self.event_log = event_log
        self.served = False
        FakeServer.made.append(self)

    @property
    def address(self) -> tuple[str, int]:
        return self.config.host, self.config.port

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        if on_ready is not None:
            on_ready()
        self.served = True


class FakeEndpoint:
    """Stands in for Client and Peer: records its arguments."""

    made: ClassVar[list[FakeEndpoint]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        FakeEndpoint.made.append(self)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Fake Server, Client, Peer and console; yields the console's calls."""
    FakeServer.made.clear()
    FakeEndpoint.made.clear()
    consoles: list[dict[str, Any]] = []

    def fake_console(endpoint: Any, **options: Any) -> int:
        consoles.append({"endpoint": endpoint, **options})
        return 0

    monkeypatch.setattr(netchat.server, "Server", FakeServer)
    monkeypatch.setattr(netchat.client, "Client", FakeEndpoint)
    monkeypatch.setattr(netchat.console, "run_console", fake_console)
    monkeypatch.setitem(sys.modules, "netchat.peer", types.SimpleNamespace(Peer=FakeEndpoint))
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("NETCHAT_PASSWORD", raising=False)
    yield consoles


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("server", "client", "peer"):
        assert command in result.output


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "server" in result.output and "client" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"netchat {__version__}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["server"], Proto.tcp),
        (["--proto", "udp", "server"], Proto.udp),
        (["server", "--proto", "udp"], Proto.udp),
        (["--proto", "udp", "server", "--proto", "tcp"], Proto.tcp),
        (["--proto", "tcp", "server", "--proto", "udp"], Proto.udp),
    ],
)
def test_proto_before_or_after_the_command(
    fakes: list[dict[str, Any]], argv: list[str], expected: Proto
) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert FakeServer.made[-1].proto is expected
    assert FakeServer.made[-1].served


@pytest.mark.parametrize("argv", [["--proto", "sctp", "server"], ["server", "--proto", "sctp"]])
def test_invalid_proto_is_a_usage_error(fakes: list[dict[str, Any]], argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert "Invalid value" in result.output
    assert not FakeServer.made


def test_server_options_reach_the_config(fakes: list[dict[str, Any]], tmp_path: Any) -> None:
    log = tmp_path / "events.jsonl"
    result = runner.invoke(
        app,
        [
            "server",
            "--host", "0.0.0.0",
            "--port", "9000",
            "--max-clients", "5",
            "--max-per-address", "2",
            "--max-queue", "65536",
            "--rate-limit", "3.5",
            "--burst", "7",
            "--registration-timeout", "4",
            "--ping-interval", "6",
            "--motd", "be nice",
            "--event-log", str(log),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    server = FakeServer.made[-1]
    assert server.config == ServerConfig(
        host="0.0.0.0",
        port=9000,
        max_clients=5,
        max_per_address=2,
        max_queue=65536,
        rate_limit=3.5,
        burst=7,
        registration_timeout=4,
        ping_interval=6,
        motd="be nice",
    )
    assert str(server.event_log) == str(log)
    assert "serving tcp on 0.0.0.0:9000" in result.output
    assert "--host 0.0.0.0" not in result.output  # the LAN hint is for 127.0.0.1 only


def test_server_on_localhost_hints_at_the_lan(fakes: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["server", "--port", "9000"])
    assert "serving tcp on 127.0.0.1:9000 (Ctrl-C to stop)" in result.output
    assert "--host 0.0.0.0" in result.output


def test_server_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["server", "--port", str(port)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"netchat: cannot serve tcp on 127.0.0.1:{port}:")
    assert "in use" in lines[0]


def test_invalid_port_is_a_usage_error() -> None:
    result = runner.invoke(app, ["server", "--port", "70000"])
    assert result.exit_code == 2


def test_invalid_log_level_is_a_usage_error() -> None:
    result = runner.invoke(app, ["--log-level", "LOUD", "server"])
    assert result.exit_code == 2


def test_client_without_name_in_pipe_mode_is_a_usage_error(fakes: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["client"], input="hello\n")
    assert result.exit_code == 2
    assert "--name" in result.output
    assert not FakeEndpoint.made


def test_client_options_reach_client_and_console(fakes: list[dict[str, Any]]) -> None:
    argv = ["--proto", "udp", "client", "--name", "alice", "--host", "::1", "--port", "9001"]
    result = runner.invoke(app, [*argv, "--reconnect", "--no-color", "--pipe"])
    assert result.exit_code == 0, result.output
    endpoint = FakeEndpoint.made[-1]
    assert endpoint.args == ("alice", "::1", 9001, Proto.udp)
    assert endpoint.kwargs == {"reconnect": True, "plain": False, "password": None}
    renamed = fakes[-1].pop("renamed")
    assert fakes[-1] == {"endpoint": endpoint, "pipe": True, "color": False}
    # Asked again for a name, the console gets the same client under the new name.
    again = renamed("alice2")
    assert again.args == ("alice2", "::1", 9001, Proto.udp) and again.kwargs == endpoint.kwargs


def test_client_plain_asks_for_plain_line_mode(fakes: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["--proto", "udp", "client", "--name", "alice", "--plain"])
    assert result.exit_code == 0, result.output
    assert FakeEndpoint.made[-1].kwargs == {"reconnect": False, "plain": True, "password": None}
    assert fakes[-1]["pipe"] is False


def test_client_honours_no_color(
    fakes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert runner.invoke(app, ["client", "--name", "a"]).exit_code == 0
    assert fakes[-1]["color"] is False
    monkeypatch.setenv("NO_COLOR", "")  # an empty value does not count (no-color.org)
    assert runner.invoke(app, ["client", "--name", "a"]).exit_code == 0
    assert fakes[-1]["color"] is True


def test_client_console_exit_code_is_the_process_exit_code(
    fakes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netchat.console, "run_console", lambda endpoint, **options: 1)
    assert runner.invoke(app, ["client", "--name", "a"]).exit_code == 1


def test_peer_options_reach_the_peer(
    fakes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netchat.netif, "interfaces", lambda: FAKE_INTERFACES)
    argv = ["peer", "--name", "bob", "--group", "239.1.2.3", "--port", "9100"]
    result = runner.invoke(app, [*argv, "--interface", "127.0.0.1", "--ttl", "2"])
    assert result.exit_code == 0, result.output
    endpoint = FakeEndpoint.made[-1]
    assert endpoint.args == ("bob",)
    assert endpoint.kwargs == {
        "group": "239.1.2.3",
        "port": 9100,
        "interface": "127.0.0.1",
        "broadcast": False,
        "ttl": 2,
        "password": None,
    }
    assert fakes[-1]["pipe"] is False


def test_peer_broadcast_to_a_broadcast_address(fakes: list[dict[str, Any]]) -> None:
    argv = ["peer", "--name", "bob", "--broadcast", "--group", "192.0.2.255"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert FakeEndpoint.made[-1].kwargs["group"] == "192.0.2.255"
    assert FakeEndpoint.made[-1].kwargs["broadcast"] is True


def test_peer_without_name_in_pipe_mode_is_a_usage_error(fakes: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["peer"], input="")
    assert result.exit_code == 2
    assert "--name" in result.output


# --- help and errors read like a well-made CLI ------------------------------------------


@pytest.mark.parametrize("command", [[], ["server"], ["client"], ["peer"]])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_has_no_value_placeholder_on_flags(command: list[str], flag: str) -> None:
    result = runner.invoke(app, [*command, flag])
    assert result.exit_code == 0, result.output
    assert "Usage: netchat" in result.output
    # Following the help literally must work: "--reconnect <bool>" reads as if it
    # took a value, and "--reconnect true" is an error.
    assert "<bool>" not in result.output
    assert "<str>" not in result.output and "<int" not in result.output


def test_flags_shown_in_help_take_no_value(fakes: list[dict[str, Any]]) -> None:
    flags = ["--reconnect", "--no-color", "--pipe"]
    result = runner.invoke(app, ["client", "--name", "a", *flags])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["peer", "--name", "a", "--broadcast", "--no-color", "--pipe"])
    assert result.exit_code == 0, result.output


def test_client_help_lists_plain_and_pipe() -> None:
    result = runner.invoke(app, ["client", "-h"])
    assert "--plain" in result.output and "--pipe" in result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["--proto", "UDP", "server"],
        ["--proto", "Udp", "server"],
        ["server", "--proto", "UDP"],
    ],
)
def test_proto_is_case_insensitive(fakes: list[dict[str, Any]], argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert FakeServer.made[-1].proto is Proto.udp


PYDANTIC_WORDS = ("Input should", "Value error", "valid integer", "parse string", "validation")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["server", "--port", "x"], "Invalid value for '--port': 'x' is not a port number"),
        (["server", "--port", "70000"], "70000 is not a port number (0 to 65535)"),
        (["client", "--port", "0"], "0 is not a port number (1 to 65535)"),
        (["server", "--rate-limit", "fast"], "'fast' is not a number"),
        (["server", "--burst", "0"], "0 is out of range: give 1 or more"),
        (["server", "--ping-interval", "0"], "0 is too small: give 0.1 s or more"),
        (["peer", "--ttl", "256"], "256 is out of range: give from 0 to 255"),
        (["--proto", "sctp", "server"], "'sctp' is not a transport; choose tcp, udp or rudp"),
        (["client", "--proto", "sctp"], "'sctp' is not a transport; choose tcp, udp or rudp"),
        (["--log-level", "loud", "server"], "'loud' is not a log level"),
    ],
)
def test_option_errors_speak_plainly(
    fakes: list[dict[str, Any]], argv: list[str], message: str
) -> None:
    result = runner.invoke(app, argv, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert message in result.output
    assert not any(word in result.output for word in PYDANTIC_WORDS), result.output
    assert not FakeServer.made and not FakeEndpoint.made


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (
            ["--proto", "tcp", "peer", "--name", "a"],
            "peers chat over UDP multicast or broadcast; leave out --proto tcp",
        ),
        (
            ["peer", "--name", "a", "--broadcast", "--group", "239.1.2.3"],
            "239.1.2.3 is a multicast group, but --broadcast sends to a broadcast address",
        ),
        (
            ["client", "--name", "a", "--plain", "--reconnect"],
            "plain-line mode does not reconnect; leave out --reconnect or --plain",
        ),
        (
            ["client", "--name", "a", "--plain", "--password", "x"],
            "plain-line mode is for servers that are not netchat, which cannot check a password",
        ),
        (
            ["--proto", "udp", "server", "--accept-plain", "--password", "x"],
            "--accept-plain cannot be used with a password: plain datagram clients cannot"
            " prove they know it",
        ),
    ],
)
def test_contradictory_options_are_refused_with_a_reason(
    fakes: list[dict[str, Any]], argv: list[str], reason: str
) -> None:
    result = runner.invoke(app, argv, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert reason in result.output
    assert not FakeEndpoint.made


def test_proto_udp_before_peer_is_fine(fakes: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["--proto", "udp", "peer", "--name", "a"])
    assert result.exit_code == 0, result.output


# --- the server tells students how to join ----------------------------------------------


def served_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("netchat: ")]


def test_server_on_all_interfaces_prints_the_commands_students_type(
    fakes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netchat.netif, "interfaces", lambda: FAKE_INTERFACES)
    result = runner.invoke(app, ["server", "--host", "0.0.0.0", "--port", "9000"])
    assert result.exit_code == 0, result.output
    assert served_lines(result.output) == [
        "netchat: serving tcp on 0.0.0.0:9000 (Ctrl-C to stop)",
        "netchat: students join with one of these (2 addresses of this machine):",
        "netchat:   netchat client --host 192.0.2.10 --port 9000 --name YOU",
        "netchat:   nc 192.0.2.10 9000",
        "netchat:   netchat client --host 198.51.100.7 --port 9000 --name YOU",
        "netchat:   nc 198.51.100.7 9000",
        "netchat: if they cannot connect, a firewall may block the port: open 9000/tcp"
        " (for example: sudo ufw allow 9000/tcp)",
    ]


def test_udp_server_on_the_lan_prints_udp_commands(
    fakes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netchat.netif, "interfaces", lambda: FAKE_INTERFACES[:2])
    result = runner.invoke(app, ["--proto", "udp", "server", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert served_lines(result.output) == [
        "netchat: serving udp on 0.0.0.0:8080 (Ctrl-C to stop)",
        "netchat: students join with one of these (1 address of this machine):",
        "netchat:   netchat --proto udp client --host 192.0.2.10 --name YOU",
        "netchat: if they cannot connect, a firewall may block the port: open 8080/udp"
        " (for example: sudo ufw allow 8080/udp)",
    ]


def test_server_on_one_lan_address_names_it(fakes: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["server", "--host", "192.0.2.10"])
    assert served_lines(result.output)[1:4] == [
        "netchat: students join with one of these (1 address of this machine):",
        "netchat:   netchat client --host 192.0.2.10 --name YOU",
        "netchat:   nc 192.0.2.10 8080",
    ]


def test_server_without_a_lan_address_says_so(
    fakes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netchat.netif, "interfaces", lambda: FAKE_INTERFACES[:1])
    result = runner.invoke(app, ["server", "--host", "0.0.0.0"])
    assert served_lines(result.output) == [
        "netchat: serving tcp on 0.0.0.0:8080 (Ctrl-C to stop)",
        "netchat: this machine has no LAN address yet: is it connected to a network?",
    ]


# --- peer --interface by name --------------------------------------------------------------


@pytest.mark.parametrize(("given", "used"), [("eth0", "192.0.2.10"), ("lo", "127.0.0.1")])
def test_peer_interface_by_name(
    fakes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, given: str, used: str
) -> None:
    monkeypatch.setattr(netchat.netif, "interfaces", lambda: FAKE_INTERFACES)
    result = runner.invoke(app, ["peer", "--name", "a", "--interface", given])
    assert result.exit_code == 0, result.output
    assert FakeEndpoint.made[-1].kwargs["interface"] == used


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            "eth9",
            "no network interface named 'eth9'; this machine has: lo (127.0.0.1),"
            " eth0 (192.0.2.10), wlan0 (198.51.100.7), tun0 (no IPv4 address)",
        ),
        ("tun0", "interface tun0 has no IPv4 address"),
        ("10.9.9.9", "no interface of this machine has the address 10.9.9.9"),
        ("::1", "::1 is not an IPv4 address (peers use IPv4)"),
    ],
)
def test_peer_unknown_interface_is_a_clear_error(
    fakes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, given: str, message: str
) -> None:
    monkeypatch.setattr(netchat.netif, "interfaces", lambda: FAKE_INTERFACES)
    result = runner.invoke(
        app, ["peer", "--name", "a", "--interface", given], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 2
    assert "Invalid value for '--interface'" in result.output
    assert message in result.output
    assert not FakeEndpoint.made


# --- a chat with a password (issue 6) --------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--password", "сезам"], {}, "сезам"),
        ([], {"NETCHAT_PASSWORD": "сезам"}, "сезам"),
        (["--password", "given"], {"NETCHAT_PASSWORD": "from env"}, "given"),
        ([], {"NETCHAT_PASSWORD": ""}, None),  # an empty one means none
        ([], {}, None),
    ],
)
def test_password_from_the_option_or_the_environment_reaches_every_command(
    fakes: list[dict[str, Any]], argv: list[str], env: dict[str, str], expected: str | None
) -> None:
    assert runner.invoke(app, ["server", *argv], env=env).exit_code == 0
    assert FakeServer.made[-1].config.password == (expected or "")
    for command in (["client", "--name", "a"], ["peer", "--name", "a"]):
        result = runner.invoke(app, [*command, *argv], env=env)
        assert result.exit_code == 0, result.output
        assert FakeEndpoint.made[-1].kwargs["password"] == expected


def test_a_server_with_a_password_says_so_and_never_shows_it(fakes: list[dict[str, Any]]) -> None:
    tcp = runner.invoke(app, ["server"], env={"NETCHAT_PASSWORD": "сезам"})
    assert tcp.exit_code == 0
    assert tcp.output.splitlines()[-2:] == [
        "netchat: this chat needs a password: others give it with NETCHAT_PASSWORD or --password",
        "netchat: over TCP the password and the chat cross the network in clear: it keeps"
        " strangers out, not eavesdroppers (--proto udp seals everything)",
    ]
    udp = runner.invoke(app, ["--proto", "udp", "server", "--password", "сезам"])
    assert udp.output.splitlines()[-1] == (
        "netchat: this chat needs a password: others give it with NETCHAT_PASSWORD or --password"
    )
    assert "сезам" not in tcp.output + udp.output + repr(FakeServer.made[-1].config)


@pytest.mark.parametrize("command", ["server", "client", "peer"])
def test_help_names_the_environment_variable_but_not_its_value(command: str) -> None:
    result = runner.invoke(
        app, [command, "--help"], env={"NETCHAT_PASSWORD": "сезам", "COLUMNS": "200"}
    )
    assert result.exit_code == 0
    assert "--password" in result.output and "NETCHAT_PASSWORD" in result.output
    assert "сезам" not in result.output


def test_an_unusable_password_is_refused_without_echoing_it(fakes: list[dict[str, Any]]) -> None:
    long = "я" * 600  # 1,200 bytes of UTF-8
    result = runner.invoke(app, ["server"], env={"NETCHAT_PASSWORD": long, "COLUMNS": "200"})
    assert result.exit_code == 2
    assert "a password has at most 1024 bytes" in result.output
    assert long not in result.output and not FakeServer.made


# --- --proto rudp -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["--proto", "rudp", "server"], ["server", "--proto", "RUDP"]], ids=str
)
def test_rudp_server_is_chosen_before_or_after_the_command(
    fakes: list[dict[str, Any]], argv: list[str]
) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert FakeServer.made[-1].proto is Proto.rudp
    assert "netchat: serving rudp on 127.0.0.1:8080 (Ctrl-C to stop)" in result.output


def test_rudp_server_on_the_lan_prints_rudp_commands(
    fakes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netchat.netif, "interfaces", lambda: FAKE_INTERFACES[:2])
    result = runner.invoke(app, ["--proto", "rudp", "server", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert served_lines(result.output) == [
        "netchat: serving rudp on 0.0.0.0:8080 (Ctrl-C to stop)",
        "netchat: students join with one of these (1 address of this machine):",
        "netchat:   netchat --proto rudp client --host 192.0.2.10 --name YOU",
        "netchat: if they cannot connect, a firewall may block the port: open 8080/udp"
        " (for example: sudo ufw allow 8080/udp)",
    ]


def test_rudp_client_options_reach_the_client(fakes: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["client", "--proto", "rudp", "--name", "alice", "--pipe"])
    assert result.exit_code == 0, result.output
    endpoint = FakeEndpoint.made[-1]
    assert endpoint.args == ("alice", "127.0.0.1", 8080, Proto.rudp)
    assert endpoint.kwargs == {"reconnect": False, "plain": False, "password": None}


def test_rudp_client_in_plain_line_mode_is_refused_with_the_alternative(
    fakes: list[dict[str, Any]],
) -> None:
    result = runner.invoke(
        app, ["--proto", "rudp", "client", "--name", "a", "--plain"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert (
        "a lab server that does not speak netchat cannot acknowledge anything; use --proto"
        " udp --plain" in result.output
    )
    assert not FakeEndpoint.made


def test_help_names_the_three_transports() -> None:
    result = runner.invoke(app, ["server", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "tcp|udp|rudp" in result.output
    assert "Transport: tcp, udp or rudp (reliable UDP)" in result.output

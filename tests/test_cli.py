"""The ``netchat`` command line: parsing, --help and errors, with typer's CliRunner.

The networking behind the commands is replaced by recording fakes here; it is
tested through the library (test_client.py) and the real binary (test_console.py).
"""

from __future__ import annotations

import socket
import sys
import types
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

import netchat.client
import netchat.console
import netchat.server
from netchat import __version__
from netchat.cli import app
from netchat.transport.base import Proto, ServerConfig

runner = CliRunner()


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

    def serve_forever(self) -> None:
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
    result = runner.invoke(app, [*argv, "--reconnect", "--no-color", "--plain"])
    assert result.exit_code == 0, result.output
    endpoint = FakeEndpoint.made[-1]
    assert endpoint.args == ("alice", "::1", 9001, Proto.udp)
    assert endpoint.kwargs == {"reconnect": True}
    assert fakes[-1] == {"endpoint": endpoint, "plain": True, "color": False}


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


def test_peer_options_reach_the_peer(fakes: list[dict[str, Any]]) -> None:
    argv = ["peer", "--name", "bob", "--group", "239.1.2.3", "--port", "9100"]
    result = runner.invoke(app, [*argv, "--interface", "127.0.0.1", "--broadcast", "--ttl", "2"])
    assert result.exit_code == 0, result.output
    endpoint = FakeEndpoint.made[-1]
    assert endpoint.args == ("bob",)
    assert endpoint.kwargs == {
        "group": "239.1.2.3",
        "port": 9100,
        "interface": "127.0.0.1",
        "broadcast": True,
        "ttl": 2,
    }


def test_peer_without_name_in_pipe_mode_is_a_usage_error(fakes: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["peer"], input="")
    assert result.exit_code == 2
    assert "--name" in result.output

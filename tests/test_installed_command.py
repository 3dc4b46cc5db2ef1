"""The installed ``netchat`` script, run exactly as the README tells a newcomer to."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wire import WAIT, plain_client


def netchat_command() -> str:
    """The ``netchat`` script that ``pip install`` put beside this Python."""
    beside_python = Path(sys.executable).parent / "netchat"
    found = str(beside_python) if beside_python.exists() else shutil.which("netchat")
    if found is None:
        pytest.fail("the netchat command is not installed: run the README's pip install")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_help_lists_the_commands() -> None:
    result = subprocess.run(
        [netchat_command(), "--help"], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert result.returncode == 0
    for command in ("server", "client", "peer", "--proto"):
        assert command in result.stdout


def test_server_serves_nc_users_and_exits_0_on_sigint() -> None:
    port = free_port()
    server = subprocess.Popen(
        [netchat_command(), "server", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        assert f"serving tcp on 127.0.0.1:{port}" in server.stderr.readline()
        alice = plain_client(("127.0.0.1", port), "alice")
        bob = plain_client(("127.0.0.1", port), "bob")
        bob.send_line("здравствуй, alice")
        alice.expect(r"<bob> здравствуй, alice$")
        server.send_signal(signal.SIGINT)
        alice.expect(r"^\[..:..:..\] -!- server is shutting down")
        assert server.wait(timeout=WAIT) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize("proto", ["tcp", "udp", "rudp"])
def test_ctrl_c_right_after_the_banner_is_a_clean_stop(proto: str) -> None:
    # A script waits for "serving ..." and may stop the server the same instant.
    server = subprocess.Popen(
        [netchat_command(), "--proto", proto, "server", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        assert f"serving {proto} on 127.0.0.1:" in server.stderr.readline()
        server.send_signal(signal.SIGINT)
        _out, rest = server.communicate(timeout=WAIT)
        assert server.returncode == 0
        assert "Traceback" not in rest
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize("command", [["server"], ["client"], ["peer"]])
def test_dash_h_shows_flags_without_value_placeholders(command: list[str]) -> None:
    result = subprocess.run(
        [netchat_command(), *command, "-h"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr
    assert f"Usage: netchat {command[0]}" in result.stdout
    assert "<bool>" not in result.stdout


def test_option_errors_through_the_binary_speak_plainly() -> None:
    result = subprocess.run(
        [netchat_command(), "--proto", "UDP", "server", "--port", "eighty"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 2  # UDP was accepted; the port was not
    assert "Invalid value for '--port': 'eighty' is not a port number" in result.stderr
    assert "Input should" not in result.stderr and "parse string" not in result.stderr


def test_contradictory_options_through_the_binary() -> None:
    result = subprocess.run(
        [netchat_command(), "--proto", "tcp", "peer", "--name", "a"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 2
    assert "peers chat over UDP multicast or broadcast; leave out --proto tcp" in result.stderr


def test_rudp_server_and_pipe_clients_chat_and_a_udp_client_is_told_the_proto() -> None:
    server = subprocess.Popen(
        [netchat_command(), "--proto", "rudp", "server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        first = server.stderr.readline()
        assert first.startswith("netchat: serving rudp on 127.0.0.1:"), first
        port = first.split(":")[2].split()[0]

        def client(*argv: str, lines: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [netchat_command(), *argv, "--port", port],
                input=lines,
                capture_output=True,
                text=True,
                timeout=WAIT,
                check=False,
            )

        said = client("--proto", "rudp", "client", "--name", "алиса", lines="привет\n")
        assert said.returncode == 0, said.stderr
        assert [line[len("[12:00:00] ") :] for line in said.stdout.splitlines()] == [
            "-!- Welcome, алиса! Online (1): алиса. Type /help for commands.",
            "<алиса> привет",
        ]
        refused = client("--proto", "udp", "client", "--name", "bob", lines="hi\n")
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            "netchat: this server speaks --proto rudp, not udp: join with netchat"
            " --proto rudp client"
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            assert server.wait(timeout=WAIT) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()

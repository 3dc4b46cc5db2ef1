"""The installed ``netchat`` script, run exactly as the README tells a newcomer to."""

from __future__ import annotations

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

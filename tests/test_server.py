"""The server as a whole: shutdown, limits of the machine, configuration (netchat/server.py).

Regression tests for issue 10's server defects; each failed before its fix.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netchat.cli import app
from netchat.errors import ConfigError
from netchat.protocol import datagram as dg
from netchat.protocol.frames import Hello, encode_frame
from netchat.server import Server
from netchat.transport.base import Proto, ServerConfig
from tests.conftest import ServerFactory
from tests.wire import WAIT, LineClient, plain_client

TIMESTAMP = r"\[\d\d:\d\d:\d\d\] "


def untimed(lines: list[str]) -> list[str]:
    """The lines without their time prefix (every server line has one)."""
    return [re.sub(f"^{TIMESTAMP}", "", line) for line in lines]


def read_until_closed(client: LineClient, timeout: float = WAIT) -> list[str]:
    """Every line the client receives until the server closes the connection."""
    deadline = time.monotonic() + timeout
    while client._fill(deadline):
        pass
    lines, client.lines = client.lines, []
    return lines


# --- shutdown ------------------------------------------------------------------------------


def test_sigterm_gives_one_notice_after_everything_owed() -> None:
    """Issue 10 #2: the notice came twice and could overtake queued broadcasts."""
    script = textwrap.dedent(
        """
        import sys
        from netchat.server import Server
        from netchat.transport.base import ServerConfig
        server = Server(ServerConfig(port=0, rate_limit=0))
        print(server.address[1], flush=True)
        server.serve_forever()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        address = ("127.0.0.1", int(proc.stdout.readline()))
        listener = plain_client(address, "listener")
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # falls behind
        talker = plain_client(address, "talker")
        count = 2000
        talker.send(b"".join(f"message {n}\n".encode() for n in range(count)))
        talker.expect(f"<talker> message {count - 1}$")  # the server has taken them all
        proc.send_signal(signal.SIGTERM)
        lines = untimed(read_until_closed(listener))
        assert proc.wait(WAIT) == 0
    finally:
        proc.kill()
    said = [line for line in lines if "<talker>" in line]
    assert [line.split("> ", 1)[1] for line in said] == [f"message {n}" for n in range(count)]
    # The transcript ends with exactly one notice, after every message owed.
    assert lines[-1] == "-!- server is shutting down: server stopped by its operator"
    assert sum("shutting down" in line for line in lines) == 1
    assert lines.index(said[-1]) < len(lines) - 1


def test_shutdown_transcripts_for_members_and_strangers(make_server: ServerFactory) -> None:
    server = make_server()
    member = plain_client(server.address, "member")
    stranger = LineClient(server.address)
    stranger.expect("Type your name")
    server.shutdown("maintenance")
    assert untimed(read_until_closed(member)) == ["-!- server is shutting down: maintenance"]
    assert untimed(read_until_closed(stranger)) == [
        "-!- server is shutting down: server shutting down"
    ]


# --- limits of the machine ------------------------------------------------------------------


def test_a_connection_that_cannot_get_a_thread_is_refused_and_the_server_goes_on(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 #1: a failed Thread.start() escaped serve_forever and stopped the server."""
    server = make_server()
    first = plain_client(server.address, "first")
    real_start = threading.Thread.start
    failures: list[str] = []

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith("netchat-127.0.0.1") and not failures:
            failures.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    unlucky = LineClient(server.address)
    assert untimed(read_until_closed(unlucky)) == [
        "! the server is out of resources; try again later"
    ]
    lucky = plain_client(server.address, "lucky")
    lucky.send_line("still serving")
    first.expect(rf"^{TIMESTAMP}<lucky> still serving$")
    assert failures


def test_at_the_open_files_limit_one_connection_is_refused_with_a_reason() -> None:
    """Issue 10 #1: at the descriptor limit the server refuses, logs and goes on."""
    script = textwrap.dedent(
        """
        import os, resource
        from netchat.server import Server
        from netchat.transport.base import ServerConfig
        server = Server(ServerConfig(port=0))
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 6, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        print(server.address[1], flush=True)
        server.serve_forever()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        address = ("127.0.0.1", int(proc.stdout.readline()))
        held = []
        refused = None
        for _ in range(12):  # far more than the limit leaves room for
            client = LineClient(address, timeout=3)
            lines = untimed(read_until_closed(client, timeout=0.5))
            if lines and lines[0].startswith("! "):
                refused = lines[0]
                break
            held.append(client)
        assert refused == "! the server has too many open connections; try again later"
        for client in held:
            client.reset()
        time.sleep(0.3)
        again = plain_client(address, "again")  # descriptors freed: it serves again
        again.send_line("hi")
        again.expect(rf"^{TIMESTAMP}<again> hi$")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT)
        finally:
            proc.kill()
    assert proc.stderr is not None
    assert b"accept failed" in proc.stderr.read()


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ping_interval", 0, "ping_interval must be at least 0.1, not 0"),
        ("registration_timeout", -1.0, "registration_timeout must be at least 0.1, not -1.0"),
        ("max_clients", 0, "max_clients must be at least 1, not 0"),
        ("port", 70000, "port must be from 0 to 65535, not 70000"),
        ("max_queue", 100, "max_queue must be at least 65536, not 100"),
        ("rate_limit", float("nan"), "rate_limit must be at least 0, not nan"),
        ("burst", True, "burst must be a number, not True"),
        ("line_gap", 0.0, "line_gap must be from 0.01 to 10, not 0.0"),
    ],
)
def test_nonsense_configuration_is_refused_on_construction(
    field: str, value: object, message: str
) -> None:
    """Issue 10 #5: ping_interval=0 was accepted and dropped every member at once."""
    with pytest.raises(ConfigError) as refused:
        ServerConfig(**{field: value})  # type: ignore[arg-type]
    assert str(refused.value) == message
    assert refused.value.field == field


def test_the_library_leaves_the_open_files_limit_alone() -> None:
    """Issue 10 #5: constructing a Server raised the process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, hard) - 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        server = Server(ServerConfig(port=0))
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (lowered, hard)
        server.shutdown()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_event_log_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    """Issue 10 #7: it was reported as 'cannot serve tcp on …: no such file'."""
    missing = tmp_path / "no-such-dir" / "events.jsonl"
    result = CliRunner().invoke(app, ["server", "--port", "0", "--event-log", str(missing)])
    assert result.exit_code == 1
    assert result.output == (
        f"netchat: cannot open the event log {str(missing)!r}: no such file or directory\n"
    )


def test_the_event_log_is_written_off_the_chat_threads(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    server = make_server(event_log=path)
    alice = plain_client(server.address, "alice")
    alice.send_line("hello")
    alice.expect("<alice> hello")
    server.shutdown()
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["join", "message", "shutdown"]


# --- UDP ------------------------------------------------------------------------------------------


def test_every_udp_accept_carries_the_name_joined(make_server: ServerFactory) -> None:
    """Issue 10 #4: housekeeping could flush an ACCEPT before the name was set."""
    server = make_server(proto=Proto.udp)
    for n in range(40):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(server.address)
            sock.send(dg.encode_hello(dg.NO_COOKIE))
            cookie = dg.decode_datagram(sock.recv(2048))
            assert isinstance(cookie, dg.Cookie)
            sock.send(dg.encode_hello(cookie.cookie, encode_frame(Hello(f"name{n}"))))
            accept = dg.decode_datagram(sock.recv(2048))
            assert accept == dg.Accept(1, accept.heartbeat_ms, f"name{n}")  # type: ignore[union-attr]
            sock.send(dg.encode_bye("done"))


def test_the_udp_relay_runs_on_one_thread(make_server: ServerFactory) -> None:
    """Issue 10 #4: two threads updated the relay's counters without a lock."""
    before = {t.name for t in threading.enumerate()}
    make_server(proto=Proto.udp)
    started = {t.name for t in threading.enumerate()} - before
    assert started == {"netchat-server"}

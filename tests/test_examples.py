"""The example bots do their jobs against a real server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netchat import Client, Frame, Joined, Message
from netchat.server import Server
from tests.conftest import ServerFactory
from tests.test_console import netchat_env
from tests.wire import WAIT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def run_example() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``examples/NAME.py`` with arguments; killed after the test."""
    started: list[subprocess.Popen[str]] = []

    def start(name: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=netchat_env(),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT)


def wait_for(client: Client, predicate: Callable[[Frame], bool]) -> Frame:
    deadline = time.monotonic() + WAIT
    while (remaining := deadline - time.monotonic()) > 0:
        frame = client.next_event(timeout=remaining)
        if frame is not None and predicate(frame):
            return frame
    raise AssertionError("expected event did not arrive in time")


def bot_args(server: Server, *extra: str) -> list[str]:
    host, port = server.address
    return ["--host", host, "--port", str(port), "--duration", str(3 * WAIT), *extra]


def test_echo_bot_echoes_and_answers_mentions(
    make_server: ServerFactory, run_example: Callable[..., subprocess.Popen[str]]
) -> None:
    server = make_server()
    with Client.connect("alice", *server.address) as alice:
        bot = run_example("echo_bot", *bot_args(server, "--name", "echo"))
        wait_for(alice, lambda f: isinstance(f, Joined) and f.name == "echo")

        alice.say("!echo Привет 🎉")
        reply = wait_for(alice, lambda f: isinstance(f, Message) and f.sender == "echo")
        assert isinstance(reply, Message) and reply.text == "Привет 🎉"

        alice.say("hello echo, are you there?")
        reply = wait_for(alice, lambda f: isinstance(f, Message) and f.sender == "echo")
        assert isinstance(reply, Message)
        assert reply.text.startswith("alice: ") and "are you there?" in reply.text

        alice.say("nothing for the bot")
        alice.say("!echo marker")
        reply = wait_for(alice, lambda f: isinstance(f, Message) and f.sender == "echo")
        assert isinstance(reply, Message) and reply.text == "marker"  # no reply in between
    bot.kill()


def test_echo_bot_stops_after_max_events(
    make_server: ServerFactory, run_example: Callable[..., subprocess.Popen[str]]
) -> None:
    server = make_server()
    with Client.connect("alice", *server.address) as alice:
        bot = run_example("echo_bot", *bot_args(server, "--max-events", "2"))
        wait_for(alice, lambda f: isinstance(f, Joined) and f.name == "echo")
        alice.say("event 2 for the bot, after its welcome")
        assert bot.wait(WAIT) == 0
        wait_for(alice, lambda f: f.TYPE == "left" and getattr(f, "name", "") == "echo")


def test_logger_bot_writes_every_message(
    make_server: ServerFactory,
    run_example: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    server = make_server()
    transcript = tmp_path / "chat.log"
    with Client.connect("alice", *server.address) as alice:
        bot = run_example("logger_bot", *bot_args(server, "--output", str(transcript)))
        wait_for(alice, lambda f: isinstance(f, Joined) and f.name == "logger")
        with Client.connect("bob", *server.address) as bob:
            alice.say("first line")
            # Two connections have no order between them: let alice's line land first.
            wait_for(alice, lambda f: isinstance(f, Message) and f.text == "first line")
            bob.say("второй 🙂")
            bob.send_line("/me waves")
            wait_for(alice, lambda f: isinstance(f, Message) and f.action)
        deadline = time.monotonic() + WAIT
        text = ""
        while "-!- bob left" not in text:
            text = transcript.read_text(encoding="utf-8") if transcript.exists() else ""
            assert time.monotonic() < deadline, f"transcript so far: {text!r}"
            time.sleep(0.02)
    lines = text.splitlines()
    assert "] -!- Welcome, logger!" in lines[0]
    assert any(line.endswith("<alice> first line") for line in lines), text
    assert any(line.endswith("<bob> второй 🙂") for line in lines)
    assert any(line.endswith("] * bob waves") for line in lines)
    bot.kill()


def test_logger_bot_to_stdout_with_max_events(
    make_server: ServerFactory, run_example: Callable[..., subprocess.Popen[str]]
) -> None:
    server = make_server()
    with Client.connect("alice", *server.address) as alice:
        bot = run_example("logger_bot", *bot_args(server, "--name", "log", "--max-events", "3"))
        wait_for(alice, lambda f: isinstance(f, Joined) and f.name == "log")
        alice.say("not the last")  # events for the bot: welcome, this, the next
        alice.say("to stdout")
        out, _ = bot.communicate(timeout=WAIT)
    assert bot.returncode == 0
    assert out.splitlines()[-1].endswith("<alice> to stdout")


def test_bots_report_connection_refused(
    run_example: Callable[..., subprocess.Popen[str]],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name in ("echo_bot", "logger_bot"):
        bot = run_example(name, "--port", str(port))
        _, err = bot.communicate(timeout=WAIT)
        assert bot.returncode == 1
        assert "connection refused" in err

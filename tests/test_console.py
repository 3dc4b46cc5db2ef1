"""The console through the real ``netchat`` command, run as subprocesses.

Pipe mode: clients read stdin and print one line per event to stdout. Interactive
mode: a client under a pseudo-terminal keeps its input line while messages arrive.
Every wait has a deadline, and every process is killed in ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netchat import Client, Message
from netchat.console import format_event, mentions, name_color
from netchat.server import Server
from tests.conftest import ServerFactory
from tests.wire import WAIT, plain_client

ROOT = Path(__file__).resolve().parent.parent


def netchat_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


class Proc:
    """A ``python -m netchat …`` subprocess whose output lines are collected by threads."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "netchat", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env or netchat_env(),
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []  # stdout lines consumed by expect()
        for stream, lines in ((self.popen.stdout, self.stdout), (self.popen.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _pump(stream: object, lines: queue.Queue[str]) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            lines.put(raw.decode("utf-8").rstrip("\n"))

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode("utf-8") + b"\n")
        self.popen.stdin.flush()

    def send_bytes(self, data: bytes) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()

    def expect(self, pattern: str, timeout: float = WAIT) -> str:
        """The next stdout line matching ``pattern`` (earlier lines are kept in ``seen``)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.stdout.get(timeout=remaining)
            except queue.Empty:
                break
            self.seen.append(line)
            if regex.search(line):
                return line
        raise AssertionError(f"no stdout line matching {pattern!r}; saw {self.seen!r}")

    def expect_stderr(self, pattern: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.stderr.get(timeout=remaining)
            except queue.Empty:
                break
            seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no stderr line matching {pattern!r}; saw {seen!r}")

    def wait(self, timeout: float = WAIT) -> int:
        return self.popen.wait(timeout)

    def rest_of_stdout(self) -> list[str]:
        """Every stdout line not yet consumed; call after the process exited."""
        self.wait()
        lines: list[str] = []
        while not self.stdout.empty():
            lines.append(self.stdout.get())
        return lines

    def all_stderr(self) -> list[str]:
        self.wait()
        time.sleep(0)  # the pump threads finish once the pipe is at EOF
        lines: list[str] = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                lines.append(self.stderr.get(timeout=0.2))
            except queue.Empty:
                break
        return lines

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(WAIT)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    """Start ``netchat`` subprocesses; all are killed after the test."""
    started: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(*args, env=env)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


@pytest.fixture
def server_proc(procs: Callable[..., Proc]) -> tuple[Proc, int]:
    """``netchat server --port 0`` as a subprocess, and the port it bound."""
    server = procs("server", "--port", "0")
    line = server.expect_stderr(r"serving tcp on 127\.0\.0\.1:\d+")
    port = int(re.search(r":(\d+) ", line).group(1))  # type: ignore[union-attr]
    return server, port


def client_proc(procs: Callable[..., Proc], name: str, port: int) -> Proc:
    """A pipe-mode client that has joined (its welcome line was printed)."""
    proc = procs("client", "--name", name, "--port", str(port))
    proc.expect(rf"^\[..:..:..\] -!- Welcome, {re.escape(name)}!")
    return proc


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- pipe mode ----------------------------------------------------------------------


def test_three_clients_and_nc_chat(
    procs: Callable[..., Proc], server_proc: tuple[Proc, int]
) -> None:
    _, port = server_proc
    alice = client_proc(procs, "alice", port)
    bob = client_proc(procs, "bob", port)
    carol = client_proc(procs, "carol", port)
    dave = plain_client(("127.0.0.1", port), "dave")  # nc-style, beside them
    try:
        alice.expect(r"^\[..:..:..\] -!- dave joined$")

        text = "Привет, мир! Ёжик 🦔 и 👩‍💻 🎉"
        alice.send(text)
        for proc in (alice, bob, carol):
            line = proc.expect(r"<alice> ")
            assert re.fullmatch(rf"\[\d\d:\d\d:\d\d\] <alice> {re.escape(text)}", line)
        assert dave.expect(r"<alice> ").endswith(f"<alice> {text}")

        dave.send_line("hi from nc 👋")
        for proc in (alice, bob, carol):
            assert proc.expect(r"<dave> ").endswith("<dave> hi from nc 👋")

        bob.send("/msg carol psst 🤫")
        bob.send("public marker")
        assert carol.expect(r"<bob -> carol>").endswith("<bob -> carol> psst 🤫")
        assert bob.expect(r"<bob -> carol>").endswith("psst 🤫")  # echoed to the sender
        # Everyone sees events in one order: a private message delivered to alice or
        # dave would arrive before the public marker.
        alice.expect(r"<bob> public marker$")
        assert not any("psst" in line for line in alice.seen)
        dave_lines: list[str] = []
        while not any(line.endswith("public marker") for line in dave_lines):
            dave_lines.append(dave.expect(r".*"))
        assert not any("psst" in line for line in dave_lines)

        for proc in (alice, bob, carol):
            proc.close_stdin()
        for proc in (alice, bob, carol):
            assert proc.wait() == 0
    finally:
        dave.close()


def test_end_of_input_sends_pending_lines_and_quits(
    procs: Callable[..., Proc], server_proc: tuple[Proc, int]
) -> None:
    _, port = server_proc
    watcher = client_proc(procs, "watcher", port)
    quick = procs("client", "--name", "quick", "--port", str(port))
    quick.send("one line then EOF")
    quick.close_stdin()
    assert quick.wait() == 0
    assert watcher.expect(r"<quick> ").endswith("one line then EOF")
    watcher.expect(r"^\[..:..:..\] -!- quick left$")
    lines = [*quick.seen, *quick.rest_of_stdout()]
    assert "] -!- Welcome, quick!" in lines[0]
    assert any(line.endswith("<quick> one line then EOF") for line in lines)


def test_bad_command_goes_to_stderr_and_the_session_goes_on(
    procs: Callable[..., Proc], server_proc: tuple[Proc, int]
) -> None:
    _, port = server_proc
    alice = client_proc(procs, "alice", port)
    alice.send("/frobnicate")
    assert alice.expect_stderr(r"^! ").startswith("! unknown command /frobnicate")
    alice.send("/stats")
    assert re.fullmatch(
        r"\[..:..:..\] -!- stats \(tcp\): 0 messages sent, 1 received; 0 lost, 0 duplicates,"
        r" 0 reordered; \d+ bytes out, \d+ bytes in; round trip \d+\.\d\d ms",
        alice.expect(r"^\[..:..:..\] -!- stats"),
    )
    alice.send("/quit")
    assert alice.wait() == 0


def test_ctrl_c_leaves_cleanly(procs: Callable[..., Proc], server_proc: tuple[Proc, int]) -> None:
    _, port = server_proc
    watcher = client_proc(procs, "watcher", port)
    alice = client_proc(procs, "alice", port)
    watcher.expect(r"^\[..:..:..\] -!- alice joined$")
    alice.popen.send_signal(signal.SIGINT)
    assert alice.wait() == 0
    watcher.expect(r"^\[..:..:..\] -!- alice left$")  # it said goodbye rather than vanishing


def test_name_taken_exits_1_with_suggestion(
    procs: Callable[..., Proc], server_proc: tuple[Proc, int]
) -> None:
    _, port = server_proc
    client_proc(procs, "alice", port)
    second = procs("client", "--name", "alice", "--port", str(port))
    assert second.wait() == 1
    errors = second.all_stderr()
    assert len(errors) == 1
    assert errors[0].startswith("netchat: ")
    assert "name 'alice' is taken; try 'alice2'" in errors[0]
    assert second.rest_of_stdout() == []


def test_connection_refused_names_the_exact_server_command(procs: Callable[..., Proc]) -> None:
    port = free_port()
    client = procs("client", "--name", "alice", "--port", str(port))
    assert client.wait() == 1
    assert client.all_stderr() == [
        f"netchat: cannot connect to 127.0.0.1:{port}: connection refused"
        f" — is the server running? start one with: netchat server --port {port};"
        " if it serves UDP, join with --proto udp"
    ]


def test_server_sigterm_ends_clients_with_a_message(
    procs: Callable[..., Proc], server_proc: tuple[Proc, int]
) -> None:
    server, port = server_proc
    alice = client_proc(procs, "alice", port)
    bob = client_proc(procs, "bob", port)
    alice.expect(r"^\[..:..:..\] -!- bob joined$")
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    for proc in (alice, bob):
        proc.expect(r"^\[..:..:..\] -!- server is shutting down")
        assert proc.wait() != 0
        assert proc.expect_stderr(r"^netchat: ").startswith("netchat: the server shut down")


# --- interactive mode under a pseudo-terminal ----------------------------------------------


pty = pytest.importorskip("pty") if sys.platform != "win32" else None

# SGR parameters that set a colour: 30–37/39, 40–47/49, 90–97, 100–107, 38;…/48;… .
_SGR = re.compile(rb"\x1b\[([0-9;]*)m")


def colour_codes(output: bytes) -> list[bytes]:
    found = []
    for match in _SGR.finditer(output):
        params = [int(p) for p in match.group(1).split(b";") if p]
        if any(30 <= p <= 49 or 90 <= p <= 107 for p in params):
            found.append(match.group(0))
    return found


#: bob's prompt, whatever colour codes surround the name
PROMPT = rb"bob(\x1b\[[0-9;]*m)*>"


class Terminal:
    """A ``netchat client`` running under a pseudo-terminal."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        assert pty is not None
        master, slave = pty.openpty()
        self.master = master
        self.output = b""
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "netchat", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)

    def read_until(self, pattern: bytes, start: int = 0, timeout: float = WAIT) -> int:
        """Read until ``pattern`` (a regex) occurs at or after ``start``; its end offset."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (match := regex.search(self.output, start)) is None:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{pattern!r} not on the terminal; got {self.output[-400:]!r}"
            readable, _, _ = select.select([self.master], [], [], remaining)
            if readable:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    assert regex.search(self.output, start), f"{pattern!r} never came"
        return match.end()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def leave_with_ctrl_d(self) -> int:
        """Press Ctrl-D until the client exits; its exit code.

        Between two prompts the terminal is in cooked mode, where Ctrl-D is eaten by
        the line discipline instead of reaching the client: so press it again, a
        bounded number of times, rather than guessing when the next prompt is up.
        """
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the child may be gone already
                self.type(b"\x04")
            try:
                return self.popen.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
        raise AssertionError(f"Ctrl-D did not end the client; got {self.output[-400:]!r}")

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(WAIT)
        os.close(self.master)


def interactive_client(name: str, server: Server, **env: str) -> Terminal:
    term_env = netchat_env(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1", **env)
    _, port = server.address
    return Terminal(["client", "--name", name, "--port", str(port)], term_env)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_interactive_message_arrives_above_the_line_being_typed(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    terminal = interactive_client("bob", server)
    try:
        prompt_at = terminal.read_until(rb"Welcome, bob!")
        prompt_at = terminal.read_until(PROMPT, prompt_at)
        terminal.type(b"hel")
        typed_at = terminal.read_until(rb"hel", prompt_at)
        with Client.connect("alice", *server.address) as alice:
            alice.say("hey bob, look 👀")
            shown_at = terminal.read_until("look 👀".encode(), typed_at)
            # The bell rings for a mention, and the prompt comes back with "hel" intact.
            terminal.read_until(rb"\x07", shown_at)
            terminal.read_until(PROMPT + rb"[^\n]*?hel", shown_at)
            terminal.type(b"lo\r")
            deadline = time.monotonic() + WAIT
            while True:
                frame = alice.next_event(timeout=max(0.0, deadline - time.monotonic()))
                assert frame is not None, "bob's line never arrived"
                if isinstance(frame, Message) and frame.sender == "bob":
                    assert frame.text == "hello"
                    break
            assert terminal.leave_with_ctrl_d() == 0
        assert colour_codes(terminal.output)  # colour is on by default
    finally:
        terminal.close()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_interactive_no_color_env_disables_colour(make_server: ServerFactory) -> None:
    server = make_server()
    terminal = interactive_client("bob", server, NO_COLOR="1")
    try:
        start = terminal.read_until(rb"Welcome, bob!")
        with Client.connect("alice", *server.address) as alice:
            alice.say("colourless bob")
            terminal.read_until(rb"colourless bob", start)
        terminal.type(b"/quit\r")
        assert terminal.popen.wait(WAIT) == 0
        assert colour_codes(terminal.output) == []
    finally:
        terminal.close()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_interactive_server_gone_exits_1(make_server: ServerFactory) -> None:
    server = make_server()
    terminal = interactive_client("bob", server)
    try:
        start = terminal.read_until(rb"Welcome, bob!")
        terminal.read_until(PROMPT, start)
        server.shutdown("lunch break")
        terminal.read_until(rb"netchat: the server shut down: lunch break", start)
        assert terminal.popen.wait(WAIT) == 1
    finally:
        terminal.close()


# --- formatting, without a terminal --------------------------------------------------------


def test_name_colour_is_stable_and_case_blind() -> None:
    assert name_color("alice") == name_color("alice") == name_color("ALICE")
    assert len({name_color(f"user{i}") for i in range(50)}) > 3


def test_mentions_whole_words_only() -> None:
    assert mentions("hey Bob, look", "bob")
    assert mentions("bob: hi", "bob")
    assert not mentions("bobby is here", "bob")
    assert not mentions("anything", "")


def test_mention_is_highlighted_and_rings() -> None:
    frame = Message("alice", "hi bob", 0.0, 1)
    fragments, bell = format_event(frame, "bob", color=True)
    assert bell
    assert any("bg:" in style and text == "hi bob" for style, text, *_ in fragments)
    _, own_bell = format_event(Message("bob", "I am bob", 0.0, 2), "bob", color=True)
    assert not own_bell


def test_no_colour_formatting_has_no_colour_styles() -> None:
    fragments, _ = format_event(Message("alice", "hi bob", 0.0, 1), "bob", color=False)
    styles = " ".join(style for style, *_ in fragments)
    assert "ansi" not in styles and "bg:" not in styles
    assert "".join(text for _, text, *_ in fragments).endswith("<alice> hi bob\n")


def test_terminal_text_is_sanitised() -> None:
    fragments, _ = format_event(Message("eve", "a\x1b[2Jb\u202ec", 0.0, 1), "bob", color=True)
    text = "".join(text for _, text, *_ in fragments)
    assert "\x1b" not in text and "\u202e" not in text and "abc" in text


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_interactive_asks_for_a_missing_name(make_server: ServerFactory) -> None:
    server = make_server()
    env = netchat_env(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1", USER="")
    terminal = Terminal(["client", "--port", str(server.address[1])], env)
    try:
        asked_at = terminal.read_until(rb"Your name")
        terminal.type(b"zoe\r")
        terminal.read_until(rb"Welcome, zoe!", asked_at)
        assert server.hub.names() == ("zoe",)
        assert terminal.leave_with_ctrl_d() == 0
    finally:
        terminal.close()


# --- pipe mode: long lines, the end of input, foreign servers, hints ---------------------

STAMP = r"\[\d\d:\d\d:\d\d\] "


def assert_transcript(lines: list[str], patterns: list[str]) -> None:
    """Every line matches its pattern, in order, and there are no others."""
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_a_line_over_the_limit_is_refused_and_the_client_keeps_running(
    procs: Callable[..., Proc], server_proc: tuple[Proc, int]
) -> None:
    _, port = server_proc
    big = client_proc(procs, "big", port)
    big.send("before")
    big.expect(r"<big> before$")
    big.send_bytes(b"x" * 5_000_000 + b"\n")  # pasted or piped: 5 MB, one line
    big.expect(STAMP + r"! message not sent")
    big.send("after: Ёжик")
    big.expect(r"<big> after: Ёжик$")
    big.close_stdin()
    assert big.wait() == 0
    assert_transcript(
        [*big.seen, *big.rest_of_stdout()],
        [
            STAMP + r"-!- Welcome, big! Online \(1\): big\. Type /help for commands\.",
            STAMP + "<big> before",
            STAMP + r"! message not sent: longer than 65536 bytes, the most one line may hold;"
            r" shorten it",
            STAMP + "<big> after: Ёжик",
        ],
    )
    assert big.all_stderr() == []  # no traceback


def test_a_piped_client_prints_until_its_own_messages_are_echoed(
    procs: Callable[..., Proc],
) -> None:
    # The server lets 4 messages a second through: 25 lines take 6 s to be echoed,
    # longer than the old fixed wait after end of input.
    server = procs("server", "--port", "0", "--rate-limit", "4", "--burst", "1")
    line = server.expect_stderr(r"serving tcp on 127\.0\.0\.1:\d+")
    port = re.search(r":(\d+) ", line).group(1)  # type: ignore[union-attr]
    piper = procs("client", "--name", "piper", "--port", port)
    for number in range(1, 26):
        piper.send(f"строка {number:02d}")
    piper.close_stdin()
    assert piper.wait(timeout=30) == 0
    assert_transcript(
        piper.rest_of_stdout(),
        [STAMP + r"-!- Welcome, piper! Online \(1\): piper\. Type /help for commands\."]
        + [STAMP + f"<piper> строка {number:02d}" for number in range(1, 26)],
    )


def test_a_tcp_lab_relay_gets_plain_lines_from_the_cli(procs: Callable[..., Proc]) -> None:
    from tests.labservers import LabClient, RawRelay

    relay = RawRelay()
    bob = LabClient(relay.address)
    try:
        port = str(relay.address[1])
        alice = procs("client", "--name", "alice", "--port", port)
        alice.expect(r"does not speak netchat")  # after the default wait for a banner
        relay.wait_for_clients(2)
        bob.send("bob: привет")
        alice.expect(r"bob: привет$")
        alice.send("hello from netchat 👋")
        expected = "alice: hello from netchat 👋\n".encode()
        assert bob.receive_until(expected) == expected
        alice.close_stdin()
        assert alice.wait() == 0
        assert_transcript(
            [*alice.seen, *alice.rest_of_stdout()],
            [
                STAMP
                + re.escape(
                    f"-!- 127.0.0.1:{port} does not speak netchat (it did not greet us as a"
                    " netchat server does); switching to plain-line mode: what you type is"
                    " sent as 'alice: text'"
                ),
                STAMP + "bob: привет",
                STAMP + "alice: hello from netchat 👋",
            ],
        )
        assert alice.all_stderr() == []
        assert not any(b"{" in chunk for chunk in relay.received)
    finally:
        bob.close()
        relay.close()


def test_a_udp_client_at_a_tcp_server_is_told_about_proto(
    procs: Callable[..., Proc], server_proc: tuple[Proc, int]
) -> None:
    _, port = server_proc
    client = procs("--proto", "udp", "client", "--name", "alice", "--port", str(port))
    assert client.wait() == 1
    assert client.all_stderr() == [
        f"netchat: cannot reach udp://127.0.0.1:{port}: connection refused"
        " — a netchat TCP server listens on that port: leave out --proto udp"
    ]


def test_a_udp_client_with_nothing_there_gets_the_udp_server_command(
    procs: Callable[..., Proc],
) -> None:
    port = free_port()
    client = procs("--proto", "udp", "client", "--name", "alice", "--port", str(port))
    assert client.wait() == 1
    assert client.all_stderr() == [
        f"netchat: cannot reach udp://127.0.0.1:{port}: connection refused"
        f" — is the server running? start one with: netchat --proto udp server --port {port}"
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_interactive_client_asks_again_when_the_name_is_taken(make_server: ServerFactory) -> None:
    server = make_server()
    with Client.connect("alice", *server.address):
        terminal = interactive_client("alice", server)
        try:
            asked_at = terminal.read_until(rb"the name 'alice' is taken; try 'alice2'")
            terminal.read_until(rb"Your name: alice2", asked_at)
            terminal.type(b"\r")  # take the suggestion
            terminal.read_until(rb"Welcome, alice2!", asked_at)
            assert set(server.hub.names()) == {"alice", "alice2"}
            assert terminal.leave_with_ctrl_d() == 0
        finally:
            terminal.close()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_interactive_client_asks_again_when_the_name_is_invalid(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    term_env = netchat_env(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1")
    terminal = Terminal(["client", "--name", "<zoe>", "--port", str(server.address[1])], term_env)
    try:
        asked_at = terminal.read_until(rb"! .*name")
        terminal.read_until(rb"Your name: ", asked_at)
        terminal.type(b"\x15zoe\r")  # Ctrl-U clears the suggestion; type another
        terminal.read_until(rb"Welcome, zoe!", asked_at)
        assert server.hub.names() == ("zoe",)
        assert terminal.leave_with_ctrl_d() == 0
    finally:
        terminal.close()


def test_plain_lines_are_shown_after_the_time_and_sanitised() -> None:
    from netchat.console import event_lines
    from netchat.plain_client import PlainLine

    assert event_lines(PlainLine("bob: hi\x1b[2J there", 0.0), 0.0) == [
        f"[{time.strftime('%H:%M:%S', time.localtime(0))}] bob: hi there"
    ]
    # A netchat server stamps its lines for nc users already: no second stamp.
    assert event_lines(PlainLine("[12:00:01] <bob> hi", 0.0), 0.0) == ["[12:00:01] <bob> hi"]


def test_plain_lines_on_the_terminal_colour_the_speaker_and_ring_for_a_mention() -> None:
    from netchat.plain_client import PlainLine

    fragments, bell = format_event(PlainLine("bob: hi alice", 0.0), "alice", color=True)
    assert bell
    assert (f"bold {name_color('bob')}", "bob") in [(style, text) for style, text, *_ in fragments]
    text = "".join(text for _, text, *_ in fragments)
    assert text.endswith("] bob: hi alice\n")
    _, own = format_event(PlainLine("alice: hi alice", 0.0), "alice", color=True)
    assert not own
    fragments, _ = format_event(PlainLine("no speaker here", 0.0), "alice", color=False)
    assert "".join(text for _, text, *_ in fragments).endswith("] no speaker here\n")

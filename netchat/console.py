"""The console: drives any chat endpoint (a server client or a serverless peer).

Two modes, chosen by :func:`run_console`:

* **Pipe mode** (stdin or stdout is not a terminal, or ``--pipe``). Every line read
  from stdin is sent as typed; every received event is printed to stdout as the lines
  of :func:`~netchat.protocol.render.render_lines`, flushed at once, so scripts and
  tests can read the chat line by line. Stdout carries only chat events (``/stats``
  answers and "message not sent" refusals included); local errors such as a
  malformed ``/command`` go to stderr as ``! message``. A line longer than the
  protocol allows is never assembled in memory: it is refused once and skipped.
  End of input sends ``/quit``; the server handles our lines in order and closes
  after that ``/quit``, so the echoes of everything we sent arrive before the end.
  The console waits for them as long as they keep coming: it gives up only when
  neither an echo of ours nor an error has arrived for :data:`QUIT_WAIT` seconds.

* **Interactive mode** (a terminal). A prompt_toolkit prompt with in-memory history;
  incoming events are printed above the input line, which stays intact while typing.
  Lines carry timestamps, each name has a stable colour, and a message mentioning us
  is highlighted and rings the bell. ``NO_COLOR`` (any non-empty value) or
  ``--no-color`` disables colour. ``/quit``, Ctrl-D and Ctrl-C leave.

A name the server refuses (taken or invalid) is asked for again on a terminal, with
the reason and the server's suggestion as the default answer; pipe mode cannot ask.

Lines from a server that does not speak netchat (plain-line mode,
:class:`~netchat.plain_client.PlainLine`) are shown as they came, after the time.

Exit codes: 0 after ``/quit``, Ctrl-D, Ctrl-C or end of input; 1, with one line on
stderr, when the endpoint cannot start (refused, name taken, …) or the server goes
away.

prompt_toolkit is imported only by interactive mode, so pipe mode starts fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

from .client import TOO_LONG, Client
from .errors import CommandError, FrameTooLarge, NetchatError, Rejected, TransportError
from .hints import failure_message
from .plain_client import PlainLine
from .protocol.commands import split_command
from .protocol.frames import Error, Frame, Message, PrivateMessage
from .protocol.limits import MAX_FRAME_BYTES
from .protocol.render import ERROR, clock, render_lines
from .protocol.stream import LineReader
from .protocol.text import name_key, name_problem, sanitize_text
from .transport.base import ChatEndpoint, Proto

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.formatted_text import StyleAndTextTuples

#: After end of input or /quit: seconds without an echo of ours (or an error) after
#: which we stop waiting for the server to confirm by closing.
QUIT_WAIT = 3.0

#: Refusal codes after which an interactive console asks for another name.
NAME_REFUSALS = frozenset({"name-taken", "bad-name"})

_READ_BYTES = 65536
_STAMPED = re.compile(r"\[\d\d:\d\d:\d\d\] ")

#: Makes the same kind of endpoint under another name (to ask again after a refusal).
Renamer = Callable[[str], ChatEndpoint]


def color_allowed(no_color_flag: bool, environ: dict[str, str] | None = None) -> bool:
    """False when ``--no-color`` was given or ``NO_COLOR`` is set to a non-empty value."""
    env = os.environ if environ is None else environ
    return not no_color_flag and not env.get("NO_COLOR")


def start_failure_message(exc: NetchatError, target: tuple[Proto, str, int] | None = None) -> str:
    """The one line shown (after ``netchat:``) when an endpoint cannot start.

    Args:
        exc: what ``start`` raised.
        target: a client's (proto, host, port): the hint then names the exact
            command that starts the server it looked for.
    """
    return failure_message(exc, target)


def plain_line_text(line: PlainLine) -> str:
    """A line from a server that does not speak netchat, after the local time
    (unless the server stamped it already, as a netchat server does for nc users)."""
    text = sanitize_text(line.text)
    return text if _STAMPED.match(text) else f"[{clock(line.ts)}] {text}"


def event_lines(frame: Frame, now: float) -> list[str]:
    """The lines pipe mode prints for ``frame``, stamped ``now`` if it has no time."""
    if isinstance(frame, PlainLine):
        return [plain_line_text(frame)]
    return render_lines(frame, now)


def run_console(
    endpoint: ChatEndpoint,
    *,
    pipe: bool = False,
    color: bool = True,
    renamed: Renamer | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin_fd: int | None = None,
) -> int:
    """Start ``endpoint`` and run the chat until the user leaves or the session ends.

    Args:
        endpoint: a :class:`~netchat.client.Client` or a serverless peer.
        pipe: pipe mode even on a terminal.
        color: allow colour in interactive mode (see :func:`color_allowed`).
        renamed: makes the same endpoint under another name; given, an interactive
            console asks for another name when the server refuses one.
        stdout, stderr, stdin_fd: pipe-mode streams (the process's own by default).

    Returns:
        The process exit code: 0 after a normal end, 1 after a failure (already
        reported on stderr).
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    interactive = not pipe and os.isatty(fd) and out.isatty()
    console: _PipeConsole | _TerminalConsole
    if interactive:
        console = _TerminalConsole(endpoint, color)
    else:
        console = _PipeConsole(endpoint, out, err, fd)
    try:
        while True:
            try:
                console.endpoint.start(console.on_event, console.on_closed)
                break
            except Rejected as exc:
                another = None
                if isinstance(console, _TerminalConsole) and exc.code in NAME_REFUSALS:
                    another = console.ask_name(exc) if renamed is not None else None
                if renamed is None or another is None:
                    print(f"netchat: {_failure(exc, console.endpoint)}", file=err, flush=True)
                    return 1
                console.endpoint = renamed(another)
            except NetchatError as exc:
                print(f"netchat: {_failure(exc, console.endpoint)}", file=err, flush=True)
                return 1
        reason = console.run()
    except KeyboardInterrupt:
        reason = None  # Ctrl-C is a way to leave, not a failure
    finally:
        console.endpoint.close()
    if reason is not None:
        print(f"netchat: {sanitize_text(reason)}", file=err, flush=True)
        return 1
    return 0


def _failure(exc: NetchatError, endpoint: ChatEndpoint) -> str:
    target = None
    if isinstance(endpoint, Client):
        target = (endpoint.proto, endpoint.host, endpoint.port)
    return start_failure_message(exc, target)


def _is_quit(line: str) -> bool:
    command = split_command(line)
    return command is not None and command[0] == "quit"


def _answers_us(frame: Frame, me: str) -> bool:
    """True for the echo of something we said, or an error (which replaces an echo)."""
    if isinstance(frame, (Message, PrivateMessage)):
        return frame.sender == me
    return isinstance(frame, Error)


# --- pipe mode -------------------------------------------------------------------------


class _Eof:
    """Queued by the stdin reader at end of input."""


class _Closed:
    """Queued when the endpoint's session ends."""


class _PipeConsole:
    """Line in, line out; see the module docstring."""

    def __init__(self, endpoint: ChatEndpoint, out: TextIO, err: TextIO, stdin_fd: int) -> None:
        self.endpoint = endpoint
        self.out = out
        self.err = err
        self.stdin_fd = stdin_fd
        self.reason: str | None = None
        self._inbox: queue.Queue[str | _Eof | _Closed] = queue.Queue()
        self._write_lock = threading.Lock()
        self._last_progress = time.monotonic()  # our latest echo (or error) after EOF
        # The protocol is UTF-8; a pipe should carry it whatever the locale says.
        reconfigure = getattr(out, "reconfigure", None)
        if reconfigure is not None and getattr(out, "encoding", "utf-8").lower() != "utf-8":
            reconfigure(encoding="utf-8", errors="replace")

    def on_event(self, frame: Frame) -> None:
        if _answers_us(frame, self.endpoint.name):
            self._last_progress = time.monotonic()
        lines = event_lines(frame, time.time())
        if not lines:
            return
        with self._write_lock:
            for line in lines:
                self.out.write(line + "\n")
            self.out.flush()

    def on_closed(self, reason: str | None) -> None:
        self.reason = reason
        self._inbox.put(_Closed())

    def run(self) -> str | None:
        # stdin is read on a daemon thread with os.read (no buffered-file lock), so a
        # session that ends while it is blocked can still exit at once.
        threading.Thread(target=self._read_stdin, name="netchat-stdin", daemon=True).start()
        while True:
            item = self._inbox.get()
            if isinstance(item, _Closed):
                return self.reason
            if isinstance(item, _Eof):
                self._send("/quit")
                return self._await_close()
            if self._send(item) and _is_quit(item):
                return self._await_close()

    def _await_close(self) -> str | None:
        self._last_progress = time.monotonic()
        while not self.endpoint.wait(QUIT_WAIT / 10):
            if time.monotonic() - self._last_progress > QUIT_WAIT:
                break  # nothing of ours came back for a while: stop waiting
        return self.reason

    def _send(self, line: str) -> bool:
        try:
            self.endpoint.send_line(line)
        except CommandError as exc:
            print(f"! {exc}", file=self.err, flush=True)
            return False
        except TransportError:
            return False  # the session is ending; on_closed reports why
        return True

    def _read_stdin(self) -> None:
        # A LineReader, not a growing bytes object split again on every read: a
        # gigabyte without a newline costs one refusal and bounded memory, not
        # quadratic copying.
        reader = LineReader(MAX_FRAME_BYTES)
        while True:
            try:
                chunk = os.read(self.stdin_fd, _READ_BYTES)
            except OSError:
                chunk = b""
            if not chunk:
                break
            reader.feed(chunk)
            self._queue_lines(reader)
        reader.feed(b"\n")  # a last line without a newline is a line too
        self._queue_lines(reader)
        self._inbox.put(_Eof())

    def _queue_lines(self, reader: LineReader) -> None:
        while True:
            try:
                raw = reader.next_line()
            except FrameTooLarge:
                self.on_event(Error("too-large", TOO_LONG))
                continue
            if raw is None:
                return
            line = raw.decode("utf-8", errors="replace")
            if line.strip():
                self._inbox.put(line)


# --- interactive mode ------------------------------------------------------------------

#: Name colours: distinct on dark and light backgrounds, no black or white.
NAME_PALETTE = (
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansired",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
    "ansibrightcyan",
    "ansibrightred",
)


def name_color(name: str) -> str:
    """The colour of ``name``: the same in every session and on every machine.

    crc32, not ``hash()``, because ``hash()`` of a str changes with every process.
    """
    return NAME_PALETTE[zlib.crc32(name_key(name).encode("utf-8")) % len(NAME_PALETTE)]


def mentions(text: str, name: str) -> bool:
    """True when ``name`` occurs in ``text`` as a whole word, ignoring case."""
    if not name:
        return False
    pattern = rf"(?<![\w]){re.escape(name)}(?![\w])"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def format_event(frame: Frame, me: str, color: bool) -> tuple[StyleAndTextTuples, bool]:
    """The styled lines of ``frame`` for the terminal, and whether to ring the bell."""
    time_style = "ansibrightblack" if color else ""
    highlight = "bold ansiblack bg:ansiyellow" if color else "bold reverse"

    def who(name: str) -> tuple[str, str]:
        return (f"bold {name_color(name)}" if color else "bold", sanitize_text(name))

    if isinstance(frame, Message):
        text = sanitize_text(frame.text)
        mentioned = frame.sender != me and mentions(text, me)
        head: StyleAndTextTuples = [(time_style, f"[{clock(frame.ts)}] ")]
        if frame.action:
            head += [("", "* "), who(frame.sender), ("", " ")]
        else:
            head += [("", "<"), who(frame.sender), ("", "> ")]
        return [*head, (highlight if mentioned else "", text), ("", "\n")], mentioned
    if isinstance(frame, PrivateMessage):
        to_me = frame.to == me and frame.sender != me
        private_style = "italic ansimagenta" if color else "italic"
        return [
            (time_style, f"[{clock(frame.ts)}] "),
            ("", "<"),
            who(frame.sender),
            (private_style, " -> "),
            who(frame.to),
            ("", "> "),
            (private_style, sanitize_text(frame.text)),
            ("", "\n"),
        ], to_me
    if isinstance(frame, PlainLine):
        text = plain_line_text(frame)
        stamp, _, said = text.partition("] ")
        speaker, colon, rest = said.partition(": ")
        mentioned = speaker != me and mentions(rest, me)
        body: StyleAndTextTuples = [("", said)]
        if colon and name_problem(speaker) is None:  # "NAME: text", as lab clients send
            body = [who(speaker), ("", ": "), (highlight if mentioned else "", rest)]
        return [(time_style, f"{stamp}] "), *body, ("", "\n")], mentioned
    fragments: StyleAndTextTuples = []
    for line in render_lines(frame, time.time()):
        stamp, _, rest = line.partition("] ")  # every rendered line starts with its time
        is_error = rest.startswith(ERROR)
        notice_style = ("ansired" if is_error else "ansibrightblack") if color else ""
        fragments += [(time_style, f"{stamp}] "), (notice_style, rest), ("", "\n")]
    return fragments, False


@contextlib.contextmanager
def _logging_to(old: TextIO, new: TextIO) -> Iterator[None]:
    """Point the root logger's handlers that write to ``old`` at ``new`` meanwhile.

    Handlers keep the stream they were created with, so patch_stdout's proxy alone
    would not catch log records: they would be written across the input line.
    """
    moved = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is old
    ]
    for handler in moved:
        handler.setStream(new)
    try:
        yield
    finally:
        for handler in moved:
            handler.setStream(old)


class _TerminalConsole:
    """A prompt_toolkit prompt with the chat printed above it."""

    def __init__(self, endpoint: ChatEndpoint, color: bool) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory
        from prompt_toolkit.output import ColorDepth

        self.endpoint = endpoint
        self.color = color
        self.reason: str | None = None
        self._ended = threading.Event()
        self._color_depth = ColorDepth.DEPTH_8_BIT if color else ColorDepth.DEPTH_1_BIT
        self.session: PromptSession[str] = PromptSession(
            history=InMemoryHistory(), color_depth=self._color_depth
        )
        # A session may end while no prompt is running (between two prompts): the
        # next prompt then leaves as soon as it has drawn itself.
        self.session.app.after_render += self._exit_if_ended

    def on_event(self, frame: Frame) -> None:
        fragments, bell = format_event(frame, self.endpoint.name, self.color)
        if fragments:
            self._print(fragments, bell)

    def on_closed(self, reason: str | None) -> None:
        self.reason = reason
        self._ended.set()
        app = self.session.app
        loop = app.loop
        if app.is_running and loop is not None:
            loop.call_soon_threadsafe(self._exit_if_ended, app)

    def run(self) -> str | None:
        from prompt_toolkit.patch_stdout import patch_stdout

        real_stderr = sys.stderr
        # patch_stdout keeps stray prints and log records from tearing the prompt.
        with patch_stdout(raw=True), _logging_to(real_stderr, sys.stderr):
            while not self._ended.is_set():
                try:
                    line = self.session.prompt(self._prompt_text)
                except (EOFError, KeyboardInterrupt):
                    return self._quit()
                if self._ended.is_set():
                    break
                if line is None or not line.strip():
                    continue
                if _is_quit(line):
                    return self._quit(line)
                try:
                    self.endpoint.send_line(line)
                except (CommandError, TransportError) as exc:
                    self._print([("ansired" if self.color else "", f"! {exc}\n")], False)
        return self.reason

    def ask_name(self, refusal: Rejected) -> str | None:
        """Ask for another name after ``refusal``; None if the user gives up (Ctrl-C/D)."""
        from prompt_toolkit import prompt

        self._print([("ansired" if self.color else "", f"! {refusal}\n")], False)
        try:
            answer = prompt("Your name: ", default=refusal.suggestion or "")
        except (EOFError, KeyboardInterrupt):
            return None
        return answer.strip() or None

    def _quit(self, line: str = "/quit") -> str | None:
        # Already gone: nothing to say goodbye to.
        with contextlib.suppress(CommandError, TransportError):
            self.endpoint.send_line(line)
        self.endpoint.wait(QUIT_WAIT)
        return self.reason

    def _prompt_text(self) -> StyleAndTextTuples:
        name = self.endpoint.name
        return [(f"bold {name_color(name)}" if self.color else "bold", name), ("", "> ")]

    def _print(self, fragments: StyleAndTextTuples, bell: bool) -> None:
        from prompt_toolkit import print_formatted_text
        from prompt_toolkit.formatted_text import FormattedText

        if bell:
            fragments = [*fragments, ("", "\a")]
        # Safe from any thread: with a prompt running it prints above it, redrawing the
        # input line afterwards; otherwise it prints directly.
        print_formatted_text(FormattedText(fragments), end="", color_depth=self._color_depth)

    def _exit_if_ended(self, app: object) -> None:
        application = self.session.app
        future = application.future
        if self._ended.is_set() and application.is_running and future and not future.done():
            application.exit(result="")

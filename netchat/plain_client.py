"""Plain-line chat: netchat's client talking to a server that does not speak netchat.

Strategy
--------
The servers students write for the lab relay raw text: a TCP server forwards each
client's bytes to the others, a UDP server forwards each datagram. Neither greets,
frames or names anyone. :class:`PlainChat` is the chat endpoint for them, over a
:class:`RawTransport` (TCP: :class:`~netchat.transport.tcp_client.TcpClientTransport`;
UDP: :class:`~netchat.transport.udp_client.PlainUdpTransport`):

- What the user types goes out as UTF-8 text prefixed with ``NAME: ``, as the lab's
  own clients send it, so everyone on a raw relay sees who talks (a netchat server
  removes the prefix again from plain clients). Over TCP a message ends with ``\\n``;
  over UDP a message is one datagram with no newline, exactly as lab clients send.
- What arrives becomes lines (:class:`~netchat.protocol.plainlines.PlainLineSplitter`
  for a stream, one datagram per message for UDP), sanitised for the terminal and
  handed on as :class:`PlainLine` events stamped with the local time.
- What we say is shown locally as it was sent: a typical relay sends a message to
  everyone but its sender.
- Commands that only a netchat server understands are refused locally, with the
  reason, instead of being sent as text: ``/msg`` must never end up broadcast.
  ``/nick`` changes the prefix, ``/me`` sends ``* NAME action``, ``/stats`` and
  ``/help`` are answered locally and ``/quit`` leaves.

One receiver thread reads; it also turns bytes that stay without a newline for the
idle gap into a line. It calls ``on_closed`` exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from .errors import CommandError, ConnectError, ConnectionClosed, NetchatError, Rejected
from .events import call_handler
from .protocol.commands import split_command
from .protocol.frames import Error, Frame, Info
from .protocol.limits import MAX_DATAGRAM_BYTES, MAX_FRAME_BYTES
from .protocol.plainlines import IDLE_GAP, PlainLineSplitter, datagram_lines
from .protocol.text import name_problem, sanitize_text
from .transport.base import ClosedHandler, EventHandler

log = logging.getLogger("netchat.plain")

PLAIN_HELP = """\
Plain-line mode: this server does not speak netchat, so it only relays text.
  TEXT                 send "NAME: TEXT" to everyone
  /me ACTION           send "* NAME ACTION"
  /nick NEW            send as NEW from now on
  /stats               what your connection has sent and received
  /help                this help
  /quit                leave
/who and /msg need a netchat server. Start a line with // to send a line that begins with /."""


@dataclass(frozen=True)
class PlainLine(Frame):
    """A line of text from a server that does not speak netchat (never on the wire).

    ``text`` is sanitised; ``ts`` is when it arrived (or was sent), by the local clock.
    """

    TYPE: ClassVar[str] = "plain-line"

    text: str
    ts: float


class RawTransport(Protocol):
    """Bytes to and from a server: what a plain-line session needs of TCP or UDP."""

    def connect(self) -> None:
        """Open the connection. Raises :class:`~netchat.errors.ConnectError`."""
        ...

    def send_bytes(self, data: bytes) -> None:
        """Send ``data`` (TCP: part of the stream; UDP: one datagram)."""
        ...

    def receive_bytes(self, timeout: float | None = None) -> bytes | None:
        """The next bytes (UDP: one datagram); ``None`` after ``timeout``.

        Raises:
            ConnectionClosed: the server closed the connection, or close() was called.
        """
        ...

    def finish_sending(self) -> None:
        """Say we will send nothing more (TCP: FIN); reading goes on."""
        ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, int]: ...


def plural(count: int, word: str, plural_word: str | None = None) -> str:
    """``1 line``, ``2 lines``."""
    return f"{count} {word if count == 1 else plural_word or word + 's'}"


def size_text(count: int) -> str:
    """``812 bytes``, ``1.2 KiB``, ``3.4 MiB``."""
    if count < 1024:
        return plural(count, "byte")
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


class PlainChat:
    """A :class:`~netchat.transport.base.ChatEndpoint` for a server that relays text.

    Args:
        name: the name put in front of every line we send.
        transport: the raw connection; connected by :meth:`start` unless ``connected``.
        datagrams: True for UDP (one message per datagram, no newline).
        notice: said to the user first (why plain-line mode is on).
        received: bytes the server sent before this session took over (TCP).
        connected: ``transport`` is already connected.
        idle_gap: seconds after which bytes without a newline are shown as a line.
    """

    def __init__(
        self,
        name: str,
        transport: RawTransport,
        *,
        datagrams: bool = False,
        notice: str = "",
        received: bytes = b"",
        connected: bool = False,
        idle_gap: float = IDLE_GAP,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._name = name.strip()
        self._transport = transport
        self._datagrams = datagrams
        self._notice = notice
        self._received = received
        self._connected = connected
        self._splitter = PlainLineSplitter(idle_gap)
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_event: EventHandler | None = None
        self._on_closed: ClosedHandler | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._quitting = False
        self._finished = False
        self._ended = threading.Event()
        self._unreachable_said = False  # UDP: "nothing answers" is said once per silence
        self._lines_sent = 0
        self._lines_received = 0

    # --- ChatEndpoint ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def start(self, on_event: EventHandler, on_closed: ClosedHandler) -> None:
        """Connect (unless already connected), say why plain-line mode is on, and start
        the receiver thread.

        Raises:
            Rejected: the name cannot be put in front of a line (``bad-name``).
            ConnectError: the server cannot be reached.
        """
        if self._thread is not None:
            raise NetchatError("plain-line session already started")
        problem = name_problem(self._name)
        if problem is not None:
            raise Rejected(problem, code="bad-name")
        if not self._connected:
            self._transport.connect()
        self._on_event = on_event
        self._on_closed = on_closed
        if self._notice:
            self._emit(Info(self._notice))
        self._show(self._splitter.feed(self._received, self._clock()))
        self._thread = threading.Thread(
            target=self._receive_loop, name=f"netchat-plain-{self._name}", daemon=True
        )
        self._thread.start()

    def send_line(self, line: str) -> None:
        """Act on what the user typed; see the module docstring.

        Raises:
            CommandError: a command this mode cannot carry out, or a malformed one.
            ConnectionClosed: the session has ended.
        """
        command = split_command(line)
        if command is None:
            self.say(line[1:] if line.startswith("//") else line)
            return
        word, args = command
        if word == "quit":
            self.quit()
        elif word == "stats":
            self._emit(Info(self._stats_text()))
        elif word == "help":
            self._emit(Info(PLAIN_HELP))
        elif word == "me":
            if not args:
                raise CommandError("usage: /me ACTION")
            self._send_text(f"* {self._name} {args}")
        elif word == "nick":
            self._rename(args)
        elif word in ("who", "msg"):
            raise CommandError(f"/{word} needs a netchat server; this server only relays text")
        else:
            raise CommandError(f"unknown command /{word}; type /help for the list")

    def say(self, text: str) -> None:
        """Send ``text`` to everyone as ``NAME: text``.

        Raises:
            ConnectionClosed: the session has ended.
        """
        if text.strip():
            self._send_text(f"{self._name}: {text}")

    def quit(self) -> None:
        """Leave. Over TCP we stop sending and the session ends when the server closes
        (a relay answers our FIN so; what it sends until then is still shown, and
        :meth:`close` bounds the wait). A datagram chat has no goodbye: it ends now."""
        with self._lock:
            if self._quitting:
                return
            self._quitting = True
        if self._datagrams:
            self._transport.close()
        else:
            self._transport.finish_sending()

    def stats(self) -> dict[str, int]:
        """Lines sent and received, and the transport's byte (and round-trip) counters."""
        return {
            "sent": self._lines_sent,
            "received": self._lines_received,
            **self._transport.stats(),
        }

    def _stats_text(self) -> str:
        """``/stats`` for people: lines, bytes and (TCP) round-trip time."""
        stats = self.stats()
        text = (
            f"stats (plain {'udp' if self._datagrams else 'tcp'}):"
            f" {plural(stats['sent'], 'line')} sent, {stats['received']} received;"
            f" {size_text(stats['bytes_out'])} out, {size_text(stats['bytes_in'])} in"
        )
        if stats.get("rtt_us"):
            text += f"; round trip {stats['rtt_us'] / 1000:.2f} ms"
        return text

    def close(self) -> None:
        """Leave now and stop the receiver thread; ``on_closed(None)``. Idempotent."""
        with self._lock:
            self._quitting = True
        self._transport.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        if thread is None:
            self._finish(None)

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    # --- internals -------------------------------------------------------------------

    def _rename(self, new: str) -> None:
        new = new.strip()
        if not new:
            raise CommandError("usage: /nick NEW")
        problem = name_problem(new)
        if problem is not None:
            raise CommandError(problem)
        self._name = new
        self._emit(Info(f"you are now {new}: your lines are sent as '{new}: text'"))

    def _send_text(self, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        if not self._datagrams:
            data += b"\n"
        limit = MAX_DATAGRAM_BYTES if self._datagrams else MAX_FRAME_BYTES
        if len(data) > limit:
            holds = "a UDP datagram holds" if self._datagrams else "a line holds at most"
            self._emit(
                Error("too-large", f"message not sent: {len(data)} bytes, but {holds} {limit}")
            )
            return
        if self._quitting:
            raise ConnectionClosed("not connected")
        try:
            self._transport.send_bytes(data)
        except ConnectError as exc:  # UDP: nothing listens (yet); the datagram is gone
            self._say_unreachable(str(exc))
            return
        self._lines_sent += 1
        self._emit(PlainLine(sanitize_text(text), self._wall_clock()))

    def _say_unreachable(self, text: str) -> None:
        # Both threads may hear of it (a send, and the receiver's poll): say it once.
        with self._lock:
            if self._unreachable_said:
                return
            self._unreachable_said = True
        self._emit(Error("unreachable", text))

    def _show(self, lines: list[str]) -> None:
        now = self._wall_clock()
        for line in lines:
            self._lines_received += 1
            self._emit(PlainLine(sanitize_text(line), now))

    def _receive_loop(self) -> None:
        reason: str | None = None
        try:
            while True:
                deadline = self._splitter.idle_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._clock())
                try:
                    data = self._transport.receive_bytes(timeout)
                except ConnectError as exc:  # UDP: a datagram bounced; the session goes on
                    self._say_unreachable(str(exc))
                    continue
                if data is None:
                    self._show(self._splitter.flush_idle(self._clock()))
                elif self._datagrams:
                    with self._lock:
                        self._unreachable_said = False  # it answers: say it again if it stops
                    self._show(datagram_lines(data))
                else:
                    self._show(self._splitter.feed(data, self._clock()))
        except ConnectionClosed as exc:
            self._show(self._splitter.flush())
            reason = None if self._quitting else str(exc)
        except Exception:  # a bug must not leave the session without an end
            log.exception("plain-line receiver failed")
            reason = "internal error in the plain-line receiver"
        with contextlib.suppress(NetchatError):
            self._transport.close()
        self._finish(reason)

    def _finish(self, reason: str | None) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        call_handler(self._on_closed, reason, log)
        self._ended.set()

    def _emit(self, frame: Frame) -> None:
        call_handler(self._on_event, frame, log)

"""Raw-socket test clients: a plain ``nc``-like line client and a structured JSON client.

They talk to a real server on 127.0.0.1 and wait with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from typing import Any

from netchat.client import Client
from netchat.protocol import datagram as dg
from netchat.protocol.frames import Frame, Hello, decode_frame, encode_frame

WAIT = 10.0  # generous: shared CI machines are noisy, and a pass returns at once


def raw_join(
    address: tuple[str, int], name: str, proto: str = ""
) -> tuple[socket.socket, dg.Accept]:
    """Join a UDP (or, with ``proto="rudp"``, an rudp) relay by hand, to misbehave
    afterwards: a connected socket, and the relay's ACCEPT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    sock.connect(address)
    sock.send(dg.encode_hello(dg.NO_COOKIE))
    cookie = dg.decode_datagram(sock.recv(2048))
    assert isinstance(cookie, dg.Cookie)
    sock.send(dg.encode_hello(cookie.cookie, encode_frame(Hello(name, proto=proto))))
    while True:
        answer = dg.decode_datagram(sock.recv(2048))
        if isinstance(answer, dg.Accept):
            return sock, answer


def start_in_background(client: Client) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``client.start`` (which blocks until joined) on a thread of its own; what it
    raises is put in the returned list, for the test to inspect after joining."""
    failure: list[BaseException] = []

    def join() -> None:
        try:
            client.start(lambda frame: None, lambda reason: None)
        except BaseException as exc:
            failure.append(exc)

    joiner = threading.Thread(target=join)
    joiner.start()
    return joiner, failure


class LineClient:
    """A connection that reads text lines (``\\r\\n`` stripped), like ``nc``."""

    def __init__(
        self, address: tuple[str, int], timeout: float = WAIT, source: str | None = None
    ) -> None:
        """Connect to ``address``; from the local address ``source`` if given."""
        self.sock = socket.create_connection(
            address, timeout=timeout, source_address=None if source is None else (source, 0)
        )
        self.timeout = timeout
        self._buffer = b""
        self.lines: list[str] = []  # every line received so far, in order

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_line(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8") + b"\n")

    def _fill(self, deadline: float) -> bool:
        """Receive once (bounded by ``deadline``); False on EOF or timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return False
        if not data:
            return False
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines += [line.rstrip(b"\r").decode("utf-8") for line in complete]
        return True

    def expect(self, pattern: str, timeout: float | None = None) -> str:
        """Wait for (and consume up to) the first new line matching ``pattern``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        regex = re.compile(pattern)
        while True:
            while self.lines:
                line = self.lines.pop(0)
                if regex.search(line):
                    return line
            if not self._fill(deadline):
                raise AssertionError(f"no line matching {pattern!r} within the deadline")

    def collect(self, duration: float) -> list[str]:
        """All lines arriving within ``duration`` seconds (for checking absences)."""
        deadline = time.monotonic() + duration
        while self._fill(deadline):
            pass
        lines, self.lines = self.lines, []
        return lines

    def wait_closed(self, timeout: float = WAIT) -> bool:
        """True once the server closed the connection (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            remaining = deadline - time.monotonic()
            self.sock.settimeout(max(remaining, 0.01))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not data:
                return True
            self._buffer = (self._buffer + data)[-65536:]  # only the tail matters here
        return False

    def close(self) -> None:
        """Close cleanly: send FIN and wait for the server's close, so no RST is sent.

        (Closing a socket with unread data makes the kernel send a RST instead, which
        the server rightly reports as a lost connection.)
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.wait_closed(timeout=2.0)
        except OSError:
            pass
        self.sock.close()

    def discard_incoming(self) -> threading.Thread:
        """Read and throw away everything from now on, on a daemon thread."""

        def drain() -> None:
            try:
                while self.sock.recv(65536):
                    pass
            except OSError:
                pass

        self.sock.settimeout(None)
        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        return thread

    def reset(self) -> None:
        """Close abruptly with a TCP RST, as a crashed client or pulled cable would."""
        self.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        self.sock.close()


def plain_client(address: tuple[str, int], name: str) -> LineClient:
    """A joined ``nc``-style client."""
    client = LineClient(address)
    client.expect("Type your name")
    client.send_line(name)
    client.expect(rf"Welcome, {re.escape(name)}!")
    return client


class FrameClient(LineClient):
    """A structured client speaking JSON frames, skipping the text greeting."""

    def send_frame(self, frame: Frame) -> None:
        self.sock.sendall(encode_frame(frame))

    def send_json(self, body: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(body, ensure_ascii=False).encode() + b"\n")

    def next_frame(self, kind: type[Frame] | None = None, timeout: float | None = None) -> Frame:
        """The next frame (of type ``kind`` if given; others are skipped)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            while self.lines:
                line = self.lines.pop(0)
                if not line.startswith("{"):
                    continue  # the greeting
                frame = decode_frame(line)
                if kind is None or isinstance(frame, kind):
                    return frame
            if not self._fill(deadline):
                raise AssertionError(f"no {kind.__name__ if kind else 'frame'} within the deadline")


def frame_client(address: tuple[str, int], name: str) -> FrameClient:
    """A joined structured client."""
    from netchat.protocol.frames import Welcome

    client = FrameClient(address)
    client.send_frame(Hello(name))
    welcome = client.next_frame(Welcome)
    assert isinstance(welcome, Welcome) and welcome.name == name
    return client

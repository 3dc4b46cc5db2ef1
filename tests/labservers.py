"""Small emulations of the programs students write for the lab (socket + threading).

They behave as the typical lab code does — no greeting, no framing, raw relaying —
and record every byte they receive, so tests can check that netchat's client never
sends them anything but the user's text. All on 127.0.0.1 with ephemeral ports;
every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

WAIT = 10.0


class RawRelay:
    """The typical lab TCP server: relays each ``recv(1024)`` chunk to all other clients.

    ``greeting`` (if any) is sent to each new client first, as some lab servers do.
    """

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # so that close() is seen (a closed fd does not wake accept)
        self.stop = threading.Event()
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.clients: list[socket.socket] = []
        self.received: list[bytes] = []  # every chunk, from anyone, in order
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self.threads.append(accept)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            if self.greeting:
                conn.sendall(self.greeting)
            with self.lock:
                self.clients.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(1024)
            except OSError:
                data = b""
            if not data:
                break
            with self.lock:
                self.received.append(data)
                others = [c for c in self.clients if c is not conn]
            for other in others:
                with contextlib.suppress(OSError):
                    other.sendall(data)
        with self.lock:
            self.clients.remove(conn)
        conn.close()

    def client_count(self) -> int:
        with self.lock:
            return len(self.clients)

    def wait_for_clients(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.client_count() != count:
            assert time.monotonic() < deadline, f"relay has {self.client_count()} clients"
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        self.threads[0].join(WAIT)
        self.listener.close()
        with self.lock:
            clients = list(self.clients)
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(WAIT)


class LabClient:
    """The typical lab TCP client: sends without newlines, keeps what it receives."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=WAIT)
        self.data = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def receive_until(self, expected: bytes) -> bytes:
        """Read until everything received so far is at least ``expected`` long."""
        deadline = time.monotonic() + WAIT
        while len(self.data) < len(expected):
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            assert chunk, f"closed after {self.data!r}"
            self.data += chunk
        return self.data

    def close(self) -> None:
        self.sock.close()


class LabUdpServer:
    """The typical lab UDP server: learns addresses from datagrams, relays each one to
    every other known address (or to everyone, with ``echo``)."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # so that close() is seen
        self.stop = threading.Event()
        self.address: tuple[str, int] = self.sock.getsockname()
        self.known: list[tuple[str, int]] = []
        self.received: list[tuple[tuple[str, int], bytes]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, sender = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.received.append((sender, data))
                if sender not in self.known:
                    self.known.append(sender)
                targets = [a for a in self.known if self.echo or a != sender]
            for target in targets:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, target)

    def from_(self, sender: tuple[str, int]) -> list[bytes]:
        with self.lock:
            return [data for who, data in self.received if who == sender]

    def wait_for_known(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            with self.lock:
                if len(self.known) >= count:
                    return
            assert time.monotonic() < deadline, "the lab UDP server never heard enough clients"
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        self.sock.close()

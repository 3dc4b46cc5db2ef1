"""Baseline line chat server: one thread, one ``selectors`` loop, pure Python.

It exists only as a yardstick for ``benchmarks/fanout.py``: the classic
non-blocking design a competent person would write, so that netchat's numbers
can be read against something honest. The first line a client sends is its
name; every later line is broadcast as ``<name> text`` to every named client,
the sender included (as netchat does).

Run: ``python benchmarks/select_chat_server.py --port P``
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import socket

MAX_LINE = 64 * 1024  # a client that sends this much without a newline is cut off
MAX_OUTBUF = 16 * 1024 * 1024  # a client this far behind is dropped, not buffered forever
GREETING = b"* Welcome! Send your name as the first line.\n"


class Client:
    __slots__ = ("inbuf", "name", "outbuf", "sock", "want_write")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray(GREETING)
        self.name: bytes | None = None
        self.want_write = False  # whether EVENT_WRITE is currently registered


class ChatServer:
    def __init__(self, host: str, port: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server((host, port), backlog=4096)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.clients: dict[socket.socket, Client] = {}
        # Clients whose outbuf grew during this loop pass: flushed once at the end
        # of the pass, so many broadcasts coalesce into a single send() each.
        self.dirty: set[Client] = set()

    def serve_forever(self) -> None:
        while True:
            for key, mask in self.sel.select():
                if key.data is None:
                    self.accept()
                    continue
                client: Client = key.data
                if client.sock not in self.clients:  # dropped earlier in this pass
                    continue
                if mask & selectors.EVENT_READ:
                    self.read(client)
                if mask & selectors.EVENT_WRITE and client.sock in self.clients:
                    self.dirty.add(client)
            self.flush_dirty()

    def accept(self) -> None:
        for _ in range(256):  # bounded: drain the backlog without starving clients
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = Client(sock)
            self.clients[sock] = client
            self.sel.register(sock, selectors.EVENT_READ, client)
            self.dirty.add(client)

    def read(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        client.inbuf += data
        cut = client.inbuf.rfind(b"\n")
        if cut < 0:
            if len(client.inbuf) > MAX_LINE:
                self.drop(client)
            return
        lines = bytes(client.inbuf[:cut]).split(b"\n")
        del client.inbuf[: cut + 1]
        for line in lines:
            self.handle_line(client, line.rstrip(b"\r"))

    def handle_line(self, client: Client, line: bytes) -> None:
        if client.name is None:
            client.name = line.strip()[:32] or b"anon"
            self.broadcast(b"* " + client.name + b" joined\n")
        else:
            self.broadcast(b"<" + client.name + b"> " + line + b"\n")

    def broadcast(self, msg: bytes) -> None:
        for client in self.clients.values():
            if client.name is not None:
                client.outbuf += msg
                self.dirty.add(client)

    def flush_dirty(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for client in dirty:
            if client.sock in self.clients:
                self.flush(client)

    def flush(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.outbuf) if client.outbuf else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.drop(client)
            return
        del client.outbuf[:sent]
        if len(client.outbuf) > MAX_OUTBUF:
            self.drop(client)
            return
        want_write = bool(client.outbuf)
        if want_write != client.want_write:  # only touch epoll when the interest changes
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self.sel.modify(client.sock, events, client)
            client.want_write = want_write

    def drop(self, client: Client) -> None:
        if self.clients.pop(client.sock, None) is None:
            return
        self.sel.unregister(client.sock)
        client.sock.close()
        if client.name is not None:
            self.broadcast(b"* " + client.name + b" left\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ChatServer(args.host, args.port)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop it
        server.serve_forever()


if __name__ == "__main__":
    main()

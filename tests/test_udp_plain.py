"""The lab's own UDP clients on a netchat relay: ``--accept-plain`` (issue 7).

A lab client is emulated as the course writes it: a datagram socket on an ephemeral
port that sends ``NAME: text`` and prints whatever datagrams arrive.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from netchat.client import Client
from netchat.protocol.frames import Joined, Message
from netchat.transport import udp_relay
from netchat.transport.base import Proto
from netchat.transport.udp_relay import PLAIN_HINT, plain_source_allowed
from tests.conftest import ServerFactory

WAIT = 10.0
STAMP = r"\[\d\d:\d\d:\d\d\] "


class LabUdpClient:
    """``sock.sendto(text.encode(), server)``, and ``print(sock.recv(1024))`` in a loop."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.received: list[bytes] = []

    def send(self, text: str) -> None:
        self.sock.sendto(text.encode(), self.server)

    def receive(self, count: int, timeout: float = WAIT) -> list[bytes]:
        """Datagrams until ``count`` have arrived in all (or the deadline)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                self.received.append(self.sock.recv(1024))
            except TimeoutError:
                break
        return self.received

    def quiet_for(self, seconds: float) -> list[bytes]:
        """Whatever else arrives within ``seconds`` (for checking absences)."""
        deadline = time.monotonic() + seconds
        extra = []
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                extra.append(self.sock.recv(1024))
            except TimeoutError:
                break
        return extra

    def close(self) -> None:
        self.sock.close()


def lines(datagrams: list[bytes]) -> list[str]:
    return [re.sub(f"^{STAMP}", "", d.decode()) for d in datagrams]


def test_a_lab_udp_client_chats_with_netchat_clients(make_server: ServerFactory) -> None:
    server = make_server(proto=Proto.udp, accept_plain=True)
    with Client.connect("bob", *server.address, Proto.udp) as bob:
        assert bob.next_event(timeout=WAIT) is not None  # bob's welcome
        lab = LabUdpClient(server.address)
        try:
            lab.send("alice: привет, это лаба")
            joined = bob.next_event(timeout=WAIT)
            said = bob.next_event(timeout=WAIT)
            assert isinstance(joined, Joined) and joined.name == "alice"
            assert isinstance(said, Message)
            assert (said.sender, said.text) == ("alice", "привет, это лаба")
            bob.say("hi alice 👋")
            # Each datagram is one readable line ending in a newline, time first.
            got = lab.receive(3)
            assert all(d.endswith(b"\n") and re.match(STAMP, d.decode()) for d in got)
            assert lines(got) == [
                "-!- Welcome, alice! Online (2): bob, alice. Type /help for commands.\n",
                "<alice> привет, это лаба\n",
                "<bob> hi alice 👋\n",
            ]
            lab.send("alice: /who")
            assert lines(lab.receive(4))[3] == "-!- Online (2): bob, alice\n"
            assert lab.quiet_for(0.3) == []
        finally:
            lab.close()


def test_a_plain_sender_without_a_name_is_a_guest(make_server: ServerFactory) -> None:
    server = make_server(proto=Proto.udp, accept_plain=True)
    with Client.connect("bob", *server.address, Proto.udp) as bob:
        assert bob.next_event(timeout=WAIT) is not None  # bob's welcome
        lab = LabUdpClient(server.address)
        try:
            lab.send("hello from a program with no name")
            joined = bob.next_event(timeout=WAIT)
            said = bob.next_event(timeout=WAIT)
            assert isinstance(joined, Joined) and joined.name == "guest1"
            assert isinstance(said, Message) and said.text == "hello from a program with no name"
        finally:
            lab.close()


def test_without_accept_plain_a_lab_client_gets_a_short_hint_and_no_seat(
    make_server: ServerFactory,
) -> None:
    server = make_server(proto=Proto.udp)
    lab = LabUdpClient(server.address)
    try:
        long_enough = "alice: " + "x" * len(PLAIN_HINT)
        lab.send(long_enough)
        assert lab.receive(1) == [PLAIN_HINT]
        lab.send("hi")  # smaller than the hint: never answered with more than it sent
        assert lab.quiet_for(0.3) == []
        assert server.hub.names() == ()
        assert server.transport.stats()["plain_refused"] == 2  # type: ignore[attr-defined]
    finally:
        lab.close()


def test_a_source_outside_the_scope_is_refused(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests only ever use loopback, so the scope check is made to see 127.0.0.1 as a
    # public address here; the check itself is tested on real addresses below.
    monkeypatch.setattr(udp_relay, "plain_source_allowed", lambda host, anywhere: anywhere)
    server = make_server(proto=Proto.udp, accept_plain=True)
    lab = LabUdpClient(server.address)
    try:
        lab.send("mallory: " + "x" * 60)
        assert lab.receive(1) == [PLAIN_HINT]
        assert server.hub.names() == ()
    finally:
        lab.close()
    wide = make_server(proto=Proto.udp, accept_plain=True, accept_plain_anywhere=True)
    lab = LabUdpClient(wide.address)
    try:
        lab.send("anyone: hi")
        assert lines(lab.receive(1))[0].startswith("-!- Welcome, anyone!")
    finally:
        lab.close()


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("192.168.0.20", True),
        ("172.16.5.4", True),
        ("169.254.1.1", True),
        ("fe80::1", True),
        ("fd00::5", True),
        ("8.8.8.8", False),
        ("203.0.114.7", False),
        ("2001:4860::8888", False),
        ("not an address", False),
    ],
)
def test_the_default_scope_is_the_lan(host: str, allowed: bool) -> None:
    assert plain_source_allowed(host, anywhere=False) is allowed
    assert plain_source_allowed(host, anywhere=True) is True


def test_accept_plain_is_refused_for_tcp() -> None:
    from typer.testing import CliRunner

    from netchat.cli import app

    result = CliRunner().invoke(app, ["server", "--accept-plain", "--port", "0"])
    assert result.exit_code == 2
    assert "plain datagram clients are a UDP matter" in result.output

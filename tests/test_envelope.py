"""Envelopes, without sockets: the layer the datagram transports call at the socket edge
(netchat/protocol/envelope.py). Keys are fixed or derived once; scrypt is slow on purpose."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayedDatagram,
)
from netchat.protocol import datagram as dg
from netchat.protocol import seal
from netchat.protocol.envelope import (
    CLEAR,
    ClientKeys,
    RelayKeys,
    SealedGroup,
    SealedSession,
    is_layout,
)
from netchat.protocol.frames import Hello, Say, encode_frame
from netchat.protocol.limits import MAX_DATAGRAM_BYTES

SALT = bytes(range(16))
PASSWORD = "пароль для теста"


@pytest.fixture(scope="module")
def relay_keys() -> RelayKeys:
    return RelayKeys(PASSWORD, salt=SALT)


def counting_derive() -> tuple[Callable[[str, bytes], seal.ChatKey], list[bytes]]:
    """A cheap stand-in for scrypt that records the salts it was asked for."""
    salts: list[bytes] = []
    numbers = count(1)

    def derive(password: str, salt: bytes) -> seal.ChatKey:
        salts.append(salt)
        return seal.ChatKey(next(numbers).to_bytes(32, "big"), salt)

    return derive, salts


def join(relay: RelayKeys, client: ClientKeys, now: float = 0.0) -> tuple[bytes, bytes]:
    """A whole sealed join; returns (the relay's reply, the client's HELLO)."""
    cookie = client.take_cookie(relay.cookie(bytes(range(100, 116))))
    assert cookie is not None
    hello = client.hello(cookie, encode_frame(Hello("alice")))
    fields = relay.hello_fields(hello)
    plain_hello = dg.decode_datagram(relay.open_hello(hello, fields, now))
    assert plain_hello == dg.Hello(cookie, encode_frame(Hello("alice")))
    reply, _ = relay.answer(fields, dg.encode_accept(1, 5000, "alice"))
    return reply, hello


def test_the_clear_envelope_gives_datagrams_back_as_they_are() -> None:
    datagram = dg.encode_data(1, encode_frame(Say("привет")))
    assert CLEAR.seal(datagram) == datagram == CLEAR.open(datagram)
    assert (CLEAR.sealed, CLEAR.overhead) == (False, 0)
    assert CLEAR.refused() == {"forged": 0, "replayed": 0, "malformed": 0}


def test_a_sealed_join_gives_both_sides_envelopes_that_talk(relay_keys: RelayKeys) -> None:
    client = ClientKeys(PASSWORD)
    cookie = client.take_cookie(relay_keys.cookie(bytes(range(100, 116))))
    assert cookie is not None
    hello = client.hello(cookie, encode_frame(Hello("alice")))
    fields = relay_keys.hello_fields(hello)
    relay_keys.open_hello(hello, fields, now=0.0)
    reply, relay_side = relay_keys.answer(fields, dg.encode_accept(1, 5000, "alice"))
    plain, client_side = client.finish(reply)
    assert dg.decode_datagram(plain) == dg.Accept(1, 5000, "alice")
    up = dg.encode_data(1, encode_frame(Say("вверх")))
    down = dg.encode_data(1, encode_frame(Say("вниз")))
    assert relay_side.open(client_side.seal(up)) == up
    assert client_side.open(relay_side.seal(down)) == down
    assert relay_side.overhead == client_side.overhead == seal.SEAL_OVERHEAD
    # Each direction has its own key: what one side sends does not open as its own.
    with pytest.raises(AuthenticationFailed):
        relay_side.open(relay_side.seal(down))
    assert relay_side.refused() == {"forged": 1, "replayed": 0, "malformed": 0}


def test_the_relay_refuses_a_wrong_password_and_a_replayed_join(relay_keys: RelayKeys) -> None:
    wrong = ClientKeys("не тот пароль")
    cookie = wrong.take_cookie(relay_keys.cookie(bytes(16 * [1])))
    assert cookie is not None
    hello = wrong.hello(cookie, encode_frame(Hello("mallory")))
    with pytest.raises(AuthenticationFailed):
        relay_keys.open_hello(hello, relay_keys.hello_fields(hello), now=0.0)
    _, recorded = join(relay_keys, ClientKeys(PASSWORD), now=0.0)
    with pytest.raises(ReplayedDatagram):  # the same HELLO within a minute
        relay_keys.open_hello(recorded, relay_keys.hello_fields(recorded), now=30.0)


def test_a_join_with_an_unusable_key_is_refused_before_any_state() -> None:
    relay = RelayKeys(PASSWORD, salt=SALT)
    client = ClientKeys(PASSWORD)
    cookie = client.take_cookie(relay.cookie(bytes(16 * [2])))
    assert cookie is not None and client.chat_key is not None
    # A member who knows the password seals a HELLO around a low-order X25519 point.
    low_order = bytes(32)
    header = b"nc\x02" + bytes([dg.Kind.HELLO]) + cookie + low_order
    hello = seal.Sealer(client.chat_key.hello_key(low_order)).seal(header, encode_frame(Hello("x")))
    with pytest.raises(RemoteProtocolError) as refused:
        relay.open_hello(hello, relay.hello_fields(hello), now=0.0)
    assert refused.value.code == "malformed"


def test_a_client_runs_scrypt_once_and_keeps_the_first_salt() -> None:
    derive, salts = counting_derive()
    client = ClientKeys(PASSWORD, derive=derive)
    first = client.take_cookie(seal.encode_salted_cookie(bytes(16 * [3]), SALT))
    assert first == bytes(16 * [3])
    # A later COOKIE (an expired cookie replaced) with the same salt: no scrypt.
    assert client.take_cookie(seal.encode_salted_cookie(bytes(16 * [4]), SALT)) == bytes(16 * [4])
    # One with another salt (forged, or someone else's relay) is ignored.
    assert client.take_cookie(seal.encode_salted_cookie(bytes(16 * [5]), bytes(16))) is None
    assert salts == [SALT]


def test_a_client_resends_the_same_hello_until_the_cookie_changes() -> None:
    derive, _ = counting_derive()
    client = ClientKeys(PASSWORD, derive=derive)
    with pytest.raises(LocalProtocolError):
        client.hello(bytes(16 * [6]), b"{}")  # no COOKIE yet: no key
    client.take_cookie(seal.encode_salted_cookie(bytes(16 * [6]), SALT))
    payload = encode_frame(Hello("alice"))
    hello = client.hello(bytes(16 * [6]), payload)
    assert client.hello(bytes(16 * [6]), payload) == hello
    renewed = client.hello(bytes(16 * [7]), payload)
    assert renewed != hello
    # A fresh ephemeral key with the new cookie: a new join attempt, not a replay.
    assert seal.hello_fields(renewed).client_ephemeral != seal.hello_fields(hello).client_ephemeral


def test_a_client_believes_only_the_answer_to_its_own_hello(relay_keys: RelayKeys) -> None:
    client = ClientKeys(PASSWORD)
    with pytest.raises(RemoteProtocolError):
        client.finish(b"nc\x02\x03" + bytes(80))  # before any HELLO
    reply, _ = join(relay_keys, client)
    client.finish(reply)
    other = ClientKeys(PASSWORD)
    join(relay_keys, other, now=1.0)
    with pytest.raises(AuthenticationFailed):
        other.finish(reply)  # a reply to someone else's join


def test_an_unusable_password_is_refused_before_anything_is_sent() -> None:
    for bad in ("", "\ud800", "я" * 600):
        with pytest.raises(LocalProtocolError):
            ClientKeys(bad)


def test_peers_of_one_group_read_each_other_and_nobody_else() -> None:
    key = seal.ChatKey(bytes(range(32)), seal.group_salt("239.255.80.80", 8081))
    other_key = seal.ChatKey(bytes(range(1, 33)), key.salt)
    alice, bob = SealedGroup(key, b"alice-01"), SealedGroup(key, b"bob-0002")
    outsider = SealedGroup(other_key, b"mallory1")
    datagram = dg.encode_peer(b"alice-01", 1, encode_frame(Say("всем")))
    wire = alice.seal(datagram)
    assert bob.open(wire) == datagram
    with pytest.raises(ReplayedDatagram):
        bob.open(wire)
    with pytest.raises(AuthenticationFailed):
        outsider.open(wire)
    assert bob.refused() == {"forged": 0, "replayed": 1, "malformed": 0}
    assert len(wire) == len(datagram) + alice.overhead


def test_the_largest_sealed_datagram_fits_and_one_byte_more_does_not() -> None:
    key = seal.ChatKey(bytes(range(32)), SALT)
    group = SealedGroup(key, b"alice-01")
    header = dg.HEADERS[dg.Kind.PEER].size
    room = MAX_DATAGRAM_BYTES - header - group.overhead
    assert len(group.seal(dg.encode_peer(b"alice-01", 1, b"x" * room))) == MAX_DATAGRAM_BYTES
    with pytest.raises(LocalProtocolError) as refused:
        group.seal(dg.encode_peer(b"alice-01", 2, b"x" * (room + 1)))
    assert refused.value.code == "too-large"


def test_ack_datagrams_travel_sealed_too() -> None:
    key = seal.ChatKey(bytes(range(32)), SALT)
    channel = seal.Channel(
        seal.Sealer(key.peer_key(b"rudp-ack")), seal.Opener(key.peer_key(b"rudp-ack"))
    )
    session = SealedSession(channel)
    ack = dg.encode_ack(dg.Ack(5, 4, 120, 64, ((7, 9),)))
    assert session.open(session.seal(ack)) == ack


@given(st.binary(max_size=2 * MAX_DATAGRAM_BYTES))
@settings(max_examples=300)
def test_any_bytes_open_or_raise_the_protocols_own_error(data: bytes) -> None:
    key = seal.ChatKey(bytes(range(32)), SALT)
    group = SealedGroup(key, b"alice-01")
    channel = seal.Channel(seal.Sealer(key.peer_key(b"x" * 8)), seal.Opener(key.peer_key(b"y" * 8)))
    for attempt in (
        lambda: group.open(data),
        lambda: SealedSession(channel).open(data),
        lambda: RelayKeys.hello_fields(data),
        lambda: ClientKeys(PASSWORD, derive=counting_derive()[0]).take_cookie(data),
    ):
        try:
            attempt()
        except RemoteProtocolError as exc:
            assert exc.code


def test_is_layout_looks_at_the_prefix_only() -> None:
    assert is_layout(b"nc\x02\x05rest", 2)
    assert is_layout(b"nc\x02\x05rest", 2, dg.Kind.DATA)
    assert not is_layout(b"nc\x02\x05rest", 2, dg.Kind.HELLO)
    assert not is_layout(b"nc\x01\x05rest", 2)
    assert not is_layout(b"nc\x02", 2)
    assert not is_layout(b"xx\x02\x05", 2)

"""Sealed datagrams, without sockets: key schedule, envelopes, replay window, relay join,
peers. Most tests use a fixed chat key (scrypt takes ~70–90 ms); the password tests derive."""

from __future__ import annotations

import threading
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
from netchat.protocol.frames import Hello, Say, Welcome, encode_frame
from netchat.protocol.limits import MAX_DATAGRAM_BYTES

SALT = bytes(range(16))
KEY = seal.ChatKey(bytes(range(32)), SALT)
OTHER_KEY = seal.ChatKey(bytes(range(1, 33)), SALT)
INSTANCE = b"alice-01"
COOKIE = bytes(range(100, 116))


def counting_random() -> Callable[[int], bytes]:
    """Distinct, reproducible 'random' bytes for ephemeral keys in tests."""
    numbers = count(1)
    return lambda n: next(numbers).to_bytes(n, "big")


def relay_pair(key: seal.ChatKey = KEY) -> tuple[seal.Channel, seal.Channel]:
    """(client, server) channels of one relay session, through the real join."""
    join = seal.ClientHandshake(key, COOKIE, encode_frame(Hello("alice")))
    fields = seal.hello_fields(join.datagram)
    seal.open_hello(key, join.datagram)
    reply, server = seal.answer_hello(
        key, fields.client_ephemeral, dg.encode_accept(1, 5000, "alice")
    )
    _, client = join.finish(reply)
    return client, server


def sample_plain_datagrams() -> list[bytes]:
    """One layout-1 datagram of every kind that travels sealed after the join."""
    return [
        dg.encode_data(7, encode_frame(Say("Привет, мир 👋")) + encode_frame(Say("again"))),
        dg.encode_data(9, b'{"v":1,"t":"say","text":"a very long', more=True),
        dg.encode_ping(3, 9),
        dg.encode_pong(3, 10),
        dg.encode_bye("до свидания"),
        dg.encode_peer(INSTANCE, 4, encode_frame(Say("ку-ку"))),
    ]


# --- password and key schedule ------------------------------------------------------


@pytest.fixture(scope="module")
def derived() -> dict[str, seal.ChatKey]:
    """Keys stretched with the real scrypt parameters, derived once for the module."""
    return {
        "пароль": seal.ChatKey.derive("пароль", SALT),
        "пароль again": seal.ChatKey.derive("пароль", SALT),
        "Пароль": seal.ChatKey.derive("Пароль", SALT),
        "пароль other salt": seal.ChatKey.derive("пароль", bytes(16)),
    }


def test_the_same_password_and_salt_give_a_key_that_opens(
    derived: dict[str, seal.ChatKey],
) -> None:
    sealer = seal.Sealer(derived["пароль"].peer_key(INSTANCE))
    wire = sealer.seal_datagram(dg.encode_peer(INSTANCE, 1, encode_frame(Say("тест"))))
    opened = seal.Opener(derived["пароль again"].peer_key(INSTANCE)).open(wire)
    assert dg.decode_datagram(opened.plain()) == dg.PeerData(INSTANCE, 1, encode_frame(Say("тест")))


@pytest.mark.parametrize("wrong", ["Пароль", "пароль other salt"])
def test_a_wrong_password_or_salt_fails_authentication(
    derived: dict[str, seal.ChatKey], wrong: str
) -> None:
    sealer = seal.Sealer(derived["пароль"].peer_key(INSTANCE))
    wire = sealer.seal_datagram(dg.encode_peer(INSTANCE, 1, encode_frame(Say("тест"))))
    opener = seal.Opener(derived[wrong].peer_key(INSTANCE))
    with pytest.raises(AuthenticationFailed):
        opener.open(wire)
    assert (opener.opened, opener.forged, opener.replayed) == (0, 1, 0)


def test_a_wrong_password_is_refused_at_the_relay_join(
    derived: dict[str, seal.ChatKey],
) -> None:
    join = seal.ClientHandshake(derived["Пароль"], COOKIE, encode_frame(Hello("mallory")))
    with pytest.raises(AuthenticationFailed):
        seal.open_hello(derived["пароль"], join.datagram)


def test_passwords_are_compared_after_nfc() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert seal.normalize_password(composed) == seal.normalize_password(decomposed)
    assert seal.normalize_password("пароль") == "пароль".encode()


@pytest.mark.parametrize("bad", ["", "\ud800", "x" * (seal.MAX_PASSWORD_BYTES + 1)])
def test_unusable_passwords_are_refused(bad: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        seal.normalize_password(bad)
    assert caught.value.code == "bad-password"


def test_scrypt_cost_is_as_documented() -> None:
    assert (seal.SCRYPT_N, seal.SCRYPT_R, seal.SCRYPT_P) == (2**15, 8, 1)
    assert seal.SCRYPT_MEMORY_BYTES == 32 * 1024 * 1024


def test_keys_never_show_their_secret() -> None:
    secret = bytes(range(32))
    assert secret.hex() not in repr(seal.ChatKey(secret, SALT))
    assert secret.hex() not in repr(KEY.peer_key(INSTANCE))


def test_the_group_salt_is_shared_by_every_peer_of_a_group_only() -> None:
    salt = seal.group_salt("239.255.80.80", 8081)
    assert len(salt) == seal.SALT_BYTES
    assert seal.group_salt("239.255.80.80", 8081) == salt
    assert seal.group_salt("FF02:0::1", 8081) == seal.group_salt("ff02::1", 8081)
    others = {
        seal.group_salt("239.255.80.81", 8081),
        seal.group_salt("239.255.80.80", 8082),
        seal.group_salt("255.255.255.255", 8081),
    }
    assert salt not in others and len(others) == 3


@pytest.mark.parametrize(("group", "port"), [("chat.example", 8081), ("239.1.1.1", 0)])
def test_a_bad_group_is_refused(group: str, port: int) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        seal.group_salt(group, port)
    assert caught.value.code == "bad-group"


def test_every_key_is_separate() -> None:
    eph_a, eph_b, dh_a, dh_b = bytes(32), bytes([1] * 32), bytes([2] * 32), bytes([3] * 32)
    keys = [
        KEY.hello_key(eph_a),
        KEY.hello_key(eph_b),
        *KEY.relay_keys(dh_a, eph_a, eph_b),
        *KEY.relay_keys(dh_a, eph_b, eph_a),
        *KEY.relay_keys(dh_b, eph_a, eph_b),
        KEY.peer_key(INSTANCE),
        KEY.peer_key(b"bob---01"),
    ]
    plain = dg.encode_ping(1, 1)
    sealed = {seal.Sealer(key).seal_datagram(plain) for key in keys}
    assert len(sealed) == len(keys)  # same plaintext and counter: only the key differs


# --- envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize("plain", sample_plain_datagrams())
def test_round_trip_of_every_sealed_kind(plain: bytes) -> None:
    key = KEY.peer_key(INSTANCE)
    wire = seal.Sealer(key).seal_datagram(plain)
    assert len(wire) == len(plain) + seal.SEAL_OVERHEAD
    assert wire[:4] == b"nc\x02" + plain[3:4]
    opened = seal.Opener(key).open(wire)
    assert opened.plain() == plain
    assert opened.header == wire[: len(opened.header)]
    assert opened.ephemeral == b""


def test_only_the_instance_id_and_counter_travel_in_clear() -> None:
    text = "секретный текст"
    plain = dg.encode_peer(INSTANCE, 123456, encode_frame(Say(text)))
    wire = seal.Sealer(KEY.peer_key(INSTANCE)).seal_datagram(plain)
    assert wire[4:12] == INSTANCE
    assert wire[12:20] == (0).to_bytes(8, "big")
    assert text.encode() not in wire and (123456).to_bytes(8, "big") not in wire


def test_every_changed_byte_fails_and_leaves_the_opener_usable() -> None:
    for plain in sample_plain_datagrams():
        key = KEY.peer_key(INSTANCE)
        wire = seal.Sealer(key).seal_datagram(plain)
        opener = seal.Opener(key)
        refused = 0
        for index in range(len(wire)):
            for flip in (0x01, 0x80):
                altered = bytearray(wire)
                altered[index] ^= flip
                with pytest.raises(RemoteProtocolError):
                    opener.open(bytes(altered))
                refused += 1
        for cut in range(len(wire)):
            with pytest.raises(RemoteProtocolError):
                opener.open(wire[:cut])
            refused += 1
        with pytest.raises(AuthenticationFailed):
            opener.open(wire + b"\x00")
        refused += 1
        assert opener.opened == 0
        assert opener.forged + opener.malformed == refused
        assert opener.open(wire).plain() == plain  # no forgery moved the window


def test_the_kind_cannot_be_changed() -> None:
    key = KEY.peer_key(INSTANCE)
    wire = seal.Sealer(key).seal_datagram(dg.encode_ping(1, 2))
    as_pong = wire[:3] + bytes([dg.Kind.PONG]) + wire[4:]
    with pytest.raises(AuthenticationFailed):
        seal.Opener(key).open(as_pong)


def test_a_datagram_cannot_be_reflected_to_its_sender() -> None:
    client, server = relay_pair()
    plain = [dg.encode_data(1, encode_frame(Say("hi"))), dg.encode_ping(1, 2)]
    wires = [client.sealer.seal_datagram(d) for d in plain]
    with pytest.raises(ReplayedDatagram):  # counter 0 was the ACCEPT's
        client.opener.open(wires[0])
    with pytest.raises(AuthenticationFailed):  # another direction, another key
        client.opener.open(wires[1])
    assert [server.opener.open(wire).plain() for wire in wires] == plain


def test_replays_are_dropped_and_counted() -> None:
    key = KEY.peer_key(INSTANCE)
    sealer, opener = seal.Sealer(key), seal.Opener(key)
    wire = sealer.seal_datagram(dg.encode_ping(1, 1))
    opener.open(wire)
    with pytest.raises(ReplayedDatagram, match="was seen"):
        opener.open(wire)
    assert (opener.opened, opener.replayed, opener.forged) == (1, 1, 0)


def test_reordering_inside_the_window_is_accepted_and_older_counters_are_not() -> None:
    key = KEY.peer_key(INSTANCE)
    sealer, opener = seal.Sealer(key), seal.Opener(key)
    wires = [sealer.seal_datagram(dg.encode_ping(n, n)) for n in range(seal.REPLAY_WINDOW + 10)]
    newest_first = wires[::-1]
    accepted = [opener.open(wire).counter for wire in newest_first[: seal.REPLAY_WINDOW]]
    assert accepted == list(range(seal.REPLAY_WINDOW + 9, 9, -1))
    for wire in newest_first[seal.REPLAY_WINDOW :]:
        with pytest.raises(ReplayedDatagram, match="behind the replay window"):
            opener.open(wire)
    assert opener.replayed == 10


def test_counters_are_never_reused_even_from_many_threads() -> None:
    sealer = seal.Sealer(KEY.peer_key(INSTANCE))
    counters: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [
            seal.Opener(KEY.peer_key(INSTANCE))
            .open(sealer.seal_datagram(dg.encode_ping(0, 0)))
            .counter
            for _ in range(300)
        ]
        with lock:
            counters.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(counters) == list(range(1200))
    assert sealer.next_counter == 1200


def test_a_sealer_refuses_to_wrap_its_counter() -> None:
    sealer = seal.Sealer(KEY.peer_key(INSTANCE), first_counter=seal.MAX_COUNTER)
    wire = sealer.seal_datagram(dg.encode_ping(1, 1))
    assert seal.Opener(KEY.peer_key(INSTANCE)).open(wire).counter == seal.MAX_COUNTER
    with pytest.raises(LocalProtocolError) as caught:
        sealer.seal_datagram(dg.encode_ping(1, 1))
    assert caught.value.code == "counter-exhausted"


def test_sealed_datagrams_stay_within_the_size_limit() -> None:
    sealer = seal.Sealer(KEY.peer_key(INSTANCE))
    frames = [encode_frame(Say("ж" * 1500)), encode_frame(Say("short"))]
    datagrams, _ = dg.pack_data(1, frames, max_bytes=MAX_DATAGRAM_BYTES - seal.SEAL_OVERHEAD)
    assert max(len(sealer.seal_datagram(d)) for d in datagrams) == MAX_DATAGRAM_BYTES
    full, _ = dg.pack_data(1, frames)
    with pytest.raises(LocalProtocolError) as caught:
        sealer.seal_datagram(full[0])
    assert caught.value.code == "too-large"


@pytest.mark.parametrize(
    ("plain", "ephemeral"),
    [
        (dg.encode_cookie(COOKIE), b""),  # COOKIE travels in clear
        (dg.encode_notice("version"), b""),
        (b"nc\x02\x05" + bytes(9), b""),  # already layout 2
        (dg.encode_accept(1, 1, "x"), b""),  # ACCEPT needs the server's ephemeral
        (dg.encode_accept(1, 1, "x"), bytes(16)),  # of 32 bytes
        (dg.encode_ping(1, 1), bytes(32)),  # PING has none
    ],
)
def test_what_cannot_be_sealed_is_refused(plain: bytes, ephemeral: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        seal.Sealer(KEY.peer_key(INSTANCE)).seal_datagram(plain, ephemeral)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "magic"),
        (b"xx\x02\x05" + bytes(40), "magic"),
        (dg.encode_data(1, b"{}\n") + bytes(30), "unsealed"),
        (b"nc\x03\x05" + bytes(40), "version"),
        (b"nc\x02\x63" + bytes(40), "unknown-kind"),
        (b"nc\x02\x02" + bytes(40), "unsealed"),  # COOKIE
        (b"nc\x02\x09" + bytes(40), "unsealed"),  # NOTICE
        (b"nc\x02\x05" + bytes(23), "malformed"),
        (b"nc\x02\x0a" + bytes(31), "malformed"),
        (b"nc\x02\x05" + bytes(MAX_DATAGRAM_BYTES), "too-large"),
    ],
)
def test_what_is_not_a_sealed_datagram_has_a_code(data: bytes, code: str) -> None:
    opener = seal.Opener(KEY.peer_key(INSTANCE))
    with pytest.raises(RemoteProtocolError) as caught:
        opener.open(data)
    assert caught.value.code == code
    assert (opener.malformed, opener.forged) == (1, 0)


@given(st.binary(max_size=2 * MAX_DATAGRAM_BYTES))
@settings(max_examples=400)
def test_any_bytes_open_or_raise_the_protocols_own_error(data: bytes) -> None:
    try:
        seal.Opener(KEY.peer_key(INSTANCE)).open(data)
    except RemoteProtocolError as exc:
        assert exc.code


@given(st.sampled_from(list(seal.SEALED_KINDS)), st.binary(max_size=200))
@settings(max_examples=400)
def test_any_sealed_looking_bytes_open_or_raise(kind: dg.Kind, body: bytes) -> None:
    data = b"nc\x02" + bytes([kind]) + body
    for attempt in (
        lambda: seal.Opener(KEY.peer_key(INSTANCE)).open(data),
        lambda: seal.PeerOpeners(KEY).open(data),
        lambda: seal.open_hello(KEY, data),
        lambda: seal.hello_fields(data),
        lambda: seal.ClientHandshake(KEY, COOKIE, b"").finish(data),
        lambda: seal.decode_salted_cookie(data),
    ):
        try:
            attempt()
        except RemoteProtocolError as exc:
            assert exc.code


@given(st.integers(0, 10_000), st.integers(0, 255), st.data())
@settings(max_examples=300)
def test_no_change_to_a_sealed_datagram_authenticates(
    seed: int, new_byte: int, data: st.DataObject
) -> None:
    plain = sample_plain_datagrams()[seed % 6]
    key = KEY.peer_key(INSTANCE)
    wire = seal.Sealer(key).seal_datagram(plain)
    index = data.draw(st.integers(0, len(wire) - 1))
    altered = wire[:index] + bytes([new_byte]) + wire[index + 1 :]
    if altered == wire:
        return
    with pytest.raises(RemoteProtocolError):
        seal.Opener(key).open(altered)


# --- the replay window ---------------------------------------------------------------


@given(st.lists(st.integers(0, seal.MAX_COUNTER), max_size=60), st.integers(1, 64))
@settings(max_examples=300)
def test_the_window_matches_its_model_and_stays_bounded(counters: list[int], size: int) -> None:
    window = seal.CounterWindow(size)
    accepted: set[int] = set()
    highest = -1
    for counter in counters:
        expected = counter > highest or (highest - counter < size and counter not in accepted)
        assert window.accepts(counter) is expected
        if expected:
            window.record(counter)
            accepted.add(counter)
            highest = max(highest, counter)
        assert window.memory_bits <= size
        assert window.highest == highest


@given(st.lists(st.integers(0, seal.MAX_COUNTER), max_size=40))
def test_an_accepted_counter_is_never_accepted_again(counters: list[int]) -> None:
    # Counters clustered near each other, where the bitmap (not the jump) decides.
    window = seal.CounterWindow(8)
    base = counters[0] if counters else 0
    for counter in counters:
        near = base + counter % 20
        if window.accepts(near):
            window.record(near)
        assert not window.accepts(near)


def test_huge_counter_jumps_cost_no_memory() -> None:
    # Issue 6, item 1 for sealed datagrams: whatever counters a holder of the key
    # sends, the window stays at its size.
    window = seal.CounterWindow()
    for counter in (0, 2**32, 2**63, seal.MAX_COUNTER - 5, seal.MAX_COUNTER):
        assert window.accepts(counter)
        window.record(counter)
        assert window.memory_bits <= seal.REPLAY_WINDOW
    assert window.accepts(seal.MAX_COUNTER - 1)
    assert not window.accepts(2**63)


# --- the relay join ------------------------------------------------------------------


def test_the_cookie_exchange_never_amplifies() -> None:
    request = seal.cookie_request()
    reply = seal.encode_salted_cookie(COOKIE, SALT)
    assert len(reply) == len(request) == seal.SALTED_COOKIE_BYTES
    assert seal.is_cookie_request(request)
    assert not seal.is_cookie_request(dg.encode_hello(dg.NO_COOKIE))  # too small, layout 1
    assert not seal.is_cookie_request(request[:-1])
    assert seal.decode_salted_cookie(reply) == (COOKIE, SALT)


def test_a_whole_join_and_session_in_memory() -> None:
    # What each side receives, in order, after opening and decoding.
    server_got: list[object] = []
    client_got: list[object] = []
    salt = SALT
    server_key = KEY

    # Client asks for a cookie; the relay answers statelessly with cookie and salt.
    request = seal.cookie_request()
    assert seal.is_cookie_request(request)
    cookie, learned_salt = seal.decode_salted_cookie(seal.encode_salted_cookie(COOKIE, salt))
    client_key = seal.ChatKey(bytes(range(32)), learned_salt)  # = derive(password, salt)

    hello = encode_frame(Hello("алиса"))
    join = seal.ClientHandshake(client_key, cookie, hello, random_bytes=counting_random())
    fields = seal.hello_fields(join.datagram)
    assert fields.cookie == COOKIE
    server_got.append(dg.decode_datagram(seal.open_hello(server_key, join.datagram)))
    welcome = encode_frame(Welcome("алиса", ("алиса",)))
    accept, server = seal.answer_hello(
        server_key, fields.client_ephemeral, dg.encode_accept(1, 5000, "алиса")
    )
    plain, client = join.finish(accept)
    client_got.append(dg.decode_datagram(plain))
    for wire in (
        server.sealer.seal_datagram(dg.encode_data(1, welcome)),
        server.sealer.seal_datagram(dg.encode_pong(9, 2)),
    ):
        client_got.append(dg.decode_datagram(client.opener.open(wire).plain()))
    for wire in (
        client.sealer.seal_datagram(dg.encode_data(1, encode_frame(Say("привет")))),
        client.sealer.seal_datagram(dg.encode_ping(9, 2)),
        client.sealer.seal_datagram(dg.encode_bye("quit")),
    ):
        server_got.append(dg.decode_datagram(server.opener.open(wire).plain()))

    assert server_got == [
        dg.Hello(COOKIE, hello),
        dg.Data(1, (encode_frame(Say("привет")),)),
        dg.Ping(9, 2),
        dg.Bye("quit"),
    ]
    assert client_got == [
        dg.Accept(1, 5000, "алиса"),
        dg.Data(1, (welcome,)),
        dg.Pong(9, 2),
    ]
    assert (server.sealer.next_counter, client.sealer.next_counter) == (3, 3)


def test_a_resent_accept_is_dropped_as_a_replay() -> None:
    # The relay resends its cached ACCEPT verbatim when the same HELLO comes again.
    join = seal.ClientHandshake(KEY, COOKIE, encode_frame(Hello("bob")))
    fields = seal.hello_fields(join.datagram)
    accept, _ = seal.answer_hello(KEY, fields.client_ephemeral, dg.encode_accept(1, 5000, "bob"))
    _, client = join.finish(accept)
    with pytest.raises(ReplayedDatagram):
        client.opener.open(accept)
    assert (client.opener.opened, client.opener.replayed) == (1, 1)


def test_a_replayed_hello_gets_fresh_session_keys() -> None:
    # The relay's own ephemeral makes a replayed HELLO's session new: counter 0 of
    # the server->client key is never used twice for different plaintexts.
    join = seal.ClientHandshake(KEY, COOKIE, encode_frame(Hello("bob")))
    ephemeral = seal.hello_fields(join.datagram).client_ephemeral
    reply_a, server_a = seal.answer_hello(KEY, ephemeral, dg.encode_accept(1, 5000, "bob"))
    reply_b, server_b = seal.answer_hello(KEY, ephemeral, dg.encode_accept(1, 5000, "bob"))
    assert reply_a[4:36] != reply_b[4:36]  # server ephemerals
    same = dg.encode_data(1, encode_frame(Say("x")))
    assert server_a.sealer.seal_datagram(same) != server_b.sealer.seal_datagram(same)


def test_a_member_who_records_or_replays_a_join_cannot_use_the_session() -> None:
    # Mallory knows the password but not alice's ephemeral private key.
    alice = seal.ClientHandshake(KEY, COOKIE, encode_frame(Hello("alice")))
    mallory = seal.ClientHandshake(KEY, COOKIE, encode_frame(Hello("alice")))
    ephemeral = seal.hello_fields(alice.datagram).client_ephemeral
    accept, server = seal.answer_hello(KEY, ephemeral, dg.encode_accept(1, 5000, "alice"))
    with pytest.raises(AuthenticationFailed):
        mallory.finish(accept)
    _, client = alice.finish(accept)
    wire = server.sealer.seal_datagram(dg.encode_data(1, encode_frame(Say("private"))))
    assert client.opener.open(wire).payload.endswith(encode_frame(Say("private")))


def test_recent_nonces_refuse_a_replayed_hello_and_stay_bounded() -> None:
    nonces = seal.RecentNonces(lifetime=60.0, capacity=3)
    assert nonces.add(b"a" * 16, now=0.0)
    assert not nonces.add(b"a" * 16, now=59.0)
    assert nonces.add(b"a" * 16, now=60.0)  # its cookie has expired by now anyway
    for i, name in enumerate([b"b", b"c", b"d", b"e"]):
        assert nonces.add(name * 16, now=61.0 + i)
    assert len(nonces) == 3 and nonces.evicted == 2


def test_a_rejection_is_sealed_too() -> None:
    from netchat.protocol.frames import Error

    join = seal.ClientHandshake(KEY, COOKIE, encode_frame(Hello("alice")))
    ephemeral = seal.hello_fields(join.datagram).client_ephemeral
    refusal = dg.encode_reject(encode_frame(Error("name-taken", "alice is taken")))
    reply, _ = seal.answer_hello(KEY, ephemeral, refusal)
    plain, _ = join.finish(reply)
    assert plain == refusal


def test_a_forged_or_foreign_join_reply_is_refused() -> None:
    join = seal.ClientHandshake(KEY, COOKIE, encode_frame(Hello("alice")))
    ephemeral = seal.hello_fields(join.datagram).client_ephemeral
    accept, _ = seal.answer_hello(KEY, ephemeral, dg.encode_accept(1, 5000, "alice"))
    renamed = accept[:-1] + bytes([accept[-1] ^ 1])
    foreign, _ = seal.answer_hello(OTHER_KEY, ephemeral, dg.encode_accept(1, 5000, "alice"))
    other = seal.ClientHandshake(KEY, COOKIE, b"").client_ephemeral
    other_join, _ = seal.answer_hello(KEY, other, dg.encode_accept(1, 5000, "alice"))
    low_order = accept[:4] + bytes(32) + accept[36:]
    for reply in (renamed, foreign, other_join, low_order):
        with pytest.raises(AuthenticationFailed):
            join.finish(reply)
    with pytest.raises(RemoteProtocolError):
        join.finish(seal.Sealer(KEY.peer_key(INSTANCE)).seal_datagram(dg.encode_ping(1, 1)))


def test_the_hello_cookie_is_authenticated() -> None:
    join = seal.ClientHandshake(KEY, COOKIE, encode_frame(Hello("alice")))
    other_cookie = join.datagram[:4] + bytes(range(16)) + join.datagram[20:]
    with pytest.raises(AuthenticationFailed):
        seal.open_hello(KEY, other_cookie)


def test_the_hello_hides_the_name() -> None:
    join = seal.ClientHandshake(KEY, COOKIE, encode_frame(Hello("Алиса")))
    assert "Алиса".encode() not in join.datagram


def test_answer_hello_needs_an_accept_or_a_reject() -> None:
    with pytest.raises(LocalProtocolError):
        seal.answer_hello(KEY, bytes(32), dg.encode_ping(1, 1))


def test_an_unusable_client_ephemeral_is_refused() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        seal.answer_hello(KEY, bytes(32), dg.encode_accept(1, 1, "x"))
    assert caught.value.code == "malformed"


# --- serverless peers ----------------------------------------------------------------


def peer_wire(instance: bytes, seq: int, text: str, sealer: seal.Sealer | None = None) -> bytes:
    sealer = sealer or seal.Sealer(KEY.peer_key(instance))
    return sealer.seal_datagram(dg.encode_peer(instance, seq, encode_frame(Say(text))))


def test_peers_open_each_others_datagrams_in_order() -> None:
    alice = seal.Sealer(KEY.peer_key(b"alice-01"))
    bob = seal.Sealer(KEY.peer_key(b"bob---01"))
    wires = [
        peer_wire(b"alice-01", 1, "привет", alice),
        peer_wire(b"bob---01", 1, "hi", bob),
        peer_wire(b"alice-01", 2, "как дела?", alice),
    ]
    openers = seal.PeerOpeners(KEY)
    got = [dg.decode_datagram(openers.open(wire).plain()) for wire in wires]
    assert got == [
        dg.PeerData(b"alice-01", 1, encode_frame(Say("привет"))),
        dg.PeerData(b"bob---01", 1, encode_frame(Say("hi"))),
        dg.PeerData(b"alice-01", 2, encode_frame(Say("как дела?"))),
    ]
    assert (len(openers), openers.opened) == (2, 3)


def test_strangers_leave_nothing_behind() -> None:
    openers = seal.PeerOpeners(KEY)
    for n in range(50):
        instance = n.to_bytes(8, "big")
        stranger = seal.Sealer(OTHER_KEY.peer_key(instance))
        with pytest.raises(AuthenticationFailed):
            openers.open(peer_wire(instance, 1, "spam", stranger))
    assert (len(openers), openers.forged, openers.opened) == (0, 50, 0)


def test_a_retired_sender_cannot_be_replayed() -> None:
    openers = seal.PeerOpeners(KEY, capacity=2, retired=2)
    alice = seal.Sealer(KEY.peer_key(b"alice-01"))
    old = peer_wire(b"alice-01", 1, "recorded", alice)
    openers.open(old)
    openers.open(peer_wire(b"bob---01", 1, "b"))
    openers.open(peer_wire(b"carol-01", 1, "c"))  # alice is retired
    assert len(openers) == 2
    with pytest.raises(ReplayedDatagram):
        openers.open(old)
    assert openers.open(peer_wire(b"alice-01", 2, "new", alice)).counter == 1
    assert openers.replayed == 1


def test_the_retired_list_is_bounded() -> None:
    openers = seal.PeerOpeners(KEY, capacity=1, retired=3)
    for n in range(10):
        openers.open(peer_wire(n.to_bytes(8, "big"), 1, "x"))
    assert len(openers) == 1 and len(openers._retired) == 3


def test_peers_refuse_relay_kinds() -> None:
    openers = seal.PeerOpeners(KEY)
    with pytest.raises(RemoteProtocolError) as caught:
        openers.open(seal.Sealer(KEY.peer_key(INSTANCE)).seal_datagram(dg.encode_ping(1, 1)))
    assert caught.value.code == "malformed" and openers.malformed == 1


# --- the TCP password check ----------------------------------------------------------


def test_the_password_verifier() -> None:
    verifier = seal.PasswordVerifier("пароль caf\u00e9")
    assert verifier.check("пароль caf\u00e9")
    assert verifier.check("пароль cafe\u0301")
    for wrong in ["Пароль café", "пароль", "", "\ud800", "x" * 5000]:
        assert not verifier.check(wrong)


def test_the_fast_sealing_path_gives_the_same_bytes_as_the_general_one() -> None:
    """seal_datagram() takes a shortcut for kinds without an ephemeral key (the relay's
    fan-out path); it must produce exactly what seal() does with the same counter."""
    plains = [*sample_plain_datagrams(), dg.encode_ack(dg.Ack(9, 8, 100, 64, ((11, 12),)))]
    for plain in plains:
        kind = dg.Kind(plain[3])
        kept = seal.SEALED_KINDS[kind].kept
        key = KEY.peer_key(INSTANCE)
        header = b"nc\x02" + bytes([kind]) + plain[4 : 4 + kept]
        general = seal.Sealer(key, first_counter=7).seal(header, plain[4 + kept :])
        assert seal.Sealer(key, first_counter=7).seal_datagram(plain) == general
        assert seal.Opener(key).open(general).plain() == plain

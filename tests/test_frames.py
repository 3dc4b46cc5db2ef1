"""Frames and their JSON-line codec (netchat/protocol/frames.py).

Like h11's test_events.py: every frame type is built from the field specs in
``FRAME_TYPES`` (so a new frame type is covered without touching this file), and the
decoder is fuzzed to show that the only thing a peer can make it raise is
:class:`RemoteProtocolError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netchat.errors import FrameTooLarge, LocalProtocolError, ProtocolError, RemoteProtocolError
from netchat.protocol.frames import (
    FRAME_TYPES,
    Error,
    Frame,
    Hello,
    Joined,
    Left,
    Message,
    Ping,
    Private,
    Say,
    UserList,
    Welcome,
    decode_frame,
    encode_frame,
    frame_to_dict,
)
from netchat.protocol.limits import MAX_FRAME_BYTES, PROTOCOL_VERSION

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ----------------------------------------------------------------

# Any Unicode scalar value (no lone surrogates: a str holding one is not UTF-8-encodable),
# with Cyrillic, CJK, emoji and ZWJ sequences mixed in on purpose.
SPECIAL = st.sampled_from(
    [
        "Привет, мир",
        "добрый вечер",
        "你好",
        "👋",
        "👩‍👩‍👧",
        "🏳️‍🌈",
        "e\u0301",
        "\n",
        "\r\n",
        '"',
        "\\",
        "\u2028",
    ]
)
TEXT = st.lists(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20) | SPECIAL, max_size=6
).map("".join)
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
INTS = st.integers(-(2**63), 2**63)


def value_strategy(expected: Any) -> st.SearchStrategy[Any]:
    if expected is str:
        return TEXT
    if expected is int:
        return INTS
    if expected is float:
        return FLOATS
    if expected is bool:
        return st.booleans()
    if typing.get_origin(expected) is tuple:
        return st.lists(TEXT, max_size=5).map(tuple)
    raise AssertionError(f"no strategy for {expected!r}")  # a new field type: add one


def frame_strategy(type_name: str) -> st.SearchStrategy[Frame]:
    cls, spec = FRAME_TYPES[type_name]
    return st.builds(cls, **{name: value_strategy(t) for name, t in spec.items()})


ANY_FRAME = st.sampled_from(sorted(FRAME_TYPES)).flatmap(frame_strategy)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


def assert_decode_fails_cleanly(data: bytes | str) -> Frame | None:
    """decode_frame either returns a frame or raises RemoteProtocolError — nothing else."""
    try:
        return decode_frame(data)
    except RemoteProtocolError as exc:
        assert exc.code in {"too-large", "bad-utf8", "malformed", "version", "unknown-type"}
        return None


# --- round trips -----------------------------------------------------------------


def test_every_frame_type_is_registered_with_its_own_name() -> None:
    assert set(FRAME_TYPES) == {
        "hello", "say", "me", "msg", "nick", "who", "help", "quit", "ping", "pong",
        "welcome", "message", "private", "joined", "left", "presence", "renamed", "users", "info",
        "error", "shutdown",
    }  # fmt: skip
    for type_name, (cls, spec) in FRAME_TYPES.items():
        assert type_name == cls.TYPE
        assert list(spec) == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("type_name", sorted(FRAME_TYPES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_each_frame_type_round_trips(type_name: str, data: st.DataObject) -> None:
    frame = data.draw(frame_strategy(type_name))
    assert decode_frame(encode_frame(frame)) == frame


@SETTINGS
@given(ANY_FRAME)
def test_encode_decode_round_trip(frame: Frame) -> None:
    line = encode_frame(frame)
    decoded = decode_frame(line)
    assert decoded == frame
    assert type(decoded) is type(frame)
    # Also without the newline, with \r\n, and as str.
    assert decode_frame(line[:-1]) == frame
    assert decode_frame(line[:-1] + b"\r\n") == frame
    assert decode_frame(line.decode("utf-8")) == frame


@SETTINGS
@given(ANY_FRAME)
def test_encoded_frame_is_one_line_of_utf8_json(frame: Frame) -> None:
    line = encode_frame(frame)
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    assert b"\r" not in line  # JSON escapes it, so no \r\n confusion either
    body = json.loads(line)
    assert body == frame_to_dict(frame)
    assert list(body)[:2] == ["v", "t"]
    assert body["v"] == PROTOCOL_VERSION
    assert body["t"] == frame.TYPE


def test_utf8_is_written_as_is_not_escaped() -> None:
    line = encode_frame(Say("Привет 👋"))
    assert line == '{"v":1,"t":"say","text":"Привет 👋"}\n'.encode()
    assert len(encode_frame(Say("я"))) == len(encode_frame(Say("z"))) + 1  # 2 bytes, not 6


def test_wire_format_example() -> None:
    line = encode_frame(Message("alice", "hi", 1700000000.5, 7))
    assert line == (
        b'{"v":1,"t":"message","sender":"alice","text":"hi","ts":1700000000.5,"seq":7,'
        b'"action":false}\n'
    )


def test_lists_become_tuples() -> None:
    assert Welcome("a", ["a", "b"]).users == ("a", "b")  # type: ignore[arg-type]
    frame = decode_frame(b'{"v":1,"t":"users","users":["x","y"]}')
    assert frame == UserList(("x", "y"))


def test_unknown_keys_are_ignored_and_defaults_apply() -> None:
    frame = decode_frame(b'{"v":1,"t":"hello","name":"bob","future":{"x":[1,2]}}')
    assert frame == Hello("bob", "")
    assert decode_frame(b'{"v":1,"t":"left","name":"x","ts":1,"seq":2}') == Left("x", 1, 2)


def test_a_hello_names_the_datagram_transport_or_nothing() -> None:
    hello = Hello("bob", "netchat/0.1", proto="rudp")
    assert encode_frame(hello) == (
        b'{"v":1,"t":"hello","name":"bob","client":"netchat/0.1","proto":"rudp"}\n'
    )
    assert decode_frame(encode_frame(hello)) == hello
    older = decode_frame(b'{"v":1,"t":"hello","name":"bob"}')
    assert isinstance(older, Hello) and older.proto == ""  # TCP, older UDP
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(b'{"v":1,"t":"hello","name":"bob","proto":7}')
    assert info.value.code == "malformed"


# --- encode errors ----------------------------------------------------------------


def test_oversize_encode_raises_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(Say("x" * MAX_FRAME_BYTES))
    assert info.value.code == "too-large"
    assert not isinstance(info.value, RemoteProtocolError)
    # Multi-byte text is measured in bytes: 22,000 Cyrillic letters are 44,000 bytes (fine),
    # 33,000 are 66,000 (too large).
    assert len(encode_frame(Say("я" * 22_000))) < MAX_FRAME_BYTES
    with pytest.raises(LocalProtocolError):
        encode_frame(Say("я" * 33_000))


def test_largest_encodable_frame_decodes() -> None:
    overhead = len(encode_frame(Say("")))
    line = encode_frame(Say("x" * (MAX_FRAME_BYTES - overhead)))
    assert len(line) == MAX_FRAME_BYTES
    assert decode_frame(line) == Say("x" * (MAX_FRAME_BYTES - overhead))
    with pytest.raises(LocalProtocolError):
        encode_frame(Say("x" * (MAX_FRAME_BYTES - overhead + 1)))


def test_encoding_a_lone_surrogate_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(Say("bad \ud800"))
    assert info.value.code == "bad-utf8"


WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(), min_size=1, max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _fits(value: Any, expected: Any) -> bool:
    if isinstance(value, bool):
        return expected is bool
    if expected is int:
        return isinstance(value, int)
    if expected is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if expected in (str, bool):
        return isinstance(value, expected)
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


@SETTINGS
@given(type_name=st.sampled_from(sorted(FRAME_TYPES)), data=st.data())
def test_constructing_with_a_wrong_field_type_raises(type_name: str, data: st.DataObject) -> None:
    cls, spec = FRAME_TYPES[type_name]
    if not spec:
        return  # who, help: nothing to get wrong
    kwargs = {name: data.draw(value_strategy(t)) for name, t in spec.items()}
    field = data.draw(st.sampled_from(sorted(spec)))
    wrong = data.draw(WRONG_VALUES.filter(lambda v: not _fits(v, spec[field])))
    kwargs[field] = wrong
    with pytest.raises(LocalProtocolError) as info:
        cls(**kwargs)
    assert field in str(info.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Say(5),  # type: ignore[arg-type]
        lambda: Hello(None),  # type: ignore[arg-type]
        lambda: Message("a", "b", "now", 1),  # type: ignore[arg-type]
        lambda: Message("a", "b", 1.0, 1.5),  # type: ignore[arg-type]
        lambda: Message("a", "b", 1.0, True),  # bool is not a number on the wire
        lambda: Message("a", "b", True, 1),
        lambda: Message("a", "b", 1.0, 1, action=1),  # type: ignore[arg-type]
        lambda: Message("a", "b", math.nan, 1),
        lambda: Message("a", "b", math.inf, 1),
        lambda: Joined("a", 10**400, 1),
        lambda: Welcome("a", [1, 2]),  # type: ignore[arg-type]
        lambda: Welcome("a", "ab"),  # type: ignore[arg-type]
        lambda: UserList(None),  # type: ignore[arg-type]
        lambda: Private(b"bob", "hi"),  # type: ignore[arg-type]
    ],
)
def test_constructing_with_wrong_types_examples(build: Any) -> None:
    with pytest.raises(LocalProtocolError):
        build()


# --- decoding hostile input ---------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decode_any_bytes_raises_only_remote_protocol_error(data: bytes) -> None:
    assert_decode_fails_cleanly(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_decode_any_str_raises_only_remote_protocol_error(data: str) -> None:
    frame = assert_decode_fails_cleanly(data)
    if frame is not None:
        encode_frame(frame)  # whatever decodes can be sent on to others


MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.integers(0, 10_000),
    st.integers(0, 255),
)


@SETTINGS
@given(ANY_FRAME, st.lists(MUTATION, min_size=1, max_size=4))
def test_decode_mutated_frames(frame: Frame, mutations: list[tuple[str, int, int]]) -> None:
    data = bytearray(encode_frame(frame))
    for op, position, byte in mutations:
        if not data:
            break
        i = position % len(data)
        if op == "flip":
            data[i] ^= byte or 1
        elif op == "insert":
            data.insert(i, byte)
        elif op == "delete":
            del data[i]
        else:
            del data[i:]
    decoded = assert_decode_fails_cleanly(bytes(data))
    if decoded is not None:
        assert len(encode_frame(decoded)) <= MAX_FRAME_BYTES  # and is re-encodable


@SETTINGS
@given(type_name=st.sampled_from(sorted(FRAME_TYPES)), data=st.data())
def test_decode_wrong_field_types(type_name: str, data: st.DataObject) -> None:
    _, spec = FRAME_TYPES[type_name]
    if not spec:
        return
    body = frame_to_dict(data.draw(frame_strategy(type_name)))
    field = data.draw(st.sampled_from(sorted(spec)))
    body[field] = data.draw(JSON_VALUES.filter(lambda v: not _fits(v, spec[field])))
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(json.dumps(body).encode())
    assert info.value.code == "malformed"


@SETTINGS
@given(ANY_FRAME, st.data())
def test_decode_arbitrary_json_objects(frame: Frame, data: st.DataObject) -> None:
    body = frame_to_dict(frame)
    extra = data.draw(st.dictionaries(st.sampled_from([*body, "x", "v", "t"]), JSON_VALUES))
    body.update(extra)
    decoded = assert_decode_fails_cleanly(json.dumps(body, ensure_ascii=data.draw(st.booleans())))
    if decoded is not None:
        encode_frame(decoded)


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"", "malformed"),
        (b"\n", "malformed"),
        (b"hello", "malformed"),
        (b"[1,2]", "malformed"),
        (b'"text"', "malformed"),
        (b"null", "malformed"),
        (b"{", "malformed"),
        (b'{"v":1,"t":"say","text":"hi"} trailing', "malformed"),
        (b"[" * 60_000, "malformed"),  # nested arrays: no RecursionError escapes
        (b"[" * 30_000 + b"]" * 30_000, "malformed"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "malformed"),
        (b'{"v":1,"t":"message","sender":"a","text":"b","ts":NaN,"seq":1}', "malformed"),
        (b'{"v":1,"t":"message","sender":"a","text":"b","ts":Infinity,"seq":1}', "malformed"),
        (b'{"v":1,"t":"message","sender":"a","text":"b","ts":-Infinity,"seq":1}', "malformed"),
        (b'{"v":1,"t":"message","sender":"a","text":"b","ts":1e400,"seq":1}', "malformed"),
        (
            b'{"v":1,"t":"message","sender":"a","text":"b","ts":1' + b"0" * 400 + b',"seq":1}',
            "malformed",
        ),
        (
            b'{"v":1,"t":"message","sender":"a","text":"b","ts":1,"seq":1' + b"0" * 5000 + b"}",
            "malformed",
        ),  # Python's int-digits limit raises ValueError inside json
        (b'{"v":1,"t":"message","sender":"a","text":"b","ts":1,"seq":1.0}', "malformed"),
        (b'{"v":1,"t":"message","sender":"a","text":"b","ts":1,"seq":true}', "malformed"),
        (b'{"v":1,"t":"say"}', "malformed"),
        (b'{"v":1,"t":"say","text":null}', "malformed"),
        (b'{"v":1,"t":"say","text":["hi"]}', "malformed"),
        (b'{"v":1,"t":"users","users":["a",1]}', "malformed"),
        (b'{"v":1,"t":"users","users":"ab"}', "malformed"),
        (b'{"v":1,"t":"say","text":"\\ud800"}', "bad-utf8"),
        (b'{"v":1,"t":"say","text":"ok \\udfff"}', "bad-utf8"),
        (b'{"v":1,"t":"users","users":["\\ud83d"]}', "bad-utf8"),
        (b'{"v":1,"t":"say","text":"\xff"}', "bad-utf8"),
        (b'{"v":1,"t":"say","text":"\xd0"}', "bad-utf8"),  # truncated 2-byte sequence
        (b'{"v":1,"t":"say","text":"\xed\xa0\x80"}', "bad-utf8"),  # CESU surrogate
        (b'{"v":2,"t":"say","text":"hi"}', "version"),
        (b'{"v":0,"t":"say","text":"hi"}', "version"),
        (b'{"v":"1","t":"say","text":"hi"}', "version"),
        (b'{"v":true,"t":"say","text":"hi"}', "version"),
        (b'{"v":null,"t":"say","text":"hi"}', "version"),
        (b'{"t":"say","text":"hi"}', "version"),
        (b'{"v":1,"t":"shout","text":"hi"}', "unknown-type"),
        (b'{"v":1,"t":"Say","text":"hi"}', "unknown-type"),
        (b'{"v":1,"t":1,"text":"hi"}', "unknown-type"),
        (b'{"v":1,"text":"hi"}', "unknown-type"),
        (b'{"v":1,"t":"__init__"}', "unknown-type"),
    ],
)
def test_decode_errors_have_codes(line: bytes, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame(line)
    assert info.value.code == code


def test_valid_surrogate_pair_escape_is_fine() -> None:
    assert decode_frame(b'{"v":1,"t":"say","text":"\\ud83d\\udc4b"}') == Say("👋")


def test_raw_lone_surrogate_in_str_input_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frame('{"v":1,"t":"say","text":"\ud800"}')
    assert info.value.code == "bad-utf8"


def test_decode_too_large() -> None:
    line = b'{"v":1,"t":"say","text":"' + b"x" * MAX_FRAME_BYTES + b'"}'
    with pytest.raises(FrameTooLarge) as info:
        decode_frame(line)
    assert info.value.code == "too-large"
    assert isinstance(info.value, RemoteProtocolError)
    # A str is measured in UTF-8 bytes, as on the wire.
    with pytest.raises(FrameTooLarge):
        decode_frame('{"v":1,"t":"say","text":"' + "я" * 40_000 + '"}')


def test_version_1_as_float_is_accepted() -> None:
    # JSON has one number type; 1.0 == 1.
    assert decode_frame(b'{"v":1.0,"t":"ping"}') == Ping()


def test_error_hierarchy() -> None:
    assert issubclass(FrameTooLarge, RemoteProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert Error("x", "y").suggestion == ""

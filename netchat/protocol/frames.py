"""Frames: the typed messages of the netchat protocol, and their wire encoding.

Strategy
--------
A frame is a small frozen dataclass, validated on construction, exactly like h11's
events: code that holds a ``Message`` knows its fields have the right types. On the
wire a frame is one JSON object on one line::

    {"v":1,"t":"message","sender":"alice","text":"hi","ts":1700000000.5,"seq":7}

JSON was chosen over a binary layout because students read it in Wireshark and in
``nc``, Python ships a fast C codec for it, and JSON string escaping guarantees that
an encoded frame never contains a raw newline, so ``\\n`` alone delimits frames on a
stream. UTF-8 is written as-is (``ensure_ascii=False``): Cyrillic costs 2 bytes, not 6.

Decoding is strict where it protects us (``v`` and ``t`` must be known, fields must
have their declared types, no frame larger than :data:`MAX_FRAME_BYTES`) and lenient
where it helps evolution (unknown keys are ignored, so a newer peer can add fields).
Every failure is a :class:`RemoteProtocolError`; nothing else escapes ``decode_frame``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ..errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from .limits import MAX_FRAME_BYTES, PROTOCOL_VERSION

__all__ = [
    "FRAME_TYPES",
    "Act",
    "Error",
    "Frame",
    "Hello",
    "Help",
    "Info",
    "Joined",
    "Left",
    "Message",
    "Nick",
    "Ping",
    "Pong",
    "Presence",
    "Private",
    "PrivateMessage",
    "Quit",
    "Renamed",
    "Say",
    "Shutdown",
    "UserList",
    "Welcome",
    "Who",
    "decode_frame",
    "encode_frame",
    "frame_to_dict",
]


@dataclass(frozen=True)
class Frame:
    """Base class of all frames; ``TYPE`` is the value of the ``t`` key on the wire."""

    TYPE: ClassVar[str] = ""
    #: (field, predicate, type name) for each field, set when the type is registered
    FIELD_CHECKS: ClassVar[tuple[tuple[str, typing.Callable[[object], bool], str], ...]] = ()


#: type name -> (frame class, {field name: python type})
FRAME_TYPES: dict[str, tuple[type[Frame], dict[str, Any]]] = {}

_F = TypeVar("_F", bound=type[Frame])


def _register(type_name: str) -> typing.Callable[[_F], _F]:
    def decorate(cls: _F) -> _F:
        cls.TYPE = type_name
        hints = typing.get_type_hints(cls)
        spec = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        FRAME_TYPES[type_name] = (cls, spec)
        checks = tuple(
            (name, _checker(expected), getattr(expected, "__name__", str(expected)))
            for name, expected in spec.items()
        )
        cls.FIELD_CHECKS = checks
        return cls

    return decorate


def _checker(expected: Any) -> typing.Callable[[object], bool]:
    """A predicate for one declared field type, chosen once per field at import.

    Frames are built for every message the server handles, so the checks are
    specialised up front instead of dispatching on the type on every construction.
    """
    if expected is str:
        return lambda value: isinstance(value, str)
    if expected is bool:
        return lambda value: isinstance(value, bool)
    if expected is int:
        # bool is a subclass of int in Python but not a number on the wire.
        return lambda value: (
            value.__class__ is int or (isinstance(value, int) and not isinstance(value, bool))
        )
    if expected is float:
        # The common case (a finite float from our own clock) answers at once.
        return lambda value: (
            (value.__class__ is float and math.isfinite(value)) or _check_type(value, float)
        )
    return lambda value: _check_type(value, expected)


def _check_type(value: object, expected: Any) -> bool:
    # bool is a subclass of int in Python but not a number on the wire.
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        # NaN and infinities (and ints beyond float range, e.g. from ``1e400``-sized
        # literals) cannot be encoded with allow_nan=False nor turned into a clock time.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            return math.isfinite(value)
        except OverflowError:
            return False
    if expected is str or expected is bool:
        return isinstance(value, expected)
    if typing.get_origin(expected) is tuple:
        return isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)
    raise TypeError(f"unsupported frame field type {expected!r}")  # pragma: no cover


#: Field metadata: leave the field out of the JSON while it is empty.
_OMIT_EMPTY = "omit_empty"


class _Validated(Frame):
    """Mixin: check declared field types on construction, like h11's events."""

    def __post_init__(self) -> None:
        for name, is_valid, wanted in typing.cast(Frame, self).FIELD_CHECKS:
            value = getattr(self, name)
            if not is_valid(value):
                raise LocalProtocolError(
                    f"{type(self).__name__}.{name} must be {wanted}, not {type(value).__name__}"
                )
            if value.__class__ is list:
                object.__setattr__(self, name, tuple(value))


# --- client -> server ---------------------------------------------------------


@_register("hello")
@dataclass(frozen=True)
class Hello(_Validated, Frame):
    """First frame of a structured client: asks to join under ``name``.

    ``password`` is given to a TCP server that asks for one (its banner says so); it
    is left out of the JSON when empty and never shown in a repr. ``proto`` is the
    ``--proto`` a datagram client speaks (``udp``, ``rudp``), so a relay can refuse a
    client of the other one; ``""`` from TCP clients and from UDP clients older than
    the field.
    """

    name: str
    client: str = ""
    password: str = dataclasses.field(default="", repr=False, metadata={_OMIT_EMPTY: True})
    proto: str = dataclasses.field(default="", metadata={_OMIT_EMPTY: True})


@_register("say")
@dataclass(frozen=True)
class Say(_Validated, Frame):
    """A chat line for everyone."""

    text: str


@_register("me")
@dataclass(frozen=True)
class Act(_Validated, Frame):
    """``/me waves``: an action for everyone."""

    text: str


@_register("msg")
@dataclass(frozen=True)
class Private(_Validated, Frame):
    """``/msg bob hi``: a private message for ``to`` only."""

    to: str
    text: str


@_register("nick")
@dataclass(frozen=True)
class Nick(_Validated, Frame):
    """``/nick NEW``: change one's name."""

    name: str


@_register("who")
@dataclass(frozen=True)
class Who(_Validated, Frame):
    """``/who``: ask for the list of users."""


@_register("help")
@dataclass(frozen=True)
class Help(_Validated, Frame):
    """``/help``: ask for the command summary."""


@_register("quit")
@dataclass(frozen=True)
class Quit(_Validated, Frame):
    """``/quit [reason]``: leave the chat."""

    reason: str = ""


# --- both directions -----------------------------------------------------------


@_register("ping")
@dataclass(frozen=True)
class Ping(_Validated, Frame):
    """Liveness probe; the receiver answers with a ``Pong`` carrying the same token."""

    token: str = ""


@_register("pong")
@dataclass(frozen=True)
class Pong(_Validated, Frame):
    """Answer to a ``Ping``."""

    token: str = ""


# --- server -> client ----------------------------------------------------------


@_register("welcome")
@dataclass(frozen=True)
class Welcome(_Validated, Frame):
    """The join succeeded: ``name`` is ours, ``users`` are online (us included)."""

    name: str
    users: tuple[str, ...] = ()
    server: str = ""
    motd: str = ""


@_register("message")
@dataclass(frozen=True)
class Message(_Validated, Frame):
    """A chat line (or ``/me`` action) stamped by the server."""

    sender: str
    text: str
    ts: float
    seq: int
    action: bool = False


@_register("private")
@dataclass(frozen=True)
class PrivateMessage(_Validated, Frame):
    """A private message, delivered to ``to`` and echoed to ``sender`` only."""

    sender: str
    to: str
    text: str
    ts: float
    seq: int


@_register("joined")
@dataclass(frozen=True)
class Joined(_Validated, Frame):
    """``name`` joined the chat."""

    name: str
    ts: float
    seq: int


@_register("left")
@dataclass(frozen=True)
class Left(_Validated, Frame):
    """``name`` left.

    ``reason``: quit, lost, timeout, dropped or shutdown; ``detail`` is free text.
    """

    name: str
    ts: float
    seq: int
    reason: str = "quit"
    detail: str = ""


@_register("presence")
@dataclass(frozen=True)
class Presence(_Validated, Frame):
    """Many arrivals and departures in one notice, sent instead of one ``joined`` or
    ``left`` frame each while users come and go faster than a chat can show.

    ``more_joined`` and ``more_left`` count names left out to keep the frame small.
    """

    joined: tuple[str, ...]
    left: tuple[str, ...]
    ts: float
    seq: int
    more_joined: int = 0
    more_left: int = 0


@_register("renamed")
@dataclass(frozen=True)
class Renamed(_Validated, Frame):
    """``old`` is now known as ``new``."""

    old: str
    new: str
    ts: float
    seq: int


@_register("users")
@dataclass(frozen=True)
class UserList(_Validated, Frame):
    """Answer to ``/who``."""

    users: tuple[str, ...]


@_register("info")
@dataclass(frozen=True)
class Info(_Validated, Frame):
    """Server text meant for one user (help, notices); may span lines."""

    text: str


@_register("error")
@dataclass(frozen=True)
class Error(_Validated, Frame):
    """Something we sent was refused. ``code`` is machine-readable (see PROTOCOL.md)."""

    code: str
    text: str
    suggestion: str = ""


@_register("shutdown")
@dataclass(frozen=True)
class Shutdown(_Validated, Frame):
    """The server is going away; the connection closes after this frame."""

    reason: str = ""


# --- codec ---------------------------------------------------------------------

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> typing.NoReturn:
    raise ValueError(f"{name} is not allowed")


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, tuple):
        return any(_has_surrogate(v) for v in value)
    return False


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    """The JSON object of ``frame``: ``v`` and ``t`` first, then its fields."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": frame.TYPE}
    for field in dataclasses.fields(frame):
        value = getattr(frame, field.name)
        if not value and field.metadata.get(_OMIT_EMPTY):
            continue
        body[field.name] = list(value) if isinstance(value, tuple) else value
    return body


def encode_frame(frame: Frame) -> bytes:
    """Encode ``frame`` as one UTF-8 JSON line ending in ``\\n``.

    Raises:
        LocalProtocolError: the encoded frame would exceed :data:`MAX_FRAME_BYTES`.
    """
    try:
        data = (_encoder.encode(frame_to_dict(frame)) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(
            f"{frame.TYPE} frame contains a lone UTF-16 surrogate", code="bad-utf8"
        ) from None
    except ValueError:  # a non-finite float slipped past validation (object.__setattr__)
        raise LocalProtocolError(f"{frame.TYPE} frame is not encodable", code="malformed") from None
    if len(data) > MAX_FRAME_BYTES:
        raise LocalProtocolError(
            f"{frame.TYPE} frame of {len(data)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit",
            code="too-large",
        )
    return data


def decode_frame(line: bytes | str) -> Frame:
    """Decode one frame (a JSON object, with or without its trailing newline).

    Raises:
        FrameTooLarge: ``line`` is longer than :data:`MAX_FRAME_BYTES`.
        RemoteProtocolError: anything else wrong: bad UTF-8, not JSON, not an object,
            unsupported version, unknown type, missing or mistyped field.
    """
    # A str is measured in UTF-8 bytes, as it would be on the wire.
    size = len(line) if isinstance(line, bytes) else len(line.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame longer than {MAX_FRAME_BYTES} bytes")
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        body = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(
            f"frame is not valid UTF-8: {exc.reason}", code="bad-utf8"
        ) from None
    except (ValueError, RecursionError):
        # ValueError covers NaN/Infinity too (see _reject_constant); RecursionError a
        # deeply nested array, which json's C scanner refuses rather than overflowing.
        raise RemoteProtocolError("frame is not valid JSON", code="malformed") from None
    if not isinstance(body, dict):
        raise RemoteProtocolError("frame is not a JSON object", code="malformed")
    version = body.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise RemoteProtocolError(
            f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})",
            code="version",
        )
    type_name = body.get("t")
    if not isinstance(type_name, str) or type_name not in FRAME_TYPES:
        raise RemoteProtocolError(f"unknown frame type {type_name!r}", code="unknown-type")
    cls, spec = FRAME_TYPES[type_name]
    kwargs: dict[str, Any] = {}
    for name, expected in spec.items():
        if name not in body:
            continue  # a required field left out is caught by the constructor below
        value = body[name]
        if not _check_type(value, expected):
            raise RemoteProtocolError(f"{type_name}.{name} has the wrong type", code="malformed")
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    # In bytes only a \\u escape can smuggle a lone surrogate past UTF-8 decoding (a str
    # may hold one raw), and a str holding one cannot be re-encoded for the other
    # users: refuse it here.
    if (isinstance(line, str) or "\\u" in text) and any(_has_surrogate(v) for v in kwargs.values()):
        raise RemoteProtocolError("frame contains a lone UTF-16 surrogate", code="bad-utf8")
    try:
        return cls(**kwargs)
    except TypeError:
        raise RemoteProtocolError(
            f"{type_name} frame is missing a field", code="malformed"
        ) from None

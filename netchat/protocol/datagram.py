"""The UDP datagram layer: packet codec, sequencing, fragments, cookies — sans-I/O.

Strategy
--------
A datagram is a small fixed binary header followed by a payload. The payload of
chat traffic is exactly the newline-terminated JSON of :func:`~.frames.encode_frame`,
so the hub's :class:`~netchat.hub.Outbound` encodes a broadcast frame once and the
relay only prepends a 13-byte header per peer. Binary (``struct``) headers keep that
per-peer work to one ``pack`` call; JSON payloads keep the chat readable in Wireshark.

Every datagram starts with ``b"nc"``, the layout version and a kind byte
(:class:`Kind`). Kinds and their bodies (big-endian, see :data:`HEADERS`)::

    HELLO   cookie(16)  [Hello JSON]   client -> server; all-zero cookie = "send me one"
    COOKIE  cookie(16)                 server -> client; never larger than the HELLO
    ACCEPT  first_seq(8) heartbeat_ms(4) name(UTF-8)   the join succeeded
    REJECT  Error JSON                 the join was refused (name taken, full, …)
    DATA    seq(8) flags(1) payload    frames, both directions (flags: MORE, CONT)
    PING    nonce(8) ack(8)            client heartbeat
    PONG    nonce(8) next_seq(8) [received(8) [report(36)]]   server answer; next_seq
                                       reveals tail loss, received the client's highest
                                       unit accepted; an rudp relay adds its view of
                                       the session
    BYE     reason(UTF-8)              either side ends the session
    NOTICE  code(ASCII)                stateless error for an unvalidated source
    PEER    instance(8) seq(8) JSON    serverless multicast/broadcast peers
    ACK     cumulative(8) echo(8) delay_us(4) window(2) count(1) ranges   rudp receipts

Sequence numbers count *units*, not datagrams: a unit is one frame, or one piece of
a frame too large for a datagram. A DATA datagram numbered ``seq`` carries the
units ``seq, seq+1, …``: each newline-terminated frame in the payload is a unit;
with :data:`MORE` set a final unterminated piece is one more unit, continued by the
next datagram, whose :data:`CONT` flag says its first unit is that continuation. So batching many frames into one datagram and fragmenting one frame over
many datagrams are the same rule, and a lost datagram reports exactly how many
messages went missing. The receiver's :class:`SequenceTracker` (clock passed in)
puts units back in order, drops duplicates, waits a short window for late ones and
then reports a :class:`Gap`; :class:`Reassembler` glues pieces and drops a frame
one of whose pieces was lost.

Address validation follows DTLS's HelloVerifyRequest and QUIC's Retry: a
:class:`CookieJar` cookie is an HMAC over the source address, port and a time
bucket under a secret that is replaced every bucket. Checking one needs no
per-source state, so a spoofed source costs the server nothing and receives at most
a COOKIE no larger than what it sent. :class:`SourceLimiter` rate-limits stateless
replies in a fixed-size table, so even the limiter does not grow with sources.

Decoding is total: any bytes either decode or raise
:class:`~netchat.errors.RemoteProtocolError` (with a short ``code`` fit for a NOTICE).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import LocalProtocolError, RemoteProtocolError
from .limits import MAX_DATAGRAM_BYTES, MAX_FRAME_BYTES

__all__ = [
    "CONT",
    "COOKIE_BYTES",
    "DATAGRAM_VERSION",
    "DATA_HEADER_BYTES",
    "HEADERS",
    "MAGIC",
    "MAX_SACK_RANGES",
    "MORE",
    "NO_COOKIE",
    "Accept",
    "Ack",
    "Bye",
    "Cookie",
    "CookieJar",
    "Data",
    "Datagram",
    "Gap",
    "Hello",
    "Kind",
    "Notice",
    "PeerData",
    "Ping",
    "Pong",
    "Reassembler",
    "Reject",
    "ReplayWindow",
    "Report",
    "SequenceTracker",
    "SourceLimiter",
    "decode_datagram",
    "encode_accept",
    "encode_ack",
    "encode_bye",
    "encode_cookie",
    "encode_data",
    "encode_hello",
    "encode_notice",
    "encode_peer",
    "encode_ping",
    "encode_pong",
    "encode_reject",
    "kind_from_byte",
    "pack_data",
    "read_prefix",
]

MAGIC = b"nc"
DATAGRAM_VERSION = 1
COOKIE_BYTES = 16
#: DATA flag: the payload ends in an unterminated piece continued by the next unit.
MORE = 0x01
#: DATA flag: the first unit continues the piece that ended the previous unit.
CONT = 0x02
_KNOWN_FLAGS = MORE | CONT
#: Longest NOTICE code; codes are short ASCII words like ``not-joined``.
MAX_NOTICE_CODE = 24
#: Longest BYE reason in bytes.
MAX_BYE_REASON = 200


class Kind(enum.IntEnum):
    """The kind byte of a datagram."""

    HELLO = 1
    COOKIE = 2
    ACCEPT = 3
    REJECT = 4
    DATA = 5
    PING = 6
    PONG = 7
    BYE = 8
    NOTICE = 9
    PEER = 10
    ACK = 11


_PREFIX = struct.Struct("!2sBB")
#: Header layout of each kind, the common 4-byte prefix included.
HEADERS: dict[Kind, struct.Struct] = {
    Kind.HELLO: struct.Struct(f"!2sBB{COOKIE_BYTES}s"),
    Kind.COOKIE: struct.Struct(f"!2sBB{COOKIE_BYTES}s"),
    Kind.ACCEPT: struct.Struct("!2sBBQI"),
    Kind.REJECT: _PREFIX,
    Kind.DATA: struct.Struct("!2sBBQB"),
    Kind.PING: struct.Struct("!2sBBQQ"),
    Kind.PONG: struct.Struct("!2sBBQQ"),
    Kind.BYE: _PREFIX,
    Kind.NOTICE: _PREFIX,
    Kind.PEER: struct.Struct("!2sBB8sQ"),
    Kind.ACK: struct.Struct("!2sBBQQIHB"),
}
_DATA = HEADERS[Kind.DATA]
_U64 = struct.Struct("!Q")
DATA_HEADER_BYTES = _DATA.size
NO_COOKIE = bytes(COOKIE_BYTES)


# --- datagrams -------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A join: ``cookie`` is all zeros when asking for one; ``payload`` a Hello frame or empty."""

    cookie: bytes
    payload: bytes


@dataclass(frozen=True)
class Cookie:
    """The server's address-validation token, to be echoed in the next HELLO."""

    cookie: bytes


@dataclass(frozen=True)
class Accept:
    """The join succeeded: sequenced DATA to us starts at ``first_seq``."""

    first_seq: int
    heartbeat_ms: int
    name: str


@dataclass(frozen=True)
class Reject:
    """The join was refused; ``payload`` is an Error frame."""

    payload: bytes


@dataclass(frozen=True)
class Data:
    """Sequenced units ``seq .. seq+len(units)-1``.

    ``cont``: the first unit continues a piece from the previous datagram; ``more``:
    the last unit is a piece continued by the next one.
    """

    seq: int
    units: tuple[bytes, ...]
    more: bool = False
    cont: bool = False


@dataclass(frozen=True)
class Ping:
    """Client heartbeat; ``ack`` is the next sequence number it expects."""

    nonce: int
    ack: int


@dataclass(frozen=True)
class Report:
    """What an rudp relay knows of one member's session and the member cannot see: its
    sender's side of server → client and its receiver's side of client → server.

    Carried by the relay's PONGs, so the client's ``/stats`` shows both ends of each
    direction (as of the latest heartbeat). Counts saturate at their field's maximum.
    """

    sent: int
    retransmitted: int
    acknowledged: int
    rto_us: int
    srtt_us: int  # 0 before the first sample
    window_in_use: int
    window: int
    received: int
    duplicates: int
    held_back: int


@dataclass(frozen=True)
class Pong:
    """Heartbeat answer; ``next_seq`` is the number the server's next DATA unit will have.

    ``received`` is the highest number of the client's own units the server has
    accepted (0: none yet), so a client learns when someone sent numbers under its
    address that it never used; ``None`` from a server that does not say. ``report``
    is an rudp relay's view of the session (``None`` from a UDP relay).
    """

    nonce: int
    next_seq: int
    received: int | None = None
    report: Report | None = None


@dataclass(frozen=True)
class Bye:
    """The sender ends the session."""

    reason: str


@dataclass(frozen=True)
class Notice:
    """A stateless error code for a source that has no session."""

    code: str


@dataclass(frozen=True)
class PeerData:
    """A serverless peer's frame, numbered in that peer ``instance``'s own sequence."""

    instance: bytes
    seq: int
    payload: bytes


@dataclass(frozen=True)
class Ack:
    """A ``--proto rudp`` receipt: every unit before ``cumulative`` arrived, and so did
    every unit in each ``[start, end)`` of ``ranges`` (SACK, ascending, disjoint).

    ``echo`` is the first unit of the DATA datagram that arrived last and ``delay_us``
    how long the receiver held this ACK since then, so the sender can time a round
    trip; ``window`` is how many units from ``cumulative`` on the receiver accepts.
    See :mod:`netchat.protocol.reliable`.
    """

    cumulative: int
    echo: int
    delay_us: int
    window: int
    ranges: tuple[tuple[int, int], ...] = ()


Datagram = Hello | Cookie | Accept | Reject | Data | Ping | Pong | Bye | Notice | PeerData | Ack


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(what, code="malformed")


def _split_units(payload: bytes, more: bool) -> tuple[bytes, ...]:
    pieces = payload.split(b"\n")
    tail = pieces.pop()  # b"" when the payload ends in a newline
    units = [piece + b"\n" for piece in pieces]
    if more:
        if not tail:
            raise _malformed("DATA with MORE set must end in an unterminated piece")
        units.append(tail)
    elif tail:
        raise _malformed("DATA payload must end in a newline")
    if not units:
        raise _malformed("DATA without units")
    return tuple(units)


def read_prefix(data: bytes) -> tuple[int, int]:
    """``(layout version, kind byte)`` of anything that claims to be a netchat datagram,
    sealed (:mod:`netchat.protocol.seal`) or not; the version is left to the caller.

    Raises:
        RemoteProtocolError: over :data:`MAX_DATAGRAM_BYTES` (``code="too-large"``) or
            not netchat (``"magic"``).
    """
    if len(data) > MAX_DATAGRAM_BYTES:
        raise RemoteProtocolError(
            f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM_BYTES}", code="too-large"
        )
    if len(data) < _PREFIX.size or data[:2] != MAGIC:
        raise RemoteProtocolError("not a netchat datagram", code="magic")
    _, version, kind_byte = _PREFIX.unpack_from(data)
    return version, kind_byte


def kind_from_byte(kind_byte: int) -> Kind:
    """Raises: RemoteProtocolError (``code="unknown-kind"``)."""
    try:
        return Kind(kind_byte)
    except ValueError:
        raise RemoteProtocolError(
            f"unknown datagram kind {kind_byte}", code="unknown-kind"
        ) from None


def decode_datagram(data: bytes) -> Datagram:
    """Parse one datagram.

    Raises:
        RemoteProtocolError: not netchat (``code="magic"``), another layout version
            (``"version"``), unknown kind (``"unknown-kind"``), over
            :data:`MAX_DATAGRAM_BYTES` (``"too-large"``) or malformed (``"malformed"``).
    """
    version, kind_byte = read_prefix(data)
    if version != DATAGRAM_VERSION:
        raise RemoteProtocolError(
            f"datagram layout version {version} (this side speaks {DATAGRAM_VERSION})",
            code="version",
        )
    kind = kind_from_byte(kind_byte)
    header = HEADERS[kind]
    if len(data) < header.size:
        raise _malformed(f"truncated {kind.name} datagram")
    fields = header.unpack_from(data)[3:]
    body = data[header.size :]
    try:
        if kind is Kind.ACK:  # first: most of what a rudp relay receives
            return _decode_ack(fields, body)
        if kind is Kind.HELLO:
            return Hello(fields[0], body)
        if kind is Kind.COOKIE:
            return Cookie(fields[0])
        if kind is Kind.ACCEPT:
            return Accept(fields[0], fields[1], body.decode("utf-8"))
        if kind is Kind.REJECT:
            return Reject(body)
        if kind is Kind.DATA:
            seq, flags = fields
            if flags & ~_KNOWN_FLAGS:
                raise _malformed(f"unknown DATA flags {flags:#x}")
            more = bool(flags & MORE)
            return Data(seq, _split_units(body, more), more, bool(flags & CONT))
        if kind is Kind.PING:
            return Ping(fields[0], fields[1])
        if kind is Kind.PONG:
            if not body:
                return Pong(fields[0], fields[1])
            if len(body) < _U64.size:
                raise _malformed("a PONG's received field has 8 bytes")
            received = _U64.unpack_from(body)[0]
            rest = body[_U64.size :]
            if not rest:
                return Pong(fields[0], fields[1], received)
            if len(rest) != _REPORT.size:
                raise _malformed("a PONG's report has 36 bytes")
            return Pong(fields[0], fields[1], received, Report(*_REPORT.unpack(rest)))
        if kind is Kind.BYE:
            return Bye(body[:MAX_BYE_REASON].decode("utf-8", "replace"))
        if kind is Kind.NOTICE:
            if len(body) > MAX_NOTICE_CODE or not body.isascii():
                raise _malformed("NOTICE code must be short ASCII")
            return Notice(body.decode("ascii"))
        return PeerData(fields[0], fields[1], body)
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{kind.name} text is not UTF-8", code="bad-utf8") from None


#: Most SACK ranges in one ACK: every pattern of holes in the default window of 64
#: units, in under 300 bytes; with a wider window the receiver lists the highest
#: ranges (see :mod:`netchat.protocol.reliable`).
MAX_SACK_RANGES = 32
#: One SACK range: its start as an offset above ``cumulative``, and its length.
_SACK_RANGE = struct.Struct("!II")
_U32 = 0xFFFF_FFFF


def _decode_ack(fields: tuple[int, ...], body: bytes) -> Ack:
    cumulative, echo, delay_us, window, count = fields
    if count > MAX_SACK_RANGES or len(body) != count * _SACK_RANGE.size:
        raise _malformed("ACK range count does not match its body")
    ranges = []
    lowest = 1  # offset 0 is the unit the cumulative ack says is missing
    for offset, length in _SACK_RANGE.iter_unpack(body):
        if offset < lowest or length == 0:
            raise _malformed("ACK ranges must be non-empty, ascending and apart")
        ranges.append((cumulative + offset, cumulative + offset + length))
        lowest = offset + length + 1
    return Ack(cumulative, echo, delay_us, window, tuple(ranges))


def _prefix(kind: Kind) -> bytes:
    return _PREFIX.pack(MAGIC, DATAGRAM_VERSION, kind)


def encode_hello(cookie: bytes, payload: bytes = b"") -> bytes:
    """A HELLO; ``cookie`` is :data:`NO_COOKIE` to ask for one."""
    if len(cookie) != COOKIE_BYTES:
        raise LocalProtocolError(f"a cookie has {COOKIE_BYTES} bytes")
    return HEADERS[Kind.HELLO].pack(MAGIC, DATAGRAM_VERSION, Kind.HELLO, cookie) + payload


def encode_cookie(cookie: bytes) -> bytes:
    return HEADERS[Kind.COOKIE].pack(MAGIC, DATAGRAM_VERSION, Kind.COOKIE, cookie)


def encode_accept(first_seq: int, heartbeat_ms: int, name: str) -> bytes:
    return HEADERS[Kind.ACCEPT].pack(
        MAGIC, DATAGRAM_VERSION, Kind.ACCEPT, first_seq, heartbeat_ms
    ) + name.encode("utf-8")


def encode_reject(error_json: bytes) -> bytes:
    return _prefix(Kind.REJECT) + error_json


def encode_data(seq: int, payload: bytes, *, more: bool = False, cont: bool = False) -> bytes:
    """One DATA datagram; ``payload`` is one or more newline-terminated frames, or a piece."""
    flags = (MORE if more else 0) | (CONT if cont else 0)
    return _DATA.pack(MAGIC, DATAGRAM_VERSION, Kind.DATA, seq, flags) + payload


def encode_ping(nonce: int, ack: int) -> bytes:
    return HEADERS[Kind.PING].pack(MAGIC, DATAGRAM_VERSION, Kind.PING, nonce, ack)


#: A PONG's report: five 4-byte counts, two 2-byte ones, three 4-byte ones.
_REPORT = struct.Struct("!IIIIIHHIII")
_REPORT_LIMITS = [0xFFFF if code == "H" else 0xFFFF_FFFF for code in _REPORT.format[1:]]


def encode_pong(
    nonce: int, next_seq: int, received: int | None = None, report: Report | None = None
) -> bytes:
    """A PONG; ``received`` (the highest client unit accepted) is appended when given,
    then an rudp relay's ``report`` (counts saturate; it needs ``received`` before it)."""
    pong = HEADERS[Kind.PONG].pack(MAGIC, DATAGRAM_VERSION, Kind.PONG, nonce, next_seq)
    if received is None and report is None:
        return pong
    pong += _U64.pack(received or 0)
    if report is None:
        return pong
    values = dataclasses.astuple(report)
    return pong + _REPORT.pack(
        *(min(max(value, 0), limit) for value, limit in zip(values, _REPORT_LIMITS, strict=True))
    )


def encode_bye(reason: str) -> bytes:
    return _prefix(Kind.BYE) + reason.encode("utf-8")[:MAX_BYE_REASON]


def encode_notice(code: str) -> bytes:
    """A NOTICE; send it only when it is no larger than what the source sent."""
    return _prefix(Kind.NOTICE) + code.encode("ascii")[:MAX_NOTICE_CODE]


def encode_peer(instance: bytes, seq: int, frame_json: bytes) -> bytes:
    return HEADERS[Kind.PEER].pack(MAGIC, DATAGRAM_VERSION, Kind.PEER, instance, seq) + frame_json


def encode_ack(ack: Ack) -> bytes:
    """An ACK; ``delay_us`` is clamped to what 4 bytes hold.

    Raises:
        LocalProtocolError: more than :data:`MAX_SACK_RANGES` ranges, or ranges that are
            empty, overlapping, touching, out of order or not above ``cumulative``.
    """
    if len(ack.ranges) > MAX_SACK_RANGES:
        raise LocalProtocolError(f"an ACK carries at most {MAX_SACK_RANGES} ranges")
    body = []
    lowest = ack.cumulative + 1
    for start, end in ack.ranges:
        if start < lowest or end <= start or max(start - ack.cumulative, end - start) > _U32:
            raise LocalProtocolError(f"bad SACK range [{start}, {end}) above {ack.cumulative}")
        body.append(_SACK_RANGE.pack(start - ack.cumulative, end - start))
        lowest = end + 1
    header = HEADERS[Kind.ACK].pack(
        MAGIC,
        DATAGRAM_VERSION,
        Kind.ACK,
        ack.cumulative,
        ack.echo,
        min(max(ack.delay_us, 0), _U32),
        ack.window,
        len(ack.ranges),
    )
    return header + b"".join(body)


def pack_data(
    first_seq: int, frames: Iterable[bytes], max_bytes: int = MAX_DATAGRAM_BYTES
) -> tuple[list[bytes], int]:
    """Pack encoded frames into as few DATA datagrams as order and ``max_bytes`` allow.

    Consecutive frames share a datagram while they fit; a frame too large for one
    datagram is cut into pieces, each in its own datagram with :data:`MORE` set on
    all but the last and :data:`CONT` on all but the first.

    Returns:
        The datagrams, in sending order, and the sequence number after the last unit.
    """
    room = max_bytes - DATA_HEADER_BYTES
    datagrams: list[bytes] = []
    seq = first_seq
    batch: list[bytes] = []
    batch_bytes = 0
    batch_seq = seq
    for frame in frames:
        if batch and batch_bytes + len(frame) > room:
            datagrams.append(encode_data(batch_seq, b"".join(batch)))
            batch, batch_bytes = [], 0
        if len(frame) > room:
            for start in range(0, len(frame), room):
                piece = frame[start : start + room]
                more = start + room < len(frame)
                datagrams.append(encode_data(seq, piece, more=more, cont=start > 0))
                seq += 1
            continue
        if not batch:
            batch_seq = seq
        batch.append(frame)
        batch_bytes += len(frame)
        seq += 1
    if batch:
        datagrams.append(encode_data(batch_seq, b"".join(batch)))
    return datagrams, seq


# --- sequencing -------------------------------------------------------------------

T = TypeVar("T")

#: Units far ahead, close to each other, that convince a receiver to resynchronise.
RESYNC_AFTER = 3


@dataclass(frozen=True)
class Gap:
    """``count`` units never arrived (or arrived too late to be shown in order)."""

    count: int


class SequenceTracker(Generic[T]):
    """Put a numbered stream back in order; report loss, duplicates and reordering.

    Units arriving ahead of a missing one wait, at most ``reorder_window`` seconds
    and at most ``max_buffered`` of them, for the hole to fill; then the hole is
    reported as a :class:`Gap` and delivery moves on. A unit numbered more than
    ``max_jump`` ahead is not believed (a forged or corrupt number would otherwise
    declare billions of messages lost) and is counted as ``invalid``, unless
    :data:`RESYNC_AFTER` such units agree with each other: then the sender really is
    that far ahead, and the tracker reports the gap and follows it.

    Time is an argument (``now``), never read here, so tests need no sleeping.
    Not thread-safe: one receiver thread owns a tracker.
    """

    def __init__(
        self,
        first_seq: int = 1,
        *,
        reorder_window: float = 0.2,
        max_buffered: int = 256,
        max_jump: int = 4096,
    ) -> None:
        self.next_seq = first_seq
        self.reorder_window = reorder_window
        self.max_buffered = max_buffered
        self.max_jump = max_jump
        self._waiting: dict[int, T] = {}
        self._hole_since: float | None = None
        self._highest = first_seq - 1
        self._tail = first_seq  # the sender's announced next number (see advance_to)
        self._far: dict[int, T] = {}  # units implausibly far ahead (see _far_ahead)
        self._recent_gaps: list[tuple[int, int]] = []  # [start, end) ranges reported lost
        self.delivered = 0
        self.lost = 0
        self.duplicates = 0
        self.reordered = 0
        self.late = 0
        self.invalid = 0

    @property
    def buffered(self) -> int:
        """Units held back waiting for a hole before them to fill."""
        return len(self._waiting)

    def deadline(self) -> float | None:
        """When :meth:`poll` will next have something to do, or ``None``."""
        if self._hole_since is None:
            return None
        return self._hole_since + self.reorder_window

    def accept(self, seq: int, item: T, now: float) -> list[T | Gap]:
        """Take unit ``seq``; return what can be delivered now, in order."""
        if seq < self.next_seq:
            if any(start <= seq < end for start, end in self._recent_gaps):
                self.late += 1
            else:
                self.duplicates += 1
            return []
        if seq - self.next_seq > self.max_jump:
            return self._far_ahead(seq, item, now)
        if seq in self._waiting:
            self.duplicates += 1
            return []
        if seq < self._highest:
            self.reordered += 1
        self._highest = max(self._highest, seq)
        if seq == self.next_seq:
            self.next_seq += 1
            self.delivered += 1
            released: list[T | Gap] = [item]
            self._hole_since = None  # the first hole (if any) just filled
            return released + self._drain(now)
        self._waiting[seq] = item
        if self._hole_since is None:
            self._hole_since = now
        released = []
        while len(self._waiting) > self.max_buffered:
            released += self._skip_hole(now)
        return released + self.poll(now)

    def _far_ahead(self, seq: int, item: T, now: float) -> list[T | Gap]:
        # One far jump is not believed; RESYNC_AFTER units agreeing with each other
        # are: the sender really moved on (we missed more than max_jump units).
        self.invalid += 1
        if self._far and not 0 < abs(seq - max(self._far)) <= self.max_jump:
            self._far = {}
        self._far[seq] = item
        if len(self._far) < RESYNC_AFTER:
            return []
        far, self._far = self._far, {}
        released: list[T | Gap] = []
        while self._waiting:
            released += self._skip_hole(now)
        self._tail = max(self._tail, min(far))
        released += self._skip_hole(now)
        for far_seq in sorted(far):
            released += self.accept(far_seq, far[far_seq], now)
        return released

    def advance_to(self, next_seq: int, now: float) -> list[T | Gap]:
        """The sender says its next unit will be ``next_seq``, so every unit before it
        is due: a tail that never arrives is reported after the reorder window."""
        if next_seq - self.next_seq > self.max_jump:
            self.invalid += 1
        elif next_seq > self._tail:
            self._tail = next_seq
            if self._tail > self.next_seq and self._hole_since is None:
                self._hole_since = now
        return self.poll(now)

    def poll(self, now: float) -> list[T | Gap]:
        """Give up on holes older than the reorder window; return what that releases."""
        released: list[T | Gap] = []
        while self._hole_since is not None and now >= self._hole_since + self.reorder_window:
            released += self._skip_hole(now)
        return released

    def _skip_hole(self, now: float) -> list[T | Gap]:
        target = min(self._waiting) if self._waiting else self._tail
        released: list[T | Gap] = []
        if target > self.next_seq:
            missing = target - self.next_seq
            self.lost += missing
            self._recent_gaps = [*self._recent_gaps[-31:], (self.next_seq, target)]
            released.append(Gap(missing))
            self.next_seq = target
        # Holes behind this one have waited at least as long: keep the clock running
        # so poll() reports them too instead of giving each a fresh window.
        return released + self._drain(now)

    def _drain(self, now: float) -> list[T | Gap]:
        released: list[T | Gap] = []
        while self.next_seq in self._waiting:
            released.append(self._waiting.pop(self.next_seq))
            self.next_seq += 1
            self.delivered += 1
        if self._waiting or self._tail > self.next_seq:
            if self._hole_since is None:
                self._hole_since = now
        else:
            self._hole_since = None
        return released


class Reassembler:
    """Glue frame pieces back together, in delivery order.

    Feed it what a :class:`SequenceTracker` releases. A piece flagged ``cont``
    continues the previous unit; one flagged ``more`` is continued by the next. A
    :class:`Gap` (:meth:`gap`) throws away a frame being assembled, and continuation
    pieces whose start was lost are thrown away as they come.
    """

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_bytes = max_bytes
        self._pieces: list[bytes] = []
        self._size = 0
        self._skipping = False  # inside a frame whose start was lost or refused
        self.discarded = 0

    def gap(self) -> None:
        """Units went missing: the frame being assembled (if any) cannot complete."""
        if self._pieces:
            self.discarded += 1
        self._pieces, self._size = [], 0
        self._skipping = True

    def feed(self, unit: bytes, *, cont: bool, more: bool) -> bytes | None:
        """Add one unit; return a complete frame when ``unit`` finishes one."""
        if not cont:
            if self._pieces:  # the sender started anew without finishing: drop the rest
                self.discarded += 1
            self._pieces, self._size, self._skipping = [], 0, False
        elif self._skipping or not self._pieces:
            self._skipping = more
            return None
        self._size += len(unit)
        if self._size > self.max_bytes:
            self.discarded += 1
            self._pieces, self._size, self._skipping = [], 0, more
            return None
        if more:
            self._pieces.append(unit)
            return None
        if not self._pieces:
            self._size = 0
            return unit
        frame = b"".join([*self._pieces, unit])
        self._pieces, self._size = [], 0
        return frame


class ReplayWindow:
    """Server side of client sequence numbers: drop duplicates, accept reordering.

    A sliding window of ``size`` numbers, as IPsec's anti-replay check: a number
    seen before, or older than the window, is rejected; so is one implausibly far
    ahead (``max_jump``), unless :data:`RESYNC_AFTER` in a row agree (the client
    really moved on while its datagrams were being dropped). Its memory is
    ``size`` bits and a few integers, whatever numbers arrive.
    """

    def __init__(self, size: int = 256, max_jump: int = 4096) -> None:
        self.size = size
        self.max_jump = max_jump
        self.highest = 0
        self._seen = 0  # bit i set: highest - i was seen; never more than `size` bits
        self._mask = (1 << size) - 1
        self._far_run = 0
        self._far_last: int | None = None
        self.duplicates = 0
        self.invalid = 0

    def check(self, first: int, count: int = 1) -> bool:
        """Record units ``first .. first+count-1``; False (and counted) if any is a replay."""
        last = first + count - 1
        if first < 1:
            self.invalid += 1
            return False
        if last - self.highest > self.max_jump:
            # As in SequenceTracker: believe a far jump once RESYNC_AFTER agree.
            close = self._far_last is not None and 0 < first - self._far_last <= self.max_jump
            self._far_run = self._far_run + 1 if close else 1
            self._far_last = last
            if self._far_run < RESYNC_AFTER:
                self.invalid += 1
                return False
            self._far_run, self._far_last = 0, None
        for seq in range(first, last + 1):
            if seq <= self.highest - self.size or (
                seq <= self.highest and self._seen >> (self.highest - seq) & 1
            ):
                self.duplicates += 1
                return False
        for seq in range(first, last + 1):
            if seq > self.highest:
                # Shift by at most the window: a jump by 2**k must not build a 2**k-bit
                # integer first (a believed jump of 2**32 once cost 512 MiB).
                shift = seq - self.highest
                self._seen = (self._seen << shift) & self._mask if shift < self.size else 0
                self.highest = seq
            self._seen |= 1 << (self.highest - seq)
        return True


# --- address validation -------------------------------------------------------------


class CookieJar:
    """Stateless address-validation cookies with a secret that rotates every bucket.

    ``cookie = bucket_low_byte || HMAC-SHA256(secret[bucket], host|port|bucket)[:15]``.
    A cookie is valid in the bucket it was issued in and the next one, so it lives
    between ``lifetime`` and ``2 * lifetime`` seconds; a secret older than that is
    forgotten, so a leaked cookie cannot be replayed later.

    Args:
        lifetime: seconds per time bucket.
        random_bytes: where secrets come from (injectable for tests).
    """

    def __init__(
        self, lifetime: float = 30.0, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self.lifetime = lifetime
        self._random_bytes = random_bytes
        self._secrets: dict[int, bytes] = {}

    def _bucket(self, now: float) -> int:
        return int(now // self.lifetime)

    def _secret(self, bucket: int, now: float) -> bytes | None:
        current = self._bucket(now)
        if bucket not in (current, current - 1):
            return None
        if bucket not in self._secrets:
            if bucket != current:
                return None  # no cookie was ever issued under it
            self._secrets[bucket] = self._random_bytes(32)
            for old in [b for b in self._secrets if b < current - 1]:
                del self._secrets[old]
        return self._secrets[bucket]

    @staticmethod
    def _mac(secret: bytes, host: str, port: int, bucket: int) -> bytes:
        message = f"{host}|{port}|{bucket}".encode()
        return hmac.new(secret, message, hashlib.sha256).digest()[: COOKIE_BYTES - 1]

    def issue(self, host: str, port: int, now: float) -> bytes:
        """A cookie for ``(host, port)``, valid for this bucket and the next."""
        bucket = self._bucket(now)
        secret = self._secret(bucket, now)
        assert secret is not None  # the current bucket always has one
        return bytes([bucket & 0xFF]) + self._mac(secret, host, port, bucket)

    def verify(self, cookie: bytes, host: str, port: int, now: float) -> bool:
        """True when ``cookie`` was issued by us for ``(host, port)`` recently."""
        if len(cookie) != COOKIE_BYTES:
            return False
        current = self._bucket(now)
        for bucket in (current, current - 1):
            if bucket & 0xFF != cookie[0]:
                continue
            secret = self._secrets.get(bucket)
            if secret is not None and hmac.compare_digest(
                cookie[1:], self._mac(secret, host, port, bucket)
            ):
                return True
        return False


class SourceLimiter:
    """Per-source token buckets in a fixed-size table, for replies to unvalidated sources.

    Sources hash (with a secret key, so nobody can aim at one slot) into ``slots``
    buckets; colliding sources share one, which only makes the limit stricter. Memory
    is fixed at construction: spraying from a million addresses grows nothing. The
    defaults leave room for a classroom behind one NAT address joining at once.
    """

    def __init__(
        self,
        rate: float = 50.0,
        burst: float = 100.0,
        slots: int = 1024,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._key = random_bytes(16)
        self._tokens = [burst] * slots
        self._updated = [0.0] * slots
        self.refused = 0

    def _slot(self, host: str) -> int:
        digest = hashlib.blake2b(host.encode(), key=self._key, digest_size=8).digest()
        return int.from_bytes(digest, "big") % len(self._tokens)

    def allow(self, host: str, now: float) -> bool:
        """Take a token for ``host``; False (and counted) when its bucket is empty."""
        slot = self._slot(host)
        elapsed = max(0.0, now - self._updated[slot])
        tokens = min(self.burst, self._tokens[slot] + elapsed * self.rate)
        self._updated[slot] = now
        if tokens >= 1.0:
            self._tokens[slot] = tokens - 1.0
            return True
        self._tokens[slot] = tokens
        self.refused += 1
        return False

"""Sealed datagrams: a password-derived key schedule and AEAD envelopes — sans-I/O.

Strategy
--------
Everyone in a chat shares one password. It is stretched **once** with scrypt into a
32-byte *chat key* under a per-chat salt (:class:`ChatKey`): the relay draws a
random salt when it starts and hands it out with the join cookie; serverless peers
derive theirs from the group address and port, which every peer knows and nobody
can change, so an attacker cannot make a peer run scrypt again. Every guess at the
password therefore costs one scrypt (:data:`SCRYPT_N`: about 70–90 ms and 32 MiB).

HKDF-SHA256 then turns the chat key into *traffic keys*, each used by exactly one
sender: per sender instance for peers, and per direction and per session on the
relay. A relay join is a small authenticated key exchange in the manner of
WireGuard's pre-shared-key mode: each side sends a fresh X25519 public key (its
*ephemeral*, which also serves as its join nonce), sealed or authenticated under
the chat key, and the session keys come from the chat key *and* the Diffie-Hellman
secret. So every session has fresh keys (a replayed join cannot bring an old key
back, and a replayer holds no private key to use the new one), and a member who
records someone else's join — or anyone who learns the password later — still
cannot read that session. One sender per key means a plain counter is a safe AEAD
nonce: no two parties ever have to agree on who uses which number.

A sealed datagram keeps netchat's prefix with layout version 2, then the kind's
*clear fields* — only what the receiver needs before it can pick a key (the cookie
and client ephemeral of a HELLO, the server ephemeral of an ACCEPT or REJECT, the
instance id of a PEER) — then a 64-bit counter, then the rest of the layout-1
datagram encrypted with ChaCha20-Poly1305 and its 16-byte tag::

    "nc" 02 kind | clear fields | counter(8) | ChaCha20-Poly1305(body) | tag(16)

The AEAD nonce is the counter and the associated data is everything before the
ciphertext, so nobody can change a kind, a clear field or a counter; sequence
numbers, flags, names and text travel encrypted. :meth:`Opened.plain` rebuilds the
layout-1 datagram, so an opened datagram is parsed by
:func:`~netchat.protocol.datagram.decode_datagram` exactly like an unsealed one and
every transport keeps a single codec. The COOKIE (cookie and salt) and the cookie
request are the only layout-2 datagrams sent in clear; NOTICE stays layout 1.

A :class:`Sealer` counts from 0 and refuses to wrap. An :class:`Opener` checks the
counter against a fixed-size sliding bitmap (:class:`CounterWindow`, as IPsec and
WireGuard do) *before* decrypting and records it only *after* the tag verified, so a
forgery costs one failed tag check and can neither move the window nor grow memory.
Opening any bytes returns an :class:`Opened` or raises a
:class:`~netchat.errors.RemoteProtocolError` (:class:`~netchat.errors.AuthenticationFailed`,
:class:`~netchat.errors.ReplayedDatagram`, or a short ``code`` for malformed input),
and every refusal is counted.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import (
    AuthenticationFailed,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayedDatagram,
)
from .datagram import (
    COOKIE_BYTES,
    DATAGRAM_VERSION,
    MAGIC,
    NO_COOKIE,
    Kind,
    kind_from_byte,
    read_prefix,
)
from .limits import MAX_DATAGRAM_BYTES

__all__ = [
    "COUNTER_BYTES",
    "EPHEMERAL_BYTES",
    "INSTANCE_BYTES",
    "KEY_BYTES",
    "MAX_COUNTER",
    "MAX_PASSWORD_BYTES",
    "REPLAY_WINDOW",
    "SALTED_COOKIE_BYTES",
    "SALT_BYTES",
    "SCRYPT_MEMORY_BYTES",
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "SEALED_KINDS",
    "SEALED_VERSION",
    "SEAL_OVERHEAD",
    "TAG_BYTES",
    "Channel",
    "ChatKey",
    "ClientHandshake",
    "CounterWindow",
    "HelloFields",
    "Opened",
    "Opener",
    "PasswordVerifier",
    "PeerOpeners",
    "RecentNonces",
    "Sealer",
    "TrafficKey",
    "answer_hello",
    "check_ephemeral",
    "cookie_request",
    "decode_salted_cookie",
    "encode_salted_cookie",
    "group_salt",
    "hello_fields",
    "is_cookie_request",
    "new_relay_salt",
    "normalize_password",
    "open_hello",
]

#: The layout version byte of a sealed datagram (unsealed datagrams are layout 1).
SEALED_VERSION = 2
KEY_BYTES = 32
SALT_BYTES = 16
#: An X25519 public key: what each side of a relay join contributes to its session keys.
EPHEMERAL_BYTES = 32
INSTANCE_BYTES = 8
COUNTER_BYTES = 8
TAG_BYTES = 16
#: Bytes a sealed datagram adds to the same layout-1 datagram (HELLO, ACCEPT and
#: REJECT add :data:`EPHEMERAL_BYTES` more).
SEAL_OVERHEAD = COUNTER_BYTES + TAG_BYTES
MAX_COUNTER = 2**64 - 1

#: scrypt cost: N = 2**15, r = 8, p = 1 takes about 70–90 ms on the development
#: machine (a core of an AMD EPYC; more when it is busy) and needs 128 * N * r bytes
#: = 32 MiB of memory. N = 2**14 took 32 ms, N = 2**16 170 ms. One
#: derivation per server start, per peer start and per client join; one per guess
#: for anyone trying passwords against a captured handshake.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MEMORY_BYTES = 128 * SCRYPT_N * SCRYPT_R

#: Counters remembered behind the highest one per key (128 bytes of bitmap). Wider
#: than any reordering a LAN or the 0.2 s reorder window of the receiver produces.
REPLAY_WINDOW = 1024

#: Longest password accepted, in UTF-8 bytes: generous for a passphrase, and a bound
#: on what a TCP client can make the server hash.
MAX_PASSWORD_BYTES = 1024

#: A layout-2 COOKIE: prefix, cookie, the relay's salt.
SALTED_COOKIE_BYTES = 4 + COOKIE_BYTES + SALT_BYTES

_PREFIX = struct.Struct("!2sBB")
_COUNTER = struct.Struct("!Q")
_NONCE_PAD = bytes(12 - COUNTER_BYTES)

_INFO_HELLO = b"netchat/1 relay hello"
_INFO_TO_SERVER = b"netchat/1 relay client->server"
_INFO_TO_CLIENT = b"netchat/1 relay server->client"
_INFO_PEER = b"netchat/1 peer sender"
_PEER_SALT_LABEL = b"netchat/1 peer salt"


@dataclass(frozen=True)
class _Layout:
    clear: int  # bytes between the prefix and the counter
    kept: int  # how many of them are layout-1 fields; the rest is an ephemeral key


#: Kinds that travel sealed, and the clear fields of each.
SEALED_KINDS: dict[Kind, _Layout] = {
    Kind.HELLO: _Layout(COOKIE_BYTES + EPHEMERAL_BYTES, COOKIE_BYTES),
    Kind.ACCEPT: _Layout(EPHEMERAL_BYTES, 0),
    Kind.REJECT: _Layout(EPHEMERAL_BYTES, 0),
    Kind.DATA: _Layout(0, 0),
    Kind.PING: _Layout(0, 0),
    Kind.PONG: _Layout(0, 0),
    Kind.BYE: _Layout(0, 0),
    Kind.PEER: _Layout(INSTANCE_BYTES, INSTANCE_BYTES),
    Kind.ACK: _Layout(0, 0),  # --proto rudp's receipts
}


# --- passwords and keys --------------------------------------------------------------


def normalize_password(password: str) -> bytes:
    """The bytes a password stands for: Unicode NFC, then UTF-8.

    NFC makes ``"é"`` typed as one character or as ``e`` plus a combining accent the
    same password, as RFC 8265's OpaqueString profile does.

    Raises:
        LocalProtocolError: (``code="bad-password"``) empty, over
            :data:`MAX_PASSWORD_BYTES`, or not encodable (a lone surrogate).
    """
    try:
        data = unicodedata.normalize("NFC", password).encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(
            "a password must be valid Unicode text", code="bad-password"
        ) from None
    if not data:
        raise LocalProtocolError("a password must not be empty", code="bad-password")
    if len(data) > MAX_PASSWORD_BYTES:
        raise LocalProtocolError(
            f"a password has at most {MAX_PASSWORD_BYTES} bytes", code="bad-password"
        )
    return data


def new_relay_salt(random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh random salt for a relay; the relay draws one at start."""
    return random_bytes(SALT_BYTES)


def group_salt(group: str, port: int) -> bytes:
    """The salt of a serverless chat on ``group:port``, the same for every peer.

    Args:
        group: the multicast group or broadcast address, as an IP address.
        port: the UDP port.

    Raises:
        LocalProtocolError: (``code="bad-group"``) ``group`` is not an IP address or
            ``port`` is out of range.
    """
    try:
        address = ipaddress.ip_address(group)
    except ValueError:
        raise LocalProtocolError(f"{group!r} is not an IP address", code="bad-group") from None
    if not 0 < port < 65536:
        raise LocalProtocolError(f"port {port} is out of range", code="bad-group")
    label = b"|".join([_PEER_SALT_LABEL, str(address).encode("ascii"), str(port).encode()])
    return hashlib.sha256(label).digest()[:SALT_BYTES]


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(secret)


class TrafficKey:
    """A ChaCha20-Poly1305 key for one sender's datagrams; ``purpose`` names it in reprs."""

    __slots__ = ("aead", "purpose")

    def __init__(self, secret: bytes, purpose: str) -> None:
        if len(secret) != KEY_BYTES:
            raise LocalProtocolError(f"a traffic key has {KEY_BYTES} bytes")
        #: the cipher itself (holds the secret; never printed)
        self.aead = ChaCha20Poly1305(secret)
        self.purpose = purpose

    def __repr__(self) -> str:
        return f"TrafficKey({self.purpose!r})"


class ChatKey:
    """The scrypt-stretched password of one chat; every traffic key comes from it.

    Build it with :meth:`derive`. The key material never appears in a repr.
    """

    __slots__ = ("_secret", "salt")

    def __init__(self, secret: bytes, salt: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise LocalProtocolError(f"a chat key has {KEY_BYTES} bytes")
        self._secret = secret
        self.salt = salt

    @classmethod
    def derive(cls, password: str, salt: bytes) -> ChatKey:
        """Stretch ``password`` under ``salt`` with scrypt (about 70–90 ms, 32 MiB).

        Raises:
            LocalProtocolError: the password is unusable (see :func:`normalize_password`)
                or the salt is not :data:`SALT_BYTES` long.
        """
        if len(salt) != SALT_BYTES:
            raise LocalProtocolError(f"a chat salt has {SALT_BYTES} bytes")
        secret = Scrypt(salt=salt, length=KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(
            normalize_password(password)
        )
        return cls(secret, salt)

    def __repr__(self) -> str:
        return f"ChatKey(salt={self.salt.hex()})"

    def hello_key(self, client_ephemeral: bytes) -> TrafficKey:
        """The key a relay client seals its HELLO with (counter 0, one HELLO per ephemeral)."""
        _check_length(client_ephemeral, EPHEMERAL_BYTES, "client ephemeral")
        return TrafficKey(_hkdf(self._secret, client_ephemeral, _INFO_HELLO), "relay hello")

    def relay_keys(
        self, dh_secret: bytes, client_ephemeral: bytes, server_ephemeral: bytes
    ) -> tuple[TrafficKey, TrafficKey]:
        """The two keys of one relay session: ``(client→server, server→client)``.

        Args:
            dh_secret: the X25519 shared secret of the two ephemerals.
            client_ephemeral, server_ephemeral: the public keys, as sent.
        """
        _check_length(dh_secret, 32, "Diffie-Hellman secret")
        _check_length(client_ephemeral, EPHEMERAL_BYTES, "client ephemeral")
        _check_length(server_ephemeral, EPHEMERAL_BYTES, "server ephemeral")
        material = self._secret + dh_secret
        salt = client_ephemeral + server_ephemeral
        return (
            TrafficKey(_hkdf(material, salt, _INFO_TO_SERVER), "relay client->server"),
            TrafficKey(_hkdf(material, salt, _INFO_TO_CLIENT), "relay server->client"),
        )

    def peer_key(self, instance: bytes) -> TrafficKey:
        """The key of the peer whose random instance id is ``instance``."""
        _check_length(instance, INSTANCE_BYTES, "instance id")
        return TrafficKey(_hkdf(self._secret, instance, _INFO_PEER), f"peer {instance.hex()}")


def _check_length(value: bytes, length: int, what: str) -> None:
    if len(value) != length:
        raise LocalProtocolError(f"a {what} has {length} bytes, not {len(value)}")


class PasswordVerifier:
    """Checks a password typed at TCP registration in constant time.

    Both sides are HMACed under a random per-process key first, so
    :func:`hmac.compare_digest` compares two 32-byte digests: the time taken depends
    neither on the real password's length nor on how much of it a guess got right.
    """

    def __init__(self, password: str, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._key = random_bytes(32)
        self._expected = self._digest(normalize_password(password))

    def _digest(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def check(self, candidate: str) -> bool:
        """True when ``candidate`` is the password (after NFC)."""
        try:
            data, usable = normalize_password(candidate), True
        except LocalProtocolError:
            # Still compare something, so an unusable guess takes as long as any other.
            data, usable = b"", False
        return hmac.compare_digest(self._digest(data), self._expected) and usable


# --- replay window ---------------------------------------------------------------


class CounterWindow:
    """The counters one key has accepted: a sliding bitmap of ``size`` bits.

    Like IPsec's anti-replay window (RFC 4303 §3.4.3) and WireGuard's: a counter above
    the highest slides the window, one inside it is accepted once, one below it is
    refused. Memory is ``size`` bits whatever counters arrive: a jump of ``size`` or
    more clears the bitmap instead of shifting it.
    """

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if size < 1:
            raise ValueError("a replay window holds at least one counter")
        self.size = size
        self.highest = -1  # nothing accepted yet
        self._bits = 0  # bit i set: counter highest - i was accepted
        self._mask = (1 << size) - 1

    def accepts(self, counter: int) -> bool:
        """Whether ``counter`` is new (changes nothing)."""
        if counter > self.highest:
            return True
        age = self.highest - counter
        return age < self.size and not self._bits >> age & 1

    def too_old(self, counter: int) -> bool:
        """Whether ``counter`` is behind the window (as opposed to a repeat inside it)."""
        return self.highest - counter >= self.size

    def record(self, counter: int) -> None:
        """Mark ``counter`` accepted; call only after :meth:`accepts` said True."""
        if counter > self.highest:
            shift = counter - self.highest
            self._bits = 0 if shift >= self.size else (self._bits << shift) & self._mask
            self.highest = counter
            self._bits |= 1
        else:
            self._bits |= 1 << (self.highest - counter)

    def close_below(self, highest: int) -> None:
        """Refuse every counter up to ``highest``: a key seen before, now remembered
        only by its highest counter (see :class:`PeerOpeners`)."""
        self.highest = max(self.highest, highest)
        self._bits = self._mask

    @property
    def memory_bits(self) -> int:
        """Bits the bitmap holds now; never more than :attr:`size`."""
        return self._bits.bit_length()


# --- envelopes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """A sealed datagram that authenticated.

    ``clear`` holds the kind's clear fields, ``payload`` the decrypted rest.
    """

    kind: Kind
    clear: bytes
    counter: int
    payload: bytes

    @property
    def header(self) -> bytes:
        """The layout-2 prefix and clear fields, as authenticated."""
        return _PREFIX.pack(MAGIC, SEALED_VERSION, self.kind) + self.clear

    @property
    def ephemeral(self) -> bytes:
        """The sender's X25519 public key in a HELLO, ACCEPT or REJECT; else empty."""
        return self.clear[SEALED_KINDS[self.kind].kept :]

    def plain(self) -> bytes:
        """The layout-1 datagram this was sealed from, for ``decode_datagram``."""
        kept = self.clear[: SEALED_KINDS[self.kind].kept]
        return _PREFIX.pack(MAGIC, DATAGRAM_VERSION, self.kind) + kept + self.payload


#: Layout-1 prefix -> (layout-2 prefix, clear fields kept) for the kinds that carry no
#: ephemeral key: sealing them is a lookup and a slice (see Sealer.seal_datagram).
_NO_EPHEMERAL: dict[bytes, tuple[bytes, int]] = {
    _PREFIX.pack(MAGIC, DATAGRAM_VERSION, kind): (
        _PREFIX.pack(MAGIC, SEALED_VERSION, kind),
        layout.kept,
    )
    for kind, layout in SEALED_KINDS.items()
    if layout.clear == layout.kept
}


def _kind_or_none(kind_byte: int) -> Kind | None:
    try:
        return Kind(kind_byte)
    except ValueError:
        return None


def _nonce(counter: int) -> bytes:
    return _NONCE_PAD + _COUNTER.pack(counter)


def _sealed_kind(datagram: bytes) -> tuple[Kind, int]:
    """Kind and header length (prefix + clear fields) of a layout-2 sealed datagram."""
    version, kind_byte = read_prefix(datagram)
    if version == DATAGRAM_VERSION:
        raise RemoteProtocolError("an unsealed datagram in a sealed chat", code="unsealed")
    if version != SEALED_VERSION:
        raise RemoteProtocolError(f"datagram layout version {version}", code="version")
    kind = kind_from_byte(kind_byte)
    layout = SEALED_KINDS.get(kind)
    if layout is None:
        raise RemoteProtocolError(f"{kind.name} is never sealed", code="unsealed")
    header = _PREFIX.size + layout.clear
    if len(datagram) < header + COUNTER_BYTES + TAG_BYTES:
        raise RemoteProtocolError(f"truncated sealed {kind.name}", code="malformed")
    return kind, header


class Sealer:
    """Seals one sender's datagrams under one :class:`TrafficKey`.

    Counters start at ``first_counter`` and go up by one per datagram; the counter is
    the AEAD nonce, so a key must have exactly one Sealer. Thread-safe: two threads
    sealing at once still get different counters.
    """

    def __init__(self, key: TrafficKey, *, first_counter: int = 0) -> None:
        self.key = key
        self._next = first_counter
        self._lock = threading.Lock()

    @property
    def next_counter(self) -> int:
        """The counter the next datagram will carry."""
        return self._next

    def _take_counter(self) -> int:
        with self._lock:
            counter = self._next
            if counter > MAX_COUNTER:
                raise LocalProtocolError(
                    "this key has sealed 2**64 datagrams; start a new session",
                    code="counter-exhausted",
                )
            self._next = counter + 1
            return counter

    def seal(self, header: bytes, payload: bytes) -> bytes:
        """Seal ``payload`` behind ``header`` (layout-2 prefix plus the kind's clear fields).

        Returns:
            ``header || counter || ciphertext || tag``.

        Raises:
            LocalProtocolError: the header is not a sealed kind's, the result would
                exceed :data:`MAX_DATAGRAM_BYTES` (``code="too-large"``), or the
                counter is exhausted.
        """
        if len(header) < _PREFIX.size:
            raise LocalProtocolError("a sealed header starts with the 4-byte prefix")
        magic, version, kind_byte = _PREFIX.unpack_from(header)
        kind = _kind_or_none(kind_byte)
        layout = SEALED_KINDS.get(kind) if kind is not None else None
        if magic != MAGIC or version != SEALED_VERSION or kind is None or layout is None:
            raise LocalProtocolError("not the header of a sealed kind")
        if len(header) != _PREFIX.size + layout.clear:
            raise LocalProtocolError(
                f"a sealed {kind.name} header has {_PREFIX.size + layout.clear} bytes"
            )
        size = len(header) + SEAL_OVERHEAD + len(payload)
        if size > MAX_DATAGRAM_BYTES:
            raise LocalProtocolError(
                f"sealed datagram of {size} bytes exceeds {MAX_DATAGRAM_BYTES}", code="too-large"
            )
        counter = self._take_counter()
        authenticated = header + _COUNTER.pack(counter)
        return authenticated + self.key.aead.encrypt(_nonce(counter), payload, authenticated)

    def seal_datagram(self, plain: bytes, ephemeral: bytes = b"") -> bytes:
        """Seal a layout-1 datagram (as ``datagram.encode_*`` make them).

        Args:
            plain: the unsealed datagram.
            ephemeral: the X25519 public key a HELLO, ACCEPT or REJECT carries in clear.

        Raises:
            LocalProtocolError: ``plain`` is not a layout-1 datagram of a sealed kind,
                ``ephemeral`` has the wrong length, or as :meth:`seal`.
        """
        fast = _NO_EPHEMERAL.get(plain[: _PREFIX.size])
        if fast is not None and not ephemeral and len(plain) >= _PREFIX.size + fast[1]:
            # The relay's fan-out path (DATA, PING, PONG, BYE, PEER, ACK): the same
            # checks as below and in seal(), made once, on bytes.
            sealed_prefix, kept = fast
            if len(plain) + SEAL_OVERHEAD > MAX_DATAGRAM_BYTES:
                raise LocalProtocolError(
                    f"sealed datagram of {len(plain) + SEAL_OVERHEAD} bytes exceeds"
                    f" {MAX_DATAGRAM_BYTES}",
                    code="too-large",
                )
            counter = self._take_counter()
            authenticated = sealed_prefix + plain[_PREFIX.size : _PREFIX.size + kept]
            authenticated += _COUNTER.pack(counter)
            payload = plain[_PREFIX.size + kept :]
            return authenticated + self.key.aead.encrypt(_nonce(counter), payload, authenticated)
        if len(plain) < _PREFIX.size:
            raise LocalProtocolError("not a datagram")
        magic, version, kind_byte = _PREFIX.unpack_from(plain)
        kind = _kind_or_none(kind_byte)
        if magic != MAGIC or version != DATAGRAM_VERSION or kind is None:
            raise LocalProtocolError("not a layout-1 netchat datagram")
        layout = SEALED_KINDS.get(kind)
        if layout is None:
            raise LocalProtocolError(f"{kind.name} is never sealed")
        if len(ephemeral) != layout.clear - layout.kept:
            raise LocalProtocolError(
                f"a sealed {kind.name} carries a {layout.clear - layout.kept}-byte ephemeral key"
            )
        body = plain[_PREFIX.size :]
        if len(body) < layout.kept:
            raise LocalProtocolError(f"truncated {kind.name}")
        header = _PREFIX.pack(MAGIC, SEALED_VERSION, kind) + body[: layout.kept] + ephemeral
        return self.seal(header, body[layout.kept :])


class Opener:
    """Opens the datagrams of one sender, sealed under one :class:`TrafficKey`.

    Counters: ``opened`` (authenticated), ``forged`` (failed authentication),
    ``replayed`` (a counter seen before, or older than the window) and ``malformed``
    (not a sealed datagram at all). Thread-safe.
    """

    def __init__(self, key: TrafficKey, window: int = REPLAY_WINDOW) -> None:
        self.key = key
        self.window = CounterWindow(window)
        self._lock = threading.Lock()
        self.opened = 0
        self.forged = 0
        self.replayed = 0
        self.malformed = 0

    def open(self, datagram: bytes) -> Opened:
        """Authenticate and decrypt one datagram.

        Raises:
            AuthenticationFailed: the tag did not verify (wrong password, a changed
                byte, a forgery, or a datagram sealed under another key).
            ReplayedDatagram: its counter was accepted before or is behind the window.
            RemoteProtocolError: not a sealed datagram (``code`` is ``magic``,
                ``unsealed``, ``version``, ``unknown-kind``, ``malformed`` or
                ``too-large``).
        """
        try:
            kind, header = _sealed_kind(datagram)
        except RemoteProtocolError:
            self.malformed += 1
            raise
        (counter,) = _COUNTER.unpack_from(datagram, header)
        authenticated = datagram[: header + COUNTER_BYTES]
        with self._lock:
            if not self.window.accepts(counter):
                self.replayed += 1
                why = "is behind the replay window" if self.window.too_old(counter) else "was seen"
                raise ReplayedDatagram(f"counter {counter} {why}")
            try:
                payload = self.key.aead.decrypt(
                    _nonce(counter), datagram[header + COUNTER_BYTES :], authenticated
                )
            except InvalidTag:
                self.forged += 1
                raise AuthenticationFailed(
                    f"a {kind.name} datagram did not authenticate (wrong password or altered)"
                ) from None
            self.window.record(counter)
            self.opened += 1
        return Opened(kind, datagram[_PREFIX.size : header], counter, payload)


# --- the relay join ------------------------------------------------------------------


def cookie_request() -> bytes:
    """A sealed chat's first HELLO: no cookie, padded to the size of the reply.

    The relay never answers an unvalidated source with more bytes than it sent, and
    its COOKIE carries the salt too, so the client pays for those bytes up front.
    """
    padding = bytes(SALTED_COOKIE_BYTES - _PREFIX.size - COOKIE_BYTES)
    return _PREFIX.pack(MAGIC, SEALED_VERSION, Kind.HELLO) + NO_COOKIE + padding


def is_cookie_request(datagram: bytes) -> bool:
    """Whether ``datagram`` asks a sealed relay for a cookie (and is large enough to
    deserve the answer)."""
    return (
        SALTED_COOKIE_BYTES <= len(datagram) <= MAX_DATAGRAM_BYTES
        and datagram[:4] == _PREFIX.pack(MAGIC, SEALED_VERSION, Kind.HELLO)
        and datagram[4 : 4 + COOKIE_BYTES] == NO_COOKIE
    )


def encode_salted_cookie(cookie: bytes, salt: bytes) -> bytes:
    """A sealed relay's COOKIE: the address-validation cookie and the chat's salt."""
    _check_length(cookie, COOKIE_BYTES, "cookie")
    _check_length(salt, SALT_BYTES, "salt")
    return _PREFIX.pack(MAGIC, SEALED_VERSION, Kind.COOKIE) + cookie + salt


def decode_salted_cookie(datagram: bytes) -> tuple[bytes, bytes]:
    """``(cookie, salt)`` from a sealed relay's COOKIE.

    Raises:
        RemoteProtocolError: anything else (``code="malformed"``).
    """
    if (
        len(datagram) != SALTED_COOKIE_BYTES
        or datagram[:4] != _PREFIX.pack(MAGIC, SEALED_VERSION, Kind.COOKIE)
        or datagram[4 : 4 + COOKIE_BYTES] == NO_COOKIE
    ):
        raise RemoteProtocolError("not a sealed COOKIE", code="malformed")
    return datagram[4 : 4 + COOKIE_BYTES], datagram[4 + COOKIE_BYTES :]


@dataclass(frozen=True)
class HelloFields:
    """The clear fields of a sealed HELLO, readable before anything is decrypted."""

    cookie: bytes
    client_ephemeral: bytes


def hello_fields(datagram: bytes) -> HelloFields:
    """Read a sealed HELLO's cookie and ephemeral key, so the relay checks the cookie first.

    Raises:
        RemoteProtocolError: not a sealed HELLO with a cookie.
    """
    kind, header = _sealed_kind(datagram)
    if kind is not Kind.HELLO:
        raise RemoteProtocolError(f"expected a HELLO, got {kind.name}", code="malformed")
    cookie = datagram[4 : 4 + COOKIE_BYTES]
    if cookie == NO_COOKIE:
        raise RemoteProtocolError("a sealed HELLO carries a cookie", code="malformed")
    return HelloFields(cookie, datagram[4 + COOKIE_BYTES : header])


def open_hello(chat_key: ChatKey, datagram: bytes) -> bytes:
    """Check that a HELLO was sealed by someone who knows the password.

    Call it only after the cookie in :func:`hello_fields` verified.

    Returns:
        The layout-1 HELLO (cookie and ``hello`` frame) for ``decode_datagram``.

    Raises:
        AuthenticationFailed: wrong password or an altered datagram.
        RemoteProtocolError: not a sealed HELLO, or it does not use counter 0.
    """
    fields = hello_fields(datagram)
    opened = Opener(chat_key.hello_key(fields.client_ephemeral)).open(datagram)
    if opened.counter != 0:
        raise RemoteProtocolError("a HELLO is sealed with counter 0", code="malformed")
    return opened.plain()


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    """The X25519 shared secret; a key that cannot be used raises RemoteProtocolError."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # a low-order point gives an all-zero secret: refuse it (RFC 7748 §6.1)
        raise RemoteProtocolError("an unusable X25519 public key", code="malformed") from None


_probe_key: list[X25519PrivateKey] = []  # made on first use


def check_ephemeral(public: bytes) -> None:
    """Refuse an X25519 public key that cannot give a session key (a low-order point),
    so a relay can refuse a join *before* it keeps any state for it.

    Raises:
        RemoteProtocolError: (``code="malformed"``) the key is unusable.
    """
    _check_length(public, EPHEMERAL_BYTES, "ephemeral")
    if not _probe_key:
        _probe_key.append(X25519PrivateKey.generate())
    _exchange(_probe_key[0], public)


def _ephemeral_key(random_bytes: Callable[[int], bytes]) -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.from_private_bytes(random_bytes(32))
    return private, private.public_key().public_bytes_raw()


@dataclass(frozen=True)
class Channel:
    """One side of a relay session: how it seals what it sends and opens what it gets."""

    sealer: Sealer
    opener: Opener


def answer_hello(
    chat_key: ChatKey,
    client_ephemeral: bytes,
    plain_reply: bytes,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> tuple[bytes, Channel]:
    """The relay's sealed reply to an authenticated HELLO, and its side of the session.

    The relay draws a fresh ephemeral key for every reply, so the session keys are
    new even if the HELLO was a replay and a counter is never reused under a key.
    The reply is sealed under the server→client key with counter 0; keep its bytes
    to resend them verbatim if the same HELLO comes again.

    Args:
        client_ephemeral: from :func:`hello_fields`, after :func:`open_hello` succeeded.
        plain_reply: a layout-1 ACCEPT or REJECT (``encode_accept``, ``encode_reject``).

    Raises:
        LocalProtocolError: ``plain_reply`` is not an ACCEPT or REJECT.
        RemoteProtocolError: ``client_ephemeral`` is not a usable X25519 key.
    """
    if plain_reply[:4] not in (
        _PREFIX.pack(MAGIC, DATAGRAM_VERSION, Kind.ACCEPT),
        _PREFIX.pack(MAGIC, DATAGRAM_VERSION, Kind.REJECT),
    ):
        raise LocalProtocolError("a HELLO is answered with an ACCEPT or a REJECT")
    private, server_ephemeral = _ephemeral_key(random_bytes)
    dh_secret = _exchange(private, client_ephemeral)
    to_server, to_client = chat_key.relay_keys(dh_secret, client_ephemeral, server_ephemeral)
    sealer = Sealer(to_client)
    reply = sealer.seal_datagram(plain_reply, server_ephemeral)
    return reply, Channel(sealer, Opener(to_server))


class ClientHandshake:
    """One join attempt of a relay client in a sealed chat.

    Send :attr:`datagram` — and resend exactly those bytes, never a re-sealed copy —
    until the relay answers; then :meth:`finish` checks the answer. A new attempt
    (a new cookie) needs a new ClientHandshake, and so a new ephemeral key.

    Args:
        chat_key: derived from the password and the salt in the COOKIE.
        cookie: the cookie from the COOKIE.
        hello_payload: the encoded ``hello`` frame.
        random_bytes: where the ephemeral private key comes from.
    """

    def __init__(
        self,
        chat_key: ChatKey,
        cookie: bytes,
        hello_payload: bytes,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        _check_length(cookie, COOKIE_BYTES, "cookie")
        self.chat_key = chat_key
        self._private, self.client_ephemeral = _ephemeral_key(random_bytes)
        header = _PREFIX.pack(MAGIC, SEALED_VERSION, Kind.HELLO) + cookie + self.client_ephemeral
        hello_key = chat_key.hello_key(self.client_ephemeral)
        self.datagram = Sealer(hello_key).seal(header, hello_payload)

    def finish(self, reply: bytes) -> tuple[bytes, Channel]:
        """Check the relay's sealed ACCEPT or REJECT.

        Returns:
            The layout-1 ACCEPT or REJECT for ``decode_datagram``, and the client's
            side of the session (meaningless after a REJECT).

        Raises:
            AuthenticationFailed: the reply was not sealed by a holder of the password
                for this join (a forged or stale reply).
            RemoteProtocolError: not a sealed ACCEPT or REJECT.
        """
        kind, header = _sealed_kind(reply)
        if kind not in (Kind.ACCEPT, Kind.REJECT):
            raise RemoteProtocolError(
                f"expected ACCEPT or REJECT, got {kind.name}", code="malformed"
            )
        server_ephemeral = reply[_PREFIX.size : header]
        try:
            dh_secret = _exchange(self._private, server_ephemeral)
        except RemoteProtocolError:
            raise AuthenticationFailed("the join reply carries an unusable key") from None
        to_server, to_client = self.chat_key.relay_keys(
            dh_secret, self.client_ephemeral, server_ephemeral
        )
        opener = Opener(to_client)
        opened = opener.open(reply)
        if opened.counter != 0:
            raise RemoteProtocolError("a join reply is sealed with counter 0", code="malformed")
        return opened.plain(), Channel(Sealer(to_server), opener)


class RecentNonces:
    """Client ephemerals of HELLOs the relay accepted lately, so a recorded HELLO
    cannot open a second (ghost) session.

    A sealed HELLO is only good while its cookie is (at most ``lifetime`` seconds,
    twice the cookie bucket), so entries are forgotten after that. At most
    ``capacity`` are kept; past that the oldest is forgotten early and counted in
    ``evicted`` (only holders of the password can add entries).
    """

    def __init__(self, lifetime: float = 60.0, capacity: int = 4096) -> None:
        self.lifetime = lifetime
        self.capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.evicted = 0

    def add(self, nonce: bytes, now: float) -> bool:
        """Remember ``nonce``; False when it was already seen within the lifetime."""
        while self._seen and next(iter(self._seen.values())) <= now - self.lifetime:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
            self.evicted += 1
        return True

    def __len__(self) -> int:
        return len(self._seen)


# --- serverless peers ----------------------------------------------------------------


class PeerOpeners:
    """Openers for every sender of a serverless chat, made only for senders that
    authenticate.

    A datagram from an unknown instance id costs one HKDF and one tag check, and
    leaves nothing behind unless it authenticates. At most ``capacity`` senders are
    tracked; past that the least recently heard one is *retired*: only its highest
    counter is kept (``retired`` of them), so if it speaks again its old datagrams
    still count as replays. Counters as in :class:`Opener`, over all senders.
    """

    def __init__(self, chat_key: ChatKey, capacity: int = 256, retired: int = 4096) -> None:
        self.chat_key = chat_key
        self.capacity = capacity
        self.retired_capacity = retired
        self._openers: OrderedDict[bytes, Opener] = OrderedDict()
        self._retired: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()
        self.opened = 0
        self.forged = 0
        self.replayed = 0
        self.malformed = 0

    def __len__(self) -> int:
        return len(self._openers)

    def open(self, datagram: bytes) -> Opened:
        """Open a sealed PEER datagram from any sender of the group.

        Raises:
            AuthenticationFailed, ReplayedDatagram, RemoteProtocolError: as
                :meth:`Opener.open`; a sealed datagram of another kind is malformed.
        """
        try:
            kind, header = _sealed_kind(datagram)
            if kind is not Kind.PEER:
                raise RemoteProtocolError(
                    f"peers send PEER datagrams, not {kind.name}", code="malformed"
                )
        except RemoteProtocolError:
            self.malformed += 1
            raise
        instance = datagram[_PREFIX.size : header]
        with self._lock:
            opener = self._openers.get(instance)
            known = opener is not None
            if opener is None:
                opener = Opener(self.chat_key.peer_key(instance))
                highest = self._retired.get(instance)
                if highest is not None:
                    opener.window.close_below(highest)
            try:
                opened = opener.open(datagram)
            except ReplayedDatagram:
                self.replayed += 1
                raise
            except AuthenticationFailed:
                self.forged += 1
                raise
            self.opened += 1
            if known:
                self._openers.move_to_end(instance)
            else:
                self._retired.pop(instance, None)
                self._openers[instance] = opener
                if len(self._openers) > self.capacity:
                    old, old_opener = self._openers.popitem(last=False)
                    self._retired[old] = old_opener.window.highest
                    if len(self._retired) > self.retired_capacity:
                        self._retired.popitem(last=False)
            return opened

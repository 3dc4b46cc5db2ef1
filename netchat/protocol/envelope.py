"""Envelopes: how a datagram transport's datagrams travel, in clear or sealed — sans-I/O.

Strategy
--------
Every datagram transport (the relay, its client, the peers; ``--proto rudp`` too)
builds and parses layout-1 datagrams with :mod:`netchat.protocol.datagram` and
nothing else. Whether a chat has a password is decided at the socket edge, by one
object the transport holds per session (or per group), an :class:`Envelope`:

* ``envelope.seal(datagram)`` just before ``sendto``;
* ``envelope.open(data)`` just after ``recvfrom``, which returns the layout-1
  datagram for :func:`~netchat.protocol.datagram.decode_datagram` or raises the
  protocol's own error (:class:`~netchat.errors.AuthenticationFailed`,
  :class:`~netchat.errors.ReplayedDatagram`, or a malformed ``code``);
* ``envelope.overhead``: how many bytes sealing adds, so the transport packs and
  fragments with that much less room and nothing exceeds
  :data:`~netchat.protocol.limits.MAX_DATAGRAM_BYTES`.

:data:`CLEAR` is the open chat's envelope (sealing and opening give the bytes back,
at the cost of one method call); :class:`SealedSession` holds one relay session's
keys and :class:`SealedGroup` a serverless group's. The keys themselves, the
counters and the replay windows are :mod:`netchat.protocol.seal`'s.

A relay join is the only exchange that is not "seal, send, receive, open": keys do
not exist before it. :class:`RelayKeys` is the relay's half (salted cookies, the
HELLO's proof of the password, a fresh session per join) and :class:`ClientKeys`
the client's (scrypt once per salt, one sealed HELLO per cookie resent verbatim, the
relay's answer checked before it is believed). Both are small wrappers that keep the
rules of PROTOCOL.md's "The relay join" in one place, so the transports only ask
"what do I send?" and "what did that say?".
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import LocalProtocolError, RemoteProtocolError, ReplayedDatagram
from . import seal
from .datagram import MAGIC, Kind

__all__ = [
    "CLEAR",
    "ClientKeys",
    "Envelope",
    "RelayKeys",
    "SealedGroup",
    "SealedSession",
    "is_layout",
]


def is_layout(data: bytes, version: int, *kinds: Kind) -> bool:
    """Whether ``data`` starts like a netchat datagram of layout ``version`` (and of one
    of ``kinds``, if given): a cheap look before anything is parsed."""
    return (
        len(data) >= 4
        and data[:2] == MAGIC
        and data[2] == version
        and (not kinds or data[3] in kinds)
    )


class Envelope:
    """An open chat's envelope: datagrams travel as they are.

    Subclasses seal. Every envelope counts what it refused to open.
    """

    #: whether datagrams are sealed (False: this is :data:`CLEAR`)
    sealed = False
    #: bytes :meth:`seal` adds to a datagram
    overhead = 0

    def seal(self, datagram: bytes) -> bytes:
        """The bytes to send for the layout-1 ``datagram``."""
        return datagram

    def open(self, data: bytes) -> bytes:
        """The layout-1 datagram in ``data`` (parse it with ``decode_datagram``).

        Raises:
            RemoteProtocolError: ``data`` does not open (sealed envelopes only).
        """
        return data

    def refused(self) -> dict[str, int]:
        """Datagrams that did not open: ``forged``, ``replayed``, ``malformed``."""
        return {"forged": 0, "replayed": 0, "malformed": 0}


#: The envelope of a chat without a password.
CLEAR = Envelope()


class SealedSession(Envelope):
    """One relay session's keys: what this side sends is sealed under one key, what it
    receives opens under the other (see :class:`~netchat.protocol.seal.Channel`)."""

    sealed = True
    overhead = seal.SEAL_OVERHEAD

    def __init__(self, channel: seal.Channel) -> None:
        self.channel = channel

    def seal(self, datagram: bytes) -> bytes:
        """Seal a layout-1 DATA, PING, PONG, BYE (or rudp ACK) datagram.

        Raises:
            LocalProtocolError: a kind that is never sealed, or too large sealed.
        """
        return self.channel.sealer.seal_datagram(datagram)

    def open(self, data: bytes) -> bytes:
        return self.channel.opener.open(data).plain()

    def refused(self) -> dict[str, int]:
        opener = self.channel.opener
        return {"forged": opener.forged, "replayed": opener.replayed, "malformed": opener.malformed}


class SealedGroup(Envelope):
    """A serverless group's keys: our datagrams are sealed under our instance's key,
    everyone's open under theirs (at most 256 senders tracked; see
    :class:`~netchat.protocol.seal.PeerOpeners`).

    Args:
        chat_key: the password stretched under the group's salt
            (:func:`~netchat.protocol.seal.group_salt`).
        instance: our instance id (8 bytes).
    """

    sealed = True
    overhead = seal.SEAL_OVERHEAD

    def __init__(self, chat_key: seal.ChatKey, instance: bytes) -> None:
        self._sealer = seal.Sealer(chat_key.peer_key(instance))
        self._openers = seal.PeerOpeners(chat_key)

    def seal(self, datagram: bytes) -> bytes:
        """Seal a layout-1 PEER datagram."""
        return self._sealer.seal_datagram(datagram)

    def open(self, data: bytes) -> bytes:
        return self._openers.open(data).plain()

    def refused(self) -> dict[str, int]:
        openers = self._openers
        return {
            "forged": openers.forged,
            "replayed": openers.replayed,
            "malformed": openers.malformed,
        }


class RelayKeys:
    """The relay's side of sealed joins: its chat key, salt and recent HELLOs.

    Args:
        password: the chat's password (stretched here with scrypt: ~70–90 ms).
        salt: the chat's salt; by default a fresh random one (a relay draws one at start).
        random_bytes: where salts and ephemeral keys come from (tests pass their own).

    Raises:
        LocalProtocolError: the password is unusable (empty, too long, not text).
    """

    #: bytes sealing adds to every datagram of a session
    overhead = seal.SEAL_OVERHEAD

    def __init__(
        self,
        password: str,
        *,
        salt: bytes | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._random_bytes = random_bytes
        self.chat_key = seal.ChatKey.derive(
            password, salt if salt is not None else seal.new_relay_salt(random_bytes)
        )
        self._recent = seal.RecentNonces()

    @staticmethod
    def is_cookie_request(data: bytes) -> bool:
        """A sealed client's first datagram (see :func:`~netchat.protocol.seal.cookie_request`)."""
        return seal.is_cookie_request(data)

    def cookie(self, cookie: bytes) -> bytes:
        """The COOKIE for ``cookie``: it carries the chat's salt, so a client can derive
        the chat key; exactly as large as the request it answers."""
        return seal.encode_salted_cookie(cookie, self.chat_key.salt)

    @staticmethod
    def hello_fields(data: bytes) -> seal.HelloFields:
        """The clear fields of a sealed HELLO (check the cookie before :meth:`open_hello`).

        Raises:
            RemoteProtocolError: not a sealed HELLO with a cookie.
        """
        return seal.hello_fields(data)

    def open_hello(self, data: bytes, fields: seal.HelloFields, now: float) -> bytes:
        """The layout-1 HELLO in a sealed one whose cookie verified.

        Raises:
            AuthenticationFailed: it was not sealed with this chat's password (or altered).
            ReplayedDatagram: a HELLO with this ephemeral key was accepted in the last
                minute (a recorded join, resent).
            RemoteProtocolError: malformed, or its ephemeral key is unusable.
        """
        plain = seal.open_hello(self.chat_key, data)
        seal.check_ephemeral(fields.client_ephemeral)  # so answer() cannot fail later
        if not self._recent.add(fields.client_ephemeral, now):
            raise ReplayedDatagram("a HELLO with this key was answered already")
        return plain

    def answer(self, fields: seal.HelloFields, plain_reply: bytes) -> tuple[bytes, SealedSession]:
        """Seal a layout-1 ACCEPT or REJECT for an opened HELLO, with fresh session keys.

        Returns:
            The sealed reply (resend exactly these bytes if the same HELLO comes again)
            and the relay's envelope for the session.
        """
        reply, channel = seal.answer_hello(
            self.chat_key, fields.client_ephemeral, plain_reply, self._random_bytes
        )
        return reply, SealedSession(channel)


class ClientKeys:
    """A relay client's side of sealed joins.

    scrypt runs once, for the salt of the first COOKIE; a COOKIE with another salt
    is ignored afterwards (so a forged one cannot make us run scrypt again, nor
    move us to a salt of someone else's choosing). Each cookie gets one sealed HELLO
    with a fresh ephemeral key, resent verbatim until the relay answers.

    Args:
        password: the chat's password.
        derive: how a password and a salt become a chat key (tests pass a cheap one).
    """

    def __init__(
        self,
        password: str,
        derive: Callable[[str, bytes], seal.ChatKey] = seal.ChatKey.derive,
    ) -> None:
        seal.normalize_password(password)  # refuse an unusable password before any I/O
        self._password = password
        self._derive = derive
        self.chat_key: seal.ChatKey | None = None
        self._handshake: seal.ClientHandshake | None = None
        self._hello_for: tuple[bytes, bytes] | None = None  # (cookie, payload) sealed

    def __repr__(self) -> str:
        return f"ClientKeys(chat_key={self.chat_key!r})"

    @staticmethod
    def cookie_request() -> bytes:
        """The first datagram of a sealed join (36 bytes, as large as the answer)."""
        return seal.cookie_request()

    def take_cookie(self, data: bytes) -> bytes | None:
        """The cookie in a sealed COOKIE; ``None`` for one whose salt is not ours.

        The first COOKIE's salt becomes the chat's (scrypt runs here, once).

        Raises:
            RemoteProtocolError: not a sealed COOKIE.
        """
        cookie, salt = seal.decode_salted_cookie(data)
        if self.chat_key is None:
            self.chat_key = self._derive(self._password, salt)
        elif salt != self.chat_key.salt:
            return None
        return cookie

    def hello(self, cookie: bytes, payload: bytes) -> bytes:
        """The sealed HELLO carrying ``payload`` (a ``hello`` frame) for ``cookie``:
        the same bytes again for the same cookie and payload, new ones otherwise."""
        if self.chat_key is None:
            raise LocalProtocolError("a sealed HELLO needs the relay's COOKIE first")
        if self._handshake is None or self._hello_for != (cookie, payload):
            self._handshake = seal.ClientHandshake(self.chat_key, cookie, payload)
            self._hello_for = (cookie, payload)
        return self._handshake.datagram

    def finish(self, reply: bytes) -> tuple[bytes, SealedSession]:
        """Check the relay's sealed ACCEPT or REJECT to our latest HELLO.

        Returns:
            The layout-1 ACCEPT or REJECT, and our envelope for the session.

        Raises:
            AuthenticationFailed: not sealed by a holder of the password for this join.
            RemoteProtocolError: not a sealed ACCEPT or REJECT, or no HELLO was sent.
        """
        if self._handshake is None:
            raise RemoteProtocolError("a join reply before any HELLO", code="malformed")
        plain, channel = self._handshake.finish(reply)
        return plain, SealedSession(channel)

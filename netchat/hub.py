"""The hub: who is in the chat, and who receives what. It knows nothing of sockets.

Strategy
--------
Sessions (:mod:`netchat.session`) turn what a client sends into request frames and
hand them to the hub together with their :class:`Member`, the hub's record of a
joined user. The hub stamps every event with the sender's name *as the hub records
it* (what a client claims is never trusted), a server timestamp and a sequence
number, and routes it.

There is one delivery path, the :class:`~netchat.streamlog.StreamLog`: a broadcast is
encoded once per wire format and appended once; a frame for one member is a patch at
its place in that member's stream. Sessions take what their member is owed when
their transport is ready to send. One lock guards the member table, the sequence
counter and the appends, so every member sees every event in the same order, the
order of ``seq``. Nothing under that lock does I/O: appending is memory work, and
event-log records and log lines are handed to queues or written after the lock is
released, so a slow disk or a blocked stderr never stalls the chat.

When users arrive or leave faster than :attr:`Hub.presence_burst` a second (a class
of 2000 connecting at once), one ``joined`` notice per arrival sent to every member
would cost O(N²). The hub then gathers arrivals and departures and announces them in
one :class:`~netchat.protocol.frames.Presence` notice every :data:`PRESENCE_DELAY`
seconds, as large IRC networks collapse join floods. A gathered notice is always
sent before anything else is broadcast, so nobody speaks before being announced.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .errors import Rejected
from .protocol.commands import HELP_TEXT
from .protocol.frames import (
    Act,
    Error,
    Frame,
    Hello,
    Help,
    Info,
    Joined,
    Left,
    Message,
    Nick,
    Ping,
    Pong,
    Presence,
    Private,
    PrivateMessage,
    Renamed,
    Say,
    Shutdown,
    UserList,
    Welcome,
    Who,
    encode_frame,
)
from .protocol.limits import MAX_FRAME_BYTES, MAX_TEXT_CHARS
from .protocol.render import render_text
from .protocol.text import (
    NameIndex,
    name_candidates,
    name_problem,
    normalize_name,
    quote_input,
    sanitize_text,
)
from .streamlog import Cursor, StreamLog, WireFormat

log = logging.getLogger("netchat.hub")

#: Called with one JSON-able record per chat event (see :mod:`netchat.eventlog`).
RecordSink = Callable[[dict[str, Any]], None]

#: Seconds arrivals and departures are gathered into one notice during a storm.
PRESENCE_DELAY = 0.25
#: Names listed in a welcome; ``/who`` lists everyone (up to a frame's size).
WELCOME_NAMES = 100
#: Names listed in a gathered notice; the rest are counted (nobody reads 2000 names).
PRESENCE_NAMES = 20


class Outbound:
    """A frame on its way out, with its wire encodings computed at most once each.

    ``json`` is the frame as one JSON line (structured clients, datagrams), ``text``
    as readable ``\\r\\n`` lines (``nc``/``telnet`` clients), stamped with ``at`` when
    the frame carries no time of its own. Each is computed on first access and then
    stored in its slot. Two threads may race to fill a slot; both compute the same
    bytes, so the race is harmless and cheaper than a lock.
    """

    __slots__ = ("at", "frame", "json", "text")
    json: bytes
    text: bytes

    def __init__(self, frame: Frame, at: float | None = None) -> None:
        self.frame = frame
        self.at = time.time() if at is None else at

    def __getattr__(self, name: str) -> bytes:
        # Only called while a slot is still empty.
        if name == "json":
            value = encode_frame(self.frame)
        elif name == "text":
            value = render_text(self.frame, self.at)
        else:
            raise AttributeError(name)
        object.__setattr__(self, name, value)
        return value


class Member:
    """A joined user: its name, where it connects from, and its place in the stream."""

    __slots__ = ("cursor", "joined_at", "name", "peer", "present")

    def __init__(self, name: str, peer: str, cursor: Cursor, joined_at: float) -> None:
        self.name = name
        self.peer = peer
        self.cursor = cursor
        self.joined_at = joined_at
        #: False once it has left (or was removed): the hub ignores its requests
        self.present = True


class Hub:
    """Members, names, and routing of chat events.

    Args:
        server_name: shown in the welcome frame.
        motd: message of the day, shown to each joining user.
        clock: wall-clock time source for timestamps (injectable for tests).
        monotonic: time source for :attr:`presence_burst` (injectable for tests).
        record: called with one JSON-able dict per event (joins, leaves, messages,
            renames, errors), e.g. an :class:`~netchat.eventlog.EventLog`; it must
            not block (the event log queues).
        presence_burst: arrivals plus departures within one second above which they
            are gathered into :class:`~netchat.protocol.frames.Presence` notices.
    """

    def __init__(
        self,
        *,
        server_name: str = "netchat",
        motd: str = "",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        record: RecordSink | None = None,
        presence_burst: int = 16,
    ) -> None:
        self.server_name = server_name
        self.motd = motd
        self.presence_burst = presence_burst
        self._clock = clock
        self._monotonic = monotonic
        self._record = record
        self._lock = threading.Lock()
        # name -> member, in joining order; look-alike names are one (see NameIndex)
        self._members: NameIndex[Member] = NameIndex()
        self._seq = 0
        self._closed = False
        self._log = StreamLog()
        # Recent arrival/departure times, and what is gathered while they come fast.
        self._presence_times: deque[float] = deque(maxlen=max(1, presence_burst))
        self._gathered_since: float | None = None
        self._gathered_joined: list[str] = []
        self._gathered_left: list[str] = []

    # --- queries -----------------------------------------------------------------

    def now(self) -> float:
        """The hub's wall-clock time: what server notices are stamped with."""
        return self._clock()

    def names(self) -> tuple[str, ...]:
        """Names of the members, in joining order (a renamed member moves to the end)."""
        with self._lock:
            return tuple(m.name for m in self._members.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)

    # --- what a member is owed (the sessions' side of the stream log) ----------------

    def take(self, member: Member) -> bytes:
        """Everything ``member`` is owed, in order, in its wire format."""
        return self._log.take(member.cursor)

    def take_many(self, members: list[Member]) -> list[bytes]:
        """:meth:`take` for many members at once (one lock, shared slices)."""
        return self._log.take_many([member.cursor for member in members])

    def owed(self, member: Member) -> int:
        """Bytes ``member`` is owed and has not taken."""
        return self._log.owed(member.cursor)

    def may_owe(self, member: Member) -> bool:
        """A lock-free hint that :meth:`take` would return something."""
        return self._log.may_owe(member.cursor)

    def release(self, member: Member) -> None:
        """``member``'s connection is gone: forget what it is still owed."""
        self._log.close(member.cursor)

    @property
    def broadcasts(self) -> int:
        """How many broadcasts there have been: when it changes, every member may be
        owed something; otherwise only those whose session said so (see
        :attr:`~netchat.streamlog.Cursor.notify`). Read without a lock."""
        return self._log.broadcasts

    # --- lifecycle ---------------------------------------------------------------

    def join(self, name: str, *, peer: str, wire_format: WireFormat) -> Member:
        """Add a user called ``name``, welcome it and tell everyone else.

        Args:
            name: the name asked for (surrounding white space is ignored).
            peer: where the user connects from, for logs and the event log.
            wire_format: how the member's frames are encoded.

        Raises:
            Rejected: the name is invalid (``bad-name``) or taken (``name-taken``),
                with a free alternative in ``suggestion``; or the server is
                shutting down (``shutting-down``).
        """
        name = normalize_name(name)
        with self._lock:
            if self._closed:
                raise Rejected("the server is shutting down", code="shutting-down")
            self._check_name_locked(name)
            # Announce first, then add and welcome: the newcomer is not told of its
            # own arrival, and its welcome lists everyone who is in.
            now = self._monotonic()
            if self._storming_locked(now):
                self._gather_locked(now, joined=name)
                seq, ts = None, self._clock()
            else:
                seq, ts = self._stamp_locked()
                self._broadcast_locked(Joined(name, ts, seq))
            member = Member(name, peer, self._log.open(wire_format), ts)
            self._members[name] = member
            self._log.patch(member.cursor, Outbound(self._welcome_locked(name), ts))
            self._emit("join", name=name, peer=peer, ts=ts, seq=seq)
        log.info("%s joined from %s", name, peer)
        return member

    def leave(self, member: Member, reason: str = "quit", detail: str = "") -> None:
        """Remove ``member`` and tell the others. Idempotent.

        ``reason`` is one of quit, lost, timeout, dropped (see the ``left`` frame).
        """
        with self._lock:
            if not member.present:
                return
            self._remove_locked(member)
            now = self._monotonic()
            if self._storming_locked(now) or member.name in self._gathered_joined:
                self._gather_locked(now, left=member.name)
                seq, ts = None, self._clock()
            else:
                seq, ts = self._stamp_locked()
                self._broadcast_locked(Left(member.name, ts, seq, reason, detail))
            self._emit("leave", name=member.name, reason=reason, detail=detail, ts=ts, seq=seq)
        log.info("%s left (%s%s)", member.name, reason, f": {detail}" if detail else "")

    def shutdown(self, reason: str = "") -> None:
        """Tell every member the server is going away, once, after everything they
        are already owed, and refuse further joins."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._announce_gathered_locked()
            self._log.broadcast(Outbound(Shutdown(reason), self._clock()))
            members = list(self._members.values())
            for member in members:
                self._remove_locked(member)
            self._emit("shutdown", reason=reason, members=len(members))

    def tick(self, now: float) -> None:
        """Announce arrivals and departures gathered for :data:`PRESENCE_DELAY`.

        Transports call it a few times a second while :meth:`presence_due` says so.
        """
        with self._lock:
            since = self._gathered_since
            if since is not None and now - since >= PRESENCE_DELAY:
                self._announce_gathered_locked()

    def presence_due(self) -> float | None:
        """When :meth:`tick` has gathered presence to announce, else ``None``."""
        since = self._gathered_since
        return None if since is None else since + PRESENCE_DELAY

    # --- requests ----------------------------------------------------------------

    def handle(self, member: Member, frame: Frame) -> Error | None:
        """Act on a request frame from ``member``.

        Returns:
            The error to tell the member, if the request was refused (the caller
            decides how to say it, so repeated errors can be summarised); ``None``
            when it was carried out or ``member`` is no longer present.
        """
        with self._lock:
            if not member.present:
                return None
            return self._handle_locked(member, frame)

    def send(self, member: Member, frame: Frame) -> None:
        """Queue ``frame`` for ``member`` alone, after everything it is owed."""
        with self._lock:
            if member.present:
                self._log.patch(member.cursor, Outbound(frame, self._clock()))

    def report_error(self, member: Member | None, peer: str, error: Error) -> None:
        """Tell ``member`` (if joined) about ``error`` and record it in the event log."""
        with self._lock:
            if member is not None and member.present:
                self._log.patch(member.cursor, Outbound(error, self._clock()))
            self._emit(
                "error",
                name=member.name if member is not None else None,
                peer=peer,
                code=error.code,
                text=error.text,
            )

    # --- internals (all called with the lock held) --------------------------------

    def _handle_locked(self, member: Member, frame: Frame) -> Error | None:
        if isinstance(frame, (Say, Act)):
            text, error = self._clean_text(frame.text)
            if text:
                seq, ts = self._stamp_locked()
                action = isinstance(frame, Act)
                self._broadcast_locked(Message(member.name, text, ts, seq, action), ts)
                if self._record is not None:  # the hot path: no record to build otherwise
                    self._emit(
                        "message", sender=member.name, text=text, action=action, ts=ts, seq=seq
                    )
            return error
        if isinstance(frame, Private):
            return self._private_locked(member, frame)
        if isinstance(frame, Nick):
            return self._rename_locked(member, normalize_name(frame.name))
        if isinstance(frame, Who):
            self._send_locked(member, UserList(self._listed_names_locked()))
        elif isinstance(frame, Help):
            self._send_locked(member, Info(HELP_TEXT))
        elif isinstance(frame, Ping):
            self._send_locked(member, Pong(frame.token))
        elif isinstance(frame, Pong):
            pass  # liveness is the session's business; any frame proves it
        elif isinstance(frame, Hello):
            return Error("already-joined", "you have already joined")
        else:
            return Error("unexpected", f"a client cannot send {frame.TYPE!r}")
        return None

    @staticmethod
    def _clean_text(text: str) -> tuple[str, Error | None]:
        text = sanitize_text(text).strip()
        if len(text) > MAX_TEXT_CHARS:
            return "", Error(
                "too-long", f"message of {len(text)} characters not sent (limit {MAX_TEXT_CHARS})"
            )
        return text, None

    def _private_locked(self, member: Member, frame: Private) -> Error | None:
        target = self._members.get(frame.to.strip())
        if target is None:
            return Error(
                "no-such-user", f"no user named {quote_input(frame.to)}; /who lists who is online"
            )
        text, error = self._clean_text(frame.text)
        if not text:
            return error
        seq, ts = self._stamp_locked()
        out = Outbound(PrivateMessage(member.name, target.name, text, ts, seq))
        for recipient in {id(target): target, id(member): member}.values():
            self._log.patch(recipient.cursor, out)
        self._emit("private", sender=member.name, to=target.name, text=text, ts=ts, seq=seq)
        return None

    def _rename_locked(self, member: Member, new: str) -> Error | None:
        if new == member.name:
            return None
        try:
            self._check_name_locked(new, renaming=member)
        except Rejected as exc:
            return Error(exc.code, str(exc), exc.suggestion or "")
        old = member.name
        del self._members[old]
        member.name = new
        self._members[new] = member
        seq, ts = self._stamp_locked()
        self._broadcast_locked(Renamed(old, new, ts, seq))
        self._emit("rename", old=old, new=new, ts=ts, seq=seq)
        return None

    def _check_name_locked(self, name: str, renaming: Member | None = None) -> None:
        problem = name_problem(name)
        if problem is not None:
            suggestion = self._free_name_locked(name)
            raise Rejected(
                f"{problem}; try {quote_input(suggestion)}", code="bad-name", suggestion=suggestion
            )
        if self._members.clash(name, ignoring=renaming) is not None:
            suggestion = self._free_name_locked(name)
            raise Rejected(
                f"the name {quote_input(name)} is taken; try {quote_input(suggestion)}",
                code="name-taken",
                suggestion=suggestion,
            )

    def _free_name_locked(self, name: str) -> str:
        for candidate in name_candidates(name):
            if candidate not in self._members:
                return candidate
        return "guest"  # pragma: no cover - 10,000 taken variants of one name

    def _remove_locked(self, member: Member) -> None:
        member.present = False
        if self._members.get(member.name) is member:
            del self._members[member.name]
        self._log.stop(member.cursor)

    def _stamp_locked(self) -> tuple[int, float]:
        self._seq += 1
        return self._seq, self._clock()

    def _welcome_locked(self, name: str) -> Welcome:
        # Only the first names are looked at: a storm of joins must not cost O(N) each.
        names = [m.name for m in itertools.islice(self._members.values(), WELCOME_NAMES)]
        listed = self._fit_names(names, len(self._members))
        return Welcome(name, listed, self.server_name, self.motd)

    def _listed_names_locked(self) -> tuple[str, ...]:
        names = [m.name for m in self._members.values()]
        return self._fit_names(names, len(names))

    @staticmethod
    def _fit_names(names: list[str], total: int) -> tuple[str, ...]:
        """``names`` cut to fit in one frame, ending with ``"… N more"`` when cut.

        That entry is not a name (names cannot contain spaces), so a client cannot
        mistake it for a user.
        """
        budget = MAX_FRAME_BYTES // 2  # the frame's other fields and JSON quoting fit in the rest
        used = 0
        for index, name in enumerate(names):
            used += len(name.encode()) + 3  # quotes and comma
            if used > budget:
                return (*names[:index], f"… {total - index} more")
        if len(names) < total:
            return (*names, f"… {total - len(names)} more")
        return tuple(names)

    def _send_locked(self, member: Member, frame: Frame) -> None:
        self._log.patch(member.cursor, Outbound(frame, self._clock()))

    def _broadcast_locked(self, frame: Frame, at: float | None = None) -> None:
        # Whoever is about to be heard from must have been announced first.
        if self._gathered_since is not None:
            self._announce_gathered_locked()
        self._log.broadcast(Outbound(frame, self._clock() if at is None else at))

    # --- presence storms --------------------------------------------------------------

    def _storming_locked(self, now: float) -> bool:
        """Record an arrival or departure at ``now``; True while they come too fast."""
        times = self._presence_times
        storming = len(times) == times.maxlen and now - times[0] < 1.0
        times.append(now)
        return storming or self._gathered_since is not None

    def _gather_locked(self, now: float, *, joined: str = "", left: str = "") -> None:
        if self._gathered_since is None:
            self._gathered_since = now
        if joined:
            self._gathered_joined.append(joined)
        if left:
            if left in self._gathered_joined:  # came and went unannounced: say nothing
                self._gathered_joined.remove(left)
            else:
                self._gathered_left.append(left)

    def _announce_gathered_locked(self) -> None:
        joined, left = self._gathered_joined, self._gathered_left
        self._gathered_since, self._gathered_joined, self._gathered_left = None, [], []
        if not joined and not left:
            return
        shown_joined = _names_within(joined[:PRESENCE_NAMES], MAX_FRAME_BYTES // 4)
        shown_left = _names_within(left[:PRESENCE_NAMES], MAX_FRAME_BYTES // 4)
        seq, ts = self._stamp_locked()
        notice = Presence(
            tuple(shown_joined),
            tuple(shown_left),
            ts,
            seq,
            len(joined) - len(shown_joined),
            len(left) - len(shown_left),
        )
        self._log.broadcast(Outbound(notice, ts))
        self._emit("presence", joined=len(joined), left=len(left), ts=ts, seq=seq)

    def _emit(self, event: str, **fields: Any) -> None:
        if self._record is not None:
            self._record({"event": event, **fields})


def _names_within(names: list[str], budget: int) -> list[str]:
    used = 0
    for index, name in enumerate(names):
        used += len(name.encode()) + 3
        if used > budget:
            return names[:index]
    return names

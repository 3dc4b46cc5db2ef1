"""The hub: who is in the chat, and who receives what. It knows nothing of sockets.

Strategy
--------
Transports (TCP, the UDP relay) turn bytes into request frames and hand them to
:meth:`Hub.handle` together with their :class:`Session`, the hub's only view of a
connection. The hub stamps every event with the sender's name *as the hub records it*
(what a client claims is never trusted), a server timestamp and a sequence number,
and routes it by calling :meth:`Session.deliver`, which must only enqueue.

One lock guards the member table and the sequence counter, and deliveries happen
while it is held: every member therefore sees every event in the same order, which is
the order of ``seq``. This is cheap because delivering is an enqueue; the slow part,
writing to sockets, happens on each connection's own writer thread.

An :class:`Outbound` wraps a frame and caches its encodings, so a broadcast to a
thousand members encodes the frame once per wire format, not once per member.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

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
    Private,
    PrivateMessage,
    Quit,
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

log = logging.getLogger("netchat.hub")

EventSink = Callable[[dict[str, Any]], None]


class Outbound:
    """A frame on its way out, with its wire encodings computed at most once each.

    ``json`` is the frame as one JSON line (structured clients), ``text`` as readable
    ``\r\n`` lines (``nc``/``telnet`` clients). Each is computed on first access and
    then stored in its slot, so every later access, once per member per message, is a
    plain attribute read. Two threads may race to fill a slot; both compute the same
    bytes, so the race is harmless and cheaper than a lock.
    """

    __slots__ = ("frame", "json", "text")
    json: bytes
    text: bytes

    def __init__(self, frame: Frame) -> None:
        self.frame = frame

    def __getattr__(self, name: str) -> bytes:
        # Only called while a slot is still empty.
        if name == "json":
            value = encode_frame(self.frame)
        elif name == "text":
            value = render_text(self.frame, time.time())  # the time of ts-less frames
        else:
            raise AttributeError(name)
        object.__setattr__(self, name, value)
        return value


class Session(Protocol):
    """What the hub needs of a connection. Transports implement it."""

    @property
    def peer(self) -> str:
        """The remote address, for logs."""
        ...

    def deliver(self, out: Outbound) -> bool | None:
        """Queue ``out`` for sending without blocking.

        Returns:
            False when the session cannot keep up (its backlog passed its limit); the
            hub then removes it as ``dropped``. Anything else (True, None) means
            queued, so a transport may use a bare ``deque.append`` as ``deliver``.
        """
        ...

    def close(self, reason: str) -> None:
        """Finish sending what is queued, then disconnect. Must not block."""
        ...


class Fanout(Protocol):
    """A transport's shared send path, used instead of one ``deliver`` per member.

    A stream transport can keep each broadcast once for all members (see
    :class:`~netchat.transport.streamlog.StreamLog`) instead of queueing it per member.
    When :attr:`Hub.fanout` is set, the hub sends members everything through it;
    sessions that are not members still get ``deliver``. Every method is called with
    the hub's lock held, so calls arrive in event order.
    """

    def add(self, session: Session) -> None:
        """``session`` became a member: it is owed every broadcast from now on."""
        ...

    def remove(self, session: Session) -> None:
        """``session`` is no longer a member: owed nothing broadcast from now on."""
        ...

    def broadcast(self, out: Outbound) -> None:
        """Every current member is owed ``out``."""
        ...

    def send(self, session: Session, out: Outbound) -> bool:
        """``session`` alone is owed ``out``; False if it is not a member."""
        ...


class Member:
    """A session that has joined under a name."""

    __slots__ = ("deliver", "joined_at", "name", "session")

    def __init__(self, name: str, session: Session, joined_at: float) -> None:
        self.name = name
        self.session = session
        self.joined_at = joined_at
        self.deliver = session.deliver  # bound once: broadcasts call it per member


class Hub:
    """Members, names, and routing of chat events.

    Args:
        server_name: shown in the welcome frame.
        motd: message of the day, shown to each joining user.
        clock: wall-clock time source for timestamps (injectable for tests).
        event_sink: called with one JSON-able dict per event (joins, leaves,
            messages, renames, errors), e.g. an :class:`~netchat.eventlog.EventLog`.
    """

    def __init__(
        self,
        *,
        server_name: str = "netchat",
        motd: str = "",
        clock: Callable[[], float] = time.time,
        event_sink: EventSink | None = None,
    ) -> None:
        self.server_name = server_name
        self.motd = motd
        self._clock = clock
        self._event_sink = event_sink
        self._lock = threading.Lock()
        self._members: NameIndex[Member] = NameIndex()  # name -> member; look-alikes are one
        self._by_session: dict[int, Member] = {}  # id(session) -> member
        self._seq = 0
        #: set by a transport that sends through a shared fan-out (see :class:`Fanout`)
        self.fanout: Fanout | None = None

    # --- queries -----------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """Names of the members, in joining order."""
        with self._lock:
            return self._names_locked()

    def member_name(self, session: Session) -> str | None:
        """The name ``session`` joined under, or ``None`` if it has not joined."""
        with self._lock:
            member = self._by_session.get(id(session))
            return member.name if member else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)

    # --- lifecycle ---------------------------------------------------------------

    def join(self, session: Session, name: str) -> Welcome:
        """Add ``session`` as ``name``, greet it and tell everyone else.

        Raises:
            Rejected: the name is invalid (``bad-name``) or taken (``name-taken``);
                ``suggestion`` holds a free alternative.
        """
        name = normalize_name(name)
        with self._lock:
            if id(session) in self._by_session:
                raise Rejected("you have already joined", code="already-joined")
            self._check_name_locked(name)
            # Announce first, then add and welcome: should the welcome not fit in the
            # new session's backlog, its "dropped" departure then follows its arrival
            # for everyone else; and a member dropped by the announcement is already
            # gone from the welcome's user list, so the newcomer never hears of it.
            seq, ts = self._stamp_locked()
            self._broadcast_locked(Joined(name, ts, seq))
            self._emit("join", name=name, peer=session.peer, ts=ts, seq=seq)
            member = Member(name, session, ts)
            self._members[name] = member
            self._by_session[id(session)] = member
            if self.fanout is not None:
                self.fanout.add(session)
            welcome = Welcome(name, self._listed_names_locked(), self.server_name, self.motd)
            self._send_locked(member, welcome)
        log.info("%s joined from %s", name, session.peer)
        return welcome

    def leave(self, session: Session, reason: str = "quit", detail: str = "") -> None:
        """Remove ``session`` if it joined and tell the others. Idempotent."""
        with self._lock:
            self._leave_locked(session, reason, detail)

    def shutdown(self, reason: str = "") -> None:
        """Tell every member the server is going away and close their sessions."""
        with self._lock:
            members = list(self._members.values())
            self._members.clear()
            self._by_session.clear()
            notice = Outbound(Shutdown(reason))
            if self.fanout is not None:
                self.fanout.broadcast(notice)
            for member in members:
                if self.fanout is not None:
                    self.fanout.remove(member.session)
                else:
                    member.session.deliver(notice)
                member.session.close("server shutting down")
            self._emit("shutdown", reason=reason, members=len(members))

    # --- requests ----------------------------------------------------------------

    def handle(self, session: Session, frame: Frame) -> None:
        """Act on a request frame from a joined ``session``.

        Frames a server never receives (``message``, ``welcome``, …) and requests
        from sessions that have not joined are answered with an ``error`` frame.
        """
        with self._lock:
            member = self._by_session.get(id(session))
            if member is None:
                self._error_to(session, "not-joined", "join first: send your name")
                return
            self._handle_locked(member, frame)

    def report_error(self, session: Session, code: str, text: str, suggestion: str = "") -> None:
        """Send ``session`` an error frame and record it in the event log."""
        with self._lock:
            self._error_to(session, code, text, suggestion)

    # --- internals (all called with the lock held) --------------------------------

    def _handle_locked(self, member: Member, frame: Frame) -> None:
        if isinstance(frame, (Say, Act)):
            text = self._clean_text_locked(member, frame.text)
            if text:
                seq, ts = self._stamp_locked()
                action = isinstance(frame, Act)
                self._broadcast_locked(Message(member.name, text, ts, seq, action))
                self._emit("message", sender=member.name, text=text, action=action, ts=ts, seq=seq)
        elif isinstance(frame, Private):
            self._private_locked(member, frame)
        elif isinstance(frame, Nick):
            self._rename_locked(member, normalize_name(frame.name))
        elif isinstance(frame, Who):
            self._send_locked(member, UserList(self._listed_names_locked()))
        elif isinstance(frame, Help):
            self._send_locked(member, Info(HELP_TEXT))
        elif isinstance(frame, Ping):
            self._send_locked(member, Pong(frame.token))
        elif isinstance(frame, Pong):
            pass  # liveness is the transport's business; any frame proves it
        elif isinstance(frame, Quit):
            self._leave_locked(member.session, "quit", sanitize_text(frame.reason)[:200])
            member.session.close("quit")
        elif isinstance(frame, Hello):
            self._error_to(member.session, "already-joined", "you have already joined")
        else:
            self._error_to(member.session, "unexpected", f"a client cannot send {frame.TYPE!r}")

    def _clean_text_locked(self, member: Member, text: str) -> str:
        text = sanitize_text(text).strip()
        if len(text) > MAX_TEXT_CHARS:
            self._error_to(
                member.session,
                "too-long",
                f"message of {len(text)} characters not sent (limit {MAX_TEXT_CHARS})",
            )
            return ""
        return text

    def _private_locked(self, member: Member, frame: Private) -> None:
        target = self._members.get(frame.to.strip())
        if target is None:
            self._error_to(
                member.session,
                "no-such-user",
                f"no user named {quote_input(frame.to)}; /who lists who is online",
            )
            return
        text = self._clean_text_locked(member, frame.text)
        if not text:
            return
        seq, ts = self._stamp_locked()
        out = Outbound(PrivateMessage(member.name, target.name, text, ts, seq))
        self._deliver_locked([target, member] if target is not member else [member], out)
        self._emit("private", sender=member.name, to=target.name, text=text, ts=ts, seq=seq)

    def _rename_locked(self, member: Member, new: str) -> None:
        if new == member.name:
            return
        try:
            self._check_name_locked(new, renaming=member)
        except Rejected as exc:
            self._error_to(member.session, exc.code, str(exc), exc.suggestion or "")
            return
        old = member.name
        del self._members[old]
        member.name = new
        self._members[new] = member
        seq, ts = self._stamp_locked()
        self._broadcast_locked(Renamed(old, new, ts, seq))
        self._emit("rename", old=old, new=new, ts=ts, seq=seq)

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

    def _leave_locked(self, session: Session, reason: str, detail: str) -> None:
        member = self._by_session.pop(id(session), None)
        if member is None:
            return
        del self._members[member.name]
        if self.fanout is not None:
            self.fanout.remove(session)
        seq, ts = self._stamp_locked()
        self._broadcast_locked(Left(member.name, ts, seq, reason, detail))
        log.info("%s left (%s%s)", member.name, reason, f": {detail}" if detail else "")
        self._emit("leave", name=member.name, reason=reason, detail=detail, ts=ts, seq=seq)

    def _stamp_locked(self) -> tuple[int, float]:
        self._seq += 1
        return self._seq, self._clock()

    def _names_locked(self) -> tuple[str, ...]:
        return tuple(m.name for m in self._members.values())

    def _listed_names_locked(self) -> tuple[str, ...]:
        """The names for a ``users`` or ``welcome`` frame, cut to fit in one frame.

        A thousand long non-Latin names encode to more than a frame may hold; rather
        than fail to answer, the list ends with a ``"… N more"`` entry (not a name:
        names cannot contain spaces).
        """
        names = self._names_locked()
        budget = MAX_FRAME_BYTES // 2  # the frame's other fields and JSON quoting fit in the rest
        used = 0
        for index, name in enumerate(names):
            used += len(name.encode()) + 3  # quotes and comma
            if used > budget:
                return (*names[:index], f"… {len(names) - index} more")
        return names

    def _send_locked(self, member: Member, frame: Frame) -> None:
        self._deliver_locked([member], Outbound(frame))

    def _broadcast_locked(self, frame: Frame) -> None:
        out = Outbound(frame)
        if self.fanout is not None:
            self.fanout.broadcast(out)
            return
        # One pass, no intermediate list: this loop runs once per member per message.
        too_slow = [m for m in self._members.values() if m.deliver(out) is False]
        if too_slow:
            self._drop_slow_locked(too_slow)

    def _deliver_locked(self, recipients: Iterable[Member], out: Outbound) -> None:
        if self.fanout is not None:
            for member in recipients:
                self.fanout.send(member.session, out)
            return
        too_slow = [m for m in recipients if m.deliver(out) is False]
        if too_slow:
            self._drop_slow_locked(too_slow)

    def _drop_slow_locked(self, too_slow: list[Member]) -> None:
        # Dropping a member broadcasts its departure, which may find more slow members:
        # a worklist instead of recursion keeps that bounded and lock-safe.
        while too_slow:
            member = too_slow.pop()
            if self._by_session.pop(id(member.session), None) is None:
                continue
            del self._members[member.name]
            member.session.close("too slow: outbound backlog over its limit")
            seq, ts = self._stamp_locked()
            left = Outbound(Left(member.name, ts, seq, "dropped", "too slow"))
            too_slow += [m for m in self._members.values() if m.deliver(left) is False]
            log.warning("%s dropped: outbound backlog over its limit", member.name)
            self._emit(
                "leave", name=member.name, reason="dropped", detail="too slow", ts=ts, seq=seq
            )

    def _error_to(self, session: Session, code: str, text: str, suggestion: str = "") -> None:
        out = Outbound(Error(code, text, suggestion))
        if self.fanout is None or not self.fanout.send(session, out):
            session.deliver(out)
        member = self._by_session.get(id(session))
        self._emit(
            "error", name=member.name if member else None, peer=session.peer, code=code, text=text
        )

    def _emit(self, event: str, **fields: Any) -> None:
        if self._event_sink is not None:
            self._event_sink({"event": event, **fields})

"""The client side of ``--proto rudp``: the UDP client plus a sender and a receiver.

Strategy
--------
:class:`RudpClientTransport` is :class:`~netchat.transport.udp_client.UdpClientTransport`
— the same cookie, join, heartbeats and BYE, on the same connected socket and the
same receiver thread — with reliability where the UDP client reports loss:

* what the user sends is queued in a :class:`~netchat.protocol.reliable.Sender` and
  transmitted at once (on the caller's thread); retransmissions happen on the
  receiver thread, which also wakes for the sender's timers;
* DATA from the server goes through a :class:`~netchat.protocol.reliable.Receiver`,
  so frames reach :meth:`receive` in order and exactly once, whatever the network
  lost, duplicated or reordered; nothing is ever reported lost;
* an ACK leaves after each batch of datagrams the receiver thread drained (or when
  the receiver's delayed-ACK timer says), and ACKs from the server feed the sender.

Frames are no longer limited to one datagram: the sender cuts a long one into
pieces and the relay's receiver glues them back, so a message may be as long as on
TCP. The round-trip time ``/stats`` shows is the sender's smoothed RTT, measured on
the chat itself. The sender and the receiver are not thread-safe; one lock guards
both (taken before the base class's own lock, never after it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import ConnectionClosed
from ..protocol import datagram as dg
from ..protocol import reliable as rel
from ..protocol.frames import Frame, Hello, encode_frame
from ..protocol.seal import SEAL_OVERHEAD
from .udp_client import MISSED_HEARTBEATS, UdpClientTransport

__all__ = ["RudpClientTransport"]


class RudpClientTransport(UdpClientTransport):
    """A :class:`~netchat.transport.base.ClientTransport` over the reliable UDP relay.

    Args:
        host: server host name or address.
        port: server UDP port.
        connect_timeout: seconds :meth:`connect` waits for the server's cookie.
        window: units in flight at most, each way.
        max_queue: bytes waiting for acknowledgement before the session ends as
            "the server does not keep up".
        min_rto: floor of the retransmission timeout (seconds).
        clock: monotonic time source.
    """

    PROTO = "rudp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        window: int = rel.DEFAULT_WINDOW,
        max_queue: int = rel.DEFAULT_MAX_QUEUE,
        min_rto: float = rel.MIN_RTO,
        clock: Callable[[], float] = time.monotonic,
        password: str | None = None,
    ) -> None:
        super().__init__(
            host, port, connect_timeout=connect_timeout, clock=clock, password=password
        )
        self.window = window
        self.max_queue = max_queue
        self.min_rto = min_rto
        #: payload room of one of our DATA datagrams (less when they are sealed)
        self.room = rel.ROOM - (SEAL_OVERHEAD if password else 0)
        # Guards the sender and the receiver; taken before the base class's _lock.
        self._rudp_lock = threading.Lock()
        self._sender: rel.Sender | None = None  # both made when the server accepts us
        self._receiver: rel.Receiver | None = None
        self._unsent: list[bytes] = []  # frames given to send() before that
        # The relay's ends of our two directions, from its latest PONG, and when.
        self._report: dg.Report | None = None
        self._report_at = 0.0

    # --- ClientTransport ----------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Send one frame reliably; a ``Hello`` starts the join.

        Raises:
            LocalProtocolError: the frame is over 64 KiB encoded (nothing is sent).
            ConnectionClosed: the session has ended or was never connected.
        """
        if isinstance(frame, Hello):
            super().send(frame)
            return
        if self._sock is None or self._closed.is_set():
            raise ConnectionClosed("not connected")
        payload = encode_frame(frame)
        with self._rudp_lock:
            sender = self._sender
            if sender is None:
                self._unsent.append(payload)
                return
            sender.send(payload)
            self._transmit(sender, self._clock())
        if sender.failure is not None:
            raise ConnectionClosed(self._failure_text(sender.failure))

    def stats(self) -> dict[str, int]:
        """The UDP client's counters (``duplicates``: units received twice;
        ``reordered``: units held back for an earlier one; nothing is ever ``lost``),
        and per direction the reliability counters: ``up_*`` for what we send
        (``sent``, ``retransmitted``, ``acknowledged``, ``lost``, ``timeouts``,
        ``rto_us``, ``srtt_us``, ``window_in_use``, ``window``, ``backlog``) and
        ``down_*`` for what we receive (``received``, ``duplicates``, ``held_back``,
        ``buffered``, ``acks_sent``). Once the relay has answered a heartbeat, its
        ends too, as of then: ``up_server_*`` (``received``, ``duplicates``,
        ``held_back``), ``down_server_*`` (``sent``, ``retransmitted``,
        ``acknowledged``, ``rto_us``, ``srtt_us``, ``window_in_use``, ``window``) and
        ``server_report_age_ms``."""
        stats = super().stats()
        with self._rudp_lock:
            sender, receiver = self._sender, self._receiver
            if sender is None or receiver is None:
                return stats
            own = rel.report(sender, receiver)
            stats.update(
                duplicates=own.duplicates,
                reordered=own.held_back,
                **_report_fields(own, sending="up", receiving="down"),
                up_lost=sender.lost,
                up_timeouts=sender.timeouts,
                up_backlog=sender.backlog,
                down_buffered=receiver.buffered,
                down_acks_sent=receiver.acks_sent,
            )
            if sender.rtt_samples:
                stats["rtt_us"] = own.srtt_us
            report = self._report
            if report is not None:
                stats.update(
                    **_report_fields(report, sending="down_server", receiving="up_server"),
                    server_report_age_ms=round((self._clock() - self._report_at) * 1000),
                )
        return stats

    # --- the receiver thread ----------------------------------------------------------

    def _on_accept(self, accept: dg.Accept, now: float) -> None:
        heartbeat = max(0.01, accept.heartbeat_ms / 1000)
        with self._rudp_lock:
            self._receiver = rel.Receiver(accept.first_seq, window=self.window)
            self._sender = rel.Sender(
                1,
                window=self.window,
                room=self.room,
                max_queue=self.max_queue,
                # The cookie's round trip is the best guess we have until the chat's.
                initial_rtt=self._rtt if self._rtt else rel.INITIAL_RTT,
                min_rto=self.min_rto,
                dead_after=MISSED_HEARTBEATS * heartbeat,
            )
            unsent, self._unsent = self._unsent, []
            for payload in unsent:
                self._sender.send(payload)
        super()._on_accept(accept, now)  # hands DATA that came before the ACCEPT to _on_data

    def _on_datagram(self, datagram: dg.Datagram, now: float) -> None:
        if isinstance(datagram, dg.Ack):
            with self._rudp_lock:
                if self._sender is not None:
                    self._sender.on_ack(datagram, now)
        elif isinstance(datagram, dg.Pong):
            # The heartbeat's round trip, and the relay's report: no tail is ever
            # reported lost here.
            if datagram.nonce == self._ping_nonce:
                self._note_rtt(now - self._ping_sent_at)
            if datagram.report is not None:
                self._report, self._report_at = datagram.report, now
        else:
            super()._on_datagram(datagram, now)

    def _on_data(self, data: dg.Data, now: float) -> None:
        with self._rudp_lock:
            receiver = self._receiver
            if receiver is None:
                return
            frames = receiver.on_data(data, now)
        for whole in frames:
            self._deliver(whole)

    def _tick(self, now: float) -> None:
        super()._tick(now)  # the join's retries, heartbeats, a silent server
        if self._ended:
            return
        with self._rudp_lock:
            sender, receiver = self._sender, self._receiver
            if sender is None or receiver is None:
                return
            self._transmit(sender, now)
            ack = receiver.take_ack(now)
            if ack is not None:
                self._send_datagram(ack)

    def _wait_time(self) -> float:
        wait = super()._wait_time()
        with self._rudp_lock:
            deadlines = (
                (self._sender.next_deadline(), self._receiver.next_deadline())
                if self._sender is not None and self._receiver is not None
                else ()
            )
        now = self._clock()
        for deadline in deadlines:
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
        return wait

    # --- internals -------------------------------------------------------------------

    def _transmit(self, sender: rel.Sender, now: float) -> None:
        """Send what the sender has to send now (the caller holds ``_rudp_lock``)."""
        for datagram in sender.transmit(now):
            self._send_datagram(datagram)
        if sender.failure is not None:
            self._end(self._failure_text(sender.failure))

    def _send_datagram(self, datagram: bytes) -> None:
        """The one way out for our DATA and ACKs, so that whatever the UDP client does
        to a session's datagrams at the socket edge (sealing) is done to them too."""
        self._send(datagram)

    def _failure_text(self, failure: rel.Failure) -> str:
        if failure.reason == "dead":
            return f"the server stopped acknowledging ({failure.detail})"
        return (
            f"the server does not keep up: over {self.max_queue} bytes wait for its acknowledgement"
        )


def _report_fields(report: dg.Report, *, sending: str, receiving: str) -> dict[str, int]:
    """A report's figures as ``/stats`` keys: ``{sending}_sent`` … for its sender's
    direction, ``{receiving}_received`` … for its receiver's."""
    return {
        f"{sending}_sent": report.sent,
        f"{sending}_retransmitted": report.retransmitted,
        f"{sending}_acknowledged": report.acknowledged,
        f"{sending}_rto_us": report.rto_us,
        f"{sending}_srtt_us": report.srtt_us,
        f"{sending}_window_in_use": report.window_in_use,
        f"{sending}_window": report.window,
        f"{receiving}_received": report.received,
        f"{receiving}_duplicates": report.duplicates,
        f"{receiving}_held_back": report.held_back,
    }

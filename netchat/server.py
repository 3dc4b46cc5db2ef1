"""The public server: a hub, a transport chosen by ``--proto``, logging and signals."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType

from .eventlog import EventLog
from .hub import Hub
from .transport.base import Proto, ServerConfig
from .transport.registry import make_server_transport

log = logging.getLogger("netchat.server")


class Server:
    """A netchat server, bound on construction (so port 0 works: read ``address``).

    Args:
        config: address, limits and timeouts.
        proto: ``Proto.tcp`` (threaded stream server) or ``Proto.udp`` (datagram relay).
        event_log: path of a JSON-lines file receiving every chat event.

    Raises:
        OSError: the address cannot be bound (in use, not local, …).
        ConfigError: the event log cannot be opened.

    Example::

        with Server(ServerConfig(port=0)).start() as server:
            host, port = server.address
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        proto: Proto = Proto.tcp,
        *,
        event_log: str | Path | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.proto = Proto(proto)
        self._event_log = EventLog(event_log) if event_log is not None else None
        self.hub = Hub(
            server_name=self.config.server_name, motd=self.config.motd, record=self._event_log
        )
        try:
            self.transport = make_server_transport(self.proto, self.hub, self.config)
        except BaseException:
            if self._event_log is not None:
                self._event_log.close()
            raise
        # Kept: after a shutdown the socket is closed and can no longer say.
        self._address = self.transport.address
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self._address

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until :meth:`shutdown`, SIGINT or SIGTERM; then release everything.

        Signal handlers are installed only when called on the main thread. ``on_ready``
        runs once they are: whatever it announces ("serving on …"), a Ctrl-C that
        follows at once is a clean shutdown, not a traceback.
        """
        previous: dict[signal.Signals, signal._HANDLER] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        log.debug("serving %s on %s:%s", self.proto.value, *self.address)
        try:
            if on_ready is not None:
                on_ready()
            self.transport.serve_forever()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._close_log()
        log.info("server stopped")

    def start(self) -> Server:
        """Serve on a background thread; returns ``self`` (for ``with``)."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="netchat-server", daemon=True
        )
        self._thread.start()
        return self

    def shutdown(self, reason: str = "") -> None:
        """Tell everyone the server is going away, stop, and wait for it (bounded)."""
        self.transport.shutdown(reason)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        self.transport.shutdown("server stopped by its operator")

    def _close_log(self) -> None:
        if self._event_log is not None and not self._closed:
            self._closed = True
            self._event_log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

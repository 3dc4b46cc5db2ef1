"""netchat's one exception hierarchy.

Every error netchat raises on purpose derives from :class:`NetchatError`, so a caller
can catch one type. The split follows h11 and httpcore: *who* misbehaved (the remote
peer or we ourselves) for protocol errors, and *what* failed (connecting, timing out)
for I/O errors. OS errors are translated once, at the socket edge, into
:class:`TransportError` subclasses.
"""

from __future__ import annotations


class NetchatError(Exception):
    """Base class of every error netchat raises on purpose."""


class ProtocolError(NetchatError):
    """Bytes or frames that break the netchat protocol.

    ``code`` is the short machine-readable reason carried in an ``error`` frame.
    """

    code: str = "protocol"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""


class FrameTooLarge(RemoteProtocolError):
    """A frame or line exceeded the size limit."""

    code = "too-large"


class ConfigError(NetchatError, ValueError):
    """A configuration value that cannot work (``ping_interval=0``, a negative limit).

    ``field`` names the setting, so a CLI can name its option instead.
    """

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class AuthenticationFailed(RemoteProtocolError):
    """A sealed datagram did not authenticate: wrong password, tampering or a forgery."""

    code = "auth"


class ReplayedDatagram(RemoteProtocolError):
    """A sealed datagram whose counter was already accepted or is older than the window."""

    code = "replay"


class CommandError(NetchatError):
    """A ``/command`` line that cannot be parsed (unknown command, missing argument)."""


class UnknownInterface(NetchatError):
    """A network interface name or address that this machine does not have."""


class TransportError(NetchatError):
    """A network operation failed."""


class ConnectError(TransportError):
    """The server could not be reached."""


class ForeignServer(ConnectError):
    """The server answered, but not in netchat (a lab server: try plain-line mode)."""


class ConnectionClosed(TransportError):
    """The other side went away."""


class TransportTimeout(TransportError):
    """A network operation did not complete in time."""


class Rejected(NetchatError):
    """The server refused us: name taken or invalid, server full, too many connections.

    ``code`` is the server's reason code and ``suggestion`` an alternative name, if any.
    """

    def __init__(self, message: str, *, code: str = "rejected", suggestion: str | None = None):
        super().__init__(message)
        self.code = code
        self.suggestion = suggestion


class InvalidParameter(NetchatError, ValueError):
    """A setting that is malformed or out of range (a loss rate of 150 %, a port of -1)."""


class BenchError(NetchatError):
    """A benchmark step could not be set up or measured; the message says why."""

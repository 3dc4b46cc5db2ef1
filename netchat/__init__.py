"""netchat: a multi-user chat for local networks and networking classes, over TCP or UDP."""

__version__ = "0.1.0"

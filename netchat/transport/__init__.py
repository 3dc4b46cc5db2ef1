"""Transports move frames between sockets and the hub; they make no chat decisions."""

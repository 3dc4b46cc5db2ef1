"""This machine's network interfaces and their addresses, found without sending a packet.

Strategy
--------
Two questions need them: which addresses students can reach a server on
(``netchat server --host 0.0.0.0`` prints them), and which address a peer should use
when given an interface name (``netchat peer --interface eth0``).

On Linux each interface of :func:`socket.if_nameindex` is asked for its IPv4
address with the ``SIOCGIFADDR`` ioctl, the call ``ifconfig`` makes: no packet is
sent, no route is consulted, and interfaces without an address are simply skipped.
Elsewhere (or if that fails) the addresses the host name resolves to are used, which
at least finds the machine's main address. The functions take the interface list as
an argument, so their callers are tested with a made-up one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UnknownInterface

#: ``SIOCGIFADDR`` from ``linux/sockios.h``: get an interface's IPv4 address.
_SIOCGIFADDR = 0x8915
#: The name of interfaces known only by an address of the host name.
_UNNAMED = "?"


@dataclass(frozen=True)
class Interface:
    """A network interface and its IPv4 address (``None`` if it has none)."""

    name: str
    address: str | None


def _ipv4_of(sock: socket.socket, name: str) -> str | None:
    import fcntl  # POSIX only; imported here so this module loads everywhere

    request = struct.pack("256s", name.encode()[:15])
    try:
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
    except OSError:  # no IPv4 address (EADDRNOTAVAIL), or the interface went away
        return None
    return socket.inet_ntoa(answer[20:24])  # struct ifreq: 16-byte name, then sockaddr_in


def interfaces() -> list[Interface]:
    """This machine's interfaces with their IPv4 addresses, in the system's order."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            return [Interface(name, _ipv4_of(sock, name)) for _, name in socket.if_nameindex()]
    return _interfaces_from_host_name()


def _interfaces_from_host_name() -> list[Interface]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return []
    addresses = dict.fromkeys(str(info[4][0]) for info in infos)
    return [Interface(_UNNAMED, address) for address in addresses]


def lan_addresses(found: Sequence[Interface] | None = None) -> list[str]:
    """The IPv4 addresses other machines may reach this one on: no loopback, no
    duplicates, in interface order."""
    listed = interfaces() if found is None else found
    addresses = [i.address for i in listed if i.address is not None]
    usable = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    return list(dict.fromkeys(usable))


def describe(found: Sequence[Interface]) -> str:
    """``lo (127.0.0.1), eth0 (192.0.2.10), wlan0 (no IPv4 address)``."""
    return ", ".join(f"{i.name} ({i.address or 'no IPv4 address'})" for i in found) or "none"


def resolve_interface(value: str, found: Sequence[Interface] | None = None) -> str:
    """The IPv4 address meant by ``value``: an interface name (``eth0``) or an address.

    Raises:
        UnknownInterface: no interface has that name or address, the interface has no
            IPv4 address, or the address is not IPv4; the message lists the
            interfaces there are.
    """
    listed = interfaces() if found is None else found
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if address is not None:
        if address.version != 4:
            raise UnknownInterface(f"{value} is not an IPv4 address (peers use IPv4)")
        if address.is_unspecified:
            return value  # 0.0.0.0: let the system choose, as with no --interface
        # A list from the host name (not Linux) may miss addresses: then trust the user.
        complete = listed and all(i.name != _UNNAMED for i in listed)
        if complete and value not in {i.address for i in listed}:
            raise UnknownInterface(
                f"no interface of this machine has the address {value};"
                f" interfaces: {describe(listed)}"
            )
        return value
    for interface in listed:
        if interface.name == value:
            if interface.address is None:
                raise UnknownInterface(
                    f"interface {value} has no IPv4 address; interfaces: {describe(listed)}"
                )
            return interface.address
    raise UnknownInterface(
        f"no network interface named {value!r}; this machine has: {describe(listed)}"
    )

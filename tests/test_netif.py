"""Interface names and addresses: with a made-up list, and one look at the real machine."""

from __future__ import annotations

import sys

import pytest

from netchat.errors import UnknownInterface
from netchat.netif import Interface, interfaces, lan_addresses, resolve_interface

MACHINE = [
    Interface("lo", "127.0.0.1"),
    Interface("eth0", "192.0.2.10"),
    Interface("docker0", None),
    Interface("wlan0", "198.51.100.7"),
    Interface("eth0:1", "192.0.2.10"),  # an alias with the same address
]


def test_lan_addresses_leave_out_loopback_and_duplicates() -> None:
    assert lan_addresses(MACHINE) == ["192.0.2.10", "198.51.100.7"]
    assert lan_addresses([Interface("lo", "127.0.0.1")]) == []
    assert lan_addresses([]) == []


def test_an_interface_name_means_its_address() -> None:
    assert resolve_interface("eth0", MACHINE) == "192.0.2.10"
    assert resolve_interface("lo", MACHINE) == "127.0.0.1"


def test_an_address_of_this_machine_is_taken_as_is() -> None:
    assert resolve_interface("198.51.100.7", MACHINE) == "198.51.100.7"
    assert resolve_interface("0.0.0.0", MACHINE) == "0.0.0.0"  # the system chooses


def test_an_address_is_trusted_when_the_list_comes_from_the_host_name() -> None:
    partial = [Interface("?", "192.0.2.10")]
    assert resolve_interface("10.1.2.3", partial) == "10.1.2.3"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "eth9",
            "no network interface named 'eth9'; this machine has: lo (127.0.0.1),"
            " eth0 (192.0.2.10), docker0 (no IPv4 address), wlan0 (198.51.100.7),"
            " eth0:1 (192.0.2.10)",
        ),
        ("docker0", "interface docker0 has no IPv4 address; interfaces: lo (127.0.0.1)"),
        ("10.1.2.3", "no interface of this machine has the address 10.1.2.3; interfaces: lo"),
        ("fe80::1", "fe80::1 is not an IPv4 address (peers use IPv4)"),
    ],
)
def test_unknown_interfaces_are_explained(value: str, message: str) -> None:
    with pytest.raises(UnknownInterface) as caught:
        resolve_interface(value, MACHINE)
    assert str(caught.value).startswith(message)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIOCGIFADDR is Linux's")
def test_this_machine_has_a_loopback_interface() -> None:
    found = interfaces()
    assert any(i.address == "127.0.0.1" for i in found), found
    loopback = next(i.name for i in found if i.address == "127.0.0.1")
    assert resolve_interface(loopback) == "127.0.0.1"
    assert "127.0.0.1" not in lan_addresses(found)

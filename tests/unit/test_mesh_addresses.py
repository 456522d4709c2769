"""What a node advertises to peers (by construction from its bind address and interfaces),
and which peer-supplied addresses are believed."""

from __future__ import annotations

import pytest

from covey.config import from_layers
from covey.errors import ConfigError
from covey.mesh.addresses import (
    MAX_ADDRESS_CHARS,
    InterfaceAddress,
    advertised,
    check_address,
)

HOST = [
    InterfaceAddress("lo", "127.0.0.1"),
    InterfaceAddress("lo", "::1"),
    InterfaceAddress("eth0", "192.168.1.20"),
    InterfaceAddress("eth0", "fe80::1%eth0"),
    InterfaceAddress("eth0", "2001:db8::20"),
    InterfaceAddress("docker0", "172.17.0.1"),
    InterfaceAddress("br-1234abcd", "172.18.0.1"),
    InterfaceAddress("wlan0", "10.0.0.7", up=False),
    InterfaceAddress("dummy0", "10.99.0.1"),
]


@pytest.mark.parametrize(("bind", "advertise", "expected"), [
    # The README's recipe: a wildcard advertises every usable LAN address, never loopback.
    ("0.0.0.0", (), ["10.99.0.1:7070", "192.168.1.20:7070"]),
    ("::", (), ["10.99.0.1:7070", "192.168.1.20:7070", "[2001:db8::20]:7070"]),
    ("0.0.0.0", ("vpn.example:9000",),
     ["vpn.example:9000", "10.99.0.1:7070", "192.168.1.20:7070"]),
    ("0.0.0.0", ("10.99.0.1:7070",), ["10.99.0.1:7070", "192.168.1.20:7070"]),  # no repeats
    # A specific bind advertises itself; --advertise replaces it (port forward, NAT).
    ("127.0.0.1", (), ["127.0.0.1:7070"]),
    ("192.168.1.20", (), ["192.168.1.20:7070"]),
    ("2001:db8::20", (), ["[2001:db8::20]:7070"]),
    ("[2001:db8::20]", (), ["[2001:db8::20]:7070"]),
    ("127.0.0.1", ("127.0.0.1:9999",), ["127.0.0.1:9999"]),
])
def test_advertised(bind: str, advertise: tuple[str, ...], expected: list[str]) -> None:
    assert advertised(bind, 7070, advertise, HOST) == expected


def test_wildcard_on_a_host_with_only_loopback_falls_back_to_loopback() -> None:
    assert advertised("0.0.0.0", 7070, (), HOST[:2]) == ["127.0.0.1:7070"]


def test_at_most_sixteen() -> None:
    many = [InterfaceAddress(f"eth{i:02}", f"10.1.0.{i}") for i in range(1, 40)]
    assert len(advertised("0.0.0.0", 1, (), many)) == 16


@pytest.mark.parametrize("good", [
    "10.0.0.1:7070", "[::1]:1", "[2001:db8::1]:65535", "node-1.lan:7070", "a:1",
    "example.com.:443", "x" * 63 + ".lan:7070",
])
def test_good_addresses(good: str) -> None:
    assert check_address(good) == good


@pytest.mark.parametrize("bad", [
    "", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:-1", "10.0.0.1:http",
    "10.0.0.256:7070", "::1:7070", "[::1:7070", "[nothost]:7070", "-bad.lan:7070",
    "bad-.lan:7070", "under_score:7070", "sp ace:7070", "x" * 64 + ".lan:7070",
    "a.b@evil:7070", "host:0007070", ("a." * 130) + "lan:7070", "é.lan:7070",
    "x" * (MAX_ADDRESS_CHARS + 1),
])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        check_address(bad)


def test_advertise_is_repeatable_and_a_comma_list_in_the_environment() -> None:
    assert from_layers({}, {"COVEY_ADVERTISE": "a.lan:1,b.lan:2"}, {}).advertise == (
        "a.lan:1", "b.lan:2")
    assert from_layers({}, {}, {"advertise": ["a.lan:1", "b.lan:2"]}).advertise == (
        "a.lan:1", "b.lan:2")


def test_a_bad_advertise_address_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="advertise='nope'"):
        from_layers({}, {}, {"advertise": ["nope"]}).resolved()

"""Which addresses a node advertises to its peers, and which addresses from peers to believe.

A node's mesh listener is reached at `host:port`. What it advertises (in its signed record,
its runtime file, `/api/status` and every invite it mints) follows from how it is bound:

- bound to one address (`--mesh-host 10.0.0.5`): that address; `--advertise` replaces it
  (a port forward, a NAT) when given;
- bound to a wildcard (`0.0.0.0`: IPv4, `::`: IPv4 and IPv6): the `--advertise` addresses
  first, then every usable address of the host's interfaces, ordered by interface name then
  address (stable across restarts). Usable: the interface is up; not loopback; not an IPv6
  link-local address (it needs a scope id no peer can know); not a Docker bridge (`docker*`,
  `br-*`: a container network the peers are not on). When nothing else is left, loopback, so
  a lone machine still works;
- bound to loopback: loopback (only this machine's nodes can reach it anyway).

Peers try the list in order, so the first address should be the likeliest to work.
Addresses read from the network are checked by `check_address`: host syntax (IPv4, bracketed
IPv6, RFC 1123 hostname), port 1..65535, at most MAX_ADDRESS_CHARS.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_ADDRESSES = 16  # per record and per invite
MAX_ADDRESS_CHARS = 262  # "[" + 39-char IPv6 … or a 253-char hostname + ":65535"
WILDCARDS = ("0.0.0.0", "::", "")
SKIPPED_INTERFACE_PREFIXES = ("docker", "br-")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class InterfaceAddress:
    """One address of one network interface, as the host lists it."""

    interface: str
    address: str  # an IP literal, without brackets or scope
    up: bool = True


def check_address(text: str) -> str:
    """`text` if it is a valid `host:port` (IPv4, `[IPv6]`, or an RFC 1123 hostname, port
    1..65535); ValueError saying why otherwise."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_ADDRESS_CHARS:
        raise ValueError(f"an address is 1..{MAX_ADDRESS_CHARS} characters of host:port")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535 or len(port) > 5:
        raise ValueError(f"{text!r}: the port must be 1..65535 (host:port)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{text!r}: unclosed bracket")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ValueError(f"{text!r}: not an IPv6 address in brackets") from exc
        return text
    if ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address must be in brackets, [addr]:port")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError as exc:
            raise ValueError(f"{text!r}: not an IPv4 address") from exc
        return text
    name = host[:-1] if host.endswith(".") else host
    if not 0 < len(name) <= 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{text!r}: not a valid host name")
    return text


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of a `host:port` address, an IPv6 host without its brackets."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _usable(entry: InterfaceAddress, want_v6: bool) -> bool:
    if not entry.up or entry.interface.startswith(SKIPPED_INTERFACE_PREFIXES):
        return False
    try:
        ip = ipaddress.ip_address(entry.address.split("%")[0])
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        return False
    if ip.version == 6:
        return want_v6 and not ip.is_link_local
    return True


def advertised(bind_host: str, port: int, advertise: Sequence[str],
               interfaces: Iterable[InterfaceAddress]) -> list[str]:
    """Pure: the addresses this node's peers should try, best first (at most MAX_ADDRESSES)."""
    host = bind_host.strip("[]")
    if host not in WILDCARDS:
        if advertise:
            return _dedup(advertise)
        return [join_host_port(host, port)]
    want_v6 = host in ("::", "")
    found = sorted((e.interface, ipaddress.ip_address(e.address.split("%")[0]).version,
                    e.address.split("%")[0])
                   for e in interfaces if _usable(e, want_v6))
    own = [join_host_port(address, port) for _, _, address in found]
    if not own and not advertise:
        own = [join_host_port("127.0.0.1", port)]
    return _dedup([*advertise, *own])


def _dedup(addresses: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(addresses))[:MAX_ADDRESSES]


def host_interfaces() -> list[InterfaceAddress]:
    """The host's interface addresses (psutil), with each interface's up/down state."""
    import psutil

    stats = psutil.net_if_stats()
    out = []
    for name, addrs in psutil.net_if_addrs().items():
        up = stats[name].isup if name in stats else False
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.append(InterfaceAddress(name, a.address, up))
    return out

"""Finding mesh members on the LAN by mDNS (`zeroconf`), without an invite address.

Each node advertises `_covey._tcp.local.` with its mesh listener's addresses and port, a
hash of its mesh id, and its TLS fingerprint: nothing secret. A node that sees an
advertisement with its own mesh hash gossips with that address, pinning the fingerprint;
the gossip itself is signed and checked against the member list, so a forged
advertisement wastes one connection and admits nobody.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from collections.abc import Callable

import psutil
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from covey.mesh.remembered import Bootstrap

log = logging.getLogger(__name__)
SERVICE = "_covey._tcp.local."


def mesh_hash(mesh_id: str) -> str:
    """What the advertisement says of the mesh: enough to match, useless to join."""
    return hashlib.sha256(b"covey-mdns-v1:" + mesh_id.encode()).hexdigest()[:16]


def lan_addresses(bind_host: str) -> list[str]:
    """Addresses to advertise for a listener bound to `bind_host`; none for loopback."""
    if bind_host not in ("0.0.0.0", "::", ""):
        ip = ipaddress.ip_address(bind_host.strip("[]"))
        return [] if ip.is_loopback else [str(ip)]
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not ipaddress.ip_address(a.address).is_loopback:
                found.append(a.address)
    return found


def peer_from(properties: dict[bytes, bytes | None], addresses: list[str], port: int,
              want_hash: str, own_fingerprint: str) -> Bootstrap | None:
    """Pure: the gossip target an advertisement offers, or None if it is not for us."""
    if properties.get(b"m") != want_hash.encode() or not addresses or not 0 < port < 65536:
        return None
    fp = (properties.get(b"fp") or b"").decode(errors="replace")
    if len(fp) != 64 or fp == own_fingerprint:
        return None
    try:
        bytes.fromhex(fp)
    except ValueError:
        return None
    host = addresses[0]
    return Bootstrap(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", fp)


class LanDiscovery:
    """Advertise this node and report members found, via `on_found`, while running."""

    def __init__(self, mesh_id: str, node_id: str, fingerprint: str, addresses: list[str],
                 port: int, on_found: Callable[[Bootstrap], None]) -> None:
        self.hash = mesh_hash(mesh_id)
        self.fingerprint = fingerprint
        self.on_found = on_found
        self._pending: set[asyncio.Task[None]] = set()  # referenced until done
        self.info = AsyncServiceInfo(
            SERVICE, f"covey-{node_id[:16]}.{SERVICE}", port=port,
            parsed_addresses=addresses, properties={"m": self.hash, "fp": fingerprint, "v": "1"})

    async def run(self) -> None:
        azc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        browser: AsyncServiceBrowser | None = None
        try:
            await azc.async_register_service(self.info, allow_name_change=True)
            browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE],
                                          handlers=[self._on_change])
            log.info("mDNS: advertising the mesh listener on %s",
                     ", ".join(self.info.parsed_addresses()))
            await asyncio.Event().wait()  # until cancelled
        finally:
            if browser is not None:
                await browser.async_cancel()
            await azc.async_unregister_all_services()
            await azc.async_close()

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.ensure_future(self._resolve(zeroconf, service_type, name))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, 3000):
            return
        peer = peer_from(info.properties, info.parsed_addresses(IPVersion.V4Only),
                         info.port or 0, self.hash, self.fingerprint)
        if peer is not None:
            self.on_found(peer)

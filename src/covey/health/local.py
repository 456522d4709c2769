"""Layers 2–5: what this node can tell without touching the network."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection

import psutil

from covey.health.layers import LayerResult, failed, passed, skipped
from covey.mesh.membership import MembershipError
from covey.mesh.records import NodeRecord
from covey.mesh.runtime import MeshRuntime
from covey.router.table import ModelTable, unavailable_reason
from covey.types import EngineReady


def engines_layer(table: ModelTable) -> LayerResult:
    models = list(table.models.values())
    if not models:
        return passed(2, "serves no models here (an entry node)")
    down = [m for m in models if not isinstance(m.engine.state, EngineReady)]
    if down:
        return failed(2, "; ".join(unavailable_reason(m.id, m.engine.state) for m in down),
                      "see `covey status` here: a loading engine needs a moment, a crashed one "
                      "restarts by itself, a failed load names its cause")
    return passed(2, f"{len(models)} model(s) ready")


def membership_layer(mesh: MeshRuntime, now: float) -> LayerResult:
    problem = mesh.problem()
    if problem:
        return failed(3, problem.split(":")[0], problem)
    state = mesh.state
    try:
        cert = state.own_cert(now)
    except MembershipError as exc:
        return failed(3, f"this node's member certificate is not valid: {exc}",
                      "join again with a fresh invite: `covey serve --join <invite>`")
    days = (cert.expires_at - now) / 86400
    known = len(mesh.peers(now))
    if not known:
        return skipped(3, f"member of {state.info.mesh_id} (certificate valid {days:.0f} more "
                          "days), no other member known yet: invite one with `covey invite`")
    return passed(3, f"member of {state.info.mesh_id}, certificate valid {days:.0f} more days, "
                     f"{known} peer(s) known")


def _host(address: str) -> str:
    """The host part of "host:port", "[v6]:port" or a bare host (network data: never raises)."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    return address.rpartition(":")[0] if address.count(":") == 1 else address


def is_loopback(address: str) -> bool:
    host = _host(address).split("%")[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it names a real interface


def host_ips() -> set[str]:
    """Every IP address of this machine's interfaces (peers there are on this host)."""
    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values()
            for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)}


def loopback_only(own: list[str], peers: list[NodeRecord], this_host: Collection[str]
                  ) -> LayerResult | None:
    """Layer 4's failure when this node advertises only loopback addresses while a live peer
    advertises an address on another host: that peer can never connect back here. Pure:
    `own` are this node's advertised addresses, `this_host` the IPs of this machine (a peer
    that advertises one of them shares the machine and can use loopback)."""
    if not own or not all(is_loopback(a) for a in own):
        return None
    for record in peers:
        for address in record.addresses[:16]:
            if not is_loopback(address) and _host(address) not in this_host:
                label = record.name or record.node_id[:12]
                return failed(4, f"this node advertises only loopback ({', '.join(own[:4])}) "
                                 f"but its peers are on other hosts ({label} at "
                                 f"{address[:64]})",
                              "start it with --mesh-host 0.0.0.0 (or --advertise HOST:PORT) "
                              "so peers can reach it")
    return None


def discovery_layer(mesh: MeshRuntime, mdns: bool, now: float) -> LayerResult:
    live = mesh.peers(now)
    unreachable = loopback_only(mesh.addresses, live, host_ips()) if live else None
    if unreachable is not None:
        return unreachable
    sources = [b.address for b in mesh.bootstrap]
    how = (f"remembered/invite addresses: {', '.join(sources[:4])}" if sources
           else "no remembered addresses") + ("; mDNS on" if mdns else "; mDNS off")
    if live:
        return passed(4, f"{len(live)} peer(s) found ({how})")
    if mesh.state.authority is not None and not sources:
        return skipped(4, f"this node created the mesh and nobody has joined yet ({how})")
    if sources and mesh.failing_addresses() >= set(sources):
        return failed(4, f"no remembered peer answers ({how})",
                      "start one of those members, or join again with a fresh invite: "
                      "`covey serve --join <invite>`")
    if not sources and not mdns:
        return failed(4, f"no way to find the mesh ({how})",
                      "join with an invite (`covey serve --join <invite>`), or let mDNS find "
                      "members on the LAN (--mesh-host 0.0.0.0 --mdns)")
    return skipped(4, f"looking for peers ({how})")


def roster_layer(record: NodeRecord | None, label: str, now: float,
                 fresh_s: float) -> LayerResult:
    if record is None or record.expires_at <= now:
        return failed(5, f"{label} is not present in the roster (no live record)",
                      "the peer is stopped, was revoked, or never joined: start it with "
                      "`covey serve` there, or invite it again")
    age = now - record.issued_at
    if age > fresh_s:
        return failed(5, f"the last record from {label} is {age:.0f}s old (expected every "
                         f"few seconds)",
                      f"the peer stopped gossiping: it is stopped, stalled, or cut off from "
                      f"this mesh; check `covey status` on {label}")
    return passed(5, f"record #{record.seq}, {age:.1f}s old")

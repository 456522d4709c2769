"""GET /api/doctor: every layer checked now, for this node and each peer (or one).

    ?peer=ID|PREFIX|NAME   only that member: its node id, a unique prefix of it (4+
                           characters) or its name; anything else is a 404 listing the
                           known peers
    ?token=0               skip the one-token probes (layer 11)

Only members are probed, each pinned to the TLS key its signed record names: a doctor
request never sends traffic to an address nobody vouched for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from covey.errors import NotFound
from covey.health import layers as L
from covey.health.local import discovery_layer, engines_layer, membership_layer
from covey.health.monitor import HealthMonitor
from covey.mesh.records import NodeRecord
from covey.mesh.runtime import MeshRuntime
from covey.router.table import ModelTable


class DoctorRoutes:
    def __init__(self, table: ModelTable, mesh: MeshRuntime, health: HealthMonitor,
                 mdns: bool, url: Callable[[], str]) -> None:
        self.table = table
        self.mesh = mesh
        self.health = health
        self.mdns = mdns
        self.url = url

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/api/doctor", self.doctor)

    def local_layers(self) -> list[L.LayerResult]:
        now = time.time()
        return [L.passed(1, f"answering on {self.url()}"), engines_layer(self.table),
                membership_layer(self.mesh, now), discovery_layer(self.mesh, self.mdns, now)]

    async def doctor(self, request: web.Request) -> web.Response:
        wanted = request.query.get("peer", "").strip()[:256]
        token = request.query.get("token", "1") != "0"
        local = L.settle(self.local_layers(), L.LOCAL_LAYERS)
        known = self.mesh.peers(time.time())
        records = find_peers(wanted, known) if wanted else known
        peers: list[dict[str, Any]] = []
        checks = await asyncio.gather(*(self.health.check_now(r, token) for r in records))
        for record, results in zip(records, checks, strict=True):
            peers.append({"id": record.node_id, "name": record.name,
                          "address": record.addresses[0] if record.addresses else None,
                          **L.report(results, time.time())})
        broken = any(r.ok is False for r in local) or any(p["ok"] is False for p in peers)
        return web.json_response({
            "ok": not broken, "node": {"id": self.mesh.node_id, "layers": [
                r.as_dict() for r in local], "first_failure": (
                    f.as_dict() if (f := L.first_failure(local)) else None)},
            "peers": peers})


MIN_PREFIX = 4  # shorter id prefixes are too easy to mistype into another peer


def find_peers(wanted: str, peers: list[NodeRecord]) -> list[NodeRecord]:
    """Pure: the members `wanted` names: the peer with that node id, the one peer whose id
    starts with it, or the peers with that name. Raises NotFound listing the known peers
    otherwise (an address is not a member: it is never probed)."""
    exact = [r for r in peers if r.node_id == wanted]
    if exact:
        return exact
    by_prefix = ([r for r in peers if r.node_id.startswith(wanted)]
                 if len(wanted) >= MIN_PREFIX else [])
    if len(by_prefix) > 1:
        raise NotFound(f"{wanted!r} starts the id of several peers: "
                       f"{_listing(by_prefix)}; give more of the id", param="peer")
    by_name = [r for r in peers if r.name and r.name == wanted]
    if by_prefix or by_name:
        return by_prefix or by_name
    raise NotFound(f"no peer {wanted!r} in the roster (give a member's node id, a unique "
                   f"prefix of it, or its name); known peers: {_listing(peers)}",
                   param="peer")


def _listing(peers: list[NodeRecord]) -> str:
    return ", ".join(f"{r.name or '(no name)'} ({r.node_id[:12]})" for r in peers) or "none"

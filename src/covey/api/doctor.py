"""GET /api/doctor: every layer checked now, for this node and each peer (or one).

    ?peer=ID|NAME|HOST:PORT   only that member (by id prefix, name or advertised address;
                              nothing outside the roster is ever probed: there would be no
                              key to pin)
    ?token=0                  skip the one-token probes (layer 11)
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

    def _find(self, wanted: str) -> list[NodeRecord]:
        """Members matching `wanted` (id prefix, name or advertised address)."""
        peers = self.mesh.peers(time.time())
        matches = [r for r in peers if (len(wanted) >= 4 and r.node_id.startswith(wanted))
                   or r.name == wanted or wanted in r.addresses]
        if matches:
            return matches
        known = ", ".join(f"{r.name} ({r.node_id[:12]})" for r in peers) or "none"
        raise NotFound(f"no peer {wanted!r} in the roster; known peers: {known}")

    async def doctor(self, request: web.Request) -> web.Response:
        wanted = request.query.get("peer", "").strip()[:256]
        token = request.query.get("token", "1") != "0"
        local = L.settle(self.local_layers(), L.LOCAL_LAYERS)
        records = self._find(wanted) if wanted else self.mesh.peers(time.time())
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

"""/health, /api/status (JSON) and /metrics (Prometheus text)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from covey import __version__
from covey.mesh.records import NodeRecord
from covey.mesh.runtime import MeshRuntime
from covey.metrics.export import render
from covey.router.table import ModelTable, ServedModel
from covey.types import EngineFailed, EngineReady, NodeId, Percentiles


def _percentiles(p: Percentiles) -> dict[str, Any]:
    return {"p50": p.p50, "p95": p.p95, "count": p.count}


def model_status(m: ServedModel, now: float, window_s: float) -> dict[str, Any]:
    state = m.engine.state
    return {
        "id": m.id,
        "state": state.kind,
        "reason": state.reason if isinstance(state, EngineFailed) else None,
        "engine": m.engine.kind,
        "pid": m.engine.pid,
        "engine_url": state.base_url if isinstance(state, EngineReady) else None,
        "path": str(m.card.path) if m.card.path else None,
        "size_bytes": m.card.size_bytes,
        "quantization": m.card.quantization,
        "architecture": m.card.architecture,
        "slots": m.slots,
        "in_flight": m.in_flight,
        "queue_depth": m.queue_depth,
        "restarts": getattr(m.engine, "restarts", 0),
        "requests_ok": m.meter.requests_ok,
        "requests_failed": m.meter.requests_failed,
        "window_s": window_s,
        "ttft_ms": _percentiles(m.meter.ttft_ms.summary(now)),
        "tokens_per_s": _percentiles(m.meter.tokens_per_s.summary(now)),
        "baseline": asdict(m.baseline) if m.baseline else None,
    }


def peer_status(record: NodeRecord) -> dict[str, Any]:
    return {
        "id": record.node_id, "name": record.name, "addresses": record.addresses,
        "hardware": record.hardware.model_dump(), "software_version": record.software_version,
        "last_seen": record.issued_at, "expires_at": record.expires_at,
        "models": [{**ad.model_dump(), **(record.metrics[ad.id].model_dump()
                                          if ad.id in record.metrics else {}),
                    "baseline_tokens_per_s": record.baseline.get(ad.id)}
                   for ad in record.models],
    }


class StatusRoutes:
    def __init__(self, table: ModelTable, registry: CollectorRegistry, node_id: NodeId,
                 node_name: str, window_s: float,
                 mesh: MeshRuntime | None = None) -> None:
        self.table = table
        self.mesh = mesh
        self.registry = registry
        self.node_id = node_id
        self.node_name = node_name
        self.window_s = window_s
        self.started_at = time.time()

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/health", self.health)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/metrics", self.metrics)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": self.node_id})

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "node": {"id": self.node_id, "name": self.node_name, "version": __version__,
                     "started_at": self.started_at,
                     "uptime_s": round(time.time() - self.started_at, 1)},
            "models": [model_status(m, now, self.window_s) for m in self.table.models.values()],
            "mesh": ({"id": self.mesh.state.info.mesh_id, "address": self.mesh.advertise,
                      "problem": self.mesh.problem()} if self.mesh else None),
            "peers": [peer_status(r) for r in self.mesh.peers(time.time())] if self.mesh else [],
        }

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

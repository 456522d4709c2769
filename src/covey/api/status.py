"""/health, /api/status (JSON) and /metrics (Prometheus text)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from covey import __version__
from covey.api.openai import OpenAIRoutes
from covey.health.monitor import HealthMonitor
from covey.ledger.service import ledger_status
from covey.mesh.peer_transport import PeerTransport
from covey.mesh.records import NodeRecord
from covey.mesh.runtime import MeshRuntime
from covey.metrics.efficiency import efficiency, max_tokens, min_tokens
from covey.metrics.export import render
from covey.metrics.samples import SPEED_SOURCES, median, percentile, series
from covey.metrics.share import ShareStore
from covey.router.table import ModelTable, ServedModel
from covey.router.tiers import TierPolicy
from covey.types import EngineFailed, EngineReady, ModelId, NodeId, Percentiles
from covey.verify.verdicts import verification_status


def _percentiles(p: Percentiles) -> dict[str, Any]:
    return {"p50": p.p50, "p95": p.p95, "count": p.count}


def _sources(kinds: Iterable[str]) -> dict[str, int]:
    """How many speed samples of each kind (stream, engine timings, node clock)."""
    counts: dict[str, int] = dict.fromkeys(SPEED_SOURCES, 0)
    for kind in kinds:
        counts[kind] += 1
    return counts


def tier_fields(policy: TierPolicy, model_id: str) -> dict[str, Any]:
    """A model's tier and that tier's targets (None: no target)."""
    targets = policy.targets_for(model_id)
    return {"tier": policy.tier(model_id),
            "targets": {"ttft_s": targets.ttft_s, "tokens_per_s": targets.tokens_per_s}}


def model_status(m: ServedModel, now: float, window_s: float,
                 policy: TierPolicy | None = None) -> dict[str, Any]:
    state = m.engine.state
    return {
        "id": m.id,
        **tier_fields(policy or TierPolicy(), m.id),
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
        # Waited in this node's fair-share queue before entering the engine (ms), by who
        # asked: this node's clients, members in credit, everyone else (router/fairshare.py).
        "queue_wait_ms": m.admission.wait_summary(now) if m.source == "local" else None,
        "restarts": getattr(m.engine, "restarts", 0),
        "requests_ok": m.meter.requests_ok,
        "requests_failed": m.meter.requests_failed,
        "window_s": window_s,
        "ttft_ms": _percentiles(m.meter.ttft_ms.summary(now)),
        "tokens_per_s": _percentiles(m.meter.tokens_per_s.summary(now)),
        "tokens_per_s_sources": _sources(s.source for s in m.meter.speeds.samples(now)),
        "latency_ms": _percentiles(m.meter.latency_ms.summary(now)),
        "baseline": asdict(m.baseline) if m.baseline else None,
    }


def peer_status(record: NodeRecord, health: HealthMonitor | None,
                transport: PeerTransport | None = None) -> dict[str, Any]:
    fp = record.tls_fingerprint
    return {
        "health": health.status(record.node_id) if health else None,
        "id": record.node_id, "name": record.name, "addresses": record.addresses,
        # The address of it that answered last, and the connections (each a TLS handshake)
        # this node opened to it since start: flat while idle, or the pool is leaking.
        "reached_at": transport.address(fp) if transport and fp else None,
        "connections_opened": transport.opened(fp) if transport and fp else None,
        "hardware": record.hardware.model_dump(), "software_version": record.software_version,
        "last_seen": record.issued_at, "expires_at": record.expires_at,
        "memory": record.memory.model_dump() if record.memory else None,
        "models": [{**ad.model_dump(), **(record.metrics[ad.id].model_dump()
                                          if ad.id in record.metrics else {}),
                    "baseline_tokens_per_s": record.baseline.get(ad.id)}
                   for ad in record.models],
    }


HISTORY_BUCKET_S = 60.0


def catalog_rows(routes: OpenAIRoutes, table: ModelTable, peers: list[NodeRecord],
                 window_s: float, now: float, wall: float,
                 baseline_tokens: int) -> list[dict[str, Any]]:
    """One row per model the mesh can serve: who serves it, what it achieved through the
    mesh from this node (real traffic, streamed and whole answers), and the serving nodes'
    native baseline.

    Efficiency compares like with like (metrics/efficiency.py): only this node's decode
    samples from half to twice as long as the baseline's `baseline_tokens` (the range in
    `efficiency_tokens`), with their count in `efficiency_samples`. Until this node has
    carried traffic for a model, the serving nodes' own gossiped figures stand in (`source:
    "peers"`), without an efficiency: a gossiped p50 mixes answers of every length.
    Missing numbers stay None, never 0."""
    names = {r.node_id: r.name for r in peers} | {routes.node_id: routes.node_name}
    rows = []
    for mid, entry in routes.catalog().items():
        nodes = entry["covey"]["nodes"]
        meters = routes.meters(mid)
        timed = sorted(p for m in meters for p in m.tokens_per_s.timed(now))
        ttfts = sorted(v for m in meters for v in m.ttft_ms.values(now))
        latencies = sorted(v for m in meters for v in m.latency_ms.values(now))
        speeds = [s for m in meters for s in m.speeds.samples(now)]
        rates = sorted(v for _, v in timed)
        ttft = percentile(ttfts, 50) if ttfts else None
        rate = percentile(rates, 50) if rates else None
        samples, source = len(rates), "this node"
        gossiped = [r.metrics[mid] for r in peers if mid in r.metrics and r.node_id in nodes]
        if not rates and gossiped:
            best = max(gossiped, key=lambda g: g.samples)
            ttft, rate, samples, source = (best.ttft_ms_p50, best.tokens_per_s_p50,
                                           best.samples, "peers")
        local = table.models.get(ModelId(mid))
        baselines = [b for r in peers if r.node_id in nodes
                     and (b := r.baseline.get(mid)) is not None]
        if local is not None and local.baseline is not None:
            baselines.append(local.baseline.tokens_per_s)
        native = median(baselines) if baselines else None
        eff = efficiency(speeds, native, baseline_tokens)
        rows.append({
            "id": mid, "tier": entry["covey"]["tier"], "targets": entry["covey"]["targets"],
            "size_bytes": entry["covey"]["size_bytes"],
            "quantization": entry["covey"]["quantization"], "state": entry["covey"]["state"],
            "nodes": [{"id": n, "name": names.get(n, "")} for n in nodes],
            "ttft_ms_p50": ttft, "ttft_samples": len(ttfts) if source == "this node" else None,
            "tokens_per_s_p50": rate, "samples": samples,
            "tokens_per_s_sources": _sources(s.source for s in speeds),
            "latency_ms_p50": percentile(latencies, 50) if latencies else None,
            "source": source, "window_s": window_s, "baseline_tokens_per_s": native,
            "efficiency": eff.ratio, "efficiency_samples": eff.samples,
            "baseline_suspect": eff.baseline_suspect,
            "efficiency_tokens": [min_tokens(baseline_tokens), max_tokens(baseline_tokens)],
            "history": [[round(wall - (now - t), 1), round(v, 2)]
                        for t, v in series(timed, now, HISTORY_BUCKET_S)],
        })
    return rows


class StatusRoutes:
    def __init__(self, table: ModelTable, registry: CollectorRegistry, node_id: NodeId,
                 node_name: str, window_s: float, routes: OpenAIRoutes,
                 mesh: MeshRuntime | None = None, baseline_tokens: int = 128,
                 share: ShareStore | None = None,
                 memory: Callable[[], dict[str, Any]] | None = None,
                 fetches: Callable[[], dict[str, Any]] | None = None) -> None:
        """`baseline_tokens`: the native baseline's chat length, for the efficiency rule.
        `share`: the mesh share's counts (metrics/share.py), None where not kept.
        `memory`: the memory store's status (blocking: it counts rows in SQLite)."""
        self.table = table
        self.memory = memory
        self.fetches = fetches  # models being fetched from peers (fetch/wanted.py)
        self.share = share
        self.baseline_tokens = baseline_tokens
        self.routes = routes
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
        peers = self.mesh.peers(time.time()) if self.mesh else []
        return {
            "node": {"id": self.node_id, "name": self.node_name, "version": __version__,
                     "started_at": self.started_at,
                     "uptime_s": round(time.time() - self.started_at, 1)},
            "models": [model_status(m, now, self.window_s, self.routes.tiers())
                       for m in self.table.models.values()],
            "mesh": ({"id": self.mesh.state.info.mesh_id,
                      "address": self.mesh.addresses[0] if self.mesh.addresses else None,
                      "addresses": self.mesh.addresses,
                      "problem": self.mesh.problem()} if self.mesh else None),
            "peers": [peer_status(r, self.routes.health,
                                  self.mesh.transport if self.mesh else None) for r in peers],
            "catalog": catalog_rows(self.routes, self.table, peers, self.window_s, now,
                                    time.time(), self.baseline_tokens),
            "mesh_share": self.share.snapshot() if self.share is not None else None,
            # SLA fallback providers: never their keys, only whether each is set.
            "fallback": ({"providers": fb.status(now), "per_client": fb.budget.per_client,
                          "window_s": fb.budget.window_s}
                         if (fb := self.routes.fallback) is not None else None),
            # What a request naming no model gets (the chat page's first pick).
            "default_model": self.routes.default_model(),
            # Issue 14: this node's own audit verdicts per peer and model (verify/).
            "verification": verification_status(
                self.routes.dispatcher.verdicts if self.routes.dispatcher else None,
                time.time()),
            # Issue 12: models whose file this node fetches from peers, with progress.
            "fetches": self.fetches() if self.fetches else {},
            # Issue 15: credits given and used per member (ledger/).
            "ledger": ledger_status(self.routes.relay.receipts),
        }

    async def status(self, request: web.Request) -> web.Response:
        snapshot = self.snapshot()
        # Issue 16: the memory store (memory/); None on a node started with --no-memory.
        snapshot["memory"] = await asyncio.to_thread(self.memory) if self.memory else None
        return web.json_response(snapshot)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

"""The OpenAI-compatible endpoints: /v1/models, chat/completions, completions, embeddings.

With a mesh, a request goes to the candidate (this node or a peer) with the best expected
completion time; a candidate that fails before the first byte is skipped for the next one.
Peers call `serve_for_peer`, which only ever uses this node's own engines.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel

from covey.api.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, parse
from covey.errors import Busy, ModelNotFound, Unavailable, UpstreamFailed
from covey.health.monitor import HealthMonitor
from covey.health.probe import PROBE_HEADER
from covey.mesh.records import NodeRecord
from covey.mesh.runtime import MeshRuntime
from covey.metrics.samples import ModelMeter
from covey.router.proxy import Relay
from covey.router.select import Candidate, LocalView, rank
from covey.router.table import ModelTable, ServedModel, unavailable_reason
from covey.types import EngineReady, EngineState, ModelCard, ModelId, NodeId

PATHS: dict[str, type[BaseModel]] = {
    "chat/completions": ChatRequest, "completions": CompletionRequest,
    "embeddings": EmbeddingRequest}


class _PeerEngine:
    """A peer's node as seen by the relay: always 'ready' at its mesh address."""

    kind = "peer"
    pid = None

    def __init__(self, base_url: str) -> None:
        self.state: EngineState = EngineReady(base_url=base_url)


class OpenAIRoutes:
    def __init__(self, table: ModelTable, relay: Relay, node_id: NodeId, node_name: str,
                 mesh: MeshRuntime | None = None, rng: random.Random | None = None,
                 health: HealthMonitor | None = None) -> None:
        self.table = table
        self.relay = relay
        self.mesh = mesh
        self.health = health
        self.rng = rng or random.Random()
        self.node_id = node_id
        self.node_name = node_name
        self.served_by = f"{node_id} ({node_name})"
        self.created = int(time.time())
        self._peer_models: dict[tuple[str, str], ServedModel] = {}

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model_id:.+}", self.model)
        for path in PATHS:
            app.router.add_post(f"/v1/{path}", self._handler(path))

    def _handler(self, path: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._generate(request, path)
        return handle

    # --- listing ------------------------------------------------------------------------

    def _catalog(self) -> dict[str, dict[str, Any]]:
        """Every model the mesh can serve now (local ones whatever their state)."""
        out: dict[str, dict[str, Any]] = {}
        for m in self.table.models.values():
            out[m.id] = {"id": m.id, "object": "model", "created": self.created,
                         "owned_by": "covey", "covey": {
                             "state": m.engine.state.kind, "nodes": [self.node_id],
                             "size_bytes": m.card.size_bytes,
                             "quantization": m.card.quantization}}
        for record in self.mesh.peers(time.time()) if self.mesh else []:
            for ad in record.models:
                if ad.state != "ready":
                    continue
                entry = out.setdefault(ad.id, {
                    "id": ad.id, "object": "model", "created": self.created,
                    "owned_by": "covey", "covey": {"state": "ready", "nodes": [],
                                                   "size_bytes": ad.size_bytes,
                                                   "quantization": ad.quantization}})
                entry["covey"]["nodes"].append(record.node_id)
                entry["covey"]["state"] = "ready"
        return out

    def catalog(self) -> dict[str, dict[str, Any]]:
        return self._catalog()

    def meters(self, model_id: str) -> list[ModelMeter]:
        """This node's through-mesh measurements of `model_id`: served here or relayed."""
        local = self.table.models.get(ModelId(model_id))
        return ([local.meter] if local else []) + [
            m.meter for (_, mid), m in self._peer_models.items() if mid == model_id]

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": list(self._catalog().values())})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model_id"]
        entry = self._catalog().get(name)
        if entry is None:
            raise self._not_found(name)
        return web.json_response(entry)

    def _not_found(self, name: str) -> ModelNotFound:
        available = ", ".join(sorted(self._catalog())) or "none"
        return ModelNotFound(f"model {name!r} not found; available: {available}",
                             param="model")

    # --- generating ---------------------------------------------------------------------

    async def _read(self, request: web.Request, path: str) -> tuple[BaseModel, dict[str, Any],
                                                                    bytes]:
        raw = await request.read()
        req, data = parse(raw, PATHS[path])
        return req, data, raw

    async def _generate(self, request: web.Request, path: str) -> web.StreamResponse:
        req, data, raw = await self._read(request, path)
        name: str | None = getattr(req, "model", None)
        if self.mesh is None:
            return await self._serve_local(request, path, req, data, raw)
        local = self.table.models.get(ModelId(name)) if name else self.table.default()
        model_id = name or (local.id if local else None)
        if model_id is None:
            model_id = next(iter(self._catalog()), None)
            if model_id is None:
                raise Unavailable("no node in the mesh serves any model yet", code="no_models")
        serving = [r for r in self.mesh.peers(time.time())
                   if any(ad.id == model_id for ad in r.models)]
        # Only peers whose data plane was proven recently may get a prompt.
        peers = [r for r in serving if self.health is None
                 or self.health.usable(r.node_id, model_id)]
        in_flight = {nid: m.in_flight for (nid, _), m in self._peer_models.items()}
        max_tokens = getattr(req, "max_tokens", None) or 256
        candidates = rank(model_id, self._local_view(local), peers, in_flight, self.rng,
                          tokens=max_tokens, observed=self._observed(model_id),
                          addresses=self.mesh.reach.chosen(peers))
        if not candidates:
            if local is not None and not serving:
                local.admit()  # raises the local reason (loading, failed, busy)
            if serving:
                raise Unavailable(self._unreachable(model_id, serving), retry_after=2,
                                  code="no_ready_node")
            raise self._not_found(model_id)
        failures: list[str] = []
        header_ids = ",".join(c.node_id for c in candidates)
        records = {r.node_id: r for r in peers}
        for i, c in enumerate(candidates):
            target = local if c.local and local else self._peer_model(c, model_id)
            if self.health is not None and c.node_id in records:
                self.health.about_to_use(records[c.node_id], model_id)
            body = raw
            if data.get("model") != target.upstream_name:
                data["model"] = target.upstream_name
                body = json.dumps(data).encode()
            headers = {"x-covey-served-by": target.served_by or self.served_by,
                       "x-covey-candidates": header_ids,
                       "x-covey-route": _route_reason(c, i, failures)}
            try:
                response = await self.relay.forward(request, target, f"/{path}", body,
                                                    bool(getattr(req, "stream", False)),
                                                    headers)
            # Nothing reached the client yet: the next candidate may serve it.
            except (UpstreamFailed, Unavailable, Busy) as exc:
                failures.append(f"{c.name or c.node_id}: {exc.message}")
                if self.health is not None and not c.local:
                    self.health.request_done(c.node_id, model_id, ok=False)
                continue
            if self.health is not None and not c.local:
                self.health.request_done(c.node_id, model_id, ok=True)
            return response
        raise Unavailable(f"every node serving {model_id!r} failed: " + "; ".join(failures),
                          retry_after=2, code="all_candidates_failed")

    def _unreachable(self, model_id: str, serving: list[NodeRecord]) -> str:
        local = self.table.models.get(ModelId(model_id))
        why = [f"{r.name or r.node_id}: "
               + (self.health.why_not(r.node_id, model_id) if self.health else "not ready")
               for r in serving]
        if local is not None:
            why.insert(0, f"{self.node_name} (here): "
                          + unavailable_reason(local.id, local.engine.state))
        return (f"nodes serve {model_id!r} but none can take it now: " + "; ".join(why)
                + "; see `covey doctor`")

    async def _serve_local(self, request: web.Request, path: str, req: BaseModel,
                           data: dict[str, Any], raw: bytes,
                           measure: bool = True) -> web.StreamResponse:
        model = self.table.resolve(getattr(req, "model", None))
        if data.get("model") != model.upstream_name:
            # Defaulted or aliased: the engine must see the name it knows. Once per request.
            data["model"] = model.upstream_name
            raw = json.dumps(data).encode()
        headers = {"x-covey-served-by": self.served_by, "x-covey-route": "local",
                   "x-covey-candidates": self.node_id}
        return await self.relay.forward(request, model, f"/{path}", raw,
                                        bool(getattr(req, "stream", False)), headers,
                                        measure=measure)

    async def serve_for_peer(self, request: web.Request) -> web.StreamResponse:
        """A peer's relayed request: this node's own engines only, never forwarded again."""
        path = request.match_info["path"]
        if path not in PATHS:
            raise ModelNotFound(f"no such endpoint: {path}")
        req, data, raw = await self._read(request, path)
        return await self._serve_local(request, path, req, data, raw,
                                       measure=PROBE_HEADER not in request.headers)

    def _observed(self, model_id: str) -> dict[str, tuple[float | None, float | None]]:
        """Per peer, the TTFT (s) and tokens/s p50 this entry measured through the mesh."""
        now = time.monotonic()
        out = {}
        for (node_id, mid), m in self._peer_models.items():
            if mid == model_id:
                ttft = m.meter.ttft_ms.summary(now).p50
                out[node_id] = (ttft / 1000 if ttft is not None else None,
                                m.meter.tokens_per_s.summary(now).p50)
        return out

    def _local_view(self, model: ServedModel | None) -> LocalView | None:
        if model is None:
            return None
        now = time.monotonic()
        ttft = model.meter.ttft_ms.summary(now).p50
        return LocalView(self.node_id, self.node_name,
                         isinstance(model.engine.state, EngineReady)
                         and model.in_flight < model.slots + model.max_queue,
                         model.slots, model.queue_depth,
                         ttft / 1000 if ttft is not None else None,
                         model.meter.tokens_per_s.summary(now).p50)

    def _peer_model(self, c: Candidate, model_id: str) -> ServedModel:
        """The relay's handle on `model_id` at peer `c` (kept, so in-flight counts persist)."""
        key = (c.node_id, model_id)
        base_url = f"https://{c.address}/mesh/v1"
        model = self._peer_models.get(key)
        if model is None or model.engine.state != EngineReady(base_url=base_url):
            assert self.mesh is not None and c.fingerprint is not None
            card = ModelCard(id=ModelId(model_id), path=None, size_bytes=None,
                             quantization=None, architecture=None, context_length=None)
            model = ServedModel(card=card, engine=_PeerEngine(base_url),
                                upstream_name=model_id, slots=c.slots, max_queue=1_000_000,
                                meter=ModelMeter(window_s=3600),
                                served_by=f"{c.node_id} ({c.name})", sign=self.mesh.sign,
                                ssl=aiohttp.Fingerprint(bytes.fromhex(c.fingerprint)))
            self._peer_models[key] = model
        return model


def _route_reason(c: Candidate, index: int, failures: list[str]) -> str:
    where = "local" if c.local else f"peer {c.node_id}"
    how = "measured" if c.measured else "prior (not yet measured)"
    text = f"{where}; expected {c.expected_s:.2f}s ({how})"
    if index:
        text += f"; after {index} failed candidate(s)"
    return text

"""The OpenAI-compatible endpoints: /v1/models, chat/completions, completions, embeddings.

This module parses and answers. With a mesh, `router/dispatch.py` picks the node and owns
the failover; peers call `serve_for_peer`, which only ever uses this node's own engines.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from covey.api.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, parse
from covey.errors import CoveyError, ModelNotFound
from covey.health.monitor import HealthMonitor
from covey.health.probe import PROBE_HEADER
from covey.ledger.service import request_id_of
from covey.mesh.peer_api import PEER
from covey.mesh.peer_serve import ServePeerStream
from covey.mesh.runtime import MeshRuntime
from covey.metrics.samples import ModelMeter
from covey.router import fallback, sla
from covey.router.dispatch import Dispatcher, local_figures
from covey.router.fallback import Fallback
from covey.router.plan import offers
from covey.router.proxy import ACCOUNT, CONSUMER, PEER_REQUEST_ID, Asked, Relay, StreamReply
from covey.router.table import ModelTable, ServedModel
from covey.router.tiers import TierPolicy, default_model
from covey.types import EngineReady, ModelId, NodeId

PATHS: dict[str, type[BaseModel]] = {
    "chat/completions": ChatRequest, "completions": CompletionRequest,
    "embeddings": EmbeddingRequest}


class OpenAIRoutes:
    def __init__(self, table: ModelTable, relay: Relay, node_id: NodeId, node_name: str,
                 mesh: MeshRuntime | None = None, rng: random.Random | None = None,
                 health: HealthMonitor | None = None, *,
                 tiers: Callable[[], TierPolicy] = TierPolicy,
                 fallback: Fallback | None = None) -> None:
        self.table = table
        self.tiers = tiers
        self.fallback = fallback
        self.relay = relay
        self.mesh = mesh
        self.health = health
        self.node_id = node_id
        self.node_name = node_name
        self.served_by = f"{node_id} ({node_name})"
        self.created = int(time.time())
        self.dispatcher = (Dispatcher(table, relay, mesh, health, node_id, node_name, rng,
                                      tiers=tiers, fallback=fallback)
                           if mesh is not None else None)

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
        policy = self.tiers()
        for mid, entry in out.items():
            targets = policy.targets_for(mid)
            entry["covey"]["tier"] = policy.tier(mid)
            entry["covey"]["targets"] = {"ttft_s": targets.ttft_s,
                                         "tokens_per_s": targets.tokens_per_s}
        return out

    def catalog(self) -> dict[str, dict[str, Any]]:
        return self._catalog()

    def default_model(self) -> str | None:
        """The model a request naming none gets now (see `Dispatcher.default_model`)."""
        if self.dispatcher is not None:
            return self.dispatcher.default_model(list(self._catalog()))
        return self._local_default()

    def _local_default(self) -> str | None:
        """Among this node's own models: the best-served daily-driver one, else the table's
        default."""
        chosen = default_model(offers(self.table.models, self.table, [], self.meters,
                                      time.monotonic()), self.tiers())
        local = self.table.default()
        return chosen or (local.id if local else None)

    def meters(self, model_id: str) -> list[ModelMeter]:
        """This node's through-mesh measurements of `model_id`: served here or relayed."""
        local = self.table.models.get(ModelId(model_id))
        return ([local.meter] if local else []) + (
            self.dispatcher.meters(model_id) if self.dispatcher else [])

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
        request[ACCOUNT] = True  # a client's request: its answer counts for the mesh share
        if self.dispatcher is None:
            return await self._serve_gated(request, path, req, data, raw)
        max_tokens = getattr(req, "max_tokens", None) or getattr(
            req, "max_completion_tokens", None)
        return await self.dispatcher.dispatch(
            request, path, getattr(req, "model", None), data, raw,
            bool(getattr(req, "stream", False)), max_tokens, list(self._catalog()))

    async def _serve_local(self, request: web.Request, path: str, req: BaseModel,
                           data: dict[str, Any], raw: bytes, measure: bool = True,
                           gate: dict[str, str] | None = None) -> web.StreamResponse:
        model, raw, headers = self._local(req, data, raw, gate)
        return await self.relay.forward(request, model, f"/{path}", raw,
                                        bool(getattr(req, "stream", False)), headers,
                                        measure=measure)

    def _local(self, req: BaseModel, data: dict[str, Any], raw: bytes,
               gate: dict[str, str] | None = None
               ) -> tuple[ServedModel, bytes, dict[str, str]]:
        """This node's model for `req`, the body its engine gets, the answer's headers."""
        model = self.table.resolve(getattr(req, "model", None) or self._local_default())
        if data.get("model") != model.upstream_name:
            # Defaulted or aliased: the engine must see the name it knows. Once per request.
            data["model"] = model.upstream_name
            raw = json.dumps(data).encode()
        headers = {**(gate or {}), "x-covey-served-by": self.served_by, "x-covey-route": "local",
                   "x-covey-candidates": self.node_id}
        return model, raw, headers

    async def _serve_gated(self, request: web.Request, path: str, req: BaseModel,
                           data: dict[str, Any], raw: bytes) -> web.StreamResponse:
        """A node without a mesh: the gate judges its own copy, the only candidate."""
        name = getattr(req, "model", None)
        policy = self.tiers()
        try:
            model: ServedModel | None = self.table.resolve(name)
        except CoveyError:
            model = None
        model_id = model.id if model is not None else name or ""
        ready = model is not None and isinstance(model.engine.state, EngineReady)
        decision = sla.evaluate(
            policy.tier(model_id), policy.targets_for(model_id),
            [local_figures(self.node_id, model)] if ready and model is not None else [],
            sla.estimate_prompt_tokens(data))
        gate = {**decision.headers(), "x-covey-fallback-status": fallback.DISABLED}
        try:
            return await self._serve_local(request, path, req, data, raw, gate=gate)
        except CoveyError as exc:
            exc.extra_headers = {**gate, **exc.extra_headers}
            raise

    async def serve_for_peer(self, request: web.Request) -> web.StreamResponse:
        """A peer's relayed request: this node's own engines only, never forwarded again."""
        path = request.match_info["path"]
        if path not in PATHS:
            raise ModelNotFound(f"no such endpoint: {path}")
        req, data, raw = await self._read(request, path)
        if (request_id := request_id_of(request.headers)) is not None:
            request[PEER_REQUEST_ID] = request_id  # its receipt, when it ends
        # Its place in a contended engine's queue follows the caller's standing; a request
        # without a verified caller is never taken for this node's own.
        request[CONSUMER] = request.get(PEER, "")
        return await self._serve_local(request, path, req, data, raw,
                                       measure=PROBE_HEADER not in request.headers)

    def admit_peer_stream(self, path: str, body: bytes) -> ServePeerStream | None:
        """`serve_for_peer` for a streamed prompt a peer sent on a connection served off its
        socket (mesh/peer_serve.py): how to serve it, or None when it is not one (another
        endpoint, a whole answer, a body `parse` refuses), which that connection's aiohttp
        server then answers as `serve_for_peer` does."""
        schema = PATHS.get(path)
        if schema is None:
            return None
        try:
            req, data = parse(body, schema)
        except CoveyError:
            return None
        if not getattr(req, "stream", False):
            return None

        async def serve(reply: StreamReply, peer: str, headers: Mapping[str, str],
                        t_received: float) -> None:
            model, raw, out = self._local(req, data, body)
            # As serve_for_peer: its receipt's id, and its place in the engine's queue.
            asked = Asked(t_received, consumer=peer, peer_request_id=request_id_of(headers))
            await self.relay.stream_to(asked, reply, model, f"/{path}", raw, out,
                                       measure=PROBE_HEADER not in headers)
        return serve

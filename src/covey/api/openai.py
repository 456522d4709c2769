"""The OpenAI-compatible endpoints: /v1/models, chat/completions, completions, embeddings."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from covey.api.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, parse
from covey.router.proxy import Relay
from covey.router.table import ModelTable, ServedModel
from covey.types import NodeId


class OpenAIRoutes:
    def __init__(self, table: ModelTable, relay: Relay, node_id: NodeId, node_name: str,
                 max_body_bytes: int) -> None:
        self.table = table
        self.relay = relay
        self.max_body_bytes = max_body_bytes
        self.served_by = f"{node_id} ({node_name})"
        self.node_id = node_id
        self.created = int(time.time())

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model_id:.+}", self.model)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)

    def _describe(self, m: ServedModel) -> dict[str, Any]:
        return {
            "id": m.id, "object": "model", "created": self.created, "owned_by": "covey",
            "covey": {"state": m.engine.state.kind, "nodes": [self.node_id],
                      "size_bytes": m.card.size_bytes, "quantization": m.card.quantization},
        }

    async def models(self, request: web.Request) -> web.Response:
        data = [self._describe(m) for m in self.table.models.values()]
        return web.json_response({"object": "list", "data": data})

    async def model(self, request: web.Request) -> web.Response:
        return web.json_response(self._describe(self.table.resolve(request.match_info["model_id"])))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/chat/completions", ChatRequest)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/completions", CompletionRequest)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/embeddings", EmbeddingRequest)

    async def _generate(self, request: web.Request, path: str,
                        schema: type[BaseModel]) -> web.StreamResponse:
        raw = await request.read()
        req, data = parse(raw, schema)
        model = self.table.resolve(getattr(req, "model", None))
        if data.get("model") != model.upstream_name:
            # Defaulted or aliased: the engine must see the name it knows. Once per request.
            data["model"] = model.upstream_name
            raw = json.dumps(data).encode()
        headers = {"x-covey-served-by": self.served_by, "x-covey-route": "local",
                   "x-covey-candidates": "1"}
        return await self.relay.forward(request, model, path, raw,
                                        bool(getattr(req, "stream", False)), headers)

"""The memory API on the client port:

    POST   /v1/memory            add one memory (a JSON object) or a batch ({"memories": [...]})
    GET    /v1/memory            list (?project=&limit=&offset=) and the store's status
    GET    /v1/memory/{id}       one memory
    DELETE /v1/memory/{id}       forget one memory
    POST   /v1/memory/search     {"query", "k", "min_score", "project", "tags",
                                  "min_confidence", "since", "scope": "local"|"mesh",
                                  "timeout_s"}

The client API is loopback-only or keyed (api/app.py refuses a non-loopback bind without a
key), so every one of these, writes included, comes from this machine or a key holder.
Peers never reach them: the mesh listener has only the read-only search
(`/mesh/memory/search`, peer_api.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from covey.errors import BadRequest, NotFound
from covey.memory.records import Filters, MemoryInputError, parse_filters, parse_new
from covey.memory.service import MemoryService

MAX_BATCH = 256
MAX_LIST = 1000


class MemoryRoutes:
    def __init__(self, service: MemoryService) -> None:
        self.service = service

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/memory", self.add)
        app.router.add_get("/v1/memory", self.list)
        app.router.add_post("/v1/memory/search", self.search)
        app.router.add_get("/v1/memory/{memory_id}", self.get)
        app.router.add_delete("/v1/memory/{memory_id}", self.delete)

    async def add(self, request: web.Request) -> web.Response:
        body = await _json(request)
        raw = body.get("memories", [body]) if isinstance(body, dict) else None
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_BATCH:
            raise BadRequest(f"send one memory object or {{\"memories\": [...]}} with 1.."
                             f"{MAX_BATCH} of them", param="memories")
        items = []
        for i, item in enumerate(raw):
            try:
                items.append(parse_new(item))
            except MemoryInputError as exc:
                where = f"memories[{i}]: " if "memories" in body else ""
                raise BadRequest(f"{where}{exc}") from exc
        added = await self.service.add(items)
        return web.json_response({"object": "list", "data": [m.to_json() for m in added]})

    async def list(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            offset = int(q.get("offset", "0"))
        except ValueError as exc:
            raise BadRequest("limit and offset must be integers") from exc
        if not 1 <= limit <= MAX_LIST or offset < 0:
            raise BadRequest(f"limit must be 1..{MAX_LIST} and offset not negative")
        try:
            filters = parse_filters({"project": q["project"]}) if "project" in q else Filters()
        except MemoryInputError as exc:
            raise BadRequest(str(exc), param="project") from exc
        store = self.service.store
        rows = await asyncio.to_thread(store.list, filters, limit, offset)
        status = await asyncio.to_thread(self.service.status)
        return web.json_response({"object": "list", "data": [m.to_json() for m in rows],
                                  "memory": status})

    async def get(self, request: web.Request) -> web.Response:
        memory_id = request.match_info["memory_id"][:64]
        found = await asyncio.to_thread(self.service.store.get, memory_id)
        if found is None:
            raise NotFound(f"no memory {memory_id!r} on this node")
        return web.json_response(found.to_json())

    async def delete(self, request: web.Request) -> web.Response:
        memory_id = request.match_info["memory_id"][:64]
        if not await asyncio.to_thread(self.service.store.delete, memory_id):
            raise NotFound(f"no memory {memory_id!r} on this node")
        return web.json_response({"id": memory_id, "object": "memory", "deleted": True})

    async def search(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        try:
            return web.json_response(await self.service.search(body))
        except MemoryInputError as exc:
            raise BadRequest(str(exc)) from exc


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("body is not valid JSON") from exc

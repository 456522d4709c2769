"""The memory inside a running node: the store, its embedder, searches here and across
the mesh, and the background work (warming the embedder, re-embedding after a model change).

Effects only; the decisions live elsewhere: what a peer may search (`sharing.scope`), how
answers merge (`sharing.merge`), which rows match (`store.search`). Store calls are blocking
SQLite and NumPy, so they run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from covey.memory.records import (
    MAX_TEXT_CHARS,
    Filters,
    Memory,
    MemoryInputError,
    NewMemory,
    check_k,
    check_min_score,
    parse_filters,
)
from covey.memory.sharing import (
    MAX_K,
    PeerQuery,
    Refused,
    SourceAnswer,
    merge,
    parse_peer_hits,
    scope,
    shared_view,
)
from covey.memory.store import MemoryStore
from covey.mesh.peer_transport import PeerError, PeerTransport, call_json, peer_of
from covey.mesh.records import NodeRecord

log = logging.getLogger(__name__)

PEER_PATH = "/mesh/memory/search"
MAX_PEER_ANSWER = 2 * 1024 * 1024
DEFAULT_PEER_TIMEOUT_S = 2.0
MAX_PEER_TIMEOUT_S = 30.0
REEMBED_BATCH = 64


class Embeds(Protocol):
    """What the service needs of an embedder (memory/embedder.py is the real one)."""

    model: str

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def embed_query(self, text: str) -> np.ndarray: ...


class MemoryService:
    def __init__(self, store: MemoryStore, embedder: Embeds, *, shared: frozenset[str],
                 node_id: str, name: str, peers: Callable[[], list[NodeRecord]],
                 transport: PeerTransport | None) -> None:
        self.store = store
        self.embedder = embedder
        self.shared = shared
        self.node_id = node_id
        self.name = name
        self.peers = peers
        self.transport = transport
        self.reembed: dict[str, int] | None = None  # {"done", "total"} while it runs
        self.problem: str | None = None  # why the embedder could not be had, if it could not

    @property
    def model(self) -> str:
        return self.embedder.model

    # --- what this node says about its memory ---------------------------------------

    def advert(self) -> dict[str, Any]:
        """For this node's signed record: whether members may search here, and with which
        embedding model's vectors (the project names stay private)."""
        return {"search": bool(self.shared), "model": self.model}

    def status(self) -> dict[str, Any]:
        return {"count": self.store.count(), "model": self.model,
                "stale": self.store.stale_count(self.model),
                "shared_projects": sorted(self.shared), "reembedding": self.reembed,
                "corrupt_rows": len(self.store.corrupt_rows()), "problem": self.problem}

    # --- local work ---------------------------------------------------------------------

    async def add(self, items: Sequence[NewMemory]) -> list[Memory]:
        vectors = await self.embedder.embed([m.text for m in items])
        return await asyncio.to_thread(self.store.add, items, vectors, self.model)

    async def search(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/memory/search`: here only, or here and every opted-in peer."""
        query = body.get("query")
        if not isinstance(query, str) or not 0 < len(query.strip()) <= MAX_TEXT_CHARS:
            raise MemoryInputError("query", f"must be a non-empty string of at most "
                                            f"{MAX_TEXT_CHARS} characters")
        k = check_k(body.get("k", 10))
        if k > MAX_K:
            raise MemoryInputError("k", f"must be an integer 1..{MAX_K}")
        min_score = check_min_score(body.get("min_score", 0.0))
        where = body.get("scope", "local")
        if where not in ("local", "mesh"):
            raise MemoryInputError("scope", "must be \"local\" or \"mesh\"")
        timeout_s = body.get("timeout_s", DEFAULT_PEER_TIMEOUT_S)
        if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) \
                or not 0 < timeout_s <= MAX_PEER_TIMEOUT_S:
            raise MemoryInputError("timeout_s", f"must be above 0 and at most "
                                                f"{MAX_PEER_TIMEOUT_S:g}")
        filters = parse_filters(body)
        vector = await self.embedder.embed_query(query)
        started = time.perf_counter()
        found = await asyncio.to_thread(self.store.search, vector, self.model, filters, k,
                                        float(min_score))
        local = SourceAnswer(self.node_id, self.name, "answered",
                             [{**shared_view(h), "source": h.memory.source} for h in found.hits],
                             ms=(time.perf_counter() - started) * 1000)
        answers = [local]
        if where == "mesh":
            answers += await self._ask_peers(vector, filters, k, float(min_score),
                                             float(timeout_s))
        merged = merge(answers, k)
        return {"object": "list", "model": self.model, "scope": where,
                "data": merged.results, "sources": merged.sources,
                "method": found.method, "considered": found.considered}

    # --- across the mesh ----------------------------------------------------------------

    async def answer_peer(self, query: PeerQuery, caller: str) -> dict[str, Any]:
        """A member's `/mesh/memory/search`: read-only, shared projects only. Raises Refused."""
        projects = scope(self.shared, query.filters.projects)
        if query.model != self.model:
            raise Refused(409, "other_embedding_model",
                          f"this node's memories are embedded by {self.model!r}, not "
                          f"{query.model[:128]!r}")
        filters = Filters(projects=projects, tags=query.filters.tags,
                          min_confidence=query.filters.min_confidence,
                          since=query.filters.since)
        found = await asyncio.to_thread(self.store.search, query.vector, self.model, filters,
                                        query.k, query.min_score)
        log.info("memory: answered a search from %s (%d hits)", caller[:12], len(found.hits))
        return {"hits": [shared_view(h) for h in found.hits], "model": self.model}

    async def _ask_peers(self, vector: np.ndarray, filters: Filters, k: int,
                         min_score: float, timeout_s: float) -> list[SourceAnswer]:
        if self.transport is None:
            return []
        asked = [r for r in self.peers() if r.memory is not None and r.memory.search]
        payload = {"vector": [round(float(x), 7) for x in vector], "model": self.model,
                   "k": k, "min_score": min_score, "filters": _filters_json(filters)}
        return list(await asyncio.gather(*(self._ask(r, payload, k, timeout_s)
                                           for r in asked)))

    async def _ask(self, record: NodeRecord, payload: dict[str, Any], k: int,
                   timeout_s: float) -> SourceAnswer:
        assert self.transport is not None
        started = time.perf_counter()
        name = record.name or record.node_id[:12]

        def answer(status: str, hits: list[dict[str, Any]] | None = None,
                   reason: str = "") -> SourceAnswer:
            return SourceAnswer(record.node_id, name, status, hits or [], reason,
                                (time.perf_counter() - started) * 1000)

        try:
            got = await call_json(self.transport, peer_of(record), PEER_PATH, payload,
                                  timeout_s, max_bytes=MAX_PEER_ANSWER)
        except PeerError as exc:
            if exc.kind == "timeout":
                return answer("timeout", reason=f"no answer within {timeout_s:g}s")
            if exc.kind == "http" and exc.status in (403, 409, 503):
                return answer("refused", reason=f"{exc.code or exc.status}: "
                                                f"{str(exc)[:200]}")
            return answer("error", reason=f"{exc.kind}: {str(exc)[:200]}")
        try:
            return answer("answered", parse_peer_hits(got, k))
        except MemoryInputError as exc:
            return answer("error", reason=f"malformed answer ({exc})")

    # --- background ---------------------------------------------------------------------

    async def run(self, warm: bool) -> None:
        """Warm the embedder when memory is in use (so the first query is not the slow
        one), then bring vectors of another model up to this one, with progress."""
        total = await asyncio.to_thread(self.store.stale_count, self.model)
        if not (warm or total or await asyncio.to_thread(self.store.count)):
            return
        try:
            await self.embedder.embed_query("warm-up")
        except Exception as exc:
            self.problem = str(exc)
            log.warning("memory: the embedder is not ready: %s", exc)
            return
        if total:
            await self._reembed(total)

    async def _reembed(self, total: int) -> None:
        log.info("memory: re-embedding %d memories with %s", total, self.model)
        self.reembed = {"done": 0, "total": total}
        reported = 0
        while True:
            rows = await asyncio.to_thread(self.store.stale, self.model, REEMBED_BATCH)
            if not rows:
                break
            vectors = await self.embedder.embed([text for _, text in rows])
            await asyncio.to_thread(self.store.set_vectors, [i for i, _ in rows], vectors,
                                    self.model)
            self.reembed["done"] = min(total, self.reembed["done"] + len(rows))
            if self.reembed["done"] - reported >= max(1, total // 10):
                reported = self.reembed["done"]
                log.info("memory: re-embedded %d/%d", reported, total)
        log.info("memory: re-embedding done (%d memories)", self.reembed["done"])
        self.reembed = None


def _filters_json(f: Filters) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.projects is not None:
        out["project"] = list(f.projects)
    if f.tags:
        out["tags"] = list(f.tags)
    if f.min_confidence:
        out["min_confidence"] = f.min_confidence
    if f.since is not None:
        out["since"] = f.since
    return out

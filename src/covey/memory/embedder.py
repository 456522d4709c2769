"""Texts → vectors, asked of the node's own OpenAI-compatible API (`/v1/embeddings`).

Going through the node's API rather than to an engine directly means the embedding model
may be served here or by any peer: the router picks, as for any other request, and the
node's measurements see this traffic like any other. This class is the thin edge; the
store and the search never see HTTP.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import numpy as np

from covey.errors import Unavailable
from covey.memory.cache import QueryCache
from covey.memory.records import MAX_DIM

BATCH = 64  # inputs per /v1/embeddings call
# BERT-class embedders take 512 tokens, and refuse longer inputs. WordPiece never makes more
# tokens of a text than it has characters, so pieces of at most 500 characters always fit
# (with [CLS] and [SEP]); a longer memory is embedded piece by piece and its pieces' mean
# stands for it.
PIECE_CHARS = 500


def pieces(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """`text` cut into pieces of at most `limit` characters, at spaces where there are any."""
    out: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = rest.rfind(" ", 0, limit + 1)
        cut = cut if cut > limit // 2 else limit
        out.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    return [*out, rest] if rest or not out else out


class Embedder:
    """`embed(texts)` → float32 (n, dim) unit rows from `model` at `base_url` (…/v1).

    `ready` is awaited before each call: it starts the embedding engine on first use (see
    MemoryService) and returns at once afterwards."""

    def __init__(self, session: aiohttp.ClientSession, base_url: Callable[[], str],
                 api_key: str | None, model: str,
                 ready: Callable[[], Awaitable[None]] | None = None,
                 cache_size: int = 1024, timeout_s: float = 120.0) -> None:
        self.session = session
        self.base_url = base_url
        self.api_key = api_key
        self.model = model
        self.ready = ready
        self.cache = QueryCache(cache_size)
        self.timeout_s = timeout_s
        self.dim: int | None = None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.ready is not None:
            await self.ready()
        owner, flat = [], []
        for i, text in enumerate(texts):
            for piece in pieces(text):
                owner.append(i)
                flat.append(piece)
        parts = [await self._call(flat[i:i + BATCH]) for i in range(0, len(flat), BATCH)]
        if not parts:
            return np.zeros((0, self.dim or 1), np.float32)
        vectors = np.concatenate(parts)
        if len(flat) == len(texts):
            return vectors
        summed = np.zeros((len(texts), vectors.shape[1]), np.float32)
        np.add.at(summed, np.asarray(owner), vectors)
        unit: np.ndarray = summed / np.linalg.norm(summed, axis=1, keepdims=True)
        return unit

    async def embed_query(self, text: str) -> np.ndarray:
        """One query's vector, from the LRU cache when it was asked before."""
        cached = self.cache.get(self.model, text)
        if cached is not None:
            return cached
        vector: np.ndarray = (await self.embed([text]))[0]
        self.cache.put(self.model, text, vector)
        return vector

    async def _call(self, batch: list[str]) -> np.ndarray:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = f"{self.base_url()}/embeddings"
        try:
            async with asyncio.timeout(self.timeout_s), self.session.post(
                    url, json={"model": self.model, "input": batch}, headers=headers) as r:
                body = await r.json(content_type=None)
                status = r.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"the embedding model {self.model!r} did not answer "
                              f"({type(exc).__name__})", retry_after=5) from exc
        if status != 200:
            err = body.get("error") if isinstance(body, dict) else None
            why = err.get("message") if isinstance(err, dict) else None
            raise Unavailable(f"the embedding model {self.model!r} is not available: "
                              f"{str(why or f'HTTP {status}')[:300]}", retry_after=5)
        return self._vectors(body, len(batch))

    def _vectors(self, body: object, n: int) -> np.ndarray:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != n:
            raise Unavailable(f"the embedding model {self.model!r} answered {n} inputs with "
                              "something other than as many vectors")
        rows = []
        for item in sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0):
            vec = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(vec, list) or not 0 < len(vec) <= MAX_DIM or not all(
                    isinstance(x, int | float) and math.isfinite(x) for x in vec):
                raise Unavailable(f"the embedding model {self.model!r} answered a malformed "
                                  "vector")
            rows.append(vec)
        out = np.asarray(rows, dtype=np.float32)
        if out.ndim != 2:
            raise Unavailable(f"the embedding model {self.model!r} answered vectors of "
                              "different lengths")
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if not np.all(norms > 0):
            raise Unavailable(f"the embedding model {self.model!r} answered a zero vector")
        self.dim = out.shape[1]
        unit: np.ndarray = out / norms
        return unit

"""The memory service's background work and its mesh fan-out, with a fake embedder and a
fake peer transport (the real ones: tests/integration/test_memory_*.py)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from covey.memory.embedder import Embedder, pieces
from covey.memory.records import Filters, NewMemory
from covey.memory.service import MemoryService
from covey.memory.store import MemoryStore
from covey.mesh.peer_transport import PeerError
from covey.mesh.records import MemoryAd, NodeRecord

DIM = 32


class Hashing:
    """Deterministic vectors per (model, text); counts what it was asked."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.asked: list[str] = []

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.asked += texts
        rows = [np.frombuffer(hashlib.sha256(f"{self.model}:{t}".encode()).digest(),
                              np.uint8)[:DIM].astype(np.float32) + 1 for t in texts]
        out = np.asarray(rows)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    async def embed_query(self, text: str) -> np.ndarray:
        return (await self.embed([text]))[0]


def _service(path: Path, model: str, **kw: Any) -> MemoryService:
    store = MemoryStore(path / "m.sqlite3", path / "m.usearch")
    return MemoryService(store, Hashing(model), shared=kw.pop("shared", frozenset()),
                         node_id="me", name="me", peers=kw.pop("peers", lambda: []),
                         transport=kw.pop("transport", None))


async def test_a_new_model_reembeds_everything_with_progress(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = _service(tmp_path, "old")
    await old.add([NewMemory(text=f"note {i}") for i in range(150)])
    old.store.close()
    new = _service(tmp_path, "new")
    assert new.store.stale_count("new") == 150
    with caplog.at_level(logging.INFO, logger="covey.memory.service"):
        await new.run(warm=False)
    assert new.store.stale_count("new") == 0 and new.reembed is None
    assert any("re-embedded" in r.message and "/150" in r.message for r in caplog.records)
    found = new.store.search(await new.embedder.embed_query("note 7"), "new", Filters(), 1)
    assert found.hits[0].memory.text == "note 7"
    new.store.close()


async def test_an_empty_unshared_store_starts_no_embedder(tmp_path: Path) -> None:
    service = _service(tmp_path, "m")
    await service.run(warm=False)
    assert service.embedder.asked == []  # type: ignore[attr-defined]
    await service.run(warm=True)  # shared: warmed so the first peer query is not slow
    assert service.embedder.asked == ["warm-up"]  # type: ignore[attr-defined]
    service.store.close()


def _record(node_id: str, search: bool) -> NodeRecord:
    now = time.time()
    return NodeRecord(protocol=1, mesh_id="m" * 16, node_id=node_id, public_key="k", seq=1,
                      issued_at=now, expires_at=now + 30, name=node_id,
                      memory=MemoryAd(search=search, model="m"))


class Answers:
    """A peer transport whose peers answer from a table (or fail as told)."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.asked: list[str] = []

    def control(self, fingerprint: str) -> asyncio.Lock:
        return asyncio.Lock()

    async def post(self, peer: Any, path: str, body: bytes, **_: Any) -> Any:
        self.asked.append(peer.node_id)
        what = self.table[peer.node_id]
        if isinstance(what, Exception):
            raise what
        if what == "hang":
            await asyncio.sleep(3600)
        return _Response(what)


class _Response:
    def __init__(self, body: dict[str, Any]) -> None:
        import json

        self.raw, self.status = json.dumps(body).encode(), 200

    async def read(self) -> bytes:
        return self.raw

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None


async def test_mesh_search_asks_only_sharing_peers_and_reports_each(tmp_path: Path) -> None:
    hit = {"id": "mem_1", "text": "tern runs staging", "project": "infra", "tags": [],
           "score": 0.9, "confidence": 1.0, "updated_at": 1.0}
    transport = Answers({
        "good": {"hits": [hit]},
        "shy": PeerError("http", "refused", status=403, code="project_not_shared"),
        "slow": "hang",
        "junk": {"nothing": 1},
    })
    peers = [_record(n, True) for n in ("good", "shy", "slow", "junk")] + \
        [_record("private", False)]
    service = _service(tmp_path, "m", transport=transport, peers=lambda: peers)
    await service.add([NewMemory(text="my own note")])
    got = await service.search({"query": "staging", "scope": "mesh", "timeout_s": 0.5})
    assert "private" not in transport.asked
    status = {s["node_id"]: s["status"] for s in got["sources"]}
    assert status == {"me": "answered", "good": "answered", "shy": "refused",
                      "slow": "timeout", "junk": "error"}
    assert got["data"][0]["node_id"] == "good" and got["data"][0]["text"] == hit["text"]
    local = await service.search({"query": "staging"})
    assert [s["node_id"] for s in local["sources"]] == ["me"]  # local scope asks nobody
    service.store.close()


def test_long_texts_are_cut_into_pieces_that_fit() -> None:
    text = ("word " * 400).strip()
    cut = pieces(text)
    assert all(len(p) <= 500 for p in cut) and " ".join(cut) == text
    assert pieces("x" * 1200) == ["x" * 500, "x" * 500, "x" * 200]
    assert pieces("short") == ["short"]


async def test_embedder_means_the_pieces_of_a_long_text() -> None:
    embedder = Embedder(None, lambda: "http://unused", None, "m")  # type: ignore[arg-type]
    calls: list[list[str]] = []

    async def fake_call(batch: list[str]) -> np.ndarray:
        calls.append(batch)
        return np.eye(DIM, dtype=np.float32)[[len(t) % DIM for t in batch]]

    embedder._call = fake_call  # type: ignore[method-assign]
    out = await embedder.embed(["a" * 1000, "bb"])
    assert calls == [["a" * 500, "a" * 500, "bb"]]
    assert out.shape == (2, DIM) and np.allclose(np.linalg.norm(out, axis=1), 1)
    assert (await embedder.embed_query("bb")).tolist() == out[1].tolist()
    assert len(calls) == 2 and (await embedder.embed_query("bb")) is not None
    assert len(calls) == 2  # the second ask of one query comes from the cache

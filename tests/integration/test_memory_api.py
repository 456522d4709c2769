"""The memory API and the peer search endpoint in process: the real store, the real client
app guards, the real mesh listener with TLS and signed member requests on loopback.

The embedder is a fake (a bag-of-words hash into 64 dimensions): these tests are about the
HTTP surface, validation and refusals, which a real model would only slow down. The real
embedder's quality is measured by the recall bench; the real thing end to end runs in
test_memory_mesh.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from covey.api.app import build_app
from covey.memory.routes import MemoryRoutes
from covey.memory.service import PEER_PATH, MemoryService
from covey.memory.store import MemoryStore
from covey.mesh import identity
from covey.mesh.client import redeem, signer_for
from covey.mesh.membership import InviteBook, parse_invite
from covey.mesh.peer_api import build_peer_app
from covey.mesh.peer_transport import HttpPeerTransport, Peer, PeerError, call_json
from covey.mesh.state import MeshState
from covey.mesh.transport import tls_identity

DIM = 64


class BagOfWords:
    model = "fake-bow"

    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), DIM), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.sha256(word.strip("?.,").encode()).hexdigest(), 16)
                    % DIM] += 1.0
        out[:, 0] += 0.01  # never a zero vector
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    async def embed_query(self, text: str) -> np.ndarray:
        return (await self.embed([text]))[0]


def _service(tmp_path: Path, shared: frozenset[str], name: str = "here") -> MemoryService:
    store = MemoryStore(tmp_path / f"{name}.sqlite3", tmp_path / f"{name}.usearch")
    return MemoryService(store, BagOfWords(), shared=shared, node_id=f"{name}-id", name=name,
                         peers=lambda: [], transport=None)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    service = _service(tmp_path, frozenset())
    app = build_app(bind_host="127.0.0.1", api_key=None, allowed_hosts=frozenset(),
                    max_body_bytes=1024 * 1024)
    MemoryRoutes(service).add_to(app)
    async with TestClient(TestServer(app)) as client:
        yield client
    service.store.close()


async def test_add_get_list_search_delete(api: TestClient[Any, Any]) -> None:
    r = await api.post("/v1/memory", json={"text": "staging database on tern port 5433",
                                           "project": "infra", "tags": ["db"]})
    assert r.status == 200, await r.text()
    first = (await r.json())["data"][0]
    r = await api.post("/v1/memory", json={"memories": [
        {"text": "lunch is at noon", "project": "home"},
        {"text": "the router password is in the blue notebook", "project": "home"}]})
    assert r.status == 200 and len((await r.json())["data"]) == 2
    got = await (await api.get(f"/v1/memory/{first['id']}")).json()
    assert got["text"].startswith("staging") and got["tags"] == ["db"]
    listed = await (await api.get("/v1/memory?project=home")).json()
    assert len(listed["data"]) == 2 and listed["memory"]["count"] == 3
    found = await (await api.post("/v1/memory/search", json={
        "query": "staging database tern", "k": 2})).json()
    assert found["data"][0]["id"] == first["id"] and found["sources"][0]["status"] == "answered"
    only_home = await (await api.post("/v1/memory/search", json={
        "query": "staging database", "project": "home"})).json()
    assert all(r["project"] == "home" for r in only_home["data"])
    assert (await api.delete(f"/v1/memory/{first['id']}")).status == 200
    assert (await api.get(f"/v1/memory/{first['id']}")).status == 404
    assert (await api.delete(f"/v1/memory/{first['id']}")).status == 404


@pytest.mark.parametrize("body", [
    {"text": ""}, {"text": 5}, {"text": "x" * 9000}, {"text": "ok", "confidence": 2},
    {"text": "ok", "tags": "notalist"}, {"text": "ok", "project": "bad project!"},
    {"memories": []}, {"memories": [{"text": "ok"}] * 300}, {"memories": [{"text": ""}]},
    [1, 2],
])
async def test_bad_writes_are_400_and_store_nothing(api: TestClient[Any, Any],
                                                    body: Any) -> None:
    r = await api.post("/v1/memory", json=body)
    assert r.status == 400, await r.text()
    assert (await r.json())["error"]["type"] == "invalid_request_error"
    assert (await (await api.get("/v1/memory")).json())["memory"]["count"] == 0


@pytest.mark.parametrize("body", [
    {}, {"query": ""}, {"query": "x", "k": 0}, {"query": "x", "scope": "world"},
    {"query": "x", "timeout_s": 0}, {"query": "x", "min_score": "high"},
])
async def test_bad_searches_are_400(api: TestClient[Any, Any], body: Any) -> None:
    r = await api.post("/v1/memory/search", json=body)
    assert r.status == 400, await r.text()


async def test_not_json_is_refused(api: TestClient[Any, Any]) -> None:
    r = await api.post("/v1/memory", data=b"{nope", headers={"Content-Type":
                                                             "application/json"})
    assert r.status == 400
    r = await api.post("/v1/memory", data=b"text", headers={"Content-Type": "text/plain"})
    assert r.status == 415


# --- the mesh listener ---------------------------------------------------------------------


@dataclass
class Listener:
    state: MeshState
    peer: Peer
    runner: web.AppRunner
    service: MemoryService | None


async def _listener(data_dir: Path, state: MeshState, service: MemoryService | None
                    ) -> Listener:
    tls = tls_identity(state.identity.key, data_dir)
    context = tls.server_context()
    runner = web.AppRunner(build_peer_app(state, tls.fingerprint, memory=service),
                           access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    address = f"127.0.0.1:{runner.addresses[0][1]}"
    state.publish(time.time(), name="a", addresses=[address], tls_fingerprint=tls.fingerprint)
    return Listener(state, Peer(tls.fingerprint, (address,)), runner, service)


async def test_peer_search_refusals_and_answers(tmp_path: Path) -> None:
    a_dir, b_dir, x_dir = tmp_path / "a", tmp_path / "b", tmp_path / "x"
    for d in (a_dir, b_dir, x_dir):
        d.mkdir()
    a_state = MeshState.load_or_create(a_dir, identity.load_or_create(a_dir), time.time())
    service = _service(tmp_path, frozenset({"infra"}), "a")
    await service.add([_new("staging database on tern port 5433", "infra"),
                       _new("the router password is in the blue notebook", "home")])
    a = await _listener(a_dir, a_state, service)
    outsider = MeshState.load_or_create(x_dir, identity.load_or_create(x_dir), time.time())
    assert a_state.authority is not None
    book = InviteBook(a_dir / "invites.db")
    token = book.mint(a_state.authority, a.peer.addresses[0], time.time(), 600,
                      a.peer.fingerprint).token()
    book.close()
    async with HttpPeerTransport(lambda *_: {}) as joining:
        b_state, _ = await redeem(joining, parse_invite(token), identity.load_or_create(b_dir),
                                  b_dir, time.time())
    query = {"vector": (await BagOfWords().embed_query("staging database")).tolist(),
             "model": "fake-bow", "k": 3}
    try:
        async with HttpPeerTransport(signer_for(b_state)) as b, \
                HttpPeerTransport(signer_for(outsider)) as x:
            got = await call_json(b, a.peer, PEER_PATH, query, 10)
            assert [h["project"] for h in got["hits"]] == ["infra"]  # home is not shared
            assert set(got["hits"][0]) == {"id", "text", "project", "tags", "confidence",
                                           "updated_at", "score"}
            for body, status, code in (
                    ({**query, "filters": {"project": "home"}}, 403, "project_not_shared"),
                    ({**query, "model": "other"}, 409, "other_embedding_model"),
                    ({**query, "vector": [0.0] * DIM}, 400, "invalid_query"),
                    ({**query, "k": 10_000}, 400, "invalid_query")):
                with pytest.raises(PeerError) as refused:
                    await call_json(b, a.peer, PEER_PATH, body, 10)
                assert (refused.value.status, refused.value.code) == (status, code)
            with pytest.raises(PeerError) as refused:  # not a member: refused before work
                await call_json(x, a.peer, PEER_PATH, query, 10)
            assert refused.value.status == 403
            for path in ("/mesh/memory", "/mesh/memory/add"):  # no way to write
                with pytest.raises(PeerError) as refused:
                    await call_json(b, a.peer, path, {"text": "x"}, 10)
                assert refused.value.status in (404, 405)
        assert service.store.count() == 2
        # Sharing off: 503, saying how to turn it on.
        service.shared = frozenset()
        async with HttpPeerTransport(signer_for(b_state)) as b:
            with pytest.raises(PeerError) as refused:
                await call_json(b, a.peer, PEER_PATH, query, 10)
        assert refused.value.status == 503 and "--share-memory" in str(refused.value)
    finally:
        await a.runner.cleanup()
        service.store.close()


def _new(text: str, project: str) -> Any:
    from covey.memory.records import NewMemory

    return NewMemory(text=text, project=project)

"""Fetching a model file from a member over real TLS on loopback, in process: the file
arrives whole and verified; a node of another mesh, sharing turned off, and an unknown
file are refused."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from covey.errors import FetchError
from covey.fetch.peers import fetch_from_peers
from covey.fetch.serve import CHUNK_PATH, MANIFEST_PATH, FileShare
from covey.mesh import identity
from covey.mesh.client import redeem, signer_for
from covey.mesh.membership import InviteBook, parse_invite
from covey.mesh.peer_api import build_peer_app
from covey.mesh.peer_transport import HttpPeerTransport, Peer, PeerError, call_json
from covey.mesh.state import MeshState
from covey.mesh.transport import TlsIdentity, tls_identity

SIZE = 40 * 1024 * 1024 + 12345  # five full chunks and a short one


@dataclass
class Node:
    state: MeshState
    tls: TlsIdentity
    files: FileShare
    runner: web.AppRunner
    transport: HttpPeerTransport
    address: str = ""

    @property
    def callee(self) -> Peer:
        return Peer(self.tls.fingerprint, (self.address,), self.state.data_dir.name)


async def _node(state: MeshState, data_dir: Path) -> Node:
    tls = tls_identity(state.identity.key, data_dir)
    context = tls.server_context()
    files = FileShare()
    runner = web.AppRunner(build_peer_app(state, tls.fingerprint, files=files),
                           access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    node = Node(state, tls, files, runner, HttpPeerTransport(signer_for(state)))
    node.address = f"127.0.0.1:{runner.addresses[0][1]}"
    return node


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, Node]]:
    """A (the mesh's creator), B (a member), and an outsider (the creator of another mesh)."""
    made: list[Node] = []
    for name in ("a", "outsider"):
        (tmp_path / name).mkdir()
        ident = identity.load_or_create(tmp_path / name)
        made.append(await _node(MeshState.load_or_create(tmp_path / name, ident, time.time()),
                                tmp_path / name))
    a, outsider = made
    assert a.state.authority is not None
    book = InviteBook(a.state.data_dir / "invites.db")
    token = book.mint(a.state.authority, a.address, time.time(), 600,
                      a.tls.fingerprint).token()
    book.close()
    (tmp_path / "b").mkdir()
    ident = identity.load_or_create(tmp_path / "b")
    async with HttpPeerTransport(lambda audience, path, body: {}) as joining:
        state, _ = await redeem(joining, parse_invite(token), ident, tmp_path / "b",
                                time.time())
    b = await _node(state, tmp_path / "b")
    try:
        yield a, b, outsider
    finally:
        for n in (a, b, outsider):
            await n.transport.close()
            await n.runner.cleanup()


async def test_member_fetches_outsider_refused(nodes: tuple[Node, Node, Node],
                                               tmp_path: Path) -> None:
    a, b, outsider = nodes
    model = tmp_path / "a" / "model.gguf"
    model.write_bytes(os.urandom(SIZE))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    a.files.register(sha, model)
    await a.files.prepare()

    target = tmp_path / "b" / "models" / "model.gguf"
    seen: list[int] = []
    result = await fetch_from_peers(sha, SIZE, [a.callee], b.transport, target,
                                    lambda done, total: seen.append(done))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert result.bytes_from == {"a": SIZE} and result.dropped == {}
    assert seen[-1] == SIZE

    # A node of another mesh: refused on both endpoints, before its body is read.
    body = json.dumps({"sha256": sha, "index": 0}).encode()
    for path in (MANIFEST_PATH, CHUNK_PATH):
        async with await outsider.transport.post(a.callee, path, body, timeout_s=10) as r:
            assert r.status == 403
            assert json.loads(await r.read())["error"]["code"] == "not_member"
    with pytest.raises(FetchError, match="not a member"):
        await fetch_from_peers(sha, SIZE, [a.callee], outsider.transport,
                               tmp_path / "outsider" / "model.gguf")

    # Unknown file: 404 on both.
    unknown = json.dumps({"sha256": "c" * 64, "index": 0}).encode()
    for path in (MANIFEST_PATH, CHUNK_PATH):
        async with await b.transport.post(a.callee, path, unknown, timeout_s=10) as r:
            assert r.status == 404

    # Sharing turned off: 403 saying so, on both.
    a.files.enabled = False
    for path in (MANIFEST_PATH, CHUNK_PATH):
        async with await b.transport.post(a.callee, path, body, timeout_s=10) as r:
            assert r.status == 403
            assert "turned model sharing off" in json.loads(await r.read())["error"]["message"]
    with pytest.raises(PeerError, match="turned model sharing off"):
        await call_json(b.transport, a.callee, MANIFEST_PATH, {"sha256": sha}, 10)


async def test_a_member_sending_a_bad_chunk_is_dropped(nodes: tuple[Node, Node, Node],
                                                       tmp_path: Path) -> None:
    """Two sources over real TLS, one of them (B) sending every chunk with a flipped byte
    under the honest manifest: B is dropped at its first chunk (asked at once, beside A's
    first, so long before A alone could finish six), the file completes from A, whole."""
    a, b, _ = nodes
    model = tmp_path / "a" / "model.gguf"
    model.write_bytes(os.urandom(SIZE))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    for n in (a, b):
        n.files.register(sha, model)
        await n.files.prepare()

    async def corrupting(request: web.Request, sha256: str, index: int,
                         peer: str) -> web.StreamResponse:
        offset, length = (await b.files.manifest(sha256)).span(index)
        with model.open("rb") as f:
            f.seek(offset)
            data = bytearray(f.read(length))
        data[100] ^= 0xFF
        return web.Response(body=bytes(data), content_type="application/octet-stream")

    b.files.send_chunk = corrupting  # type: ignore[method-assign]
    target = tmp_path / "a" / "fetched" / "model.gguf"
    result = await fetch_from_peers(sha, SIZE, [b.callee, a.callee], a.transport, target,
                                    parallel=1)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert "b" in result.dropped and "a" in result.bytes_from, result
    assert result.bytes_from["a"] > 0

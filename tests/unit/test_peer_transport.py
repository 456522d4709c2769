"""The peer transport's seam, with the in-memory transport (tests/memory_transport.py):
every caller (gossip, probes, the relay) gets signed, pinned, capped calls, and a hostile
peer's answers cannot break them."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from covey.health.probe import Target, mesh_probe
from covey.mesh import identity
from covey.mesh.client import exchange, signer_for
from covey.mesh.peer_transport import HttpPeerTransport, Peer, PeerError, call_json
from covey.mesh.state import MeshState
from covey.mesh.transport import H_NODE, H_SIG
from tests.memory_transport import Handler, MemoryTransport

FP = "ab" * 32


def _state(tmp_path: Path) -> MeshState:
    ident = identity.load_or_create(tmp_path)
    return MeshState.load_or_create(tmp_path, ident, time.time())


def _answer(status: int, body: object) -> Handler:
    async def handle(path: str, headers: Mapping[str, str], raw: bytes
                     ) -> tuple[int, list[bytes]]:
        return status, [json.dumps(body).encode()]
    return handle


def _unsigned(audience: str, path: str, body: bytes) -> dict[str, str]:
    return {"x-signed-for": audience}


async def test_calls_are_signed_for_their_audience_and_the_join_is_not() -> None:
    transport = MemoryTransport(_unsigned, {FP: _answer(200, {"ok": True})})
    peer = Peer(FP, ("h:1",))
    assert await call_json(transport, peer, "/mesh/probe", {}, 1.0) == {"ok": True}
    await call_json(transport, peer, "/mesh/join", {}, 1.0, signed=False)
    assert transport.calls[0][2]["x-signed-for"] == FP
    assert "x-signed-for" not in transport.calls[1][2]


@pytest.mark.parametrize("fingerprint", ["", "ab", "zz" * 32])
async def test_an_unpinned_peer_is_never_called(fingerprint: str) -> None:
    transport = MemoryTransport(_unsigned, {fingerprint: _answer(200, {})})
    with pytest.raises(PeerError) as refused:
        await call_json(transport, Peer(fingerprint, ("h:1",)), "/mesh/gossip", {}, 1.0)
    assert refused.value.kind == "unpinned" and transport.calls == []


async def test_an_error_answer_carries_the_peers_code_and_body() -> None:
    transport = MemoryTransport(_unsigned, {FP: _answer(403, {
        "error": {"code": "not_member", "message": "revoked"}, "revocations": "abc"})})
    with pytest.raises(PeerError) as refused:
        await call_json(transport, Peer(FP, ("h:1",)), "/mesh/gossip", {}, 1.0)
    assert (refused.value.kind, refused.value.status, refused.value.code) == (
        "http", 403, "not_member")
    assert refused.value.answer["revocations"] == "abc"


async def test_an_oversized_answer_is_refused() -> None:
    big = _answer(200, {"pad": "x" * 10_000})
    transport = MemoryTransport(_unsigned, {FP: big})
    with pytest.raises(PeerError) as refused:
        await call_json(transport, Peer(FP, ("h:1",)), "/mesh/gossip", {}, 1.0,
                        max_bytes=1000)
    assert refused.value.kind == "too_large"


@pytest.mark.parametrize("answer", [
    [1, 2, 3],  # not an object
    {"records": "not a list", "digest": ["nor", "a", "dict"]},
    {"records": [1, None, "!!", {"a": 1}], "digest": {"x": "nan", "y": 10**30}},
])
async def test_gossip_survives_a_hostile_answer(tmp_path: Path, answer: object) -> None:
    state = _state(tmp_path)
    transport = MemoryTransport(signer_for(state), {FP: _answer(200, answer)})
    try:
        learned = await exchange(transport, state, Peer(FP, ("h:1",)))
    except PeerError as exc:
        assert exc.kind == "malformed"  # not a JSON object: refused, not crashed
        return
    assert learned == 0


async def test_gossip_signs_with_this_nodes_key(tmp_path: Path) -> None:
    state = _state(tmp_path)
    transport = MemoryTransport(signer_for(state), {FP: _answer(200, {"records": []})})
    await exchange(transport, state, Peer(FP, ("h:1",)))
    headers = transport.calls[0][2]
    assert headers[H_NODE] == state.identity.node_id and headers[H_SIG]


async def test_a_probe_reports_an_unreadable_answer_at_its_layer() -> None:
    async def garbage(path: str, headers: Mapping[str, str], raw: bytes
                      ) -> tuple[int, list[bytes]]:
        return 200, [b"\xff\xfe not json"]

    transport = MemoryTransport(_unsigned, {FP: garbage})
    result, answer = await mesh_probe(transport, Target(Peer(FP, ("h:1",), "p")), 0, 1.0)
    assert (result.layer, result.ok, answer) == (8, False, {})


async def test_a_forgotten_peer_loses_its_pool() -> None:
    """Peers that left the roster keep no pool (sessions would pile up as peers churn)."""
    other = "cd" * 32
    async with HttpPeerTransport(_unsigned) as transport:
        kept, dropped = transport.control(FP), transport.control(other)
        await transport.forget({FP})
        assert transport.control(FP) is kept
        assert transport.control(other) is not dropped

"""health/probe.py against a real TLS listener on loopback: no traffic without a pin.

Was a hole: a target without a signed TLS fingerprint passed layer 7 (any listener's key was
accepted) and the signed probes went out with `ssl=False`, unpinned.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.health.layers import passed
from covey.health.probe import Target, check_peer, mesh_probe, one_token, tls_handshake
from covey.mesh.peer_transport import HttpPeerTransport, Peer
from covey.mesh.transport import tls_identity


def _target(address: str, fingerprint: str | None) -> Target:
    return Target(Peer(fingerprint, (address,), "peer", "id"))  # type: ignore[arg-type]


class Listener:
    def __init__(self, address: str, fingerprint: str) -> None:
        self.address, self.fingerprint = address, fingerprint
        self.requests: list[str] = []


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    """A TLS listener with the node key's certificate that answers every POST and counts it."""
    ident = tls_identity(Ed25519PrivateKey.generate(), tmp_path)
    context = ident.server_context()
    app = web.Application()
    runner = web.AppRunner(app)

    async def anything(request: web.Request) -> web.Response:
        seen.requests.append(request.path)
        return web.json_response({"error": {"code": "nope"}}, status=403)

    app.router.add_post("/{path:.*}", anything)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    seen = Listener(f"127.0.0.1:{port}", ident.fingerprint)
    try:
        yield seen
    finally:
        await runner.cleanup()


def _sign(audience: str, path: str, body: bytes) -> dict[str, str]:
    return {}


@pytest.mark.parametrize("fingerprint", [None, ""])
async def test_no_fingerprint_fails_layer_7(listener: Listener, fingerprint: str | None) -> None:
    result = await tls_handshake(_target(listener.address, fingerprint), 5.0)
    assert (result.layer, result.ok) == (7, False)
    assert "no signed TLS fingerprint for peer: unusable" in result.detail


async def test_pinned_handshake_passes_only_the_signed_key(listener: Listener) -> None:
    good = await tls_handshake(_target(listener.address, listener.fingerprint), 5)
    assert good.ok is True and "matches" in good.detail
    other = await tls_handshake(_target(listener.address, "ab" * 32), 5)
    assert other.ok is False and other.layer == 7


@pytest.mark.parametrize("fingerprint", [None, "", "zz" * 32, "ab"])
async def test_signed_requests_need_a_pin(listener: Listener, fingerprint: str | None) -> None:
    t = _target(listener.address, fingerprint)
    async with HttpPeerTransport(_sign) as transport:
        small, answer = await mesh_probe(transport, t, 0, 5.0)
        token = await one_token(transport, t, "m", 5.0)
        layers = await check_peer(transport, t, ["m"], ["m"], 5.0)
    assert (small.layer, small.ok, answer) == (8, False, {})
    assert (token.layer, token.ok) == (11, False)
    assert "unusable" in small.detail and "unusable" in token.detail
    assert [(r.layer, r.ok) for r in layers] == [(6, True), (7, False)]
    assert listener.requests == []  # nothing was sent


async def test_a_pinned_probe_is_sent(listener: Listener) -> None:
    """The control: with the right pin the same calls do reach the listener."""
    t = _target(listener.address, listener.fingerprint)
    async with HttpPeerTransport(_sign) as transport:
        small, _ = await mesh_probe(transport, t, 0, 5.0)
    assert small.ok is False and "HTTP 403" in small.detail
    assert listener.requests == ["/mesh/probe"]


async def test_an_embedding_model_is_probed_with_an_embeddings_request(
        listener: Listener) -> None:
    """Layer 11 for an embedding model asks for a vector: a chat would be refused (400)."""
    t = _target(listener.address, listener.fingerprint)
    async with HttpPeerTransport(_sign) as transport:
        vector = await one_token(transport, t, "e", 5.0, embeddings=True)
        token = await one_token(transport, t, "m", 5.0)
    assert (vector.layer, vector.ok, token.layer, token.ok) == (11, False, 11, False)
    assert "HTTP 403" in vector.detail
    assert listener.requests == ["/mesh/v1/embeddings", "/mesh/v1/chat/completions"]


async def test_a_reused_large_pass_sends_no_large_probe(tmp_path: Path) -> None:
    """A real TLS peer that echoes probes: a full check sends the small probe and the 64 KiB
    one; a check given an earlier layer-9 pass sends only the small one and still reads the
    engines (layer 10) from the small probe's answer."""
    ident = tls_identity(Ed25519PrivateKey.generate(), tmp_path)
    sizes: list[int] = []

    async def probe(request: web.Request) -> web.Response:
        body = await request.read()
        sizes.append(len(body))
        return web.json_response({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                                  "models": {"m": {"state": "ready"}}})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/mesh/probe", probe)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ident.server_context())
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    t = _target(f"127.0.0.1:{port}", ident.fingerprint)
    try:
        async with HttpPeerTransport(_sign) as transport:
            full = await check_peer(transport, t, ["m"], [], 5.0)
            assert [(r.layer, r.ok) for r in full] == [(6, True), (7, True), (8, True),
                                                       (9, True), (10, True)]
            assert len(sizes) == 2 and sizes[1] > 64 * 1024
            earlier = passed(9, "65547 bytes echoed")
            again = await check_peer(transport, t, ["m"], [], 5.0, reuse_large=earlier)
            assert [(r.layer, r.ok) for r in again] == [(6, True), (7, True), (8, True),
                                                        (9, True), (10, True)]
            assert again[3] is earlier
            assert len(sizes) == 3 and sizes[2] < 1024  # only the small probe went out
    finally:
        await runner.cleanup()

"""mesh/peer_stream.py through HttpPeerTransport.stream: a peer's streamed answer on a kept,
pinned TLS connection, signed once per connection.

A real aiohttp server over TLS (a node key's certificate) stands in for the peer; it answers
each call with a short chunked stream and records what it was sent (no engine: this is about
connections and authentication, not tokens)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.mesh.peer_stream import Kept, KeptConnections, client_context
from covey.mesh.peer_transport import HttpPeerTransport, Peer, PeerError
from covey.mesh.transport import H_BOUND, H_NODE, H_SIG, tls_identity
from covey.router.engine_stream import GO, STOP

PATH = "/mesh/v1/chat/completions"


@dataclass
class Seen:
    """What the peer saw: per call, (its connection, whether it was signed)."""

    calls: list[tuple[object, bool]] = field(default_factory=list)
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    refuse_unsigned: int = 0  # answer this many unsigned calls 403 with x-covey-bound: 0
    cut_after: int | None = None  # drop the connection after this many chunks
    bound: set[int] = field(default_factory=set)  # ids of connections taken as the caller's


def _signer(audience: str, path: str, body: bytes) -> dict[str, str]:
    return {H_NODE: "me", H_SIG: "sig"}


async def _peer_app(seen: Seen) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        connection = request.transport.get_extra_info("ssl_object")
        signed = H_SIG in request.headers
        seen.calls.append((connection, signed))
        seen.transports.append(request.transport)
        if not signed and seen.refuse_unsigned:
            seen.refuse_unsigned -= 1
            seen.bound.discard(id(connection))
            return web.json_response({"error": {"message": "who are you"}}, status=403,
                                     headers={H_BOUND: "0"})
        if signed:
            seen.bound.add(id(connection))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               H_BOUND: "1" if signed else ""})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(3):
            if seen.cut_after is not None and i == seen.cut_after:
                request.transport.close()
                return response
            await response.write(b'data: {"n": %d}\n\n' % i)
        await response.write_eof(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post(PATH, chat)
    return app


@dataclass
class Harness:
    seen: Seen
    peer: Peer
    transport: HttpPeerTransport
    server: TestServer


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    ident = tls_identity(Ed25519PrivateKey.generate(), tmp_path)
    seen = Seen()
    server = TestServer(await _peer_app(seen))
    await server.start_server(ssl=ident.server_context())
    peer = Peer(ident.fingerprint, (f"127.0.0.1:{server.port}",), "peer")
    async with HttpPeerTransport(_signer) as transport:
        try:
            yield Harness(seen, peer, transport, server)
        finally:
            await server.close()


async def _answer(h: Harness) -> bytes:
    """One streamed call, read to its end through a sink, as the relay reads it."""
    answer = await h.transport.stream(h.peer, PATH, b"{}", timeout_s=5)
    got: list[bytes] = []

    def sink(chunk: bytes) -> int:
        got.append(chunk)
        return STOP if b"[DONE]" in chunk else GO

    async def drain() -> None:
        pass

    try:
        assert answer.status == 200
        await answer.relay(sink, drain)
    finally:
        answer.close()
    return b"".join(got)


async def test_a_kept_connection_carries_answer_after_answer_signed_once(
        harness: Harness) -> None:
    for _ in range(3):
        assert (await _answer(harness)).endswith(b"data: [DONE]\n\n")
    connections = {id(c) for c, _ in harness.seen.calls}
    assert len(connections) == 1, "a TLS handshake per answer"
    assert [signed for _, signed in harness.seen.calls] == [True, False, False]
    assert harness.transport.opened(harness.peer.fingerprint) == 1


async def test_a_connection_the_peer_no_longer_takes_as_ours_is_signed_again(
        harness: Harness) -> None:
    await _answer(harness)
    harness.seen.refuse_unsigned = 1
    assert (await _answer(harness)).endswith(b"data: [DONE]\n\n")
    assert [signed for _, signed in harness.seen.calls] == [True, False, True]


async def test_an_answer_cut_midway_does_not_leave_its_connection_kept(
        harness: Harness) -> None:
    harness.seen.cut_after = 1
    with pytest.raises(Exception, match="closed the connection"):
        await _answer(harness)
    harness.seen.cut_after = None
    await _answer(harness)
    first, second = (c for c, _ in harness.seen.calls)
    assert first is not second
    assert [signed for _, signed in harness.seen.calls] == [True, True]


async def test_a_kept_connection_the_peer_closed_costs_one_retry(harness: Harness) -> None:
    """The peer closes the kept connection just as the next call goes out on it (a restart,
    its keep-alive running out): that call never reached it, so it is sent again, once, on a
    new connection."""
    await _answer(harness)
    harness.seen.transports[-1].close()  # no loop turn after it: this side has not seen it
    assert (await _answer(harness)).endswith(b"data: [DONE]\n\n")
    assert harness.transport.opened(harness.peer.fingerprint) == 2
    assert len(harness.seen.calls) == 2  # the first attempt never reached the peer


async def test_an_idle_connection_the_peer_closed_is_not_used_again(harness: Harness) -> None:
    await _answer(harness)
    harness.seen.transports[-1].close()
    for _ in range(100):  # until this side has seen the connection end
        if harness.transport._pools[harness.peer.fingerprint].streams.idle == []:
            break
        await asyncio.sleep(0.01)
    assert harness.transport._pools[harness.peer.fingerprint].streams.idle == []
    await _answer(harness)
    assert harness.transport.opened(harness.peer.fingerprint) == 2


async def test_a_peer_with_another_certificate_is_refused_before_it_hears_anything(
        tmp_path: Path, harness: Harness) -> None:
    (tmp_path / "other").mkdir()
    other = tls_identity(Ed25519PrivateKey.generate(), tmp_path / "other")
    impostor = Peer(other.fingerprint, harness.peer.addresses, "impostor")
    with pytest.raises(PeerError) as caught:
        await harness.transport.stream(impostor, PATH, b"{}", timeout_s=5)
    assert caught.value.kind == "tls"
    assert harness.seen.calls == []


async def test_a_header_cannot_smuggle_a_line_break(harness: Harness) -> None:
    kept = await KeptConnections(harness.peer.fingerprint, client_context(), 3.0).connect(
        harness.peer.addresses[0])
    try:
        with pytest.raises(ValueError, match="line break"):
            KeptConnections(harness.peer.fingerprint, client_context(), 3.0).send(
                kept, PATH, {"x-covey-request-id": "a\r\nx-evil: 1"}, b"{}", 1 << 20, "peer")
    finally:
        kept.transport.close()
    assert harness.seen.calls == []


async def test_a_call_that_cannot_be_sent_leaves_no_connection_behind(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Kept] = []
    real_connect = KeptConnections.connect

    async def connect(self: KeptConnections, address: str) -> Kept:
        made.append(await real_connect(self, address))
        return made[-1]

    monkeypatch.setattr(KeptConnections, "connect", connect)
    with pytest.raises(ValueError, match="line break"):
        await harness.transport.stream(harness.peer, PATH, b"{}", timeout_s=5,
                                       headers={"x-covey-request-id": "a\r\nx-evil: 1"})
    assert len(made) == 1 and made[0].transport.is_closing()
    assert harness.transport._pools[harness.peer.fingerprint].streams.idle == []
    assert (await _answer(harness)).endswith(b"data: [DONE]\n\n")
    assert [signed for _, signed in harness.seen.calls] == [True]

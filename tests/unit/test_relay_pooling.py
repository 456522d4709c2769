"""router/proxy.py across two hops: an entry's relay keeps its pinned TLS connection to a
peer between answers (no TLS handshake per prompt), and a client hanging up still closes
it, which is how the peer learns to stop and free its slot.

Three in-process aiohttp servers stand in for client-facing entry, peer node (TLS from a
node key, reached through the real peer transport) and engine; the engine is a fake (this is
about connections, not tokens)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.mesh.peer_transport import HttpPeerTransport, Peer
from covey.mesh.transport import tls_identity
from covey.router.proxy import T_RECEIVED, Relay
from covey.router.table import ServedModel
from covey.types import EngineReady
from tests.unit.test_table import _served

TOKENS = 5


def _model(base_url: str, peer: Peer | None = None) -> ServedModel:
    model = _served("m", EngineReady(base_url=base_url), slots=4, queue=4)
    model.peer = peer
    return model


def _unsigned(audience: str, path: str, body: bytes) -> dict[str, str]:
    return {}


def _tls(directory: Path) -> tuple[ssl.SSLContext, str]:
    ident = tls_identity(Ed25519PrivateKey.generate(), directory)
    context = ident.server_context()
    return context, ident.fingerprint


@dataclass
class Hops:
    entry_url: str
    opened: Callable[[], int] = lambda: 0  # connections the entry opened to the peer
    peer_connections: list[object] = field(default_factory=list)  # peer: each request's socket
    engine_stopped: asyncio.Event = field(default_factory=asyncio.Event)
    slow: bool = False


async def _engine_app(hops: Hops) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(TOKENS if not hops.slow else 10_000):
                chunk = {"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await asyncio.sleep(0.01 if hops.slow else 0)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            hops.engine_stopped.set()
            raise
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def _relay_app(relay: Relay, model: ServedModel, seen: list[object] | None,
               route: str = "/v1/chat/completions") -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append(request.transport)
        request[T_RECEIVED] = time.perf_counter()
        return await relay.forward(request, model, "/chat/completions", await request.read(),
                                   stream=True, headers={})

    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_post(route, chat)
    return app


@pytest.fixture
async def hops(tmp_path: Path) -> AsyncIterator[Hops]:
    state = Hops(entry_url="")
    context, fingerprint = _tls(tmp_path)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as eng, \
            HttpPeerTransport(_unsigned) as peers:
        engine = TestServer(await _engine_app(state))
        await engine.start_server()
        peer = TestServer(_relay_app(Relay(eng), _model(str(engine.make_url("/v1"))),
                                     state.peer_connections, "/mesh/v1/chat/completions"))
        await peer.start_server(ssl=context)
        to_peer = Peer(fingerprint, (f"127.0.0.1:{peer.port}",), "peer")
        entry = TestServer(_relay_app(Relay(eng, peers), _model("", to_peer), None))
        await entry.start_server()
        state.entry_url = str(entry.make_url("/v1/chat/completions"))
        state.opened = lambda: peers.opened(fingerprint)
        try:
            yield state
        finally:
            for server in (entry, peer, engine):
                await server.close()


async def _ask(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.post(url, json={"stream": True}) as r:
        assert r.status == 200
        return await r.read()


async def test_entry_keeps_its_connection_to_the_peer(hops: Hops) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            body = await _ask(client, hops.entry_url)
            assert body.count(b"data: ") == TOKENS + 1 and body.endswith(b"data: [DONE]\n\n")
    assert len(hops.peer_connections) == 3
    assert len({id(t) for t in hops.peer_connections}) == 1, "a new connection per answer"
    assert hops.opened() == 1, "a TLS handshake per answer"


async def test_client_hanging_up_closes_the_peer_connection(hops: Hops) -> None:
    hops.slow = True
    async with aiohttp.ClientSession() as client:
        async with client.post(hops.entry_url, json={"stream": True}) as r:
            await r.content.readline()  # the first token is streaming: now hang up
    # The hang-up travels entry → peer → engine: the engine's handler is stopped.
    await asyncio.wait_for(hops.engine_stopped.wait(), 5)
    hops.slow = False
    async with aiohttp.ClientSession() as client:
        await _ask(client, hops.entry_url)
    assert len(hops.peer_connections) == 2
    assert hops.peer_connections[0] is not hops.peer_connections[1]


async def test_a_silent_peer_is_given_up_on_within_the_deadline(tmp_path: Path) -> None:
    """A peer that accepts the connection and never answers (a vanished machine behind a
    kept connection looks the same) fails the attempt at the deadline, not after minutes."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, fingerprint = _tls(tmp_path)
    async with aiohttp.ClientSession() as eng, HttpPeerTransport(_unsigned) as peers:
        relay = Relay(eng, peers, peer_deadline_s=0.3)
        entry = TestServer(_relay_app(
            relay, _model("", Peer(fingerprint, (f"127.0.0.1:{port}",))), None))
        await entry.start_server()
        try:
            async with aiohttp.ClientSession() as client:
                started = time.monotonic()
                async with client.post(entry.make_url("/v1/chat/completions"),
                                       json={"stream": True}) as r:
                    assert r.status != 200
                assert time.monotonic() - started < 3
        finally:
            await entry.close()
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()
    assert accepted, "the peer was never called"

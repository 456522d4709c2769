"""The mesh's network layer with real TLS on loopback: join by invite, signed push-pull
gossip, and every refusal. In-process peers, each calling through its own peer transport."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from covey.mesh import identity
from covey.mesh.client import exchange, join, signer_for
from covey.mesh.membership import InviteBook, parse_invite, revoke
from covey.mesh.peer_api import build_peer_app
from covey.mesh.peer_transport import HttpPeerTransport, PeerError
from covey.mesh.peer_transport import Peer as Callee
from covey.mesh.state import MeshState
from covey.mesh.transport import TlsIdentity, tls_identity


@dataclass
class Peer:
    state: MeshState
    address: str
    tls: TlsIdentity
    runner: web.AppRunner
    transport: HttpPeerTransport

    @property
    def callee(self) -> Callee:
        return Callee(self.tls.fingerprint, (self.address,), self.address)

    async def close(self) -> None:
        await self.transport.close()
        await self.runner.cleanup()

    def publish(self) -> None:
        self.state.publish(time.time(), name=self.address, addresses=[self.address],
                           tls_fingerprint=self.tls.fingerprint)


async def _serve(state: MeshState, tls: TlsIdentity) -> Peer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_path, tls.key_path)
    runner = web.AppRunner(build_peer_app(state, tls.fingerprint), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    peer = Peer(state, f"127.0.0.1:{runner.addresses[0][1]}", tls, runner,
                HttpPeerTransport(signer_for(state)))
    peer.publish()
    return peer


@pytest.fixture
async def session() -> AsyncIterator[HttpPeerTransport]:
    """A transport for joining (the join is not signed)."""
    async with HttpPeerTransport(lambda audience, path, body: {}) as s:
        yield s


def _invite(peer: Peer, ttl_s: float = 600) -> str:
    assert peer.state.authority is not None
    book = InviteBook(peer.state.data_dir / "invites.db")
    try:
        return book.mint(peer.state.authority, peer.address, time.time(), ttl_s,
                         peer.tls.fingerprint).token()
    finally:
        book.close()


async def _joiner(tmp_path: Path, name: str, session: HttpPeerTransport,
                  token: str) -> Peer:
    data_dir = tmp_path / name
    data_dir.mkdir()
    ident = identity.load_or_create(data_dir)
    state = await join(session, parse_invite(token), ident, data_dir, time.time())
    return await _serve(state, tls_identity(ident.key, data_dir))


async def _founder(tmp_path: Path, name: str = "a") -> Peer:
    data_dir = tmp_path / name
    data_dir.mkdir()
    ident = identity.load_or_create(data_dir)
    state = MeshState.load_or_create(data_dir, ident, time.time())
    return await _serve(state, tls_identity(ident.key, data_dir))


async def test_join_and_gossip_converge(tmp_path: Path, session: HttpPeerTransport) -> None:
    a = await _founder(tmp_path)
    b = await _joiner(tmp_path, "b", session, _invite(a))
    c = await _joiner(tmp_path, "c", session, _invite(a))
    peers = [a, b, c]
    try:
        assert b.state.info == a.state.info == c.state.info
        await exchange(b.transport, b.state, a.callee)  # A learns B
        await exchange(c.transport, c.state, a.callee)  # C learns B; A learns C
        await exchange(b.transport, b.state, a.callee)  # B learns C
        everyone = {p.state.identity.node_id for p in peers}
        for p in peers:
            assert set(p.state.table.digest()) == everyone
        # A restarted node finds its mesh again in its data dir.
        again = MeshState.load(b.state.data_dir, b.state.identity)
        assert again is not None and again.info == a.state.info
    finally:
        for p in peers:
            await p.close()


async def test_refusals(tmp_path: Path, session: HttpPeerTransport) -> None:
    a = await _founder(tmp_path)
    outsider = await _founder(tmp_path, "outsider")  # a node of another mesh
    token = _invite(a)
    b = await _joiner(tmp_path, "b", session, token)
    try:
        with pytest.raises(PeerError, match="already used"):
            await _joiner(tmp_path, "b2", session, token)
        with pytest.raises(PeerError, match="expired"):
            await _joiner(tmp_path, "b3", session, _invite(a, ttl_s=-1))
        with pytest.raises(PeerError, match="not a member"):
            await exchange(outsider.transport, outsider.state, a.callee)
        impostor = Callee(outsider.tls.fingerprint, (a.address,))
        with pytest.raises(PeerError, match="different TLS key"):
            await exchange(b.transport, b.state, impostor)

        # Revoked: refused from the next request on.
        assert a.state.authority is not None
        revocations, envelope = revoke(a.state.authority, None, b.state.identity.node_id,
                                       time.time())
        assert a.state.set_revocations(revocations, envelope)
        assert b.state.identity.node_id not in a.state.table.digest()
        with pytest.raises(PeerError, match="revoked"):
            await exchange(b.transport, b.state, a.callee)
    finally:
        for p in (a, b, outsider):
            await p.close()

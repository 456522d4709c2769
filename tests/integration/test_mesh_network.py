"""The mesh's network layer with real TLS on loopback: join by invite, signed push-pull
gossip, and every refusal. In-process peers, each calling through its own peer transport."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from covey.mesh import identity, peer_api
from covey.mesh import transport as transport_module
from covey.mesh.authority import AuthorityLink, AuthorityOffline, contacts_of
from covey.mesh.client import exchange, redeem, request_renewal, signer_for
from covey.mesh.membership import Contact, InviteBook, parse_invite, revoke
from covey.mesh.peer_api import build_peer_app
from covey.mesh.peer_transport import HttpPeerTransport, PeerError
from covey.mesh.peer_transport import Peer as Callee
from covey.mesh.renewal import renewal_request
from covey.mesh.runtime import HEARD_ROUNDS, QUIET_ROUNDS, MeshRuntime
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


async def _serve(state: MeshState, tls: TlsIdentity, forwards: bool = False) -> Peer:
    """`forwards`: this peer passes joins and renewals on to the creator."""
    context = tls.server_context()
    transport = HttpPeerTransport(signer_for(state))
    link = AuthorityLink(state, transport) if forwards else None
    runner = web.AppRunner(build_peer_app(state, tls.fingerprint, authority=link),
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    peer = Peer(state, f"127.0.0.1:{runner.addresses[0][1]}", tls, runner, transport)
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
                  token: str, forwards: bool = False) -> Peer:
    data_dir = tmp_path / name
    data_dir.mkdir()
    ident = identity.load_or_create(data_dir)
    state, _ = await redeem(session, parse_invite(token), ident, data_dir, time.time())
    return await _serve(state, tls_identity(ident.key, data_dir), forwards)


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_join_tries_each_contact_in_order(tmp_path: Path,
                                                session: HttpPeerTransport) -> None:
    a = await _founder(tmp_path)
    try:
        dead = f"127.0.0.1:{_free_port()}"  # nothing listens there
        assert a.state.authority is not None
        book = InviteBook(a.state.data_dir / "invites.db")
        contacts = [Contact(address=dead, fingerprint=a.tls.fingerprint),
                    Contact(address=a.address, fingerprint=a.tls.fingerprint)]
        token = book.mint(a.state.authority, contacts, time.time(), 600).token()
        data_dir = tmp_path / "b"
        data_dir.mkdir()
        state, worked = await redeem(session, parse_invite(token),
                                     identity.load_or_create(data_dir), data_dir, time.time())
        assert worked.address == a.address and state.info == a.state.info

        # Every address dead: the error names each one and why.
        other = f"127.0.0.1:{_free_port()}"
        token = book.mint(a.state.authority, [Contact(address=dead, fingerprint=a.tls.fingerprint),
                                                  Contact(address=other,
                                                          fingerprint=a.tls.fingerprint)],
                          time.time(), 600).token()
        book.close()
        data_dir = tmp_path / "c"
        data_dir.mkdir()
        with pytest.raises(PeerError) as info:
            await redeem(session, parse_invite(token), identity.load_or_create(data_dir),
                         data_dir, time.time())
        assert dead in str(info.value) and other in str(info.value)
        assert "refused" in str(info.value)
    finally:
        await a.close()


async def test_any_member_invites_and_admits(tmp_path: Path,
                                             session: HttpPeerTransport) -> None:
    a = await _founder(tmp_path)
    b = await _joiner(tmp_path, "b", session, _invite(a), forwards=True)
    peers = [a, b]
    try:
        await exchange(b.transport, b.state, a.callee)  # b learns a's record
        creator = b.state.authority_record(time.time())
        assert creator is not None and creator.node_id == a.state.identity.node_id
        # An invite minted on B (not the creator): B's contacts first, then A's.
        token = await AuthorityLink(b.state, b.transport).invite(600, contacts_of(
            b.state.table.get(b.state.identity.node_id).record))  # type: ignore[union-attr]
        assert [c.address for c in parse_invite(token).reachable()] == [b.address, a.address]
        # C redeems it at B, which forwards the join to A and relays the certificate.
        data_dir = tmp_path / "c"
        data_dir.mkdir()
        c_id = identity.load_or_create(data_dir)
        c_state, worked = await redeem(session, parse_invite(token), c_id, data_dir,
                                       time.time())
        assert worked.address == b.address and c_state.info == a.state.info
        assert c_state.own_cert(time.time()).node_id == c_id.node_id
        # Spent: B relays A's refusal.
        data_dir = tmp_path / "d"
        data_dir.mkdir()
        with pytest.raises(PeerError, match="already used"):
            await redeem(session, parse_invite(token), identity.load_or_create(data_dir),
                         data_dir, time.time())

        # Renewal through B: C's request is sealed by C, so B can carry it to A.
        old = c_state.own_cert(time.time())
        async with HttpPeerTransport(signer_for(c_state)) as c_transport:
            cert = await request_renewal(c_transport, b.callee,
                                         renewal_request(c_state, time.time()))
        assert c_state.set_cert(cert, time.time()).issued_at >= old.issued_at
        assert (data_dir.parent / "c" / "member.cert").read_bytes() == cert

        # The creator offline: asking B says who must come back.
        await a.close()
        peers.remove(a)
        with pytest.raises(AuthorityOffline, match=r"creator .* must be online to admit"):
            await AuthorityLink(b.state, b.transport).invite(600, [])
    finally:
        for p in peers:
            await p.close()


async def test_a_peer_that_just_gossiped_is_not_called_back(
        tmp_path: Path, session: HttpPeerTransport) -> None:
    """An exchange swaps records both ways: the node that answered one does not start its
    own with the caller in the same round (two nodes calling each other every round did the
    work twice), and calls it again once the caller has gone quiet for a round and a half
    and it has something new for it."""
    a = await _founder(tmp_path)
    b = await _joiner(tmp_path, "b", session, _invite(a))
    try:
        b.publish()
        runtime = MeshRuntime(a.state, a.tls, addresses=[a.address], describe=dict,
                              interval_s=2.0, bootstrap=[])
        await exchange(b.transport, b.state, a.callee)  # A learns B's record, from B
        b_id = b.state.identity.node_id
        assert b_id in a.state.table.digest()
        assert [t.node_id for t in runtime._targets()] == []
        # A round and a half later with no call from B: A calls B itself once it has news.
        a.state.gossiped_in[b_id] -= HEARD_ROUNDS * runtime.interval_s
        assert [t.node_id for t in runtime._targets()] == []  # B holds all that A holds
        assert b_id not in a.state.gossiped_in  # forgotten, not kept for ever
        a.publish()  # a record of A's own, new to B
        assert [t.node_id for t in runtime._targets()] == [b_id]
    finally:
        for p in (a, b):
            await p.close()


async def test_a_pair_with_nothing_new_does_not_call(
        tmp_path: Path, session: HttpPeerTransport) -> None:
    """After an exchange neither node calls the other while neither has learnt or signed
    anything since (the call would swap equal digests: an idle pair made one every round);
    a new record on one side, or three rounds of quiet, brings the call back."""
    a = await _founder(tmp_path)
    b = await _joiner(tmp_path, "b", session, _invite(a))
    try:
        a.publish()
        b.publish()
        a_id, b_id = a.state.identity.node_id, b.state.identity.node_id
        ra, rb = (MeshRuntime(p.state, p.tls, addresses=[p.address], describe=dict,
                              interval_s=2.0, bootstrap=[]) for p in (a, b))
        assert [t.node_id for t in rb._targets()] == [a_id]
        await exchange(b.transport, b.state, Callee(a.tls.fingerprint, (a.address,),
                                                    node_id=a_id))
        assert a.state.table.digest() == b.state.table.digest()
        a.state.gossiped_in.clear()  # as if B's call were a round and a half ago
        assert ra._targets() == [] and rb._targets() == []
        # B signs something new: B calls A, A still has nothing for B.
        b.state.publish(time.time(), name="b, renamed", addresses=[b.address],
                        tls_fingerprint=b.tls.fingerprint)
        assert [t.node_id for t in rb._targets()] == [a_id] and ra._targets() == []
        # Its own record rides with its digest; after the call both are even again.
        await exchange(b.transport, b.state, Callee(a.tls.fingerprint, (a.address,),
                                                    node_id=a_id))
        a.state.gossiped_in.clear()
        assert ra._targets() == [] and rb._targets() == []
        # Three quiet rounds on: A calls B anyway, in case B's news went elsewhere.
        version, at = a.state.synced[b_id]
        a.state.synced[b_id] = (version, at - QUIET_ROUNDS * ra.interval_s)
        assert [t.node_id for t in ra._targets()] == [b_id]
        assert b_id not in a.state.synced  # forgotten, not kept for ever
    finally:
        for p in (a, b):
            await p.close()


async def test_a_changed_own_record_rides_with_the_digest(
        tmp_path: Path, session: HttpPeerTransport) -> None:
    """A node's own record travels in its gossip call when the peer lacks it, instead of in a
    second signed call after the answer; unchanged, it is not sent again."""
    a = await _founder(tmp_path)
    b = await _joiner(tmp_path, "b", session, _invite(a))
    sent: list[tuple[str, bool]] = []
    real = b.transport.post

    async def post(peer: Callee, path: str, body: bytes, **kw: Any) -> Any:
        sent.append((path, "records" in json.loads(body)))
        return await real(peer, path, body, **kw)

    b.transport.post = post  # type: ignore[method-assign]
    b_id = b.state.identity.node_id

    def held_by_a() -> int | None:
        held = a.state.table.get(b_id)
        return held.record.seq if held else None

    try:
        await exchange(b.transport, b.state, a.callee)
        assert sent == [("/mesh/gossip", True)] and held_by_a() == b.state.table.digest()[b_id]
        sent.clear()
        await exchange(b.transport, b.state, a.callee)
        assert sent == [("/mesh/gossip", False)]  # A holds it: not sent again
        sent.clear()
        b.state.publish(time.time(), name="renamed", addresses=[b.address],
                        tls_fingerprint=b.tls.fingerprint)
        await exchange(b.transport, b.state, a.callee)
        assert sent == [("/mesh/gossip", True)]  # one call, no push after it
        assert held_by_a() == b.state.table.digest()[b_id]
    finally:
        for p in (a, b):
            await p.close()


def _signatures(transport: HttpPeerTransport) -> list[str]:
    """The paths of the calls `transport` signs from now on (its signer wrapped)."""
    signed: list[str] = []
    real = transport._signer

    def signer(audience: str, path: str, body: bytes) -> dict[str, str]:
        signed.append(path)
        return real(audience, path, body)

    transport._signer = signer
    return signed


async def test_a_kept_connection_is_authenticated_once(
        tmp_path: Path, session: HttpPeerTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over real TLS: a member signs its first call on a connection; once the peer says the
    connection is the member's, later calls there go unsigned and are taken as the member's.
    Its revocation still refuses the very next call (re-signed once, then refused), and a
    new connection is signed and verified afresh."""
    a = await _founder(tmp_path)
    b = await _joiner(tmp_path, "b", session, _invite(a))
    checked: list[bytes] = []
    real_check = transport_module.check

    def counting(domain: bytes, message: bytes, sig: bytes, key: bytes) -> None:
        checked.append(key)
        real_check(domain, message, sig, key)

    monkeypatch.setattr(transport_module, "check", counting)
    signed = _signatures(b.transport)
    b_id = b.state.identity.node_id
    try:
        for _ in range(3):
            a.state.gossiped_in.clear()
            await exchange(b.transport, b.state, a.callee)
            assert b_id in a.state.gossiped_in  # taken as B's, signed or not
        assert b.transport.opened(a.tls.fingerprint) == 1  # one kept connection
        assert signed == ["/mesh/gossip"]
        assert checked == [b.state.identity.public_bytes]
        await b.transport.forget(set())  # its connections close; the next call opens one
        await exchange(b.transport, b.state, a.callee)
        assert len(signed) == len(checked) == 2

        assert a.state.authority is not None
        revocations, envelope = revoke(a.state.authority, None, b_id, time.time())
        assert a.state.set_revocations(revocations, envelope)
        with pytest.raises(PeerError, match="revoked"):
            await exchange(b.transport, b.state, a.callee)
        assert len(signed) == 3  # the unsigned call refused, signed once more
    finally:
        for p in (a, b):
            await p.close()


async def test_a_peer_that_does_not_vouch_gets_every_call_signed(
        tmp_path: Path, session: HttpPeerTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer whose answers never say the connection is the caller's (a node from before
    this was added) gets a signature on every call, as it expects."""
    a = await _founder(tmp_path)
    b = await _joiner(tmp_path, "b", session, _invite(a))
    monkeypatch.setattr(peer_api, "H_BOUND", "x-something-else")  # A never says it
    signed = _signatures(b.transport)
    try:
        for _ in range(3):
            await exchange(b.transport, b.state, a.callee)
        assert signed == ["/mesh/gossip"] * 3
    finally:
        for p in (a, b):
            await p.close()

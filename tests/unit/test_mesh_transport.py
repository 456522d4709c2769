"""Signed peer requests (membership, freshness, replays) and TLS pinned to the node key."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from covey.mesh.identity import node_id_for
from covey.mesh.sealed import public_bytes
from covey.mesh.transport import (
    H_NODE,
    H_SIG,
    H_TIME,
    PeerRefused,
    RequestVerifier,
    sign_request,
    tls_identity,
)

MESH = "mtestmesh0000000"
NOW = 1_800_000_000.0
BODY = b'{"messages": []}'


ME = "cd" * 32  # the verifying node's TLS fingerprint: the audience of requests to it


def _verifier(members: set[str], **kw: object) -> RequestVerifier:
    return RequestVerifier(MESH, lambda node_id, key, now: node_id in members, ME,
                           **kw)  # type: ignore[arg-type]


def _signed(key: Ed25519PrivateKey, **kw: object) -> dict[str, str]:
    args: dict[str, object] = {"mesh_id": MESH, "audience": ME, "method": "POST",
                               "path": "/mesh/chat", "body": BODY, "now": NOW}
    args.update(kw)
    return sign_request(key, **args)  # type: ignore[arg-type]


def _refusal(verifier: RequestVerifier, headers: dict[str, str], *, method: str = "POST",
             path: str = "/mesh/chat", body: bytes = BODY, now: float = NOW) -> str:
    with pytest.raises(PeerRefused) as info:
        verifier.verify(method, path, headers, body, now)
    return info.value.reason


def test_signed_request_accepted_once() -> None:
    key = Ed25519PrivateKey.generate()
    node_id = node_id_for(public_bytes(key))
    verifier = _verifier({node_id})
    headers = _signed(key)
    assert verifier.verify("POST", "/mesh/chat", headers, BODY, NOW + 1) == node_id
    assert _refusal(verifier, headers, now=NOW + 2) == "replay"


def test_refusals() -> None:
    key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    verifier = _verifier({node_id_for(public_bytes(key))})
    assert _refusal(verifier, {}) == "unsigned"
    assert _refusal(verifier, _signed(stranger)) == "not_member"
    assert _refusal(verifier, _signed(key, mesh_id="mothermesh000000")) == "bad_signature"
    assert _refusal(verifier, _signed(key), body=b"{}") == "bad_signature"
    assert _refusal(verifier, _signed(key), path="/mesh/admin") == "bad_signature"
    assert _refusal(verifier, _signed(key), method="GET") == "bad_signature"
    assert _refusal(verifier, _signed(key, now=NOW - 31)) == "stale"
    assert _refusal(verifier, _signed(key, now=NOW + 31)) == "stale"
    claimed = {**_signed(stranger), H_NODE: node_id_for(public_bytes(key))}
    assert _refusal(verifier, claimed) == "wrong_key"
    assert _refusal(verifier, {**_signed(key), H_SIG: "!!"}) == "malformed"
    assert _refusal(verifier, {**_signed(key), H_SIG: "A" * 500}) == "malformed"
    forwarded = {**_signed(stranger), "x-forwarded-for": "127.0.0.1"}
    assert _refusal(verifier, forwarded) == "not_member"


def test_a_request_for_another_node_is_refused() -> None:
    """A member that received a signed request cannot replay it to a third node: the
    audience (the receiver's TLS fingerprint) is signed."""
    key = Ed25519PrivateKey.generate()
    verifier = _verifier({node_id_for(public_bytes(key))})
    assert _refusal(verifier, _signed(key, audience="ef" * 32)) == "bad_signature"


@pytest.mark.parametrize("timestamp", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_a_non_finite_request_time_is_refused(timestamp: str) -> None:
    """NaN compares false with everything: it passed the freshness window, so a captured
    request could be replayed any time its nonce was no longer remembered."""
    key = Ed25519PrivateKey.generate()
    verifier = _verifier({node_id_for(public_bytes(key))})
    headers = {**_signed(key), H_TIME: timestamp}
    assert _refusal(verifier, headers) == "malformed"


def test_live_nonces_are_never_evicted() -> None:
    """A full replay cache refuses new requests (503, retry) instead of forgetting a nonce
    whose request is still fresh: forgetting it would let that request be replayed."""
    key = Ed25519PrivateKey.generate()
    verifier = _verifier({node_id_for(public_bytes(key))}, max_nonces=2)
    first = _signed(key)
    verifier.verify("POST", "/mesh/chat", first, BODY, NOW)
    verifier.verify("POST", "/mesh/chat", _signed(key), BODY, NOW)
    with pytest.raises(PeerRefused) as full:
        verifier.verify("POST", "/mesh/chat", _signed(key), BODY, NOW + 1)
    assert full.value.reason == "busy" and full.value.status == 503
    assert _refusal(verifier, first, now=NOW + 2) == "replay"
    # Once the first requests could no longer pass the freshness check, room comes back.
    later = _signed(key, now=NOW + 61)
    assert verifier.verify("POST", "/mesh/chat", later, BODY, NOW + 61)


class _Connection:
    """Stands for a TLS connection's SSLObject (weakly referenced by the verifier)."""


def _check(verifier: RequestVerifier, headers: dict[str, str], connection: object | None,
           *, body: bytes = BODY, now: float = NOW) -> str:
    return verifier.check(verifier.claim(headers, now, connection=connection), "POST",
                          "/mesh/chat", body, now, connection=connection)


def test_a_connection_vouches_for_its_verified_node_only() -> None:
    """After one request from a node verifies on a TLS connection, that node's later requests
    on it are not verified again (TLS protects their bytes), while membership and freshness
    still are; its signature carries no weight anywhere else, nor for any other node."""
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    members = {node_id_for(public_bytes(key)), node_id_for(public_bytes(other))}
    verifier = _verifier(members)
    kept, fresh = _Connection(), _Connection()
    forged = {**_signed(key), H_SIG: _signed(key, body=b"{}")[H_SIG]}  # signs another body

    with pytest.raises(PeerRefused, match="does not verify"):
        _check(verifier, forged, kept)  # a failed check binds nothing
    assert _check(verifier, _signed(key), kept) == node_id_for(public_bytes(key))
    assert _check(verifier, forged, kept) == node_id_for(public_bytes(key))
    for connection in (fresh, None):  # elsewhere the same forgery is what it is
        with pytest.raises(PeerRefused, match="does not verify"):
            _check(verifier, forged, connection)
    other_forged = {**_signed(other), H_SIG: _signed(other, body=b"{}")[H_SIG]}
    with pytest.raises(PeerRefused, match="does not verify"):
        _check(verifier, other_forged, kept)  # another node's claim on it: checked in full
    # A verified request of another node on it does not take the connection over.
    assert _check(verifier, _signed(other), kept) == node_id_for(public_bytes(other))
    assert _check(verifier, forged, kept) == node_id_for(public_bytes(key))
    with pytest.raises(PeerRefused) as stale:
        _check(verifier, _signed(key, now=NOW - 31), kept)
    assert stale.value.reason == "stale"
    members.discard(node_id_for(public_bytes(key)))  # revoked: refused on it at once
    with pytest.raises(PeerRefused) as revoked:
        _check(verifier, _signed(key), kept)
    assert revoked.value.reason == "not_member"


def test_an_unsigned_request_is_its_node_s_only_on_its_bound_connection() -> None:
    """Unsigned, a request names its node; it is taken as that node's only on a TLS connection
    where a verified request of that node came first, and only while it is a member."""
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key_id, other_id = (node_id_for(public_bytes(k)) for k in (key, other))
    members = {key_id, other_id}
    verifier = _verifier(members)
    kept, fresh = _Connection(), _Connection()
    unsigned = {H_NODE: key_id}

    for connection in (kept, fresh, None):  # nothing bound yet: refused everywhere
        with pytest.raises(PeerRefused) as refused:
            verifier.claim(unsigned, NOW, connection=connection)
        assert refused.value.reason == "unsigned"
    assert not verifier.vouches(kept, key_id)
    _check(verifier, _signed(key), kept)
    assert verifier.vouches(kept, key_id) and not verifier.vouches(kept, other_id)
    assert _check(verifier, unsigned, kept) == key_id
    assert _check(verifier, unsigned, kept, now=NOW + 3600) == key_id  # the channel is live
    for connection, headers in ((fresh, unsigned), (None, unsigned), (kept, {H_NODE: other_id}),
                                (kept, {})):
        with pytest.raises(PeerRefused) as refused:
            verifier.claim(headers, NOW, connection=connection)
        assert refused.value.reason == "unsigned"
    members.discard(key_id)
    with pytest.raises(PeerRefused) as revoked:
        verifier.claim(unsigned, NOW, connection=kept)
    assert revoked.value.reason == "not_member"


def test_a_closed_connection_is_forgotten() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = _verifier({node_id_for(public_bytes(key))})
    connection = _Connection()
    _check(verifier, _signed(key), connection)
    assert len(verifier._bound) == 1
    del connection
    assert len(verifier._bound) == 0


def test_membership_is_checked_from_the_headers_alone() -> None:
    """A stranger is refused before the body is read (claim() takes no body)."""
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(PeerRefused) as refused:
        _verifier(set()).claim(_signed(stranger), NOW)
    assert refused.value.reason == "not_member"


def test_tls_identity_is_stable(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    first = tls_identity(key, tmp_path)
    assert tls_identity(key, tmp_path) == first
    assert (first.key_path.stat().st_mode & 0o777) == 0o600


# Was a bug: after node.key was deleted (the README's fix for a copied data dir), the node
# made a new key but kept serving the old tls.crt, whose key is the old node's: the TLS
# identity and the node identity disagreed (and two copies still shared one TLS key).
def test_tls_identity_follows_a_new_node_key(tmp_path: Path) -> None:
    old = tls_identity(Ed25519PrivateKey.generate(), tmp_path)
    key = Ed25519PrivateKey.generate()
    new = tls_identity(key, tmp_path)
    assert new.fingerprint != old.fingerprint
    cert = x509.load_pem_x509_certificate(new.cert_path.read_bytes())
    assert cert.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == public_bytes(key)
    served = load_pem_private_key(new.key_path.read_bytes(), None)
    assert served.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == public_bytes(key)
    assert tls_identity(key, tmp_path) == new  # and kept from then on


def test_tls_identity_replaces_a_damaged_certificate(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    first = tls_identity(key, tmp_path)
    first.cert_path.write_text("not a certificate")
    again = tls_identity(key, tmp_path)
    assert again.cert_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert len(again.fingerprint) == 64


async def test_tls_pinned_to_the_fingerprint(tmp_path: Path) -> None:
    """A real TLS handshake on loopback: the pinned fingerprint passes, any other fails."""
    ident = tls_identity(Ed25519PrivateKey.generate(), tmp_path)
    context = ident.server_context()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        async with aiohttp.ClientSession() as session:
            pinned = aiohttp.Fingerprint(bytes.fromhex(ident.fingerprint))
            async with session.get(url, ssl=pinned) as r:
                assert await r.text() == "hello"
            wrong = aiohttp.Fingerprint(bytes(32))
            with pytest.raises(aiohttp.ServerFingerprintMismatch):
                async with session.get(url, ssl=wrong):
                    pass
    finally:
        await runner.cleanup()

"""Certificate renewal: when to renew (pure), who may get a new certificate, and how the
creator's node proves it holds the authority."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.mesh import identity
from covey.mesh.membership import (
    Authority,
    MemberCert,
    MembershipError,
    is_authority_node,
    issue_cert,
    prove_authority,
    revoke,
    verify_cert,
)
from covey.mesh.renewal import grant, needs_renewal, renew_locally, renewal_request
from covey.mesh.sealed import b64d, b64e
from covey.mesh.state import MeshInfo, MeshState

NOW = 1_800_000_000.0
DAY = 86400.0


def _cert(issued: float, expires: float) -> MemberCert:
    return MemberCert(mesh_id="m", node_id="n", public_key="k", issued_at=issued,
                      expires_at=expires)


@pytest.mark.parametrize(("now", "renew"), [
    (NOW, False),
    (NOW + 200 * DAY, False),
    (NOW + 243 * DAY, False),  # 122 days left of 365: more than a third
    (NOW + 244 * DAY, True),  # 121 days left: less than a third
    (NOW + 364 * DAY, True),
    (NOW + 400 * DAY, True),  # expired: renew (the caller finds out it cannot)
])
def test_renew_when_a_third_is_left(now: float, renew: bool) -> None:
    assert needs_renewal(_cert(NOW, NOW + 365 * DAY), now) is renew


def test_renew_scales_with_a_short_validity() -> None:
    assert not needs_renewal(_cert(NOW, NOW + 6), NOW + 3.9)
    assert needs_renewal(_cert(NOW, NOW + 6), NOW + 4.1)


def test_authority_proof() -> None:
    authority = Authority(Ed25519PrivateKey.generate())
    other = Authority(Ed25519PrivateKey.generate())
    proof = prove_authority(authority, "node-a")
    kw = {"mesh_id": authority.mesh_id, "authority_public_key": authority.public_key}
    assert is_authority_node(proof, node_id="node-a", **kw)  # type: ignore[arg-type]
    assert not is_authority_node(proof, node_id="node-b", **kw)  # type: ignore[arg-type]
    assert not is_authority_node(prove_authority(other, "node-a"), node_id="node-a",
                                 **kw)  # type: ignore[arg-type]
    for junk in ("", "!!", "A" * 200):
        assert not is_authority_node(junk, node_id="node-a", **kw)  # type: ignore[arg-type]


def _mesh(tmp_path: Path) -> tuple[MeshState, MeshState]:
    """(the creator's state, a member's state), the member's cert valid for 6 s."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = MeshState.load_or_create(tmp_path / "a", identity.load_or_create(tmp_path / "a"),
                                 NOW, cert_validity_s=6)
    assert a.authority is not None
    b_id = identity.load_or_create(tmp_path / "b")
    b = MeshState.save(tmp_path / "b", b_id, a.info,
                       issue_cert(a.authority, b_id.public_bytes, NOW, 6))
    return a, b


def test_creator_grants_a_fresh_certificate(tmp_path: Path) -> None:
    a, b = _mesh(tmp_path)
    cert = grant(a, renewal_request(b, NOW + 4.5), NOW + 4.5)
    fresh = b.set_cert(cert, NOW + 4.5)
    assert fresh.expires_at == NOW + 10.5 and not needs_renewal(fresh, NOW + 5)
    assert MeshState.load(b.data_dir, b.identity).cert == cert  # type: ignore[union-attr]
    old = renew_locally(a, NOW + 5)
    assert old.expires_at == NOW + 11


@pytest.mark.parametrize("why", ["stale", "revoked", "expired", "tampered", "other_mesh",
                                 "not_creator"])
def test_renewal_refusals(tmp_path: Path, why: str) -> None:
    a, b = _mesh(tmp_path)
    now = NOW + 4.5
    request = renewal_request(b, now)
    assert a.authority is not None
    if why == "stale":
        request = renewal_request(b, now - 120)
    elif why == "revoked":
        lst, env = revoke(a.authority, None, b.identity.node_id, now)
        a.set_revocations(lst, env)
    elif why == "expired":
        now = NOW + 7
        request = renewal_request(b, now)
    elif why == "tampered":
        raw = bytearray(b64d(request))
        raw[len(raw) // 2] ^= 1
        request = b64e(bytes(raw))
    elif why == "other_mesh":
        (tmp_path / "x").mkdir()
        x = MeshState.load_or_create(tmp_path / "x", b.identity, NOW)
        request = renewal_request(MeshState(b.data_dir, b.identity, x.info, x.cert), now)
    elif why == "not_creator":
        a = b
    with pytest.raises(MembershipError):
        grant(a, request, now)


def test_a_cert_for_another_node_is_not_adopted(tmp_path: Path) -> None:
    a, b = _mesh(tmp_path)
    assert a.authority is not None
    with pytest.raises(MembershipError):
        b.set_cert(issue_cert(a.authority, a.identity.public_bytes, NOW, 6), NOW)
    assert verify_cert(b.cert, mesh_id=a.info.mesh_id,
                       authority_public_key=a.info.authority_public_key, now=NOW)
    assert isinstance(a.info, MeshInfo)

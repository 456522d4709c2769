"""Member certificates renew themselves before they expire, so a mesh outlives them.

A member whose certificate has less than a third of its validity left asks the mesh's
creator for a new one (`POST /mesh/renew`): directly at the creator's addresses, or through
any member, which forwards it like a join. The request is sealed by the member's own node
key and carries its current certificate, so it proves who asks wherever it travels; the
creator re-issues for members that hold a valid certificate and are not revoked. The
creator renews its own certificate locally.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from covey.mesh.identity import node_id_for
from covey.mesh.membership import RENEW_DOMAIN, MemberCert, MembershipError, issue_cert
from covey.mesh.sealed import SealError, b64d, b64e, check, seal, unseal
from covey.mesh.state import MeshState

RENEW_FRESH_S = 60.0  # a renewal request older (or newer) than this is refused
MAX_REQUEST = 16 * 1024


def needs_renewal(cert: MemberCert, now: float) -> bool:
    """Pure: renew when less than a third of the certificate's validity is left."""
    life = cert.expires_at - cert.issued_at
    return cert.expires_at - now < life / 3


class RenewalRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    mesh_id: str = Field(min_length=1, max_length=64)
    node_id: str = Field(min_length=1, max_length=64)
    public_key: str = Field(min_length=1, max_length=64)
    cert: str = Field(min_length=1, max_length=8192)  # base64url, the current certificate
    issued_at: float


def renewal_request(state: MeshState, now: float) -> str:
    """This node's request for a new certificate, sealed with its node key (base64url)."""
    body = RenewalRequest(mesh_id=state.info.mesh_id, node_id=state.identity.node_id,
                          public_key=b64e(state.identity.public_bytes), cert=b64e(state.cert),
                          issued_at=now)
    return b64e(seal(RENEW_DOMAIN, body.model_dump(mode="json"), state.identity.key))


def open_request(state: MeshState, request: str, now: float) -> tuple[str, bytes]:
    """(node id, public key) of a valid renewal request for this mesh; MembershipError
    otherwise. Checks the requester's signature, freshness, and its current certificate."""
    try:
        raw, sig, body = unseal(RENEW_DOMAIN, b64d(request[:MAX_REQUEST]), MAX_REQUEST)
        req = RenewalRequest.model_validate(body)
        key = b64d(req.public_key)
        check(RENEW_DOMAIN, raw, sig, key)
        cert = b64d(req.cert)
    except (SealError, ValidationError) as exc:
        raise MembershipError("malformed", "renewal request refused: damaged or not "
                                           "signed by its node") from exc
    if node_id_for(key) != req.node_id or req.mesh_id != state.info.mesh_id:
        raise MembershipError("wrong_key", "renewal request for another node or mesh")
    if abs(now - req.issued_at) > RENEW_FRESH_S:
        raise MembershipError("expired", "renewal request is stale; check the clocks")
    if not state.admit_cert(cert, now) or not state.is_member(req.node_id, key, now):
        raise MembershipError("not_member", f"node {req.node_id} holds no valid certificate "
                                            "(or was revoked): it must join again")
    return req.node_id, key


def grant(state: MeshState, request: str, now: float) -> bytes:
    """On the creator's node: a new certificate for the member that sealed `request`."""
    if state.authority is None:
        raise MembershipError("not_authority", "only the mesh's creator renews certificates")
    _, key = open_request(state, request, now)
    return issue_cert(state.authority, key, now, state.cert_validity_s)


def renew_locally(state: MeshState, now: float) -> MemberCert:
    """On the creator's node: renew its own certificate."""
    if state.authority is None:
        raise MembershipError("not_authority", "only the mesh's creator renews certificates")
    return state.set_cert(issue_cert(state.authority, state.identity.public_bytes, now,
                                     state.cert_validity_s), now)

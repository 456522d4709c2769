"""Calling peers: joining a mesh by invite, and one push-pull gossip exchange.

Both go through the peer transport (`mesh/peer_transport.py`): pinned to the peer's TLS
fingerprint (from its signed record, or from the invite for the first contact), signed with
this node's key (all but the join), answers read with a cap.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from covey.mesh.gossip import MAX_RECORDS_PER_EXCHANGE, plan_exchange
from covey.mesh.identity import Identity
from covey.mesh.membership import Invite, MembershipError
from covey.mesh.peer_api import apply_records
from covey.mesh.peer_transport import Peer, PeerError, PeerTransport, Signer, call_json
from covey.mesh.sealed import SealError, b64d, b64e
from covey.mesh.state import MeshInfo, MeshState
from covey.mesh.transport import H_CERT, sign_request

CALL_TIMEOUT_S = 10.0


def signer_for(state: MeshState, clock: Callable[[], float] = time.time) -> Signer:
    """The transport's signer for this node: signs a POST for its audience (the callee's
    TLS fingerprint) and attaches this node's member certificate."""

    def sign(audience: str, path: str, body: bytes) -> dict[str, str]:
        headers = sign_request(state.identity.key, mesh_id=state.info.mesh_id,
                               audience=audience, method="POST", path=path, body=body,
                               now=clock())
        return {**headers, H_CERT: b64e(state.cert)}

    return sign


async def join(transport: PeerTransport, invite: Invite, identity: Identity,
               data_dir: Path, now: float, timeout_s: float = CALL_TIMEOUT_S) -> MeshState:
    """Redeem `invite` at the inviting node; save and return the membership it grants."""
    inviter = Peer(invite.tls_fingerprint, (invite.address,), name=invite.address)
    answer = await call_json(transport, inviter, "/mesh/join", {
        "invite_id": invite.invite_id, "secret": invite.secret,
        "public_key": b64e(identity.public_bytes)}, timeout_s, signed=False)
    if answer.get("mesh_id") != invite.mesh_id or answer.get(
            "authority_public_key") != invite.authority_public_key:
        raise MembershipError("wrong_mesh", "the inviting node answered for another mesh")
    info = MeshInfo(invite.mesh_id, b64d(invite.authority_public_key))
    state = MeshState.save(data_dir, identity, info, b64d(str(answer["cert"])))
    apply_records(state, list(answer.get("records") or []), now)
    return state


async def exchange(transport: PeerTransport, state: MeshState, peer: Peer,
                   clock: Callable[[], float] = time.time,
                   timeout_s: float = CALL_TIMEOUT_S) -> int:
    """One push-pull round with a peer. Returns how many new records this node learned."""
    try:
        answer = await call_json(transport, peer, "/mesh/gossip",
                                 {"digest": state.table.digest()}, timeout_s)
    except PeerError as exc:
        # A member refusing us may hand over the revocation list that names us: it is
        # authority-signed, so believing it is safe, and it is how a revoked node learns why.
        revocations = exc.answer.get("revocations")
        if isinstance(revocations, str) and len(revocations) <= 512 * 1024:
            with contextlib.suppress(SealError):
                state.learn_revocations(b64d(revocations))
        raise
    records_in = answer.get("records")
    learned = apply_records(state, list(records_in)[:MAX_RECORDS_PER_EXCHANGE]
                            if isinstance(records_in, list) else [], clock())
    theirs = answer.get("digest")
    if isinstance(theirs, dict):
        mine = theirs.get(state.identity.node_id)
        if isinstance(mine, int):
            state.check_own_seq(mine, f"a record held by {peer.label}")
        send, _ = plan_exchange(state.table.digest(),
                                {str(k): v for k, v in theirs.items() if isinstance(v, int)},
                                MAX_RECORDS_PER_EXCHANGE)
        records = [b64e(h.envelope) for nid in send if (h := state.table.get(nid))]
        if records:
            await call_json(transport, peer, "/mesh/records", {"records": records}, timeout_s)
    return learned

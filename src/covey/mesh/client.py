"""Calling peers: joining a mesh by invite, one push-pull gossip exchange, and the calls
that reach the mesh's creator (invites, forwarded joins, renewals).

All go through the peer transport (`mesh/peer_transport.py`): pinned to the peer's TLS
fingerprint (from its signed record, or from the invite for the first contact), signed with
this node's key (all but the join), answers read with a cap.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from covey.mesh.gossip import MAX_RECORDS_PER_EXCHANGE, plan_exchange
from covey.mesh.identity import Identity
from covey.mesh.membership import Contact, Invite, MembershipError
from covey.mesh.peer_transport import Peer, PeerError, PeerTransport, Signer, call_json
from covey.mesh.sealed import SealError, b64d, b64e
from covey.mesh.state import MeshInfo, MeshState, apply_records
from covey.mesh.transport import H_CERT, sign_request

CALL_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 20.0  # per contact, once connected: it may forward the join to the creator
JOIN_TOTAL_S = 60.0  # every contact together
AUTHORITY_TIMEOUT_S = 15.0  # calls to the mesh's creator, made on a user's behalf
# Refusals of the invite itself: the same at every contact, so trying more is pointless.
INVITE_REFUSALS = frozenset({"used", "expired", "unknown_invite", "malformed"})


def signer_for(state: MeshState, clock: Callable[[], float] = time.time) -> Signer:
    """The transport's signer for this node: signs a POST for its audience (the callee's
    TLS fingerprint) and attaches this node's member certificate."""

    def sign(audience: str, path: str, body: bytes) -> dict[str, str]:
        headers = sign_request(state.identity.key, mesh_id=state.info.mesh_id,
                               audience=audience, method="POST", path=path, body=body,
                               now=clock())
        return {**headers, H_CERT: b64e(state.cert)}

    return sign


async def redeem(transport: PeerTransport, invite: Invite, identity: Identity,
                 data_dir: Path, now: float, clock: Callable[[], float] = time.monotonic
                 ) -> tuple[MeshState, Contact]:
    """Redeem `invite` at its contacts, in order (the transport gives each a short connect
    timeout), until one answers; save the membership. Returns it and the contact that worked.

    A contact that refuses the invite itself (used, expired, unknown) ends the attempt:
    another member would only forward it to the same creator. PeerError names every address
    tried and why it failed."""
    payload = {"invite_id": invite.invite_id, "secret": invite.secret,
               "public_key": b64e(identity.public_bytes)}
    deadline = clock() + JOIN_TOTAL_S
    tried: list[str] = []
    for contact in invite.reachable():
        if clock() > deadline:
            tried.append(f"{contact.address}: not tried (out of time)")
            continue
        peer = Peer(contact.fingerprint, (contact.address,), name=contact.address)
        try:
            answer = await call_json(transport, peer, "/mesh/join", payload, JOIN_TIMEOUT_S,
                                     signed=False)
        except PeerError as exc:
            if exc.code in INVITE_REFUSALS:
                raise
            tried.append(str(exc))
            continue
        if answer.get("mesh_id") != invite.mesh_id or answer.get(
                "authority_public_key") != invite.authority_public_key:
            raise MembershipError("wrong_mesh", f"{contact.address} answered for another mesh")
        info = MeshInfo(invite.mesh_id, b64d(invite.authority_public_key))
        state = MeshState.save(data_dir, identity, info, b64d(str(answer.get("cert", ""))))
        records = answer.get("records")
        apply_records(state, list(records) if isinstance(records, list) else [], now)
        return state, contact
    raise PeerError("connect", "no address in the invite answered: " + "; ".join(tried))


async def request_invite(transport: PeerTransport, creator: Peer, ttl_s: float,
                         contacts: list[Contact]) -> str:
    """Ask the creator's node to mint an invite whose first contacts are this node's
    (`contacts`). Returns the invite token (not yet parsed)."""
    answer = await call_json(transport, creator, "/mesh/invite", {
        "ttl_s": ttl_s, "contacts": [c.model_dump() for c in contacts]}, AUTHORITY_TIMEOUT_S)
    token = answer.get("invite")
    if not isinstance(token, str):
        raise PeerError("malformed", f"{creator.label} answered without an invite")
    return token


async def forward_join(transport: PeerTransport, creator: Peer,
                       payload: dict[str, Any]) -> dict[str, Any]:
    """Pass a joiner's (unsigned, secret-protected) join on to the creator's node, signed as
    this member. Returns the creator's answer, unchecked."""
    return await call_json(transport, creator, "/mesh/join", payload, AUTHORITY_TIMEOUT_S)


async def request_renewal(transport: PeerTransport, peer: Peer, request: str) -> bytes:
    """Pass a renewal request (sealed by the member that needs it, maybe not this node) to
    `peer`: the creator, or a member that forwards it. Returns the new cert envelope,
    unchecked."""
    answer = await call_json(transport, peer, "/mesh/renew", {"request": request},
                             AUTHORITY_TIMEOUT_S)
    cert = answer.get("cert")
    if not isinstance(cert, str) or len(cert) > 8192:
        raise PeerError("malformed", f"{peer.label} answered the renewal without a certificate")
    try:
        return b64d(cert)
    except SealError as exc:
        raise PeerError("malformed", f"{peer.label} answered with a damaged certificate"
                        ) from exc


async def exchange(transport: PeerTransport, state: MeshState, peer: Peer,
                   clock: Callable[[], float] = time.time,
                   timeout_s: float = CALL_TIMEOUT_S) -> int:
    """One push-pull round with a peer. Returns how many new records this node learned.

    This node's own record rides along with the digest when the peer did not hold it at the
    last exchange: it changes most often, and pushed after the answer it cost a second
    signed call every few rounds. Other records the peer lacks follow in that second call."""
    own = state.table.get(state.identity.node_id)
    payload: dict[str, Any] = {"digest": state.table.digest()}
    if own is not None and state.held_by.get(peer.fingerprint) != own.record.seq:
        payload["records"] = [b64e(own.envelope)]
    try:
        answer = await call_json(transport, peer, "/mesh/gossip", payload, timeout_s)
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
    held = answer.get("held")  # the peer's copy of our record before this push
    if isinstance(held, int):
        state.check_own_seq(held, f"a record held by {peer.label}")
    theirs = answer.get("digest")
    if isinstance(theirs, dict):
        mine = theirs.get(state.identity.node_id)
        if isinstance(mine, int):
            state.check_own_seq(mine, f"a record held by {peer.label}")
            state.peer_holds(peer.fingerprint, mine)
        send, _ = plan_exchange(state.table.digest(),
                                {str(k): v for k, v in theirs.items() if isinstance(v, int)},
                                MAX_RECORDS_PER_EXCHANGE)
        records = [b64e(h.envelope) for nid in send if (h := state.table.get(nid))]
        if records:
            await call_json(transport, peer, "/mesh/records", {"records": records}, timeout_s)
            if own is not None and state.identity.node_id in send:
                state.peer_holds(peer.fingerprint, own.record.seq)
        if peer.node_id:  # the peer now holds all this node holds, unless a list was cut
            state.note_synced(peer.node_id, time.monotonic(),
                              complete=len(send) < MAX_RECORDS_PER_EXCHANGE)
    return learned

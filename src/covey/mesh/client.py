"""Calling peers: joining a mesh by invite, and one push-pull gossip exchange.

Every connection pins the peer's TLS fingerprint (from its signed record, or from the invite
for the first contact); every request but the join is signed with this node's key.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from covey.mesh.gossip import MAX_RECORDS_PER_EXCHANGE, plan_exchange
from covey.mesh.identity import Identity
from covey.mesh.membership import Contact, Invite, MembershipError
from covey.mesh.peer_api import apply_records
from covey.mesh.sealed import SealError, b64d, b64e
from covey.mesh.state import MeshInfo, MeshState
from covey.mesh.transport import H_CERT, sign_request

JOIN_CONNECT_S = 3.0  # per contact: an address that does not answer this fast is skipped
# per contact, once connected: the contact may forward the join to the mesh's creator
JOIN_TIMEOUT = aiohttp.ClientTimeout(total=20.0, sock_connect=JOIN_CONNECT_S)
JOIN_TOTAL_S = 60.0  # every contact together
# Refusals of the invite itself: the same at every contact, so trying more is pointless.
INVITE_REFUSALS = frozenset({"used", "expired", "unknown_invite", "malformed"})


class PeerUnreachable(Exception):
    """A peer did not answer, answered with an error, or presented the wrong TLS key.
    `answer` is the peer's decoded error body when it answered with one."""

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.answer = answer or {}


def _pin(fingerprint: str) -> aiohttp.Fingerprint:
    return aiohttp.Fingerprint(bytes.fromhex(fingerprint))


async def _post(session: aiohttp.ClientSession, url: str, fingerprint: str, body: bytes,
                headers: dict[str, str], limits: aiohttp.ClientTimeout | None = None) -> Any:
    try:
        async with session.post(url, data=body, ssl=_pin(fingerprint), headers={
                "Content-Type": "application/json", **headers},
                timeout=limits or session.timeout) as r:
            answer = await r.json(content_type=None)
            if r.status != 200:
                message = answer.get("error", {}).get("message") if isinstance(answer, dict) \
                    else None
                raise PeerUnreachable(f"{url} answered HTTP {r.status}: {message}",
                                      answer if isinstance(answer, dict) else None)
            return answer
    except aiohttp.ServerFingerprintMismatch as exc:
        raise PeerUnreachable(f"{url} presented a different TLS key than the one pinned: not "
                              "the same node, or a man in the middle") from exc
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise PeerUnreachable(f"{url}: {type(exc).__name__}: {exc}") from exc


def _refusal_code(exc: PeerUnreachable) -> str | None:
    error = exc.answer.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


async def join(session: aiohttp.ClientSession, invite: Invite, identity: Identity,
               data_dir: Path, now: float) -> MeshState:
    """Redeem `invite`; save and return the membership it grants (see `redeem`)."""
    state, _ = await redeem(session, invite, identity, data_dir, now)
    return state


async def redeem(session: aiohttp.ClientSession, invite: Invite, identity: Identity,
                 data_dir: Path, now: float, clock: Callable[[], float] = time.monotonic
                 ) -> tuple[MeshState, Contact]:
    """Redeem `invite` at its contacts, in order, each with a short connect timeout, until
    one answers; save the membership. Returns it and the contact that worked.

    A contact that refuses the invite itself (used, expired, unknown) ends the attempt:
    another member would only forward it to the same creator. PeerUnreachable names every
    address tried and why it failed."""
    body = json.dumps({"invite_id": invite.invite_id, "secret": invite.secret,
                       "public_key": b64e(identity.public_bytes)}).encode()
    deadline = clock() + JOIN_TOTAL_S
    tried: list[str] = []
    for contact in invite.reachable():
        if clock() > deadline:
            tried.append(f"{contact.address}: not tried (out of time)")
            continue
        try:
            answer = await _post(session, f"https://{contact.address}/mesh/join",
                                 contact.fingerprint, body, {}, JOIN_TIMEOUT)
        except PeerUnreachable as exc:
            if _refusal_code(exc) in INVITE_REFUSALS:
                raise
            tried.append(f"{contact.address}: {exc}")
            continue
        if answer.get("mesh_id") != invite.mesh_id or answer.get(
                "authority_public_key") != invite.authority_public_key:
            raise MembershipError("wrong_mesh", f"{contact.address} answered for another mesh")
        info = MeshInfo(invite.mesh_id, b64d(invite.authority_public_key))
        state = MeshState.save(data_dir, identity, info, b64d(str(answer["cert"])))
        apply_records(state, list(answer.get("records") or []), now)
        return state, contact
    raise PeerUnreachable("no address in the invite answered: " + "; ".join(tried))


async def exchange(session: aiohttp.ClientSession, state: MeshState, address: str,
                   fingerprint: str, clock: Callable[[], float] = time.time) -> int:
    """One push-pull round with a peer. Returns how many new records this node learned."""

    def signed(path: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        headers = sign_request(state.identity.key, mesh_id=state.info.mesh_id, method="POST",
                               path=path, body=body, now=clock())
        return body, {**headers, H_CERT: b64e(state.cert)}

    body, headers = signed("/mesh/gossip", {"digest": state.table.digest()})
    try:
        answer = await _post(session, f"https://{address}/mesh/gossip", fingerprint, body,
                             headers)
    except PeerUnreachable as exc:
        # A member refusing us may hand over the revocation list that names us: it is
        # authority-signed, so believing it is safe, and it is how a revoked node learns why.
        revocations = exc.answer.get("revocations")
        if isinstance(revocations, str) and len(revocations) <= 512 * 1024:
            with contextlib.suppress(SealError):
                state.learn_revocations(b64d(revocations))
        raise
    learned = apply_records(state, list(answer.get("records") or [])[:MAX_RECORDS_PER_EXCHANGE],
                            clock())
    theirs = answer.get("digest")
    if isinstance(theirs, dict):
        mine = theirs.get(state.identity.node_id)
        if isinstance(mine, int):
            state.check_own_seq(mine, f"a record held by {address}")
        send, _ = plan_exchange(state.table.digest(),
                                {str(k): v for k, v in theirs.items() if isinstance(v, int)},
                                MAX_RECORDS_PER_EXCHANGE)
        records = [b64e(h.envelope) for nid in send if (h := state.table.get(nid))]
        if records:
            body, headers = signed("/mesh/records", {"records": records})
            await _post(session, f"https://{address}/mesh/records", fingerprint, body, headers)
    return learned

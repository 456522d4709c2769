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
from covey.mesh.sealed import SealError, b64d, b64e
from covey.mesh.state import MeshInfo, MeshState, apply_records
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


def _signed(state: MeshState, path: str, body: bytes,
            clock: Callable[[], float] = time.time) -> dict[str, str]:
    """Headers that make `body` a signed member request from this node to `path`."""
    headers = sign_request(state.identity.key, mesh_id=state.info.mesh_id, method="POST",
                           path=path, body=body, now=clock())
    return {**headers, H_CERT: b64e(state.cert)}


# Calls to the mesh's creator: short, so a member asking on a user's behalf answers soon.
AUTHORITY_TIMEOUT = aiohttp.ClientTimeout(total=15.0, sock_connect=JOIN_CONNECT_S)


async def request_invite(session: aiohttp.ClientSession, state: MeshState, address: str,
                         fingerprint: str, ttl_s: float, contacts: list[Contact]) -> str:
    """Ask the authority node at `address` to mint an invite whose first contacts are this
    node's (`contacts`). Returns the invite token (not yet parsed)."""
    body = json.dumps({"ttl_s": ttl_s,
                       "contacts": [c.model_dump() for c in contacts]}).encode()
    answer = await _post(session, f"https://{address}/mesh/invite", fingerprint, body,
                         _signed(state, "/mesh/invite", body), AUTHORITY_TIMEOUT)
    token = answer.get("invite") if isinstance(answer, dict) else None
    if not isinstance(token, str):
        raise PeerUnreachable(f"{address} answered without an invite")
    return token


async def forward_join(session: aiohttp.ClientSession, state: MeshState, address: str,
                       fingerprint: str, body: bytes) -> dict[str, Any]:
    """Pass a joiner's (unsigned, secret-protected) join body on to the authority node at
    `address`, signed as this member. Returns the authority's answer, unchecked."""
    answer = await _post(session, f"https://{address}/mesh/join", fingerprint, body,
                         _signed(state, "/mesh/join", body), AUTHORITY_TIMEOUT)
    if not isinstance(answer, dict):
        raise PeerUnreachable(f"{address} answered the join with something else than JSON")
    return answer


async def request_renewal(session: aiohttp.ClientSession, state: MeshState, address: str,
                          fingerprint: str, request: str) -> bytes:
    """Pass a renewal request (sealed by the member that needs it, maybe not this node) to
    `address`: the authority, or a member that forwards it. Returns the new cert envelope,
    unchecked."""
    body = json.dumps({"request": request}).encode()
    answer = await _post(session, f"https://{address}/mesh/renew", fingerprint, body,
                         _signed(state, "/mesh/renew", body), AUTHORITY_TIMEOUT)
    cert = answer.get("cert") if isinstance(answer, dict) else None
    if not isinstance(cert, str) or len(cert) > 8192:
        raise PeerUnreachable(f"{address} answered the renewal without a certificate")
    try:
        return b64d(cert)
    except SealError as exc:
        raise PeerUnreachable(f"{address} answered with a damaged certificate") from exc


async def exchange(session: aiohttp.ClientSession, state: MeshState, address: str,
                   fingerprint: str, clock: Callable[[], float] = time.time) -> int:
    """One push-pull round with a peer. Returns how many new records this node learned."""

    def signed(path: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        return body, _signed(state, path, body, clock)

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

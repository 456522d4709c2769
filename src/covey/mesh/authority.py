"""Reaching the mesh's creator from any member: invites, joins and renewals.

Only the node that created the mesh holds the authority key, so only it can admit a member
or renew a certificate. Its record carries `authority_proof` (the authority key's signature
over the mesh id and its node id), so every member can tell which record is the creator's
and where it listens. A member asked for an invite, a join or a renewal passes the request on
to the creator, signed as itself, and relays the answer after checking it.

Errors: AuthorityOffline when the creator cannot be reached (names it and every address
tried); PeerError (kind 'http', with `answer`) when it answered with a refusal.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from covey.mesh import client
from covey.mesh.membership import Contact, MembershipError, verify_cert
from covey.mesh.peer_transport import Peer, PeerError, PeerTransport, peer_of
from covey.mesh.records import NodeRecord
from covey.mesh.sealed import SealError, b64d
from covey.mesh.state import MeshState

T = TypeVar("T")


class AuthorityOffline(Exception):
    """The mesh's creator could not be reached (or is not known yet)."""


def contacts_of(record: NodeRecord | None) -> list[Contact]:
    """The contacts a record offers (its addresses, pinned to its TLS key)."""
    if record is None or len(record.tls_fingerprint) != 64:
        return []
    return [Contact(address=a, fingerprint=record.tls_fingerprint) for a in record.addresses]


class AuthorityLink:
    def __init__(self, state: MeshState, transport: PeerTransport,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.transport = transport
        self.clock = clock

    def record(self) -> NodeRecord:
        record = self.state.authority_record(self.clock())
        if record is None:
            raise AuthorityOffline("the mesh's creator is not known to this node yet (no "
                                   "live record of it has reached this node): it must be "
                                   "online, and this node connected to the mesh")
        return record

    async def _call(self, what: str, call: Callable[[Peer], Awaitable[T]]) -> T:
        """`call(creator)`; the transport tries the creator's addresses in order. A refusal
        (the creator answered) is raised as is."""
        record = self.record()
        try:
            return await call(peer_of(record))
        except PeerError as exc:
            if exc.kind == "http":
                raise
            raise AuthorityOffline(
                f"the mesh's creator ({record.name or record.node_id} at "
                f"{', '.join(record.addresses) or 'no address'}) must be online to {what}: "
                f"{exc}") from exc

    async def invite(self, ttl_s: float, contacts: list[Contact]) -> str:
        return await self._call("admit a member", lambda creator: client.request_invite(
            self.transport, creator, ttl_s, contacts))

    async def join(self, payload: dict[str, Any], joiner_key: bytes) -> bytes:
        """Forward a join; return the certificate the creator issued, checked: it must be
        for `joiner_key` and this mesh before it is relayed to the joiner."""
        answer: dict[str, Any] = await self._call(
            "admit a member", lambda creator: client.forward_join(
                self.transport, creator, payload))
        try:
            cert = b64d(str(answer.get("cert", ""))[:8192])
            checked = verify_cert(cert, mesh_id=self.state.info.mesh_id,
                                  authority_public_key=self.state.info.authority_public_key,
                                  now=self.clock())
            if b64d(checked.public_key) != joiner_key:
                raise MembershipError("wrong_key", "certificate for another key")
        except (SealError, MembershipError) as exc:
            raise PeerError("malformed", f"the mesh's creator answered the join with an "
                                         f"unusable certificate: {exc}") from exc
        return cert

    async def renew(self, request: str) -> bytes:
        """Forward a renewal request; return the new certificate envelope (unchecked: the
        member that asked checks it for itself)."""
        return await self._call("renew a certificate", lambda creator:
                                client.request_renewal(self.transport, creator, request))

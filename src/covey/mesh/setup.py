"""Opening a node's mesh at start: load it, join one by invite, or create a new one.

The peers to contact first are the remembered ones (`mesh/remembered.py`), or the inviter
when joining.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from covey.errors import ConfigError
from covey.mesh import remembered
from covey.mesh.identity import Identity, load_or_create
from covey.mesh.membership import (
    Authority,
    Contact,
    InviteBook,
    MembershipError,
    load_authority,
    parse_invite,
    revoke,
    verify_revocations,
)
from covey.mesh.remembered import Bootstrap
from covey.mesh.sealed import SealError
from covey.mesh.state import CERT_TTL_S, REVOCATIONS_FILE, MeshState
from covey.mesh.transport import tls_identity


async def open_mesh(data_dir: Path, identity: Identity, join_token: str | None,
                    cert_validity_s: float = CERT_TTL_S) -> tuple[MeshState, list[Bootstrap]]:
    """(the mesh state, peers to contact first). Raises ConfigError when joining fails.
    `cert_validity_s`: how long certificates this node issues last (on the creator)."""
    state = MeshState.load(data_dir, identity)
    bootstrap = remembered.load(data_dir)
    if join_token:
        try:
            invite = parse_invite(join_token)
        except MembershipError as exc:
            raise ConfigError(f"--join: {exc}") from exc
        if state is not None and state.info.mesh_id != invite.mesh_id:
            raise ConfigError(f"--join: this data dir already belongs to mesh "
                              f"{state.info.mesh_id}; use another --data-dir to join "
                              f"mesh {invite.mesh_id}")
        contacts = invite.reachable()
        if state is None:
            # Here, not at the top: `covey invite` and `covey revoke` use this module too, and
            # the peer client (aiohttp) was a third of their start-up.
            from covey.mesh.client import redeem
            from covey.mesh.peer_transport import HttpPeerTransport, PeerError

            try:
                # The join is unsigned (not a member yet): the signer is never called.
                async with HttpPeerTransport(_unsigned) as transport:
                    state, worked = await redeem(transport, invite, identity, data_dir,
                                                 time.time())
            except (PeerError, MembershipError, SealError) as exc:
                raise ConfigError(f"--join: could not join mesh {invite.mesh_id}: {exc}"
                                  ) from exc
            # The contact that answered first: it is the likeliest to answer again.
            contacts = [worked, *(c for c in contacts if c != worked)]
        bootstrap = [Bootstrap(c.address, c.fingerprint) for c in contacts]
        remembered.save(data_dir, bootstrap)
    if state is None:
        state = MeshState.load_or_create(data_dir, identity, time.time(), cert_validity_s)
    state.cert_validity_s = cert_validity_s
    return state, bootstrap


def _unsigned(audience: str, path: str, body: bytes) -> dict[str, str]:
    raise AssertionError("the join is not signed")


def holds_authority(data_dir: Path) -> bool:
    return (data_dir / "authority.key").exists()


def mint_invite(data_dir: Path, ttl_s: float) -> str:
    """An invite token from the mesh's creator, for the node running from `data_dir`: its
    contacts are every address the running node advertises."""
    authority = load_authority(data_dir)
    if authority is None:
        raise ConfigError(f"{data_dir} holds no mesh authority: ask the running node for an "
                          "invite instead (`covey invite` does when the data dir is a member's)")
    try:
        runtime = json.loads((data_dir / "node.json").read_text())
        addresses = runtime.get("mesh_addresses") or [runtime["mesh"]]
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError("start the node first (`covey serve`): the invite carries the "
                          "addresses it listens on for peers") from exc
    fingerprint = tls_identity(load_or_create(data_dir).key, data_dir).fingerprint
    return mint_with(data_dir, authority,
                     [Contact(address=a, fingerprint=fingerprint) for a in addresses], ttl_s)


def mint_with(data_dir: Path, authority: Authority, contacts: list[Contact],
              ttl_s: float) -> str:
    """An invite from the creator's invite book with these contacts (tried in order)."""
    book = InviteBook(data_dir / "invites.db")
    try:
        return book.mint(authority, contacts, time.time(), ttl_s).token()
    finally:
        book.close()



def revoke_member(data_dir: Path, node_id: str) -> int:
    """Add `node_id` to the mesh's signed revocation list (authority only). The running node
    picks the file up and its gossip carries it to every member. Returns the list's seq."""
    authority = load_authority(data_dir)
    if authority is None:
        raise ConfigError(f"{data_dir} holds no mesh authority: only the node that created "
                          "the mesh can revoke members")
    path = data_dir / REVOCATIONS_FILE
    current = None
    if path.exists():
        try:
            current = verify_revocations(path.read_bytes(), mesh_id=authority.mesh_id,
                                         authority_public_key=authority.public_key)
        except MembershipError as exc:
            raise ConfigError(f"{path} is damaged ({exc}); remove it to start a new list"
                              ) from exc
    listed, envelope = revoke(authority, current, node_id, time.time())
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(envelope)
    tmp.replace(path)
    return listed.seq

"""Who belongs to a mesh: the authority, member certificates, single-use invites, revocations.

The node that creates a mesh holds its authority key; the mesh id is derived from the
authority's public key, so nobody can claim an existing mesh id with another key. A member
is a node holding a certificate (its key + the mesh id + an expiry) signed by the authority.
Invites carry a one-time secret; the authority keeps only its hash and marks it used before
issuing anything, so an invite admits at most one node.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from covey.mesh.addresses import MAX_ADDRESS_CHARS, MAX_ADDRESSES, check_address
from covey.mesh.identity import node_id_for
from covey.mesh.sealed import SealError, b64d, b64e, check, public_bytes, seal, unseal

CERT_DOMAIN = b"covey-cert-v1"
AUTHORITY_DOMAIN = b"covey-authority-node-v1"
RENEW_DOMAIN = b"covey-renew-v1"
REVOKE_DOMAIN = b"covey-revocations-v1"
INVITE_PREFIX = "covey-invite:"
MAX_INVITE = 8192  # one line, even with 16 contacts
MAX_ENVELOPE = 256 * 1024
MAX_REVOKED = 10_000


class MembershipError(Exception):
    """A certificate, invite or revocation list that must not be believed or honoured.
    `reason`: malformed, bad_signature, wrong_mesh, wrong_key, expired, unknown_invite, used."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def mesh_id_for(authority_public_key: bytes) -> str:
    digest = hashlib.sha256(b"covey-mesh\x00" + authority_public_key).digest()
    return "m" + base64.b32encode(digest).decode().lower()[:16]


@dataclass(frozen=True)
class Authority:
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.key)

    @property
    def mesh_id(self) -> str:
        return mesh_id_for(self.public_key)


def create_authority(data_dir: Path) -> Authority:
    """A new mesh: `authority.key` (0600, never overwritten) and `mesh.json` in `data_dir`."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(data_dir / "authority.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    authority = Authority(key)
    (data_dir / "mesh.json").write_text(json.dumps(
        {"mesh_id": authority.mesh_id, "authority_public_key": b64e(authority.public_key)}))
    return authority


def load_authority(data_dir: Path) -> Authority | None:
    path = data_dir / "authority.key"
    if not path.exists():
        return None
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 key")
    return Authority(key)


def _authority_message(mesh_id: str, node_id: str) -> bytes:
    return mesh_id.encode() + b"\x00" + node_id.encode()


def prove_authority(authority: Authority, node_id: str) -> str:
    """What the creator's node puts in its record so members can find it: the authority
    key's signature over (mesh id, node id), base64url."""
    return b64e(authority.key.sign(AUTHORITY_DOMAIN + b"\x00"
                                   + _authority_message(authority.mesh_id, node_id)))


def is_authority_node(proof: str, *, mesh_id: str, node_id: str,
                      authority_public_key: bytes) -> bool:
    """Does `proof` show that `node_id` runs the mesh's authority?"""
    if not proof or len(proof) > 128:
        return False
    try:
        check(AUTHORITY_DOMAIN, _authority_message(mesh_id, node_id), b64d(proof),
              authority_public_key)
    except SealError:
        return False
    return True


# --- certificates ---------------------------------------------------------------------

_Signed = TypeVar("_Signed", bound=BaseModel)


def _open_signed(domain: bytes, envelope: bytes, authority_public_key: bytes,
                 schema: type[_Signed], what: str) -> _Signed:
    """Check the authority's signature, then validate the body: the one way in for both."""
    try:
        raw, sig, body = unseal(domain, envelope, MAX_ENVELOPE)
        check(domain, raw, sig, authority_public_key)
        return schema.model_validate(body)
    except SealError as exc:
        raise MembershipError(exc.reason, f"{what} refused: {exc}") from exc
    except ValidationError as exc:
        raise MembershipError("malformed", f"{what} fields invalid") from exc



class MemberCert(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    mesh_id: str = Field(min_length=1, max_length=64)
    node_id: str = Field(min_length=1, max_length=64)
    public_key: str = Field(min_length=1, max_length=64)
    issued_at: float
    expires_at: float


def issue_cert(authority: Authority, node_public_key: bytes, now: float,
               ttl_s: float) -> bytes:
    cert = MemberCert(mesh_id=authority.mesh_id, node_id=node_id_for(node_public_key),
                      public_key=b64e(node_public_key), issued_at=now, expires_at=now + ttl_s)
    return seal(CERT_DOMAIN, cert.model_dump(mode="json"), authority.key)


def verify_cert(envelope: bytes, *, mesh_id: str, authority_public_key: bytes,
                now: float) -> MemberCert:
    cert = _open_signed(CERT_DOMAIN, envelope, authority_public_key, MemberCert,
                        "member certificate")
    if cert.mesh_id != mesh_id:
        raise MembershipError("wrong_mesh", f"certificate is for mesh {cert.mesh_id}")
    try:
        key = b64d(cert.public_key)
    except SealError as exc:
        raise MembershipError("malformed", "certificate key is not base64") from exc
    if node_id_for(key) != cert.node_id:
        raise MembershipError("wrong_key", "certificate key does not match its node id")
    if cert.expires_at <= now:
        raise MembershipError("expired", f"certificate of {cert.node_id} expired")
    return cert


# --- invites ---------------------------------------------------------------------------


Address = Annotated[str, Field(max_length=MAX_ADDRESS_CHARS), AfterValidator(check_address)]


class Contact(BaseModel):
    """Where a joiner may redeem an invite: a member's address and the TLS key to pin there."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    address: Address
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")  # hex SHA-256 of its TLS certificate


class Invite(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    mesh_id: str = Field(min_length=1, max_length=64)
    authority_public_key: str = Field(min_length=1, max_length=64)
    # The first contact, for readers older than `contacts`.
    address: Address
    invite_id: str = Field(min_length=1, max_length=64)
    secret: str = Field(min_length=1, max_length=128)
    expires_at: float
    tls_fingerprint: str = Field(default="", max_length=64)  # the first contact's
    # Every address to try, in order: the inviting member's, then the mesh creator's.
    contacts: list[Contact] = Field(default_factory=list, max_length=MAX_ADDRESSES)

    def reachable(self) -> list[Contact]:
        """The contacts to try in order (an invite from before `contacts` has one)."""
        return list(self.contacts) or [Contact.model_construct(
            address=self.address, fingerprint=self.tls_fingerprint)]

    def token(self) -> str:
        """One line, safe to paste into a terminal or a chat message."""
        return INVITE_PREFIX + b64e(json.dumps(self.model_dump(mode="json")).encode())


def unique_contacts(contacts: Sequence[Contact]) -> list[Contact]:
    """Each address once (the first wins), at most MAX_ADDRESSES."""
    seen: dict[str, Contact] = {}
    for c in contacts:
        seen.setdefault(c.address, c)
    return list(seen.values())[:MAX_ADDRESSES]


def parse_invite(token: str) -> Invite:
    token = token.strip()
    if not token.startswith(INVITE_PREFIX) or len(token) > MAX_INVITE:
        raise MembershipError("malformed", f"not a Covey invite (it starts with "
                                           f"{INVITE_PREFIX!r} and is one line)")
    try:
        invite = Invite.model_validate_json(b64d(token[len(INVITE_PREFIX):]))
        authority_key = b64d(invite.authority_public_key)
    except (SealError, ValidationError) as exc:
        raise MembershipError("malformed", "the invite is damaged; copy it again") from exc
    if mesh_id_for(authority_key) != invite.mesh_id:
        raise MembershipError("wrong_mesh", "the invite's mesh id does not match its authority "
                                            "key; it was edited")
    return invite


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class InviteBook:
    """The authority's record of invites it minted (only secret hashes), in SQLite."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS invites (id TEXT PRIMARY KEY, "
                         "secret_hash TEXT NOT NULL, expires_at REAL NOT NULL, "
                         "used_by TEXT)")

    def close(self) -> None:
        self._db.close()

    def mint(self, authority: Authority, contacts: str | Sequence[Contact], now: float,
             ttl_s: float, tls_fingerprint: str = "") -> Invite:
        """A new invite; `contacts` in the order a joiner should try them (a bare address
        with `tls_fingerprint` is one contact)."""
        if isinstance(contacts, str):  # the one-address form of older invites
            first, listed = Contact.model_construct(address=contacts,
                                                    fingerprint=tls_fingerprint), []
        else:
            listed = unique_contacts(contacts)
            if not listed:
                raise ValueError("an invite needs at least one address to redeem it at")
            first = listed[0]
        invite = Invite(mesh_id=authority.mesh_id,
                        authority_public_key=b64e(authority.public_key),
                        address=first.address, invite_id=secrets.token_hex(8),
                        secret=secrets.token_urlsafe(32), expires_at=now + ttl_s,
                        tls_fingerprint=first.fingerprint, contacts=listed)
        while len(invite.token()) > MAX_INVITE and len(invite.contacts) > 1:
            invite = invite.model_copy(update={"contacts": invite.contacts[:-1]})
        self._db.execute("INSERT INTO invites VALUES (?, ?, ?, NULL)",
                         (invite.invite_id, _hash_secret(invite.secret), invite.expires_at))
        return invite

    def redeem(self, authority: Authority, invite_id: str, secret: str,
               node_public_key: bytes, now: float, cert_ttl_s: float) -> bytes:
        """A member certificate for `node_public_key`, at most once per invite."""
        if len(node_public_key) != 32:  # checked before the invite is spent on it
            raise MembershipError("malformed", "the joining node's key is not an Ed25519 key")
        row = self._db.execute("SELECT secret_hash, expires_at, used_by FROM invites "
                               "WHERE id = ?", (invite_id,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash_secret(secret)):
            raise MembershipError("unknown_invite", "this invite was not issued by this mesh")
        if row[1] <= now:
            raise MembershipError("expired", "this invite has expired; ask for a new one")
        # Marked used in the same statement that checks it: two racing redemptions cannot both
        # see it unused.
        claimed = self._db.execute("UPDATE invites SET used_by = ? WHERE id = ? AND "
                                   "used_by IS NULL", (node_id_for(node_public_key), invite_id))
        if claimed.rowcount != 1:
            raise MembershipError("used", "this invite was already used; ask for a new one")
        return issue_cert(authority, node_public_key, now, cert_ttl_s)


# --- revocation --------------------------------------------------------------------------


class RevocationList(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    mesh_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    revoked: frozenset[str] = Field(default_factory=frozenset, max_length=MAX_REVOKED)
    issued_at: float = 0.0


def revoke(authority: Authority, current: RevocationList | None, node_id: str,
           now: float) -> tuple[RevocationList, bytes]:
    """The next list (seq + 1) with `node_id` added, and its signed envelope."""
    revoked = (current.revoked if current else frozenset()) | {node_id}
    nxt = RevocationList(mesh_id=authority.mesh_id, seq=(current.seq + 1 if current else 1),
                         revoked=revoked, issued_at=now)
    body = {**nxt.model_dump(mode="json"), "revoked": sorted(revoked)}
    return nxt, seal(REVOKE_DOMAIN, body, authority.key)


def verify_revocations(envelope: bytes, *, mesh_id: str,
                       authority_public_key: bytes) -> RevocationList:
    revocations = _open_signed(REVOKE_DOMAIN, envelope, authority_public_key, RevocationList,
                               "revocation list")
    if revocations.mesh_id != mesh_id:
        raise MembershipError("wrong_mesh", "revocation list is for another mesh")
    return revocations


def newer(a: RevocationList | None, b: RevocationList | None) -> RevocationList | None:
    """The list to keep: the higher sequence number wins (lists only ever grow)."""
    if a is None or (b is not None and b.seq > a.seq):
        return b
    return a


@dataclass
class Members:
    """The membership view every check uses: verified certificates minus revoked nodes."""

    certs: dict[str, MemberCert] = field(default_factory=dict)
    revocations: RevocationList | None = None

    def admit(self, cert: MemberCert) -> None:
        """Keep the certificate that lasts longest: an old one arriving late must not cut a
        renewed membership short."""
        held = self.certs.get(cert.node_id)
        if held is None or cert.expires_at > held.expires_at:
            self.certs[cert.node_id] = cert

    def is_member(self, node_id: str, public_key: bytes, now: float) -> bool:
        cert = self.certs.get(node_id)
        if cert is None or cert.expires_at <= now:
            return False
        if self.revocations is not None and node_id in self.revocations.revoked:
            return False
        return hmac.compare_digest(b64d(cert.public_key), public_key)

"""A node's view of its mesh: which mesh, its own certificate, members, and peers' records.

On disk (`<data_dir>`): `mesh.json` (mesh id, authority public key), `member.cert` (this
node's certificate envelope), `seq` (last record sequence number), and on the mesh's
creator `authority.key` and `invites.db`. Records carry their node's certificate, so any
member can check any other member without asking the authority.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covey.mesh.identity import Identity
from covey.mesh.membership import (
    Authority,
    MemberCert,
    Members,
    MembershipError,
    RevocationList,
    create_authority,
    is_authority_node,
    issue_cert,
    load_authority,
    newer,
    prove_authority,
    verify_cert,
    verify_revocations,
)
from covey.mesh.policy import MeshPolicy
from covey.mesh.records import (
    NodeRecord,
    RecordRejected,
    RecordTable,
    new_record,
    next_seq,
    republish_due,
    sign_record,
    verify_record,
)
from covey.mesh.sealed import SealError, b64d, b64e

log = logging.getLogger(__name__)

CERT_TTL_S = 365 * 24 * 3600.0
REVOCATIONS_FILE = "revocations"  # the authority's newest signed list
RECORD_TTL_S = 30.0  # a node silent this long is gone
MAX_CACHED_CERTS = 1024  # verified certificates remembered (each envelope is at most 4 KiB)
MAX_CACHED_PROOFS = 256  # authority proofs remembered (one valid per mesh; each ≤ 128 chars)


@dataclass(frozen=True)
class MeshInfo:
    mesh_id: str
    authority_public_key: bytes


class MeshState:
    def __init__(self, data_dir: Path, identity: Identity, info: MeshInfo, cert: bytes,
                 authority: Authority | None = None,
                 cert_validity_s: float = CERT_TTL_S) -> None:
        self.data_dir = data_dir
        self.cert_validity_s = cert_validity_s  # of certificates this node issues (authority)
        self.identity = identity
        self.info = info
        self.cert = cert  # this node's certificate envelope
        self.authority = authority  # only on the node that created the mesh
        self.members = Members()
        self.table = RecordTable()
        self.revocations_envelope: bytes | None = None
        # The mesh's tier policy (set by the node): learned from records, carried in ours.
        self.policy: MeshPolicy | None = None
        self.duplicate_key_seen: list[str] | None = None  # addresses of a node using our key
        # Members that began a gossip exchange with this node: id → when (monotonic).
        self.gossiped_in: dict[str, float] = {}
        # Members that held every record this node held after an exchange: id → (this
        # table's version, when, monotonic). See gossip.quiet_peers.
        self.synced: dict[str, tuple[int, float]] = {}
        self._revocations_mtime = 0.0
        self._signed_seqs: deque[int] = deque(maxlen=4096)  # every seq signed since start
        # Every signed call and every record carries a certificate: its authority signature
        # is checked once per envelope, not once per use (expiry is still checked each time).
        self._verified_certs: dict[bytes, MemberCert] = {}
        # (node id, authority proof) → whether it proves that node runs the authority: asked
        # whenever this node looks for the ledger's keeper (each round, and on a member each
        # request it serves or relays), an Ed25519 check of ~0.1 ms each time otherwise.
        self._authority_proofs: dict[tuple[str, str], bool] = {}
        self._published: dict[str, Any] | None = None  # content of our newest record
        # Peer TLS fingerprint → the seq of this node's record it held at the last exchange.
        self.held_by: dict[str, int] = {}
        self._proof: str | None = None
        # Field → (envelope, its base64): the certificate, revocations and policy go into
        # every round's comparison, and change a few times a day at most.
        self._encoded: dict[str, tuple[bytes | None, str]] = {}
        # Expiry is checked on every use (Members.is_member); here: our mesh, our authority.
        self.members.admit(self._check_cert(cert, now=0.0))

    # --- creating, joining, loading ------------------------------------------------------

    @classmethod
    def load_or_create(cls, data_dir: Path, identity: Identity, now: float,
                       cert_validity_s: float = CERT_TTL_S) -> MeshState:
        """The mesh this node belongs to; a new one (with this node as authority) if none."""
        existing = cls.load(data_dir, identity)
        if existing is not None:
            existing.cert_validity_s = cert_validity_s
            return existing
        authority = create_authority(data_dir)
        cert = issue_cert(authority, identity.public_bytes, now, cert_validity_s)
        state = cls.save(data_dir, identity, MeshInfo(authority.mesh_id, authority.public_key),
                         cert, authority)
        state.cert_validity_s = cert_validity_s
        return state

    @classmethod
    def load(cls, data_dir: Path, identity: Identity) -> MeshState | None:
        try:
            meta = json.loads((data_dir / "mesh.json").read_text())
            cert = (data_dir / "member.cert").read_bytes()
        except FileNotFoundError:
            return None
        info = MeshInfo(meta["mesh_id"], b64d(meta["authority_public_key"]))
        return cls(data_dir, identity, info, cert, load_authority(data_dir))

    @classmethod
    def save(cls, data_dir: Path, identity: Identity, info: MeshInfo, cert: bytes,
             authority: Authority | None = None) -> MeshState:
        state = cls(data_dir, identity, info, cert, authority)  # checks the cert first
        (data_dir / "mesh.json").write_text(json.dumps(
            {"mesh_id": info.mesh_id, "authority_public_key": b64e(info.authority_public_key)}))
        (data_dir / "member.cert").write_bytes(cert)
        return state

    # --- membership and records ----------------------------------------------------------

    def reload_revocations(self) -> None:
        """Pick up a list `covey revoke` wrote to the data dir. Only the authority's node
        looks: `covey revoke` writes nowhere else."""
        if self.authority is None:
            return
        path = self.data_dir / REVOCATIONS_FILE
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._revocations_mtime:
            self._revocations_mtime = mtime
            self.learn_revocations(path.read_bytes())

    def _check_cert(self, envelope: bytes, now: float) -> MemberCert:
        cached = self._verified_certs.get(envelope)
        if cached is not None and cached.expires_at > now:
            return cached
        cert = verify_cert(envelope, mesh_id=self.info.mesh_id,
                           authority_public_key=self.info.authority_public_key, now=now)
        if len(self._verified_certs) >= MAX_CACHED_CERTS:
            self._verified_certs.clear()  # only authority-signed ones get in: rare, and cheap
        self._verified_certs[envelope] = cert
        return cert

    def set_cert(self, envelope: bytes, now: float) -> MemberCert:
        """Adopt a renewed certificate for this node: checked (this mesh, this node's key,
        not expired), saved atomically, used from the next record on. MembershipError if
        it does not fit."""
        cert = self._check_cert(envelope, now)
        if b64d(cert.public_key) != self.identity.public_bytes:
            raise MembershipError("wrong_key", "the renewed certificate is for another node")
        path = self.data_dir / "member.cert"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(envelope)
        tmp.replace(path)
        self.cert = envelope
        self.members.admit(cert)
        return cert

    def authority_record(self, now: float) -> NodeRecord | None:
        """The live record of the node that runs the mesh's authority (it proves it with
        the authority key), or None when this node knows of none."""
        for record in self.table.records():
            if record.expires_at > now and record.authority_proof \
                    and self._proves_authority(record.node_id, record.authority_proof):
                return record
        return None

    def _proves_authority(self, node_id: str, proof: str) -> bool:
        key = (node_id, proof)
        known = self._authority_proofs.get(key)
        if known is None:
            if len(self._authority_proofs) >= MAX_CACHED_PROOFS:
                self._authority_proofs.clear()  # a peer sending forged proofs: checked again
            known = self._authority_proofs[key] = is_authority_node(
                proof, mesh_id=self.info.mesh_id, node_id=node_id,
                authority_public_key=self.info.authority_public_key)
        return known

    def keeper_id(self, now: float) -> str | None:
        """The node that keeps the mesh's credit ledger: the member the mesh policy
        designates, else the creator (this node when it holds the authority key); None while
        this node knows neither."""
        designated = self.policy.ledger_keeper if self.policy is not None else ""
        if designated:
            return designated
        if self.authority is not None:
            return self.identity.node_id
        record = self.authority_record(now)
        return record.node_id if record is not None else None

    def keeper_record(self, now: float) -> NodeRecord | None:
        """The keeper's live record (None when this node is the keeper or knows none)."""
        keeper = self.keeper_id(now)
        if keeper is None or keeper == self.identity.node_id:
            return None
        if not (self.policy is not None and self.policy.ledger_keeper):
            return self.authority_record(now)
        return next((r for r in self.table.records()
                     if r.node_id == keeper and r.expires_at > now), None)

    def own_cert(self, now: float) -> MemberCert:
        """This node's certificate, checked (MembershipError when expired or foreign)."""
        return self._check_cert(self.cert, now)

    def admit_cert(self, envelope: bytes, now: float) -> bool:
        """Learn a member from its certificate (checked against the authority's key)."""
        try:
            self.members.admit(self._check_cert(envelope, now))
        except MembershipError:
            return False
        return True

    def is_member(self, node_id: str, public_key: bytes, now: float) -> bool:
        return self.members.is_member(node_id, public_key, now)

    def set_revocations(self, revocations: RevocationList, envelope: bytes) -> bool:
        """Adopt `revocations` if newer than the list held; drop revoked nodes' records."""
        if newer(self.members.revocations, revocations) is not revocations or (
                self.members.revocations is not None
                and self.members.revocations.seq == revocations.seq):
            return False
        self.members.revocations = revocations
        self.revocations_envelope = envelope
        # Revocation is checked by membership, not by the certificate check; forgetting the
        # verified certificates anyway keeps a new list from ever meeting an old verdict.
        self._verified_certs.clear()
        for node_id in revocations.revoked:
            self.table.drop(node_id)
        if self.identity.node_id in revocations.revoked:
            log.error("this node was revoked from mesh %s; ask a member for a new invite",
                      self.info.mesh_id)
        return True

    def learn_revocations(self, envelope: bytes) -> bool:
        """Verify a revocation list (authority-signed, this mesh) and adopt it if newer."""
        try:
            revocations = verify_revocations(envelope, mesh_id=self.info.mesh_id,
                                             authority_public_key=self.info.authority_public_key)
        except MembershipError:
            return False
        return self.set_revocations(revocations, envelope)

    def accept(self, envelope: bytes, now: float) -> NodeRecord:
        """Verify a peer's record (signature, its certificate, revocation, freshness) and keep
        it if newer. Raises RecordRejected."""
        record = verify_record(envelope, mesh_id=self.info.mesh_id,
                               is_member=lambda node_id, key: True, now=now)
        if record.revocations:
            # Learned first: a record may carry the very list that revokes its sender.
            with contextlib.suppress(SealError):
                self.learn_revocations(b64d(record.revocations))
        if record.node_id == self.identity.node_id:
            held = self.table.get(record.node_id)
            # Compare what was signed, not the bytes: anyone can re-encode an envelope.
            if held is None or held.record != record:
                self.duplicate_key_seen = record.addresses
                raise RecordRejected("duplicate_key", "another node signs with this node's "
                                     f"key (at {', '.join(record.addresses) or '?'})")
        try:
            cert = self._check_cert(b64d(record.member_cert), now)
        except (MembershipError, ValueError) as exc:
            raise RecordRejected("not_member", f"node {record.node_id} has no valid member "
                                               "certificate") from exc
        if cert.node_id != record.node_id:
            raise RecordRejected("not_member", "certificate belongs to another node")
        self.members.admit(cert)
        if not self.is_member(record.node_id, b64d(record.public_key), now):
            raise RecordRejected("not_member", f"node {record.node_id} was revoked")
        self.table.apply(record, envelope)
        if record.tier_policy and self.policy is not None:
            # Authority-signed: any member may carry it; a bad one is the policy's to log.
            with contextlib.suppress(SealError):
                self.policy.learn(b64d(record.tier_policy))
        return record

    def note_synced(self, node_id: str, now: float, complete: bool) -> None:
        """An exchange with `node_id` ended: it holds every record this node holds, or,
        when one message was cut at its limit (`complete` False), it may not."""
        if complete:
            self.synced[node_id] = (self.table.version, now)
        else:
            self.synced.pop(node_id, None)

    def took_from(self, node_id: str, version_before: int) -> None:
        """Records from `node_id` were taken in: news to this node, not to their sender."""
        held = self.synced.get(node_id)
        if held is not None and held[0] == version_before:
            self.synced[node_id] = (self.table.version, held[1])

    def peer_holds(self, fingerprint: str, seq: int) -> None:
        """What a peer said it holds of this node's record (its digest): bounded by peers."""
        if len(self.held_by) >= MAX_HELD_BY and fingerprint not in self.held_by:
            self.held_by.clear()  # only costs one record sent along again per peer
        self.held_by[fingerprint] = seq

    def publish(self, now: float, ttl_s: float = RECORD_TTL_S, refresh_s: float = 0.0,
                measured: Callable[[], Mapping[str, object]] | None = None,
                **fields: object) -> bytes:
        """Sign this node's next record (a sequence number above any used before), unless
        the one held says the same and is younger than `refresh_s` (and than half its
        life): then that one's envelope, with nothing signed or written.

        Measurements (`MEASURED` fields) change with every request served; a change to them
        alone waits for the refresh. Signed at once, a node under traffic re-signed and
        every peer took its record again each round, for figures a few seconds fresher.
        `measured()` gives them only when a record is signed: summing them up every round
        cost an idle node for nothing (they may also come in `fields`)."""
        content: dict[str, Any] = {
            "ttl_s": ttl_s, "member_cert": self._b64("cert", self.cert),
            "revocations": self._b64("revocations", self.revocations_envelope),
            "tier_policy": self.policy.wire() if self.policy else "",
            "authority_proof": self._authority_proof(), **fields}
        held = self.table.get(self.identity.node_id)
        if held is not None and not republish_due(
                held.record, _unmeasured(content) == _unmeasured(self._published), now,
                ttl_s, refresh_s):
            return held.envelope
        if measured is not None:
            content.update(measured())
        record = new_record(self.identity.key, mesh_id=self.info.mesh_id,
                            seq=next_seq(self.data_dir / "seq", now), now=now, **content)
        envelope = sign_record(record, self.identity.key)
        self.table.apply(record, envelope)
        self._signed_seqs.append(record.seq)
        self._published = content
        return envelope

    def _b64(self, field: str, envelope: bytes | None) -> str:
        """`envelope` in base64url ("" for none), encoded again only when it changed."""
        held = self._encoded.get(field)
        if held is None or held[0] is not envelope:
            held = (envelope, b64e(envelope) if envelope else "")
            self._encoded[field] = held
        return held[1]

    def _authority_proof(self) -> str:
        """The same every round (Ed25519 signs deterministically): signed once."""
        if self.authority is None:
            return ""
        if self._proof is None:
            self._proof = prove_authority(self.authority, self.identity.node_id)
        return self._proof

    def check_own_seq(self, seq: int, where: str) -> None:
        """A peer holds a record of ours with `seq`: if it is newer than our first record
        since start and not one we signed, another node is using our key."""
        if self._signed_seqs and seq > self._signed_seqs[0] and seq not in self._signed_seqs:
            self.duplicate_key_seen = [where]


MAX_HELD_BY = 4096  # peers whose copy of this node's record is remembered

# Record fields that are measurements of traffic, published at the refresh (MeshState.publish).
MEASURED = ("metrics", "ledger")


def _unmeasured(content: dict[str, Any] | None) -> dict[str, Any] | None:
    if content is None or not any(k in content for k in MEASURED):
        return content
    return {k: v for k, v in content.items() if k not in MEASURED}


def apply_records(state: MeshState, encoded: list[Any], now: float) -> int:
    """Apply base64url envelopes; bad, stale or foreign ones are skipped. Returns how many
    were new."""
    accepted = 0
    for item in encoded:
        if not isinstance(item, str):
            continue
        try:
            state.accept(b64d(item), now)
            accepted += 1
        # Each record stands alone: a stale or forged one must not stop the rest.
        except (RecordRejected, SealError):
            continue
    return accepted

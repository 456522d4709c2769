"""Signed node records: what each node tells the mesh about itself, and who to believe.

Verification order matters: open the envelope, check the signature with the key inside the body,
check that key hashes to the claimed node id, and only then look at any other field. Readers
ignore unknown fields (protocols evolve) and cap every size and count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from covey.mesh.addresses import MAX_ADDRESSES, check_address
from covey.mesh.identity import node_id_for
from covey.mesh.sealed import SealError, b64d, b64e, check, public_bytes, seal, unseal

DOMAIN = b"covey-record-v1"
PROTOCOL = 1
MAX_ENVELOPE = 1024 * 1024  # a record with a long revocation list; 64 KiB without
MAX_LIFETIME_S = 24 * 3600.0  # a record claiming to live longer is refused
MAX_SKEW_S = 300.0  # clocks may disagree this much

_Id = Field(min_length=1, max_length=256)
# Physical caps on gossiped numbers: a peer claiming more is lying or broken, and one absurd
# figure (1e300 tokens/s) must not win every route or break the status page's arithmetic.
MAX_BYTES = 2**60  # memory or file sizes (an exbibyte)
MAX_TOKENS_PER_S = 1e6
MAX_TTFT_MS = 24 * 3600 * 1000.0  # a day
MAX_SAMPLES = 10**9
MAX_CONTEXT = 2**24  # tokens
MAX_BALANCE = 1e12  # credits (ledger/credits.py): far beyond any real mesh's work
MAX_MODEL_ID = 256  # characters of a model id, also as a dict key
ModelKey = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_ID)]
# host:port, checked (IPv4, [IPv6], RFC 1123 name; port 1..65535): a record with a bad
# address is malformed as a whole.
Address = Annotated[str, AfterValidator(check_address)]


class _Wire(BaseModel):
    # allow_inf_nan=False: json reads NaN, and a NaN expiry compares False with everything,
    # which would make a record that never expires.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class Hardware(_Wire):
    ram_bytes: int | None = Field(default=None, ge=0, le=MAX_BYTES)
    gpu_bytes: int | None = Field(default=None, ge=0, le=MAX_BYTES)
    fast_memory_bytes: int | None = Field(default=None, ge=0, le=MAX_BYTES)


class ModelAd(_Wire):
    id: str = Field(min_length=1, max_length=MAX_MODEL_ID)
    size_bytes: int | None = Field(default=None, ge=0, le=MAX_BYTES)
    sha256: str | None = Field(default=None, max_length=64)
    quantization: str | None = Field(default=None, max_length=32)
    context: int | None = Field(default=None, ge=0, le=MAX_CONTEXT)
    slots: int = Field(default=1, ge=0, le=4096)
    queue_depth: int = Field(default=0, ge=0, le=1_000_000)
    state: Literal["starting", "ready", "failed", "stopped"] = "stopped"
    # An embedding model: probed and routed for /v1/embeddings, never sent a chat.
    embeddings_only: bool = False


class ModelMetrics(_Wire):
    ttft_ms_p50: float | None = Field(default=None, ge=0, le=MAX_TTFT_MS)
    tokens_per_s_p50: float | None = Field(default=None, ge=0, le=MAX_TOKENS_PER_S)
    samples: int = Field(default=0, ge=0, le=MAX_SAMPLES)


class FingerprintProbe(_Wire):
    """One fixed prompt's greedy answer: its text, tokens and chosen-token logprobs."""

    text: str = Field(default="", max_length=256)
    tokens: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list,
                                                               max_length=16)
    logprobs: list[Annotated[float, Field(ge=-100, le=0)]] = Field(default_factory=list,
                                                                   max_length=16)


class Fingerprint(_Wire):
    """What a model is, as its node measured it (verify/fingerprint.py)."""

    sha256: str | None = Field(default=None, max_length=64)
    architecture: str | None = Field(default=None, max_length=64)
    parameters: str | None = Field(default=None, max_length=32)  # the GGUF's size label
    quantization: str | None = Field(default=None, max_length=32)
    probes: list[FingerprintProbe] = Field(default_factory=list, max_length=4)


class MemoryAd(_Wire):
    """Whether members may search this node's memory (memory/sharing.py), and which
    embedding model made its vectors; the shared projects' names are not published."""

    search: bool = False
    model: str | None = Field(default=None, max_length=128)


class NodeRecord(_Wire):
    protocol: int = Field(ge=1, le=2**16)
    mesh_id: str = _Id
    node_id: str = _Id
    public_key: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=1, le=2**63 - 1)
    issued_at: float
    expires_at: float
    name: str = Field(default="", max_length=256)
    addresses: list[Address] = Field(default_factory=list, max_length=MAX_ADDRESSES)
    hardware: Hardware = Field(default_factory=Hardware)
    models: list[ModelAd] = Field(default_factory=list, max_length=64)
    metrics: dict[ModelKey, ModelMetrics] = Field(default_factory=dict, max_length=64)
    # Native tokens/s per model: a measured rate, so above zero.
    baseline: dict[ModelKey, Annotated[float, Field(gt=0, le=MAX_TOKENS_PER_S)]] = Field(
        default_factory=dict, max_length=64)
    # Per model, the fingerprint taken with the native baseline (issue 14).
    fingerprints: dict[ModelKey, Fingerprint] = Field(default_factory=dict, max_length=64)
    # On the ledger's keeper only: members' credit balances (ledger/service.py), the
    # standing that fair-share queues order by.
    ledger: dict[Annotated[str, Field(min_length=1, max_length=64)],
                 Annotated[float, Field(ge=-MAX_BALANCE, le=MAX_BALANCE)]] = Field(
        default_factory=dict, max_length=1024)
    memory: MemoryAd | None = None
    # On the ledger's keeper: its newest signed checkpoint of the mesh ledger (a C2SP note);
    # on a member: the keeper's checkpoint it witnessed last (ledger/witness.py).
    ledger_checkpoint: str = Field(default="", max_length=4096)
    ledger_witnessed: str = Field(default="", max_length=4096)
    software_version: str = Field(default="", max_length=64)
    member_cert: str = Field(default="", max_length=4096)  # base64url authority-signed cert
    tls_fingerprint: str = Field(default="", max_length=64)  # hex SHA-256, pinned by callers
    # On the mesh creator's node only: the authority key's signature over (mesh id, node id),
    # so every member can find the node that admits members and renews certificates.
    authority_proof: str = Field(default="", max_length=128)
    # The newest authority-signed revocation list this node knows (base64url envelope):
    # every record carries it, so a revocation reaches every member with the gossip.
    revocations: str = Field(default="", max_length=512 * 1024)
    # The mesh's newest authority-signed tier policy this node knows (base64url envelope of
    # at most 40 KiB, mesh/policy.py), carried the same way.
    tier_policy: str = Field(default="", max_length=54_614)


def plausible(value: float | None, cap: float, *, positive: bool = False) -> float | None:
    """`value` if a record may carry it (finite, not negative, at most `cap`, above zero when
    `positive`), else None: what a node publishes about itself must pass its peers' checks,
    or none of its record would."""
    if value is None or not 0 <= value <= cap or (positive and value == 0):
        return None
    return value


class RecordRejected(Exception):
    """A record that must not be believed. `reason` is a stable code for logs and tests:
    oversize, malformed, bad_signature, wrong_key, wrong_mesh, not_member, expired, future,
    too_long_lived, stale (seq not newer than one already held)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sign_record(record: NodeRecord, key: Ed25519PrivateKey) -> bytes:
    if b64d(record.public_key) != public_bytes(key):
        raise ValueError("the record's public_key is not this key's")
    return seal(DOMAIN, record.model_dump(mode="json"), key)


def verify_record(envelope: bytes, *, mesh_id: str, is_member: Callable[[str, bytes], bool],
                  now: float) -> NodeRecord:
    """The record inside `envelope`, or RecordRejected. `is_member(node_id, public_key)` says
    whether the node holds a valid, unrevoked member certificate."""
    try:
        body_raw, sig, body = unseal(DOMAIN, envelope, MAX_ENVELOPE)
        key_text = body.get("public_key")
        if not isinstance(key_text, str) or len(key_text) > 64:
            raise RecordRejected("malformed", "record has no public key")
        key = b64d(key_text)
        check(DOMAIN, body_raw, sig, key)
    except SealError as exc:
        raise RecordRejected(exc.reason, str(exc)) from exc
    try:
        record = NodeRecord.model_validate(body)
    except ValidationError as exc:
        raise RecordRejected("malformed", f"record fields invalid: {exc.error_count()} errors"
                             ) from exc
    if node_id_for(key) != record.node_id:
        raise RecordRejected("wrong_key", f"key does not belong to node {record.node_id}")
    if record.mesh_id != mesh_id:
        raise RecordRejected("wrong_mesh", f"record is for mesh {record.mesh_id}")
    if not is_member(record.node_id, key):
        raise RecordRejected("not_member", f"node {record.node_id} is not a member (or revoked)")
    if record.expires_at <= now:
        raise RecordRejected("expired", "record expired")
    if record.issued_at > now + MAX_SKEW_S:
        raise RecordRejected("future", "record issued in the future")
    if record.expires_at > now + MAX_LIFETIME_S + MAX_SKEW_S:
        raise RecordRejected("too_long_lived", "record claims an implausibly long life")
    return record


@dataclass(frozen=True)
class Held:
    record: NodeRecord
    envelope: bytes  # passed on to peers byte for byte, so their signature checks hold


class RecordTable:
    """Newest verified record per node. Only `apply` and `expire` change it."""

    def __init__(self) -> None:
        self._held: dict[str, Held] = {}
        # Counts the records taken in (`apply`): a peer that held everything this table held
        # at some version holds everything it holds while the version stays the same.
        self.version = 0

    def __len__(self) -> int:
        return len(self._held)

    def get(self, node_id: str) -> Held | None:
        return self._held.get(node_id)

    def records(self) -> list[NodeRecord]:
        return [h.record for h in self._held.values()]

    def digest(self) -> dict[str, int]:
        return {node_id: h.record.seq for node_id, h in self._held.items()}

    def apply(self, record: NodeRecord, envelope: bytes) -> None:
        """Keep `record` if it is newer than what is held; raise RecordRejected('stale') if not."""
        held = self._held.get(record.node_id)
        if held is not None and record.seq <= held.record.seq:
            raise RecordRejected("stale", f"seq {record.seq} is not newer than "
                                          f"{held.record.seq} for node {record.node_id}")
        self._held[record.node_id] = Held(record, envelope)
        self.version += 1

    def drop(self, node_id: str) -> None:
        self._held.pop(node_id, None)

    def expire(self, now: float) -> list[str]:
        """Drop records past their expiry (the node is gone); return their node ids."""
        gone = [nid for nid, h in self._held.items() if h.record.expires_at <= now]
        for nid in gone:
            del self._held[nid]
        return gone


SEQ_WIDTH = 20  # digits: every number up to 2**63 fits, so each write covers the last


def next_seq(path: Path, now: float) -> int:
    """A sequence number greater than any this node used before, across restarts.

    max(last stored + 1, milliseconds now): survives a lost or damaged file as long as the
    clock moves on, and survives a clock stepping back as long as the file is there. Stored
    in place at a fixed width: a new file renamed over the old one cost an idle node ~0.9 ms
    of cold CPU each time (a new inode and a rename), in place ~0.3 ms."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        stored = os.pread(fd, SEQ_WIDTH + 2, 0)
        try:
            last = int(stored)
        except ValueError:
            last = 0
        seq = max(last + 1, int(now * 1000))
        line = b"%0*d\n" % (SEQ_WIDTH, seq)
        os.pwrite(fd, line, 0)
        if len(stored) > len(line):  # longer than any number written here: not ours
            os.ftruncate(fd, len(line))
    finally:
        os.close(fd)
    return seq


def new_record(key: Ed25519PrivateKey, *, mesh_id: str, seq: int, now: float, ttl_s: float,
               **fields: object) -> NodeRecord:
    """A record for this node, valid from `now` for `ttl_s` seconds."""
    raw = public_bytes(key)
    return NodeRecord.model_validate({
        "protocol": PROTOCOL, "mesh_id": mesh_id, "node_id": node_id_for(raw),
        "public_key": b64e(raw), "seq": seq, "issued_at": now, "expires_at": now + ttl_s,
        **fields})


def republish_due(held: NodeRecord, same: bool, now: float, ttl_s: float,
                  refresh_s: float) -> bool:
    """Whether a node must sign a new record over `held`, its newest: when what it says
    changed (`same` is False), when it is `refresh_s` old (peers judge a node by its
    record's age), or when half its life is gone (it must reach every peer before it
    expires)."""
    age = now - held.issued_at
    return (not same or age >= refresh_s or age < 0
            or held.expires_at - now <= min(ttl_s, held.expires_at - held.issued_at) / 2)

"""Checkpoints of the ledger, made, kept and proved: the Merkle tree over its entries (leaf i
is `entries.leaf_data` of entry i + 1), signed as a C2SP tlog-checkpoint by the node's key,
and the file sink that keeps them in the data dir:

    <data_dir>/checkpoints/<size>.note   every checkpoint made, named by its tree size
    <data_dir>/checkpoints/latest.note   the largest

A checkpoint is only made from a chain that verifies and extends the latest one kept (its
first `size` leaves give the latest's root), so a node never signs a rewritten history.
Proofs are made from the ledger as it is now and checked against the saved checkpoint first:
a ledger rewritten since is refused, not proved.

Proof documents (JSON, `covey ledger proof`), checked offline by `check_proof`:
- inclusion: type, seq, leaf_index, tree_size, leaf_hash, leaf_data, proof, checkpoint,
  verifier_key;
- consistency: type, old_size, tree_size, proof, old_checkpoint, checkpoint, verifier_key.
Hashes are standard base64, as in the checkpoint itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.ledger import merkle
from covey.ledger.chain import Entry, Ledger, leaf_data
from covey.ledger.checkpoint import (
    Checkpoint,
    checkpoint_body,
    parse_checkpoint,
    parse_verifier_key,
    sign_note,
    verifier_key,
    verify_checkpoint,
)
from covey.ledger.entries import ENTRY_DOMAIN
from covey.ledger.handover import SYNCED_FILE
from covey.mesh.identity import node_id_for

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.note"
MAX_PROOF_FILE = 1024 * 1024  # bytes of a proof document; a real one is a few KiB
MAX_LEAF_DATA = 64 * 1024  # an entry's canonical bytes: a receipt and two keys, ~1.5 KiB


class CheckpointError(ValueError):
    """A checkpoint or proof that cannot be made: the message says why, for people."""


def default_origin(data_dir: Path, node_id: str, keeper: bool | None = None) -> str:
    """`covey.mesh/<mesh_id>/ledger` on the keeper of the mesh ledger; a member's own copy is
    another log, so another origin: `covey.mesh/<mesh_id>/node/<node id>/ledger`;
    `covey.local/<node_id>/ledger` with no mesh in the data dir. `keeper` None: this node
    keeps the mesh ledger if the keeper it last synced with is itself (handover.py), or,
    before any, if it created the mesh."""
    try:
        mesh_id = json.loads((data_dir / "mesh.json").read_text())["mesh_id"]
    # No mesh joined or created from this data dir (or an unreadable file): a local log.
    except (OSError, ValueError, KeyError, TypeError):
        mesh_id = None
    if not isinstance(mesh_id, str) or not mesh_id.isalnum():
        return f"covey.local/{node_id}/ledger"
    if keeper is None:
        try:
            keeper = (data_dir / SYNCED_FILE).read_text().strip() == node_id
        except OSError:
            keeper = (data_dir / "authority.key").exists()
    if keeper:
        return f"covey.mesh/{mesh_id}/ledger"
    return f"covey.mesh/{mesh_id}/node/{node_id}/ledger"


def leaf_hashes(entries: Sequence[Entry]) -> list[bytes]:
    """The tree's leaves: entry `seq` is leaf `seq - 1`. Raises CheckpointError on a gap."""
    for index, entry in enumerate(entries):
        if entry.seq != index + 1:
            raise CheckpointError(f"entry {index + 1} missing: run `covey ledger verify`")
    return [merkle.leaf_hash(leaf_data(e)) for e in entries]


def write_checkpoint(ledger: Ledger, data_dir: Path, key: Ed25519PrivateKey,
                     origin: str) -> str:
    """Sign a checkpoint of every entry now in `ledger` with `key` (key name = origin), keep
    it in the sink and return its text. Raises CheckpointError when the chain does not verify
    or does not extend the latest checkpoint kept. Blocking (SQLite, files): a running node
    calls it from a worker thread."""
    result = ledger.verify()
    if not result.ok:
        raise CheckpointError(f"the ledger does not verify ({result.reason}): no checkpoint "
                              "signed")
    leaves = leaf_hashes(ledger.entries())
    latest = _load(data_dir / CHECKPOINT_DIR / LATEST)
    if latest is not None and (latest.size > len(leaves)
                               or merkle.root(leaves[:latest.size]) != latest.root):
        raise CheckpointError(f"the ledger's first {latest.size} entries no longer give the "
                              f"latest checkpoint's root ({_sink(data_dir) / LATEST}): its "
                              "history was rewritten; no checkpoint signed")
    body = checkpoint_body(origin, len(leaves), merkle.root(leaves))
    text = sign_note(body, origin, key)
    sink = _sink(data_dir)
    sink.mkdir(parents=True, exist_ok=True)
    write_note(sink / f"{len(leaves)}.note", text)
    # Another writer (the node's timer beside the CLI) may have kept a larger one meanwhile.
    latest = _load(sink / LATEST)
    if latest is None or latest.size <= len(leaves):
        write_note(sink / LATEST, text)
    return text


def load_checkpoint(data_dir: Path, size: int | None = None) -> str:
    """The text of the kept checkpoint of `size` entries (None: the latest)."""
    path = _sink(data_dir) / (LATEST if size is None else f"{size}.note")
    if _load(path) is None:
        which = "no checkpoint" if size is None else f"no checkpoint of size {size}"
        raise CheckpointError(f"{which} in {path.parent}: make one with "
                              "`covey ledger checkpoint`")
    return path.read_text()


def replace_checkpoint(data_dir: Path, size: int, text: str) -> None:
    """Keep `text` (the same checkpoint with more cosignature lines) in place of the kept
    checkpoint of `size` entries, and of the latest when that is the one. Refuses another
    tree: the body must be the kept one's."""
    sink = _sink(data_dir)
    kept, new = _load(sink / f"{size}.note"), parse_checkpoint(text)
    if kept is None or new is None or new.body != kept.body:
        raise CheckpointError(f"not the kept checkpoint of {size} entries")
    write_note(sink / f"{size}.note", text)
    latest = _load(sink / LATEST)
    if latest is not None and latest.body == kept.body:
        write_note(sink / LATEST, text)


def inclusion_document(ledger: Ledger, checkpoint_text: str, seq: int,
                       public_key: bytes) -> dict[str, Any]:
    """An inclusion proof of entry `seq` in the checkpoint's tree (see the module docstring)."""
    checkpoint, entries = _matching_tree(ledger, checkpoint_text)
    if not 1 <= seq <= checkpoint.size:
        raise CheckpointError(f"entry {seq} is not in the checkpoint of {checkpoint.size} "
                              "entries: make a newer one with `covey ledger checkpoint`")
    leaves = leaf_hashes(entries)
    data = leaf_data(entries[seq - 1])
    return {"type": "inclusion", "seq": seq, "leaf_index": seq - 1,
            "tree_size": checkpoint.size, "leaf_hash": _b64(leaves[seq - 1]),
            "leaf_data": _b64(data),
            "proof": [_b64(h) for h in merkle.inclusion_proof(leaves, seq - 1)],
            "checkpoint": checkpoint_text,
            "verifier_key": verifier_key(checkpoint.origin, public_key)}


def consistency_document(ledger: Ledger, old_text: str, new_text: str,
                         public_key: bytes) -> dict[str, Any]:
    """A consistency proof from the older checkpoint's tree to the newer's."""
    old = _parsed(old_text)
    new, entries = _matching_tree(ledger, new_text)
    if not 0 < old.size <= new.size:
        raise CheckpointError(f"no consistency proof from {old.size} to {new.size} entries "
                              "(the old checkpoint must hold 1 to the new one's entries)")
    leaves = leaf_hashes(entries)
    if merkle.root(leaves[:old.size]) != old.root:
        raise CheckpointError(f"the ledger's first {old.size} entries no longer give the old "
                              "checkpoint's root: its history was rewritten")
    return {"type": "consistency", "old_size": old.size, "tree_size": new.size,
            "proof": [_b64(h) for h in merkle.consistency_proof(leaves, old.size)],
            "old_checkpoint": old_text, "checkpoint": new_text,
            "verifier_key": verifier_key(new.origin, public_key)}


@dataclass(frozen=True)
class ProofCheck:
    ok: bool
    message: str
    self_signed: bool = False  # checked only against the key the document carries
    checkpoint: Checkpoint | None = None
    entry: dict[str, Any] | None = None  # the proved entry's fields (inclusion)


def check_proof(raw: bytes, vkey: str | None) -> ProofCheck:
    """Pure, offline: does the proof document `raw` hold? The checkpoint's signature is
    checked with `vkey` (a C2SP verifier key), else with the document's own `verifier_key`,
    which proves only that the file agrees with itself. Hostile input: never raises."""
    if len(raw) > MAX_PROOF_FILE:
        return ProofCheck(False, f"the file is over {MAX_PROOF_FILE} bytes: not a proof")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return ProofCheck(False, "the file is not JSON")
    if not isinstance(doc, dict) or doc.get("type") not in ("inclusion", "consistency"):
        return ProofCheck(False, "not a proof document (type inclusion or consistency)")
    self_signed = vkey is None
    text = doc.get("verifier_key") if vkey is None else vkey
    key = parse_verifier_key(text) if isinstance(text, str) else None
    if key is None:
        return ProofCheck(False, "the verifier key is malformed", self_signed)
    name, _, public = key
    checkpoint = _signed(doc.get("checkpoint"), name, public)
    if checkpoint is None:
        return ProofCheck(False, f"the checkpoint is not signed by {name}'s key", self_signed)
    proof = _hashes(doc.get("proof"))
    if proof is None:
        return ProofCheck(False, "the proof is not a list of base64 hashes", self_signed)
    if doc.get("tree_size") != checkpoint.size:
        return ProofCheck(False, f"the proof is for {doc.get('tree_size')!r} entries, the "
                                 f"checkpoint holds {checkpoint.size}", self_signed)
    if doc["type"] == "consistency":
        old = _signed(doc.get("old_checkpoint"), name, public)
        if old is None:
            return ProofCheck(False, f"the old checkpoint is not signed by {name}'s key",
                              self_signed)
        if old.origin != checkpoint.origin or doc.get("old_size") != old.size:
            return ProofCheck(False, "the old checkpoint is of another log or size",
                              self_signed)
        if not merkle.verify_consistency(old.size, checkpoint.size, old.root,
                                         checkpoint.root, proof):
            return ProofCheck(False, f"the tree of {checkpoint.size} entries does NOT extend "
                                     f"the tree of {old.size}: history was rewritten",
                              self_signed, checkpoint)
        return ProofCheck(True, f"the tree of {checkpoint.size} entries extends the tree of "
                                f"{old.size} (append-only)", self_signed, checkpoint)
    leaf, data = _hash(doc.get("leaf_hash")), _data(doc.get("leaf_data"))
    index = doc.get("leaf_index")
    if leaf is None or data is None or merkle.leaf_hash(data) != leaf:
        return ProofCheck(False, "the leaf hash is malformed or not the hash of its entry",
                          self_signed, checkpoint)
    if not isinstance(index, int) or isinstance(index, bool) or not merkle.verify_inclusion(
            leaf, index, checkpoint.size, proof, checkpoint.root):
        return ProofCheck(False, f"leaf {index!r} is NOT in the tree of {checkpoint.size} "
                                 "entries", self_signed, checkpoint)
    entry = _entry_fields(data)
    if entry is None or entry.get("seq") != index + 1:
        return ProofCheck(False, "the proved leaf is not a ledger entry at its index",
                          self_signed, checkpoint)
    return ProofCheck(True, f"entry {index + 1} is in the tree of {checkpoint.size} entries",
                      self_signed, checkpoint, entry)


def key_node_id(vkey: str) -> str | None:
    """The node id an Ed25519 verifier key belongs to (to compare with `covey status`)."""
    parsed = parse_verifier_key(vkey)
    return node_id_for(parsed[2]) if parsed is not None else None


# -- internals ---------------------------------------------------------------------------

def _sink(data_dir: Path) -> Path:
    return data_dir / CHECKPOINT_DIR


def _load(path: Path) -> Checkpoint | None:
    try:
        return parse_checkpoint(path.read_bytes())
    except OSError:  # none kept yet
        return None


def write_note(path: Path, text: str) -> None:
    """Write a note whole or not at all: a reader never sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _parsed(text: str) -> Checkpoint:
    checkpoint = parse_checkpoint(text)
    if checkpoint is None:
        raise CheckpointError("a kept checkpoint is malformed")
    return checkpoint


def _matching_tree(ledger: Ledger, text: str) -> tuple[Checkpoint, list[Entry]]:
    """The checkpoint and the entries of its tree, refusing a ledger that no longer gives
    its root."""
    checkpoint = _parsed(text)
    entries = ledger.entries(limit=checkpoint.size)
    if len(entries) != checkpoint.size or merkle.root(leaf_hashes(entries)) != checkpoint.root:
        raise CheckpointError(f"the ledger's first {checkpoint.size} entries no longer give the "
                              "checkpoint's root: its history was rewritten (`covey ledger "
                              "verify`)")
    return checkpoint, entries


def _signed(text: object, name: str, public: bytes) -> Checkpoint | None:
    if not isinstance(text, str):
        return None
    checkpoint = verify_checkpoint(text, name, public)
    # The key name is the log's origin: a key for another log does not vouch for this one.
    return checkpoint if checkpoint is not None and checkpoint.origin == name else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, limit: int) -> bytes | None:
    if not isinstance(text, str) or len(text) > limit * 4 // 3 + 4:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _hash(text: object) -> bytes | None:
    raw = _unb64(text, merkle.HASH_SIZE)
    return raw if raw is not None and len(raw) == merkle.HASH_SIZE else None


def _data(text: object) -> bytes | None:
    return _unb64(text, MAX_LEAF_DATA)


def _hashes(items: object) -> list[bytes] | None:
    if not isinstance(items, list) or len(items) > merkle.MAX_PROOF_HASHES:
        return None
    hashes = [_hash(item) for item in items]
    return None if any(h is None for h in hashes) else [h for h in hashes if h is not None]


def _entry_fields(data: bytes) -> dict[str, Any] | None:
    """The public fields of an entry from its leaf data (never its body)."""
    if not data.startswith(ENTRY_DOMAIN):
        return None
    try:
        fields = json.loads(data[len(ENTRY_DOMAIN):])
    except (ValueError, RecursionError):
        return None
    if not isinstance(fields, dict):
        return None
    return {k: fields.get(k) for k in ("seq", "kind", "node_id", "credits", "request_id",
                                       "created_at")}

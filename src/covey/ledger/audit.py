"""A member audits the keeper against its own receipts (pure; the calls are in witness.py).

Every countersigned receipt a member took part in is in its own ledger. After it witnessed a
keeper checkpoint of N entries, it asks the keeper for the entries of some of those receipts
with inclusion proofs in that tree (POST /mesh/ledger/inclusion) and checks each: the entry
must be in the tree it co-signed (RFC 9162 inclusion proof against that root) and carry the
very receipt the member holds. A receipt the keeper holds differently is *altered*: proof,
under the keeper's own signature, that it changed what two members signed. One it lacks is
*missing*: the provider sends receipts to the keeper, so that may be a lost submission,
shown but not alarmed on.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from covey.ledger import merkle
from covey.ledger.entries import ENTRY_DOMAIN, Entry, leaf_data

MAX_IDS = 32  # request ids per inclusion request
MAX_PROOF = 64
MAX_LEAF = 64 * 1024

Finding = Literal["included", "missing", "altered", "unproven"]


def receipts_of(entries: Sequence[Entry]) -> dict[str, dict[str, Any]]:
    """request id → the countersigned receipt (JSON) for every confirmed receipt in a
    ledger's entries (one per request: its `earn` entry)."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.kind == "earn" and e.request_id:
            out[e.request_id] = json.loads(e.body)["receipt"]
    return out


def inclusion_answer(entries: Sequence[Entry], leaves: Sequence[bytes], size: object,
                     request_ids: object) -> dict[str, Any]:
    """The keeper's answer: for each asked request id, its earn entry in the tree of `size`
    leaves with an inclusion proof (an empty list when it holds none). Raises ValueError."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= len(leaves):
        raise ValueError(f"size must be 1..{len(leaves)}")
    if not isinstance(request_ids, list) or not 0 < len(request_ids) <= MAX_IDS or not all(
            isinstance(r, str) and len(r) == 32 for r in request_ids):
        raise ValueError(f"request_ids must be 1..{MAX_IDS} request ids")
    wanted = set(request_ids)
    found: dict[str, list[dict[str, Any]]] = {r: [] for r in wanted}
    tree = list(leaves[:size])
    for e in entries[:size]:
        if e.kind == "earn" and e.request_id is not None and e.request_id in wanted:
            found[e.request_id].append({
                "index": e.seq - 1, "leaf_data": base64.b64encode(leaf_data(e)).decode(),
                "proof": [base64.b64encode(h).decode()
                          for h in merkle.inclusion_proof(tree, e.seq - 1)]})
    return {"size": size, "entries": found}


def check(mine: Mapping[str, Mapping[str, Any]], answer: object, size: int, root: bytes
          ) -> dict[str, Finding]:
    """What the keeper's answer shows for each of `mine` (request id → receipt JSON), against
    the witnessed tree (`size`, `root`). A malformed or unproven entry is `unproven`."""
    entries = answer.get("entries") if isinstance(answer, dict) else None
    entries = entries if isinstance(entries, dict) else {}
    out: dict[str, Finding] = {}
    for request_id, receipt in mine.items():
        held = entries.get(request_id)
        if not isinstance(held, list):
            out[request_id] = "unproven"
            continue
        if not held:
            out[request_id] = "missing"
            continue
        verdicts = [_one(item, receipt, size, root) for item in held[:4]]
        out[request_id] = ("altered" if "altered" in verdicts
                           else "included" if "included" in verdicts else "unproven")
    return out


def _one(item: object, receipt: Mapping[str, Any], size: int, root: bytes) -> Finding:
    if not isinstance(item, dict):
        return "unproven"
    index, raw, proof = item.get("index"), item.get("leaf_data"), item.get("proof")
    if not (isinstance(index, int) and isinstance(raw, str) and len(raw) <= MAX_LEAF * 2
            and isinstance(proof, list) and len(proof) <= MAX_PROOF):
        return "unproven"
    try:
        data = base64.b64decode(raw, validate=True)
        path = [base64.b64decode(h, validate=True) for h in proof if isinstance(h, str)]
    except ValueError:
        return "unproven"
    if len(path) != len(proof) or not merkle.verify_inclusion(
            merkle.leaf_hash(data), index, size, path, root):
        return "unproven"
    # In the tree the member co-signed: now, is it the receipt both parties signed?
    try:
        fields = json.loads(data[len(ENTRY_DOMAIN):]) if data.startswith(ENTRY_DOMAIN) else None
        held = json.loads(fields["body"])["receipt"] if isinstance(fields, dict) else None
    except (ValueError, KeyError, TypeError):
        held = None
    return "included" if held == receipt else "altered"

"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs.

Leaves are hashed as SHA-256(0x00 || data) and interior nodes as SHA-256(0x01 || left || right)
(RFC 9162 §2.1.1), so the roots and proofs interoperate with Certificate Transparency and the
C2SP tlog tooling. Generation works on the full list of leaf hashes (a ledger holds at most a
few million entries); verification needs only the proof and follows RFC 9162 §2.1.3.2 and
§2.1.4.2 literally. Verifiers take hostile input: anything malformed returns False, never raises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
# A tree size is a u64 in every format that carries it (checkpoints, RFC 9162 structures).
MAX_TREE_SIZE = (1 << 64) - 1
# The longest valid proof for a u64-sized tree has 64 hashes; anything longer is hostile.
MAX_PROOF_HASHES = 64
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: the interior node SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over leaf hashes; the empty tree's root is SHA-256 of nothing.

    Computed level by level, promoting an odd last node unchanged: this builds exactly the
    tree of the recursive definition (split at the largest power of two below n) in O(n)
    hashes and without recursion.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2), where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]): the audit path of leaf `index`, leaf level first.

    Raises ValueError when index is outside the tree (a caller's mistake, not hostile input).
    """
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} outside a tree of size {n}")
    # Walk down from the root; each step records the sibling subtree's root. The recursive
    # definition appends that sibling after the deeper path, so the list is reversed at the end.
    siblings: list[bytes] = []
    lo, hi = 0, n
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            siblings.append(root(leaf_hashes[lo + k:hi]))
            hi = lo + k
        else:
            siblings.append(root(leaf_hashes[lo:lo + k]))
            lo += k
    siblings.reverse()
    return siblings


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(m, D[n]) from the tree's first `size1` leaves to all of them.

    Raises ValueError unless 0 < size1 <= len(leaf_hashes): a proof from the empty tree
    proves nothing (verifiers reject it), so none is made.
    """
    n = len(leaf_hashes)
    if not 0 < size1 <= n:
        raise ValueError(f"consistency proof from size {size1} to size {n} is undefined")
    # SUBPROOF(m, D[lo:hi], b), unrolled: each step records one subtree root; the recursive
    # definition puts the deepest result first, so the recorded roots are reversed at the end.
    recorded: list[bytes] = []
    lo, hi, m, whole = 0, n, size1, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            recorded.append(root(leaf_hashes[lo + k:hi]))
            hi = lo + k
        else:
            recorded.append(root(leaf_hashes[lo:lo + k]))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        # The old tree's root is not a node of this subtree's path: the verifier needs it.
        recorded.append(root(leaf_hashes[lo:hi]))
    recorded.reverse()
    return recorded


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TREE_SIZE


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_path(proof: object) -> bool:
    return (isinstance(proof, Sequence) and len(proof) <= MAX_PROOF_HASHES
            and all(_is_hash(p) for p in proof))


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root_hash: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does `proof` show leaf hash `leaf` at `index` in the tree `root_hash`?"""
    if not (_is_hash(leaf) and _is_size(index) and _is_size(size) and _is_path(proof)
            and _is_hash(root_hash)) or index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False  # more hashes than the path has levels
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # On the right border with no right sibling: climb the levels where this node
            # is promoted unchanged.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (size2, root2) an append-only extension of (size1, root1)?

    As in the reference implementation (transparency-dev/merkle): equal sizes need an empty
    proof and equal roots, and a proof from the empty tree is refused as meaningless.
    """
    if not (_is_size(size1) and _is_size(size2) and _is_path(proof)
            and isinstance(root1, bytes) and isinstance(root2, bytes)):
        return False
    if size1 == 0 or size1 > size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if not proof or not (_is_hash(root1) and _is_hash(root2)):
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        # A power-of-two old tree is itself a node of the new tree: its root seeds the path.
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2

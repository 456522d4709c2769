"""RFC 6962 / 9162 Merkle hashing and proofs: the published vectors, a literal reference, and
seeded property checks (hypothesis is not a dependency; a fixed-seed Random gives the same
coverage reproducibly)."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from covey.ledger import merkle

VECTORS = Path(__file__).resolve().parent.parent / "data" / "rfc6962"


def _cases(kind: str) -> list[Any]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert files, f"no {kind} vectors under {VECTORS}"
    return [pytest.param(json.loads(f.read_text()), id=str(f.relative_to(VECTORS)))
            for f in files]


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


@pytest.mark.parametrize("case", _cases("inclusion"))
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    proof = [_b64(p) for p in case["proof"] or []]
    ok = merkle.verify_inclusion(_b64(case["leafHash"]), case["leafIdx"], case["treeSize"],
                                 proof, _b64(case["root"]))
    assert ok is not case["wantErr"], case["desc"]


@pytest.mark.parametrize("case", _cases("consistency"))
def test_consistency_vectors(case: dict[str, Any]) -> None:
    proof = [_b64(p) for p in case["proof"] or []]
    ok = merkle.verify_consistency(case["size1"], case["size2"], _b64(case["root1"]),
                                   _b64(case["root2"]), proof)
    assert ok is not case["wantErr"], case["desc"]


# The classic 8-entry Certificate Transparency test tree (RFC 6962 test data): its root and
# the roots of its prefixes, as published in the CT and transparency-dev test suites.
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_ct_tree_roots() -> None:
    hashes = [merkle.leaf_hash(d) for d in CT_LEAVES]
    assert [merkle.root(hashes[:n]).hex() for n in range(1, 9)] == CT_ROOTS
    assert merkle.root([]) == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


# A literal transcription of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1 (recursive, slow), to
# check the iterative generators against.
def _ref_mth(d: Sequence[bytes]) -> bytes:
    if len(d) == 0:
        return merkle.EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return merkle.node_hash(_ref_mth(d[:k]), _ref_mth(d[k:]))


def _ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return [*_ref_path(m, d[:k]), _ref_mth(d[k:])]
    return [*_ref_path(m - k, d[k:]), _ref_mth(d[:k])]


def _ref_subproof(m: int, d: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if whole else [_ref_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_ref_subproof(m, d[:k], whole), _ref_mth(d[k:])]
    return [*_ref_subproof(m - k, d[k:], False), _ref_mth(d[:k])]


def _hashes(n: int, salt: int = 0) -> list[bytes]:
    return [merkle.leaf_hash(f"{salt}:{i}".encode()) for i in range(n)]


def test_generators_match_the_rfc_definitions_exhaustively_to_40() -> None:
    for n in range(0, 41):
        hashes = _hashes(n)
        assert merkle.root(hashes) == _ref_mth(hashes)
        for i in range(n):
            assert merkle.inclusion_proof(hashes, i) == _ref_path(i, hashes), (i, n)
        for m in range(1, n + 1):
            assert merkle.consistency_proof(hashes, m) == _ref_subproof(m, hashes, True), (m, n)


def test_every_generated_proof_verifies_exhaustively_to_40() -> None:
    for n in range(1, 41):
        hashes = _hashes(n)
        roots = [merkle.root(hashes[:m]) for m in range(n + 1)]
        for i in range(n):
            assert merkle.verify_inclusion(hashes[i], i, n, merkle.inclusion_proof(hashes, i),
                                           roots[n])
        for m in range(1, n + 1):
            assert merkle.verify_consistency(m, n, roots[m], roots[n],
                                             merkle.consistency_proof(hashes, m))


def _mutations(proof: list[bytes], rng: random.Random) -> list[list[bytes]]:
    """Proofs that must all fail: each hash flipped, one dropped, one added, order swapped."""
    out: list[list[bytes]] = []
    for j, h in enumerate(proof):
        bit = rng.randrange(len(h) * 8)
        flipped = bytearray(h)
        flipped[bit // 8] ^= 1 << (bit % 8)
        out.append([*proof[:j], bytes(flipped), *proof[j + 1:]])
    if proof:
        out.append(proof[:-1])
        out.append(proof[1:])
    out.append([*proof, rng.randbytes(32)])
    out.append([rng.randbytes(32), *proof])
    if len(proof) >= 2 and proof[0] != proof[1]:
        out.append([proof[1], proof[0], *proof[2:]])
    return out


def test_random_trees_proofs_verify_and_mutations_fail() -> None:
    rng = random.Random(6962)
    for trial in range(60):
        n = rng.choice([rng.randrange(1, 70), rng.randrange(70, 3000)])
        hashes = _hashes(n, salt=trial)
        full = merkle.root(hashes)

        i = rng.randrange(n)
        proof = merkle.inclusion_proof(hashes, i)
        assert merkle.verify_inclusion(hashes[i], i, n, proof, full)
        for bad in _mutations(proof, rng):
            assert not merkle.verify_inclusion(hashes[i], i, n, bad, full)
        assert not merkle.verify_inclusion(hashes[i], i, n, proof, rng.randbytes(32))
        assert not merkle.verify_inclusion(rng.randbytes(32), i, n, proof, full)
        for j in {i - 1, i + 1, i ^ 1, n} - {i}:
            assert not merkle.verify_inclusion(hashes[i], j, n, proof, full)

        m = rng.randrange(1, n + 1)
        old = merkle.root(hashes[:m])
        cproof = merkle.consistency_proof(hashes, m)
        assert merkle.verify_consistency(m, n, old, full, cproof)
        for bad in _mutations(cproof, rng):
            assert not merkle.verify_consistency(m, n, old, full, bad)
        assert not merkle.verify_consistency(m, n, rng.randbytes(32), full, cproof)
        assert not merkle.verify_consistency(m, n, old, rng.randbytes(32), cproof)
        if m < n:
            assert not merkle.verify_consistency(m, n, full, old, cproof)


def test_rewritten_history_has_no_consistency_proof() -> None:
    """A keeper that alters an old entry cannot prove its new tree extends the old one."""
    hashes = _hashes(100)
    old_root = merkle.root(hashes[:60])
    forged = list(hashes)
    forged[17] = merkle.leaf_hash(b"rewritten")
    forged_root = merkle.root(forged)
    for m in (60, 1, 17, 18, 64):
        assert not merkle.verify_consistency(60, 100, old_root, forged_root,
                                             merkle.consistency_proof(forged, m))


@pytest.mark.parametrize("args", [
    (b"\x00" * 32, -1, 4, [], b"\x00" * 32),
    (b"\x00" * 32, 0, 0, [], b"\x00" * 32),
    (b"\x00" * 32, 5, 4, [b"\x00" * 32] * 2, b"\x00" * 32),
    (b"\x00" * 32, 0, 2**64, [b"\x00" * 32] * 64, b"\x00" * 32),
    (b"\x00" * 32, True, 4, [], b"\x00" * 32),
    (b"\x00" * 32, 0, 4.0, [], b"\x00" * 32),
    (b"\x00" * 31, 0, 1, [], b"\x00" * 31),
    ("00" * 32, 0, 1, [], "00" * 32),
    (b"\x00" * 32, 0, 2, [b"\x00" * 33], b"\x00" * 32),
    (b"\x00" * 32, 0, 2, ["x" * 32], b"\x00" * 32),
    (b"\x00" * 32, 0, 2, None, b"\x00" * 32),
    (b"\x00" * 32, 0, 2, [b"\x00" * 32] * 100_000, b"\x00" * 32),
    (b"\x00" * 32, 0, 2, b"\x00" * 32, b"\x00" * 32),
])
def test_hostile_inclusion_input_is_rejected_not_raised(args: tuple[Any, ...]) -> None:
    assert merkle.verify_inclusion(*args) is False


@pytest.mark.parametrize("args", [
    (0, 0, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, []),
    (3, 2, b"\x00" * 32, b"\x00" * 32, []),
    (-1, 2, b"\x00" * 32, b"\x00" * 32, [b"\x00" * 32]),
    (1, 2**64, b"\x00" * 32, b"\x00" * 32, [b"\x00" * 32] * 64),
    (1, 2, b"\x00" * 32, b"\x00" * 32, []),
    (1, 2, b"\x00" * 32, b"\x00" * 32, None),
    (1, 2, None, b"\x00" * 32, [b"\x00" * 32]),
    (1, 2, b"\x00" * 32, b"\x00" * 32, [b"\x00" * 31]),
    (1, 2, b"\x00" * 32, b"\x00" * 32, [b"\x00" * 32] * 100_000),
    (True, 2, b"\x00" * 32, b"\x00" * 32, [b"\x00" * 32]),
    (2, 2, b"\x00" * 32, b"\x00" * 32, [b"\x00" * 32]),
])
def test_hostile_consistency_input_is_rejected_not_raised(args: tuple[Any, ...]) -> None:
    assert merkle.verify_consistency(*args) is False


def test_generators_refuse_undefined_proofs() -> None:
    hashes = _hashes(5)
    for index in (-1, 5):
        with pytest.raises(ValueError):
            merkle.inclusion_proof(hashes, index)
    for size1 in (0, 6):
        with pytest.raises(ValueError):
            merkle.consistency_proof(hashes, size1)
    assert merkle.consistency_proof(hashes, 5) == []


def test_large_trees_without_recursion_limits() -> None:
    hashes = _hashes(1 << 18 | 5)
    full = merkle.root(hashes)
    i = len(hashes) - 3
    assert merkle.verify_inclusion(hashes[i], i, len(hashes), merkle.inclusion_proof(hashes, i),
                                   full)
    m = (1 << 17) + 7
    assert merkle.verify_consistency(m, len(hashes), merkle.root(hashes[:m]), full,
                                     merkle.consistency_proof(hashes, m))

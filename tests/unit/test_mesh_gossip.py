"""Push-pull anti-entropy: planning, and convergence of 500 simulated nodes in O(log n)."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.mesh.gossip import choose_peers, log_bound, plan_exchange, simulate
from covey.mesh.records import RecordRejected, new_record, sign_record, verify_record

MESH = "mtestmesh0000000"
NOW = 1_800_000_000.0


@pytest.mark.parametrize(("mine", "theirs", "send", "want"), [
    ({}, {}, [], []),
    ({"a": 2}, {"a": 1}, ["a"], []),
    ({"a": 1}, {"a": 2, "b": 1}, [], ["a", "b"]),
    ({"a": 3, "c": 1}, {"a": 3, "b": 1}, ["c"], ["b"]),
])
def test_plan_exchange(mine: dict[str, int], theirs: dict[str, int], send: list[str],
                       want: list[str]) -> None:
    assert plan_exchange(mine, theirs) == (send, want)


def test_choose_peers_never_self() -> None:
    rng = random.Random(0)
    for _ in range(100):
        chosen = choose_peers(["a", "b", "c"], "a", 5, rng)
        assert "a" not in chosen and sorted(chosen) == ["b", "c"]


def _signed_records(n: int, rng: random.Random) -> dict[str, tuple[int, bytes]]:
    out = {}
    for _ in range(n):
        key = Ed25519PrivateKey.generate()
        record = new_record(key, mesh_id=MESH, seq=rng.randrange(1, 10**6), now=NOW, ttl_s=60,
                            name="node", addresses=["10.1.2.3:7070", "[fd00::1]:7070"],
                            models=[{"id": "gemma-3-270m-q4_k_m", "size_bytes": 253113024,
                                     "slots": 4, "state": "ready"},
                                    {"id": "qwen2.5-7b-q4_k_m", "size_bytes": 4_700_000_000,
                                     "slots": 2, "state": "ready"}])
        out[record.node_id] = (record.seq, sign_record(record, key))
    return out


@pytest.fixture(scope="module")
def records_500() -> dict[str, tuple[int, bytes]]:
    return _signed_records(500, random.Random(42))


@pytest.mark.parametrize("n", [50, 200, 500])
def test_convergence_in_log_rounds(records_500: dict[str, tuple[int, bytes]], n: int) -> None:
    subset = dict(sorted(records_500.items())[:n])
    result = simulate(subset, fanout=3, rng=random.Random(n), max_rounds=100)
    print(f"\ngossip n={n}: {result.rounds} rounds, "
          f"{result.mean_bytes_per_node_per_round / 1024:.1f} KiB/node/round mean, "
          f"{result.max_bytes_per_node_per_round / 1024:.1f} KiB max")
    assert result.converged
    assert result.rounds <= log_bound(n)
    assert result.mean_bytes_per_node_per_round < n * 2 * 1024  # sane: records, not echoes


def test_forged_records_never_spread(records_500: dict[str, tuple[int, bytes]]) -> None:
    """A forger offers a record claiming a victim's id with a huge seq; honest nodes verify
    every envelope, refuse it, and still converge on the victim's genuine record."""
    subset = dict(sorted(records_500.items())[:60])
    forger_id, victim = sorted(subset)[3], sorted(subset)[7]
    forger = Ed25519PrivateKey.generate()
    fake = new_record(forger, mesh_id=MESH, seq=10**7, now=NOW, ttl_s=60)
    planted = {forger_id: {victim: (10**7, sign_record(fake, forger))}}

    def accept(node_id: str, envelope: bytes) -> bool:
        try:
            record = verify_record(envelope, mesh_id=MESH, is_member=lambda n, k: True,
                                   now=NOW + 1)
        except RecordRejected:
            return False
        return record.node_id == node_id

    result = simulate(subset, fanout=3, rng=random.Random(7), max_rounds=100, accept=accept,
                      planted=planted)
    assert result.converged


def test_plan_exchange_limit_bounds_each_message() -> None:
    mine = {f"n{i:03}": 2 for i in range(100)}
    send, want = plan_exchange(mine, {"x": 1}, limit=10, rng=random.Random(3))
    assert len(send) == 10 and set(send) <= set(mine) and want == ["x"]
    assert plan_exchange(mine, {}, limit=10)[0] == sorted(mine)[:10]

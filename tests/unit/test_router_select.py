"""Candidate ranking: measured speed wins, self on a near tie, unknown nodes get a prior,
busy or not-ready peers are skipped, and only the exact model id counts."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.mesh.records import NodeRecord, new_record
from covey.router.select import LocalView, expected_seconds, rank

MODEL = "m-q4_k_m"


def _peer(name: str, tps: float | None, state: str = "ready", model: str = MODEL,
          queue: int = 0) -> NodeRecord:
    metrics = {model: {"tokens_per_s_p50": tps, "ttft_ms_p50": 100.0, "samples": 5}} \
        if tps else {}
    return new_record(Ed25519PrivateKey.generate(), mesh_id="m", seq=1, now=0, ttl_s=60,
                      name=name, addresses=[f"{name}:7070"], tls_fingerprint="ab" * 32,
                      models=[{"id": model, "slots": 2, "state": state, "queue_depth": queue}],
                      metrics=metrics)


def _local(tps: float | None, ready: bool = True) -> LocalView:
    return LocalView("self", "me", ready, 2, 0, 0.1 if tps else None, tps)


def _names(local: LocalView | None, peers: list[NodeRecord], **kw: object) -> list[str]:
    kw.setdefault("explore", 0.0)
    kw.setdefault("explore_unmeasured", 0.0)
    return [c.name for c in rank(MODEL, local, peers, {}, random.Random(0), **kw)]  # type: ignore[arg-type]


def test_fastest_measured_node_first() -> None:
    assert _names(None, [_peer("slow", 5.0), _peer("fast", 50.0)]) == ["fast", "slow"]


def test_self_wins_a_near_tie_but_not_a_rout() -> None:
    assert _names(_local(45.0), [_peer("peer", 50.0)])[0] == "me"
    assert _names(_local(5.0), [_peer("peer", 50.0)])[0] == "peer"


def test_unknown_peer_gets_a_cautious_prior() -> None:
    assert _names(None, [_peer("new", None), _peer("known", 50.0)]) == ["known", "new"]
    assert _names(None, [_peer("new", None), _peer("slow", 1.0)]) == ["new", "slow"]


def test_skipped_candidates() -> None:
    peers = [_peer("loading", 50.0, state="starting"), _peer("other", 50.0, model="m-q8_0")]
    assert _names(_local(10.0, ready=False), peers) == []


def test_queue_lengthens_the_expected_time() -> None:
    assert expected_seconds(0.1, 10.0, 2, 2, 100) == 2 * expected_seconds(0.1, 10.0, 0, 2, 100)
    assert _names(None, [_peer("queued", 50.0, queue=8), _peer("idle", 30.0)])[0] == "idle"


def test_in_flight_from_this_entry_counts_against_a_peer() -> None:
    a, b = _peer("a", 50.0), _peer("b", 45.0)
    ranked = rank(MODEL, None, [a, b], {a.node_id: 6}, random.Random(0), explore=0.0,
                  explore_unmeasured=0.0)
    assert [c.name for c in ranked] == ["b", "a"]


def test_exploration_keeps_other_nodes_measured() -> None:
    peers = [_peer("fast", 50.0), _peer("slow", 5.0)]
    rng = random.Random(1)
    firsts = [rank(MODEL, None, peers, {}, rng)[0].name for _ in range(2000)]
    assert 0.02 < firsts.count("slow") / len(firsts) < 0.08


def test_what_this_entry_measured_wins_over_gossip() -> None:
    # b claims to be fast, but through the mesh from here it is slow (a poor link).
    a, b = _peer("a", 30.0), _peer("b", 50.0)
    assert _names(None, [a, b]) == ["b", "a"]
    assert _names(None, [a, b], observed={b.node_id: (2.0, 5.0)}) == ["a", "b"]
    # Measured TTFT alone keeps the gossiped rate.
    assert _names(None, [a, b], observed={b.node_id: (None, None)}) == ["b", "a"]


def test_a_never_measured_node_gets_a_larger_share_until_measured() -> None:
    peers = [_peer("fast", 50.0), _peer("new", None)]
    rng = random.Random(2)
    firsts = [rank(MODEL, None, peers, {}, rng)[0].name for _ in range(2000)]
    assert 0.18 < firsts.count("new") / len(firsts) < 0.30  # 20 % + 5 % of the rest


def test_a_peer_is_reached_at_the_address_that_works() -> None:
    # The peer advertises an address this node cannot reach first; the working one is used.
    record = _peer("p", tps=50).model_copy(
        update={"addresses": ["10.99.0.1:7070", "10.78.0.1:7070"]})
    first = rank(MODEL, None, [record], {}, random.Random(0))
    assert [c.address for c in first] == ["10.99.0.1:7070"]
    chosen = rank(MODEL, None, [record], {}, random.Random(0),
                  addresses={record.node_id: "10.78.0.1:7070"})
    assert [c.address for c in chosen] == ["10.78.0.1:7070"]

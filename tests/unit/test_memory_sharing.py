"""What a peer may search here, how its query is checked, and how answers merge (pure)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from covey.memory.records import MemoryInputError
from covey.memory.sharing import (
    ALL,
    MAX_DIM,
    Refused,
    SourceAnswer,
    merge,
    parse_peer_hits,
    parse_peer_query,
    scope,
)


def test_nothing_shared_is_503_saying_how_to_turn_it_on() -> None:
    with pytest.raises(Refused) as got:
        scope(frozenset(), None)
    assert got.value.status == 503 and "--share-memory" in got.value.message


def test_scope_by_project() -> None:
    shared = frozenset({"infra", "docs"})
    assert scope(shared, None) == ("docs", "infra")  # no filter: only what is shared
    assert scope(shared, ("infra",)) == ("infra",)
    with pytest.raises(Refused) as got:
        scope(shared, ("infra", "home"))
    assert got.value.status == 403 and "home" in got.value.message
    assert scope(frozenset({ALL}), None) is None
    assert scope(frozenset({ALL}), ("home",)) == ("home",)


def _query(**over: Any) -> dict[str, Any]:
    return {"vector": [0.1, 0.2, 0.3], "model": "m", "k": 5, **over}


@pytest.mark.parametrize("bad", [
    {"vector": []}, {"vector": "abc"}, {"vector": [0.0, 0.0]}, {"vector": [1, "x"]},
    {"vector": [True, 1.0]}, {"vector": [1.0] * (MAX_DIM + 1)}, {"vector": [1e39, 1.0]},
    {"model": ""}, {"model": 5}, {"model": "x" * 200}, {"k": 0}, {"k": 101}, {"k": 2.5},
    {"k": True}, {"min_score": 2}, {"min_score": "0.5"}, {"filters": []},
    {"filters": {"project": 5}},
])
def test_hostile_queries_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(MemoryInputError):
        parse_peer_query(_query(**bad))


def test_a_good_query() -> None:
    q = parse_peer_query(_query(filters={"project": ["infra"]}, min_score=0.2))
    assert q.k == 5 and q.model == "m" and q.filters.projects == ("infra",)
    assert q.vector.dtype.name == "float32" and q.vector.shape == (3,)


def _hit(text: str, score: float, **over: Any) -> dict[str, Any]:
    return {"id": f"mem_{abs(hash(text)) % 10**6}", "text": text, "project": "p",
            "tags": [], "score": score, "confidence": 1.0, "updated_at": 1.0, **over}


def test_peer_hits_are_validated_one_by_one() -> None:
    good = _hit("fine", 0.5)
    answer = {"hits": [good, "junk", _hit("nan", math.nan), _hit("big", 7.0),
                       _hit("", 0.3), _hit("tags", 0.3, tags=["x"] * 17),
                       _hit("conf", 0.4, confidence=9)]}
    hits = parse_peer_hits(answer, k=10)
    assert [h["text"] for h in hits] == ["fine", "conf"]
    assert hits[1]["confidence"] is None  # out of range: dropped, not trusted
    assert len(parse_peer_hits({"hits": [good] * 50}, k=3)) == 3
    with pytest.raises(MemoryInputError):
        parse_peer_hits({"nope": []}, k=3)


def test_merge_ranks_labels_and_deduplicates() -> None:
    here = SourceAnswer("aaa", "here", "answered", [_hit("Tern runs staging", 0.7),
                                                   _hit("lunch at noon", 0.2)])
    peer = SourceAnswer("bbb", "peer", "answered", [_hit("tern  runs STAGING", 0.9),
                                                   _hit("port 5433", 0.5)])
    late = SourceAnswer("ccc", "late", "timeout", reason="no answer within 2s")
    merged = merge([here, peer, late], k=10)
    texts = [(r["text"], r["node_id"]) for r in merged.results]
    assert texts == [("tern  runs STAGING", "bbb"), ("port 5433", "bbb"),
                     ("lunch at noon", "aaa")]
    assert merged.results[0]["also_on"] == ["aaa"]
    assert [(s["name"], s["status"], s["hits"]) for s in merged.sources] == [
        ("here", "answered", 2), ("peer", "answered", 2), ("late", "timeout", 0)]
    assert merge([here, peer], k=1).results[0]["score"] == 0.9


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                          st.sampled_from(["x", "y", "z", "X ", "w"]),
                          st.floats(-1, 1)), max_size=30), st.integers(1, 10))
def test_merge_properties(rows: list[tuple[str, str, float]], k: int) -> None:
    answers = [SourceAnswer(node, node, "answered",
                            [_hit(t, s, id=f"{node}{i}") for i, (n, t, s) in enumerate(rows)
                             if n == node]) for node in "abc"]
    merged = merge(answers, k)
    scores = [r["score"] for r in merged.results]
    assert scores == sorted(scores, reverse=True) and len(scores) <= k
    keys = [" ".join(r["text"].lower().split()) for r in merged.results]
    assert len(keys) == len(set(keys))
    best = {}
    for _, t, s in rows:
        key = " ".join(t.lower().split())
        best[key] = max(best.get(key, -2.0), s)
    for r in merged.results:  # each text at its best score anywhere
        assert r["score"] == best[" ".join(r["text"].lower().split())]

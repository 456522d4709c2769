"""Cheap checks of peers' claims (pure) and how the verdict book keeps them."""

from __future__ import annotations

from typing import Any

import pytest

from covey.mesh.records import NodeRecord
from covey.verify import verdicts as v
from covey.verify.checks import cheap_checks

GEMMA = "gemma-3-270m-q4_k_m"
SHA_A, SHA_B = "a" * 64, "b" * 64


def record(node: str, *, sha: str | None = SHA_A, fp_sha: str | None = SHA_A,
           arch: str = "gemma3", params: str = "268M", quant: str | None = "Q4_K_M",
           baseline: float | None = 50.0, model: str = GEMMA) -> NodeRecord:
    data: dict[str, Any] = {
        "protocol": 1, "mesh_id": "m" * 16, "node_id": node, "public_key": "k", "seq": 1,
        "issued_at": 0.0, "expires_at": 1.0,
        "models": [{"id": model, "sha256": sha, "state": "ready"}],
        "fingerprints": {model: {"sha256": fp_sha, "architecture": arch, "parameters": params,
                                 "quantization": quant}},
        "baseline": {model: baseline} if baseline else {}}
    return NodeRecord.model_validate(data)


def test_an_honest_claim_has_no_problems() -> None:
    peers = [record(f"n{i}") for i in range(4)]
    assert cheap_checks(peers[0], GEMMA, peers, [48.0, 52.0, 50.0]) == []


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"sha": SHA_A, "fp_sha": SHA_B}, "different files"),
    ({"quant": "Q4_1"}, "names Q4_K_M but it declares Q4_1"),
])
def test_a_peer_contradicting_itself_is_noted(kwargs: dict[str, Any], expected: str) -> None:
    peer = record("cheat", **kwargs)
    problems = cheap_checks(peer, GEMMA, [peer], [])
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_claim_unlike_every_other_claimant_is_noted() -> None:
    cheat = record("cheat", arch="llama", params="135M")
    honest = [record("h1"), record("h2")]
    problems = cheap_checks(cheat, GEMMA, [cheat, *honest], [])
    assert problems == ["its fingerprint says llama 135m; 2 other peers claiming this id say "
                        "gemma3 268m"]
    # The honest ones are not framed by the one that differs.
    assert cheap_checks(honest[0], GEMMA, [cheat, *honest], []) == []


def test_one_other_claimant_is_not_enough_to_call_a_peer_odd() -> None:
    # Two peers disagree: nobody can tell which one lies, so neither is noted.
    a, b = record("a"), record("b", arch="llama", params="135M")
    assert cheap_checks(a, GEMMA, [a, b], []) == []
    assert cheap_checks(b, GEMMA, [a, b], []) == []


def test_answers_far_faster_than_the_native_baseline_are_implausible() -> None:
    peer = record("fast", baseline=50.0)
    assert cheap_checks(peer, GEMMA, [peer], [190.0, 200.0, 210.0])
    assert cheap_checks(peer, GEMMA, [peer], [90.0, 95.0, 99.0]) == []  # under 2x
    assert cheap_checks(peer, GEMMA, [peer], [500.0, 500.0]) == []  # too few samples
    assert cheap_checks(record("nb", baseline=None), GEMMA, [], [500.0] * 5) == []


def test_checks_are_kept_shown_and_never_demote() -> None:
    book = v.VerdictBook(v.Policy(mode="enforce", fails_to_suspect=2))
    book.note("n1", GEMMA, [])
    assert book.snapshot(0.0) == []  # nothing to say: no entry
    book.note("n1", GEMMA, ["odd"])
    (entry,) = book.snapshot(0.0)
    assert entry["checks"] == ["odd"] and entry["status"] == "unverified"
    assert book.routable("n1", GEMMA, 0.0)
    book.note("n1", GEMMA, [])  # the problem went away
    assert book.snapshot(0.0)[0]["checks"] == []


def test_verdicts_on_claims_no_longer_made_are_dropped_but_demotions_stay() -> None:
    book = v.VerdictBook(v.Policy(mode="enforce", fails_to_suspect=2, demote_s=60))
    for _ in range(2):
        book.record("cheat", GEMMA, "fail", "e", 0.0)
    book.record("honest", GEMMA, "pass", "e", 0.0)
    book.forget(set())
    assert [e["node_id"] for e in book.snapshot(1.0)] == ["cheat"]
    assert not book.routable("cheat", GEMMA, 1.0)
    assert book.routable("cheat", GEMMA, 61.0)  # expires on its own
    book.forget(set())
    assert book.snapshot(62.0) == []

"""The auditor's pure parts: what an audit sends to the peer and to this node's engine."""

from __future__ import annotations

import random

from covey.verify.auditor import AUDIT_TOKENS, audit_bodies


def test_audit_bodies_vary_so_no_field_marks_an_audit() -> None:
    rng = random.Random(7)
    shapes = set()
    for _ in range(200):
        local, peer = audit_bodies("m", "a prompt", rng)
        # The ground truth always has what the statistic needs.
        assert local["logprobs"] is True and local["top_logprobs"] >= 1
        assert local["temperature"] == 0 and "seed" in local
        # The peer is asked the same question, greedy, for the same length.
        for key in ("model", "messages", "max_tokens", "temperature", "stream"):
            assert peer[key] == local[key]
        assert AUDIT_TOKENS[0] <= peer["max_tokens"] <= AUDIT_TOKENS[1]
        shapes.add((tuple(sorted(peer)), peer["max_tokens"]))
    keysets = {keys for keys, _ in shapes}
    assert len(keysets) == 4, keysets  # with/without logprobs × with/without seed
    assert len({n for _, n in shapes}) == AUDIT_TOKENS[1] - AUDIT_TOKENS[0] + 1

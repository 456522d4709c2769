"""bench/verify.py's pure parts: one audit judged, the per-kind summary and its margins."""

from __future__ import annotations

import pytest

from covey.bench.verify import _steps, judge, replay, summarize
from covey.verify.compare import DEFAULT, Answer, Step


def answer(*lps: float, tokens: str = "abcd") -> Answer:
    return Answer(tokens, tuple(Step(t, lp, {t: lp, "z": lp - 3}) for t, lp in zip(tokens, lps,
                                                                                  strict=False)))


LOCAL = answer(-0.1, -0.2, -0.3, -0.4)


def test_summary_counts_distributions_and_margin() -> None:
    records = [judge("same-config", LOCAL, LOCAL, 10.0, DEFAULT),
               judge("under-load", LOCAL, answer(-0.12, -0.2, -0.3, -0.4), 12.0, DEFAULT),
               judge("perturbed", LOCAL, answer(-0.5, -0.6, -0.7, -0.8), 10.0, DEFAULT),
               judge("smollm2", LOCAL, answer(-0.1, -0.2, tokens="xy"), 10.0, DEFAULT)]
    s = summarize(records)
    assert s["kinds"]["same-config"]["pass"] == 1 and s["kinds"]["same-config"]["same_text"] == 1
    assert s["kinds"]["perturbed"]["fail"] == 1
    assert s["kinds"]["smollm2"]["fail"] == 1 and s["kinds"]["smollm2"]["mismatched"] == 1
    assert s["kinds"]["smollm2"]["first_mismatch"]["max"] == 0
    # By text alone, as the auditor judges a peer it did not ask for logprobs: equal texts
    # never pass, another text fails.
    assert s["kinds"]["same-config"]["text_only"] == {"pass": 0, "fail": 0, "inconclusive": 1}
    assert s["kinds"]["smollm2"]["text_only"]["fail"] == 1
    margin = s["margins"]["perturbed"]
    assert margin["honest_max"] == s["kinds"]["under-load"]["mean_nats"]["max"]
    assert margin["impostor_min"] == pytest.approx(0.4) and margin["ratio"] > 1
    assert s["margins"]["canned"] is None
    assert s["cost"]["ms_median"] == 10.0 and s["cost"]["tokens_median"] == 8


def test_replay_judges_a_saved_run_again() -> None:
    saved = [{"kind": "perturbed", "ms": 1.0, "local": _steps(LOCAL),
              "peer": _steps(answer(-0.5, -0.6, -0.7, -0.8))}]
    assert replay(saved, DEFAULT)[0].outcome == "fail"
    assert replay(saved, DEFAULT.__class__(max_mean_nats=1.0))[0].outcome == "pass"

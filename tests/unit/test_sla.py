"""The SLA gate's decision table (router/sla.py): every status, the prediction, the headers."""

from __future__ import annotations

import pytest

from covey.router import sla
from covey.router.sla import Figures, estimate_prompt_tokens, evaluate, predict_ttft_s
from covey.router.tiers import Targets

DAILY = Targets(ttft_s=3.0, tokens_per_s=8.0)


def fig(ttft: float | None = None, tps: float | None = None, prefill: float | None = None,
        latency: float | None = None, in_flight: int = 0, slots: int = 1,
        node: str = "n") -> Figures:
    return Figures(node, ttft, tps, prefill, latency, in_flight, slots)


@pytest.mark.parametrize(("targets", "candidates", "prompt", "status"), [
    # No candidate at all.
    (DAILY, [], 10, sla.NO_PEER),
    # Experimental: no targets, so whatever the figures, it meets.
    (Targets(None, None), [fig(99.0, 0.1)], 10, sla.MEETS),
    (Targets(None, None), [fig()], 10, sla.MEETS),
    # Candidates, none measured.
    (DAILY, [fig(), fig(node="m")], 10, sla.NO_MEASUREMENTS),
    # Within both targets.
    (DAILY, [fig(0.5, 20.0)], 10, sla.MEETS),
    # One figure known and within target: the unknown one does not fail it.
    (DAILY, [fig(0.5, None)], 10, sla.MEETS),
    (DAILY, [fig(None, 20.0)], 10, sla.MEETS),
    # Each miss.
    (DAILY, [fig(5.0, 20.0)], 10, sla.TTFT_HIGH),
    (DAILY, [fig(0.5, 2.0)], 10, sla.TPS_LOW),
    (DAILY, [fig(5.0, 2.0)], 10, sla.BOTH_LOW),
    # Any candidate meeting is enough; an unmeasured one is not judged.
    (DAILY, [fig(5.0, 2.0), fig(0.5, 20.0, node="m")], 10, sla.MEETS),
    (DAILY, [fig(5.0, 2.0), fig(node="m")], 10, sla.BOTH_LOW),
    # The closest candidate (fewest misses) names the status.
    (DAILY, [fig(5.0, 2.0), fig(0.5, 2.0, node="m")], 10, sla.TPS_LOW),
    # The trailing p50 meets, but this long prompt at the measured prefill rate will not.
    (DAILY, [fig(0.5, 20.0, prefill=100.0)], 1000, sla.TTFT_HIGH),
    # ... and a short one will.
    (DAILY, [fig(0.5, 20.0, prefill=100.0)], 20, sla.MEETS),
    # A full node: four requests ahead of this one on one slot, 1 s a turn.
    (DAILY, [fig(0.5, 20.0, latency=1.0, in_flight=4, slots=1)], 10, sla.TTFT_HIGH),
    # The same queue spread over eight slots leaves one free.
    (DAILY, [fig(0.5, 20.0, latency=1.0, in_flight=4, slots=8)], 10, sla.MEETS),
])
def test_every_status(targets: Targets, candidates: list[Figures], prompt: int,
                      status: str) -> None:
    decision = evaluate("daily-driver", targets, candidates, prompt)
    assert decision.status == status
    assert decision.candidates == len(candidates)
    assert decision.missed == (status in sla.MISSES)


def test_the_statuses_are_the_issues_list() -> None:
    assert set(sla.STATUSES) == {"meets-sla", "no-peer-with-model", "no-measurements",
                                 "ttft-too-high", "tps-too-low", "both-too-low"}


def test_headers_carry_the_best_figures_and_the_prediction() -> None:
    d = evaluate("daily-driver", DAILY,
                 [fig(2.0, 5.0, prefill=50.0, node="a"), fig(4.0, 12.5, node="b")], 200)
    assert d.headers() == {
        "x-covey-sla-status": "ttft-too-high", "x-covey-sla-tier": "daily-driver",
        "x-covey-sla-candidates": "2", "x-covey-sla-best-ttft-ms": "4000",
        "x-covey-sla-best-tps": "12.5", "x-covey-sla-predicted-ttft-ms": "4000",
        "x-covey-sla-trailing-ttft-ms": "2000"}
    # a misses both (its long prompt predicts 4 s); b only TTFT. a's p50 is kept beside
    # its prediction.
    assert d.trailing_ttft_s == 2.0 and d.predicted_ttft_s == 4.0


def test_unknown_figures_leave_their_headers_out() -> None:
    assert evaluate("capacity", DAILY, [], 5).headers() == {
        "x-covey-sla-status": "no-peer-with-model", "x-covey-sla-tier": "capacity",
        "x-covey-sla-candidates": "0"}


@pytest.mark.parametrize(("f", "prompt", "expected"), [
    (fig(), 100, None),  # nothing known
    (fig(1.0), 100, 1.0),  # the trailing p50 alone
    (fig(1.0, prefill=200.0), 100, 1.0),  # the estimate (0.5 s) is better: the p50 stands
    (fig(1.0, prefill=50.0), 100, 2.0),  # the estimate is worse: it stands
    (fig(None, prefill=50.0), 100, 2.0),  # no p50 (odd, but possible): the estimate
    # Queue: in flight 3 on 2 slots, so 2 ahead of this one, half a 4 s turn each.
    (fig(1.0, latency=4.0, in_flight=3, slots=2), 10, 5.0),
    # No latency measured: a turn is TTFT + a typical answer at the decode rate.
    (fig(1.0, 256.0, in_flight=1, slots=1), 10, 1.0 + 2.0),
    # Must wait but the turn is unknown: the p50 alone.
    (fig(1.0, in_flight=5, slots=1), 10, 1.0),
    # A nonsense prefill rate is ignored.
    (fig(1.0, prefill=0.0), 100, 1.0),
    (fig(1.0, prefill=float("nan")), 100, 1.0),
])
def test_predicted_ttft(f: Figures, prompt: int, expected: float | None) -> None:
    assert predict_ttft_s(f, prompt) == pytest.approx(expected) if expected is not None \
        else predict_ttft_s(f, prompt) is None


@pytest.mark.parametrize(("body", "tokens"), [
    ({"messages": [{"role": "user", "content": "x" * 40}]}, 4 + 10),
    ({"messages": [{"role": "system", "content": "abcd"},
                   {"role": "user", "content": [{"type": "text", "text": "efgh"},
                                                {"type": "image_url", "image_url": {}}]}]},
     8 + 2),
    ({"messages": [{"role": "assistant", "content": None}]}, 4),
    ({"prompt": "y" * 9}, 3),
    ({"prompt": ["ab", "cd"]}, 1),
    ({"prompt": [1, 2, 3]}, 3),
    ({"prompt": [[1, 2], [3]]}, 3),
    ({}, 0),
])
def test_prompt_tokens_from_text_length(body: dict[str, object], tokens: int) -> None:
    assert estimate_prompt_tokens(body) == tokens

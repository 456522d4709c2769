"""The SLA gate (pure): can the mesh serve this request within its model's tier targets?

`evaluate()` takes the tier, its targets, what this entry knows of each candidate and the
prompt's length, and returns a `Decision` (status, tier, candidate count, best figures, the
predicted TTFT). It is decided before routing, so a stream carries it in its headers too.

Predict, do not only trail: a trailing TTFT p50 hides what this request will see. For each
candidate the gate also estimates this request's TTFT from the requests already in flight
there (each waits for a slot: in-flight beyond the slots ÷ slots × the node's request
latency p50) plus this prompt's tokens ÷ the candidate's measured prefill rate (prompt
tokens ÷ TTFT of earlier streamed answers, so the hop and queueing of those answers are
inside it). The worse of the trailing p50 and the estimate is the candidate's TTFT.

Statuses, in the order they are decided:
    no-peer-with-model   no candidate can take the request (none serves it, none usable)
    meets-sla            the tier has no targets (experimental), or a measured candidate
                         meets every target it has figures for
    no-measurements      no candidate has a TTFT or speed figure yet: nothing to judge
    ttft-too-high        the closest candidate (fewest targets missed) misses TTFT only
    tps-too-low          ... misses decode speed only
    both-too-low         ... misses both
A candidate with no figures is left out of the judgement (it is unknown, not slow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from covey.router.tiers import Targets

MEETS = "meets-sla"
NO_PEER = "no-peer-with-model"
NO_MEASUREMENTS = "no-measurements"
TTFT_HIGH = "ttft-too-high"
TPS_LOW = "tps-too-low"
BOTH_LOW = "both-too-low"
STATUSES = (MEETS, NO_PEER, NO_MEASUREMENTS, TTFT_HIGH, TPS_LOW, BOTH_LOW)
MISSES = frozenset({TTFT_HIGH, TPS_LOW, BOTH_LOW})
# Before any request was evaluated (the guard refused it, or its body did not parse).
NOT_EVALUATED = "not-evaluated"

# Without a tokenizer at the entry node: about four characters of English text per token
# (OpenAI's rule of thumb), plus a few template tokens per chat message. Code and other
# languages tokenize denser; the prefill rate is measured in real tokens, so this estimate's
# error is part of the prediction's error (the closing note of issue 13 measures it).
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4
MAX_PROMPT_CHARS = 64 * 1024 * 1024  # counting stops here: the body limit is far below
TYPICAL_ANSWER_TOKENS = 256  # a slot turn's answer, when no request latency is measured


@dataclass(frozen=True)
class Figures:
    """What this entry knows of one candidate for one model (None: not measured)."""

    node_id: str
    ttft_s: float | None  # trailing TTFT p50: through-mesh, or the peer's gossiped one
    tokens_per_s: float | None  # decode p50
    prefill_tokens_per_s: float | None = None  # prompt tokens ÷ TTFT p50 of streamed answers
    latency_s: float | None = None  # a whole request's p50 (arrival → end): one slot turn
    in_flight: int = 0  # requests known to be running or waiting there
    slots: int = 1


@dataclass(frozen=True)
class Decision:
    status: str
    tier: str
    candidates: int
    best_ttft_s: float | None  # the lowest candidate TTFT (with the prediction)
    best_tokens_per_s: float | None  # the highest decode p50
    predicted_ttft_s: float | None  # the first-ranked candidate's TTFT for this request
    trailing_ttft_s: float | None  # the first-ranked candidate's trailing p50, for comparison

    @property
    def missed(self) -> bool:
        return self.status in MISSES

    def headers(self) -> dict[str, str]:
        out = {"x-covey-sla-status": self.status, "x-covey-sla-tier": self.tier,
               "x-covey-sla-candidates": str(self.candidates)}
        if self.best_ttft_s is not None:
            out["x-covey-sla-best-ttft-ms"] = str(round(self.best_ttft_s * 1000))
        if self.best_tokens_per_s is not None:
            out["x-covey-sla-best-tps"] = f"{self.best_tokens_per_s:.1f}"
        if self.predicted_ttft_s is not None:
            out["x-covey-sla-predicted-ttft-ms"] = str(round(self.predicted_ttft_s * 1000))
        if self.trailing_ttft_s is not None:
            out["x-covey-sla-trailing-ttft-ms"] = str(round(self.trailing_ttft_s * 1000))
        return out


def _rate(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value > 0 else None


def queue_wait_s(f: Figures) -> float | None:
    """Seconds this request waits for a slot: each request beyond the free slots waits a
    share of one slot turn (the latency p50, or TTFT + a typical answer at the decode rate).
    0 when a slot is free; None when it must wait but no turn length is known."""
    ahead = f.in_flight - f.slots + 1
    if ahead <= 0:
        return 0.0
    turn, rate = f.latency_s, _rate(f.tokens_per_s)
    if turn is None and f.ttft_s is not None and rate is not None:
        turn = f.ttft_s + TYPICAL_ANSWER_TOKENS / rate
    if turn is None:
        return None
    return ahead / max(1, f.slots) * turn


def predict_ttft_s(f: Figures, prompt_tokens: int) -> float | None:
    """This request's TTFT on candidate `f`: the worse of the trailing p50 and the estimate
    from its queue and prefill rate; None when neither is known."""
    prefill = _rate(f.prefill_tokens_per_s)
    wait = queue_wait_s(f)
    estimate = None
    if prefill is not None or (wait is not None and wait > 0):
        estimate = (prompt_tokens / prefill if prefill is not None else 0.0) + (wait or 0.0)
    if f.ttft_s is None:
        return estimate
    if estimate is None:
        # No prefill rate: the p50, and the queue on top of it when one is known.
        return f.ttft_s + (wait or 0.0)
    return max(f.ttft_s + (wait or 0.0), estimate)


def _misses(ttft_s: float | None, tokens_per_s: float | None, targets: Targets) -> set[str]:
    out = set()
    if targets.ttft_s is not None and ttft_s is not None and ttft_s > targets.ttft_s:
        out.add("ttft")
    if (targets.tokens_per_s is not None and tokens_per_s is not None
            and tokens_per_s < targets.tokens_per_s):
        out.add("tps")
    return out


def evaluate(tier: str, targets: Targets, candidates: Sequence[Figures],
             prompt_tokens: int) -> Decision:
    """The gate's decision for one request; `candidates` best first (the router's order)."""
    if not candidates:
        return Decision(NO_PEER, tier, 0, None, None, None, None)
    ttfts = [predict_ttft_s(c, prompt_tokens) for c in candidates]
    rates = [_rate(c.tokens_per_s) for c in candidates]
    best_ttft = min((t for t in ttfts if t is not None), default=None)
    best_rate = max((r for r in rates if r is not None), default=None)

    def decision(status: str) -> Decision:
        return Decision(status, tier, len(candidates), best_ttft, best_rate, ttfts[0],
                        candidates[0].ttft_s)

    if targets.ttft_s is None and targets.tokens_per_s is None:
        return decision(MEETS)
    judged = [_misses(t, r, targets) for t, r in zip(ttfts, rates, strict=True)
              if t is not None or r is not None]
    if not judged:
        return decision(NO_MEASUREMENTS)
    closest = min(judged, key=len)
    if not closest:
        return decision(MEETS)
    if closest == {"ttft", "tps"}:
        return decision(BOTH_LOW)
    return decision(TTFT_HIGH if "ttft" in closest else TPS_LOW)


def estimate_prompt_tokens(data: Mapping[str, Any]) -> int:
    """Tokens in a validated chat or completions body, from its text length (see
    CHARS_PER_TOKEN): message contents (strings or text parts) or the prompt."""
    chars, tokens = 0, 0
    messages = data.get("messages")
    if isinstance(messages, list):
        for message in messages:
            tokens += TOKENS_PER_MESSAGE
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(part["text"]) for part in content
                             if isinstance(part, dict) and isinstance(part.get("text"), str))
            if chars > MAX_PROMPT_CHARS:
                break
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):  # strings, token ids, or lists of token ids
        for item in prompt:
            if isinstance(item, str):
                chars += len(item)
            elif isinstance(item, int):
                tokens += 1
            elif isinstance(item, list):
                tokens += len(item)
    return tokens + math.ceil(min(chars, MAX_PROMPT_CHARS) / CHARS_PER_TOKEN)

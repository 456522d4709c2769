"""The audit statistic (pure): does a peer's greedy answer match this node's own engine?

Both sides ran the same prompt at temperature 0 with a fixed seed and returned the chosen
token and the top-k log-probabilities at each step. Honest backends differ a little in the
tail (thread count, batch composition, CPU vs GPU change the float summation order), so the
statistic is tolerant:

- top-1 agreement over the aligned prefix: step by step, the peer's chosen token must be the
  local one. A mismatch where the local engine itself had a near tie (the peer's token within
  `tie_nats` of the local top-1) ends the comparison without blame: an honest backend may
  break the tie the other way, and after that the two texts have different contexts;
- the distance between top-k log-probabilities where the tokens agree: the mean absolute
  difference over the tokens present in both top-k lists, over the aligned prefix.

A fail needs clear evidence: an unexplained top-1 mismatch, or a mean distance over
`max_mean_nats`. Too little aligned text is inconclusive, never a fail. Thresholds are
calibrated on honest runs (docs/verify.md).

Tokens are compared by their text, not their id: an impostor's vocabulary may differ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

MAX_STEPS = 64  # steps read from an answer at most
MAX_TOP = 20  # top-k entries read per step at most
MAX_TOKEN_CHARS = 64
LOGPROB_FLOOR = -100.0  # clamp: -inf and absurd values compare as "very unlikely"


@dataclass(frozen=True)
class Step:
    token: str
    logprob: float
    top: Mapping[str, float]  # token text -> logprob, at most MAX_TOP


@dataclass(frozen=True)
class Answer:
    """A parsed audit answer: the text, and the steps when the backend returned logprobs."""

    text: str
    steps: tuple[Step, ...]
    finish: str | None = None  # finish_reason: "length" when max_tokens ended the answer


@dataclass(frozen=True)
class Thresholds:
    tie_nats: float = 0.5  # a local top-2 this close to top-1 is a tie either side may break
    max_mean_nats: float = 0.15  # mean |Δ logprob| over shared top-k tokens, honest runs far below
    min_steps: int = 3  # aligned steps needed for a conclusive answer
    min_text_chars: int = 8  # without logprobs: matching text needed for a conclusive answer


DEFAULT = Thresholds()

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Comparison:
    outcome: Outcome
    aligned: int  # steps compared (the aligned prefix)
    agreed: int  # of those, with the same top-1
    mean_nats: float | None  # mean |Δ logprob| over shared top-k tokens; None: no logprobs
    reason: str  # short evidence, no content

    def evidence(self) -> str:
        dist = f"{self.mean_nats:.3f}" if self.mean_nats is not None else "n/a"
        return f"{self.reason}; top-1 {self.agreed}/{self.aligned}; mean |dlogprob| {dist}"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    if math.isnan(v):
        return None
    return max(LOGPROB_FLOOR, min(0.0, v))


def parse_answer(answer: Mapping[str, Any]) -> Answer | None:
    """An OpenAI chat completion (non-streamed) as an Answer; None if it is not one. Hostile
    input: every list is capped, every string bounded, every number clamped."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        text = ""
    steps: list[Step] = []
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if isinstance(content, list):
        for item in content[:MAX_STEPS]:
            step = _step(item)
            if step is None:
                break
            steps.append(step)
    finish = choice.get("finish_reason")
    return Answer(text[:4096], tuple(steps), finish[:16] if isinstance(finish, str) else None)


def _step(item: Any) -> Step | None:
    if not isinstance(item, dict) or not isinstance(item.get("token"), str):
        return None
    lp = _finite(item.get("logprob"))
    if lp is None:
        return None
    top: dict[str, float] = {}
    tops = item.get("top_logprobs")
    for t in tops[:MAX_TOP] if isinstance(tops, list) else []:
        if isinstance(t, dict) and isinstance(t.get("token"), str):
            v = _finite(t.get("logprob"))
            if v is not None:
                top.setdefault(t["token"][:MAX_TOKEN_CHARS], v)
    return Step(item["token"][:MAX_TOKEN_CHARS], lp, top)


def compare(local: Answer, peer: Answer, th: Thresholds = DEFAULT) -> Comparison:
    """Pure: the peer's answer judged against the local ground truth."""
    if not local.steps:
        return Comparison("inconclusive", 0, 0, None, "no local logprobs")
    if not peer.steps:
        return _compare_text(local, peer, th)
    aligned = agreed = 0
    diffs: list[float] = []
    for ls, ps in zip(local.steps, peer.steps, strict=False):
        aligned += 1
        if ls.token != ps.token:
            if _near_tie(ls, ps.token, th):
                aligned -= 1  # the tie step itself is not evidence either way
                break
            return Comparison("fail", aligned, agreed, _mean(diffs),
                              f"top-1 differs at step {aligned} (no local tie)")
        agreed += 1
        diffs.extend(abs(v - ps.top[tok]) for tok, v in ls.top.items() if tok in ps.top)
        diffs.append(abs(ls.logprob - ps.logprob))
    mean = _mean(diffs)
    # A mean over one or two steps is too noisy to blame: a batched honest engine moves single
    # log-probabilities by up to ~0.5 nats (docs/verify.md).
    if mean is not None and mean > th.max_mean_nats and agreed >= th.min_steps:
        return Comparison("fail", aligned, agreed, mean, "log-probabilities differ")
    if agreed < th.min_steps:
        return Comparison("inconclusive", aligned, agreed, mean, "too few aligned steps")
    return Comparison("pass", aligned, agreed, mean, "matches")


def _near_tie(local: Step, peer_token: str, th: Thresholds) -> bool:
    other = local.top.get(peer_token)
    return other is not None and local.logprob - other <= th.tie_nats


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _compare_text(local: Answer, peer: Answer, th: Thresholds) -> Comparison:
    """The peer returned no logprobs (half of all audits do not ask; an attached server may
    not give them): the greedy text alone, which can fail an audit but never pass one. An
    honest backend on the same file returns the same text; they may part only where the
    local engine had a near tie."""
    # Characters the two texts share, and how far into the local steps that reaches.
    common = 0
    for a, b in zip(local.text, peer.text, strict=False):
        if a != b:
            break
        common += 1
    if local.text == peer.text:
        # Not proof: a subtly altered model often says the same few greedy words (the
        # perturbed-GGUF impostor does in ~40% of audits). A match neither passes nor, above
        # all, wipes out failures in a row; only log-probabilities can pass an audit.
        return Comparison("inconclusive", 0, 0, None,
                          "text matches (no peer logprobs: not proof)"
                          if common >= th.min_text_chars else "text too short")
    if common == len(peer.text) and common < th.min_text_chars:
        return Comparison("inconclusive", 0, 0, None, "text too short")
    # Where did they part? If at a local step with a near tie, no blame. The texts' first
    # differing character need not be in the token the peer chose differently: at a tie
    # between "." and ".<" the peer's ".<" matches our "." and parts only at our next
    # token, or runs on past our last. So any earlier step excuses the parting too when one
    # of its tied tokens is what the peer's text goes on with there.
    pos = 0
    for i, s in enumerate(local.steps):
        parting = pos + len(s.token) > common
        tied = (t for t, v in s.top.items() if t != s.token and v >= s.logprob - th.tie_nats)
        if any(parting or peer.text.startswith(t, pos) for t in tied):
            return Comparison("inconclusive", i, i, None,
                              "text parts at a local tie (no peer logprobs)")
        if parting:
            break
        pos += len(s.token)
    if common == len(local.text):
        # The peer's text runs on past ours. If max_tokens ended ours, the same model could
        # not have said more in as many tokens (a backend that echoes the prompt does);
        # if ours stopped on its own, the peer's may have broken a tie with end-of-text.
        if local.finish == "length" and common >= th.min_text_chars:
            return Comparison("fail", 0, 0, None,
                              f"text runs past the model's {len(local.steps)} tokens "
                              "(no peer logprobs)")
        return Comparison("inconclusive", 0, 0, None, "local text ended first")
    return Comparison("fail", 0, 0, None,
                      f"text differs after {common} characters (no peer logprobs)")

"""Pure helpers that turn an OpenAI SSE stream's arrival times into TTFT and tokens/s.

Shared by the relay, the native baseline and the benchmark, so all three measure alike.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from covey.metrics.samples import Speed

# First token: a chat delta or completion text that is not empty. Servers differ in JSON
# spacing (llama.cpp writes `"content":"x"`, Python's json `"content": "x"`).
CONTENT = re.compile(rb'"(?:content|text)":\s*"[^"]')
# The most of a relayed whole answer's time a peer may claim was prompt processing. An honest
# long prompt with a short answer reads slower than it was; such answers are too short for
# the efficiency figure anyway (metrics/efficiency.py).
PEER_PROMPT_SHARE = 0.5
_USAGE_TOKENS = (("usage", "completion_tokens"), ("timings", "predicted_n"))


@dataclass(frozen=True)
class StreamResult:
    """What one completed request measured. None = not observed (never 0 for unknown)."""

    ttft_ms: float | None
    tokens_per_s: float | None
    completion_tokens: int


def measure(t_request: float, t_first: float | None, t_last: float | None,
            tokens: int) -> StreamResult:
    """Pure: TTFT from request to first token; decode rate over the first→last token span."""
    ttft = (t_first - t_request) * 1000 if t_first is not None else None
    tps = None
    if t_first is not None and t_last is not None and tokens >= 2 and t_last > t_first:
        tps = (tokens - 1) / (t_last - t_first)
    return StreamResult(ttft_ms=ttft, tokens_per_s=tps, completion_tokens=tokens)


def completion_tokens_from_tail(tail: bytes) -> int | None:
    """Completion tokens from the last SSE event that reports usage or llama.cpp timings."""
    return tokens_from_body(usage_event(tail))


def usage_event(tail: bytes) -> Any:
    """The last SSE event in `tail` that reports usage or llama.cpp timings, parsed; None
    when there is none (or it was cut off)."""
    for line in reversed(tail.split(b"\n")):
        if not line.startswith(b"data: {"):
            continue
        if b'"usage"' not in line and b'"timings"' not in line:
            continue
        try:
            return json.loads(line[6:])
        except ValueError:
            continue  # the tail may start mid-event; an earlier line cannot be complete either
    return None


# A prompt this long is not believed (a hostile peer's usage): llama.cpp contexts stop far
# below. A lie within it only moves the gate's TTFT estimate, never below the trailing p50.
MAX_PROMPT_TOKENS = 4_000_000


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PROMPT_TOKENS:
        return None
    return value


def prefill_rate(prompt_tokens: int | None, ttft_ms: float | None) -> float | None:
    """Pure: prompt tokens per second of time to first token (None without both, or for an
    empty prompt): how fast this node got from a prompt to its first answer token."""
    if not prompt_tokens or ttft_ms is None or not math.isfinite(ttft_ms) or ttft_ms <= 0:
        return None
    return prompt_tokens / (ttft_ms / 1000)


def tokens_from_body(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    for section, key in _USAGE_TOKENS:
        part = body.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), int):
            return int(part[key])
    return None


def prompt_tokens_from_body(body: Any) -> int | None:
    """Prompt tokens from an answer's (or its final event's) `usage`, else llama.cpp's
    `timings` (tokens processed plus those reused from its cache); None when neither says.
    Hostile when relayed: a non-negative int below MAX_PROMPT_TOKENS only (a JSON bool is
    not a count)."""
    if not isinstance(body, dict):
        return None
    usage, timings = body.get("usage"), body.get("timings")
    if isinstance(usage, dict) and (n := _count(usage.get("prompt_tokens"))) is not None:
        return n
    if isinstance(timings, dict) and (n := _count(timings.get("prompt_n"))) is not None:
        return n + (_count(timings.get("cache_n")) or 0)
    return None


def whole_speed(body: Any, elapsed_ms: float, body_bytes: int, from_peer: bool) -> Speed | None:
    """Pure: the decode speed of one whole (non-streamed) answer, parsed body in hand.

    From llama.cpp's `timings` (`predicted_n` tokens in `predicted_ms`, after `prompt_ms` of
    prompt processing; at least two tokens) when the body has them: kind "engine". Otherwise
    completion tokens ÷ `elapsed_ms` (request received → body read) on this node's clock: kind
    "clock". None when neither can be read. A token count is capped at the body's size (every
    token is at least a byte of it), so a body cannot claim more tokens than it carries.

    `from_peer`: the body came from another node, so its timings are hostile. They must be
    finite and non-negative, and they cannot invent time: decode is taken as everything this
    node waited except the peer's prompt time (the mesh hop included, which is the
    through-mesh figure anyway), and the prompt may claim at most half of that wait. So a
    lying peer can shift time between prompt and decode, as with Server-Timing, but never
    claim a decode more than twice as fast as this node's own clock shows (tokens ÷ wait)."""
    engine = _engine_speed(body.get("timings") if isinstance(body, dict) else None,
                           elapsed_ms, body_bytes, from_peer)
    if engine is not None:
        return engine
    tokens = tokens_from_body(body)
    if tokens is None or not math.isfinite(elapsed_ms) or elapsed_ms <= 0:
        return None
    tokens = min(tokens, body_bytes)
    if tokens < 1:
        return None
    return Speed(tokens / (elapsed_ms / 1000), tokens, "clock")


def json_number(value: Any) -> float | None:
    """A finite, non-negative JSON number, else None (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _engine_speed(timings: Any, elapsed_ms: float, body_bytes: int,
                  from_peer: bool) -> Speed | None:
    if not isinstance(timings, dict):
        return None
    tokens = timings.get("predicted_n")
    decode_ms = json_number(timings.get("predicted_ms"))
    prompt_ms = json_number(timings.get("prompt_ms", 0.0))
    if (isinstance(tokens, bool) or not isinstance(tokens, int) or not 2 <= tokens <= body_bytes
            or decode_ms is None or decode_ms <= 0 or prompt_ms is None):
        return None
    if from_peer:
        if not math.isfinite(elapsed_ms) or elapsed_ms <= 0:
            return None
        decode_ms = elapsed_ms - min(prompt_ms, PEER_PROMPT_SHARE * elapsed_ms)
    # (n − 1) tokens over the decode time, as llama.cpp's own `predicted_per_second` and as
    # a stream's first → last token span: the first token's time is the prompt's.
    return Speed((tokens - 1) / (decode_ms / 1000), tokens, "engine")

"""Pure helpers that turn an OpenAI SSE stream's arrival times into TTFT and tokens/s.

Shared by the relay, the native baseline and the benchmark, so all three measure alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# First token: a chat delta or completion text that is not empty. Servers differ in JSON
# spacing (llama.cpp writes `"content":"x"`, Python's json `"content": "x"`).
CONTENT = re.compile(rb'"(?:content|text)":\s*"[^"]')
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
    for line in reversed(tail.split(b"\n")):
        if not line.startswith(b"data: {"):
            continue
        if b'"usage"' not in line and b'"timings"' not in line:
            continue
        try:
            event = json.loads(line[6:])
        except ValueError:
            continue  # the tail may start mid-event; an earlier line cannot be complete either
        return tokens_from_body(event)
    return None


def tokens_from_body(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    for section, key in _USAGE_TOKENS:
        part = body.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), int):
            return int(part[key])
    return None

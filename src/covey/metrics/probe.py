"""One streamed chat, timed from the client's side: shared by the native baseline and the
benchmark so both measure exactly alike."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from covey.metrics.timing import CONTENT, json_number, measure, tokens_from_body, usage_event

# A fixed synthetic prompt: measurements never use anything a user sent.
PROMPT = "Count from one to one hundred in words, separated by commas."


@dataclass(frozen=True)
class StreamStats:
    ttft_ms: float | None
    tokens_per_s: float | None
    tokens: int
    events: int  # SSE events received (chunks as the engine framed them)
    # llama.cpp's own time for the prompt (its `timings.prompt_ms`), after which the first
    # token comes: the engine's share of ttft_ms. None when the engine reports no timings.
    engine_ttft_ms: float | None = None
    # llama.cpp's own decode rate for this stream, first token to last (its `timings`).
    engine_tokens_per_s: float | None = None


def deterministic_chat(model: str, max_tokens: int, llama_cpp: bool) -> dict[str, Any]:
    """Temperature 0, seed 42; on llama.cpp `ignore_eos` so every run decodes max_tokens."""
    body: dict[str, Any] = {
        "model": model, "stream": True, "temperature": 0, "seed": 42, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if llama_cpp:
        body["ignore_eos"] = True
    return body


async def stream_chat(session: aiohttp.ClientSession, base_url: str,
                      body: dict[str, Any]) -> StreamStats:
    """POST `body` to `<base_url>/chat/completions` and time the stream as it arrives.

    Raises aiohttp.ClientResponseError on a non-200 answer. Sessions aimed straight at
    llama.cpp need `force_close=True` connectors (it drops connections after a stream)."""
    t0 = time.perf_counter()
    t_first = t_last = None
    tail = b""
    events = 0
    async with session.post(base_url + "/chat/completions", json=body) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_any():
            now = time.perf_counter()
            if CONTENT.search(chunk):
                t_first = t_first or now
                t_last = now
            events += chunk.count(b"data: ")
            tail = tail[-4096:] + chunk
    last = usage_event(tail)
    tokens = tokens_from_body(last) or 0
    result = measure(t0, t_first, t_last, tokens)
    return StreamStats(ttft_ms=result.ttft_ms, tokens_per_s=result.tokens_per_s,
                       tokens=tokens, events=events,
                       engine_ttft_ms=_timing(last, "prompt_ms"),
                       engine_tokens_per_s=_engine_rate(last))


def _timing(event: Any, key: str) -> float | None:
    """A finite, non-negative number from the event's llama.cpp `timings`, else None."""
    timings = event.get("timings") if isinstance(event, dict) else None
    return json_number(timings.get(key)) if isinstance(timings, dict) else None


def _engine_rate(event: Any) -> float | None:
    """(predicted_n - 1) tokens over predicted_ms: the span the client's rate covers too."""
    n, ms = _timing(event, "predicted_n"), _timing(event, "predicted_ms")
    return (n - 1) / (ms / 1000) if n is not None and ms and n >= 2 else None

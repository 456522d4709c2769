"""The prefill rate the SLA gate predicts from (metrics/timing.py), and errors carrying the
gate's headers (errors.py)."""

from __future__ import annotations

import pytest

from covey.errors import Busy, ModelNotFound
from covey.metrics.timing import (
    MAX_PROMPT_TOKENS,
    prefill_rate,
    prompt_tokens_from_body,
    usage_event,
)


@pytest.mark.parametrize(("tail", "tokens"), [
    (b'data: {"choices":[],"usage":{"prompt_tokens":42,"completion_tokens":3}}\n\n'
     b'data: [DONE]\n\n', 42),
    # llama.cpp's timings without usage: processed plus reused from its cache.
    (b'data: {"choices":[],"timings":{"prompt_n":2,"cache_n":30,"predicted_n":5}}\n\n', 32),
    (b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n', None),
    (b'ent":"x"}}]}\n\ndata: {"usage":{"prompt_tokens":7}}\n\n', 7),  # starts mid-event
    # Hostile or broken figures are not believed.
    (b'data: {"usage":{"prompt_tokens":-1}}\n\n', None),
    (b'data: {"usage":{"prompt_tokens":true}}\n\n', None),
    (b'data: {"usage":{"prompt_tokens":' + str(MAX_PROMPT_TOKENS + 1).encode() + b'}}\n\n',
     None),
])
def test_prompt_tokens_from_the_streams_last_event(tail: bytes, tokens: int | None) -> None:
    assert prompt_tokens_from_body(usage_event(tail)) == tokens


@pytest.mark.parametrize(("tokens", "ttft_ms", "rate"), [
    (100, 500.0, 200.0), (None, 500.0, None), (0, 500.0, None), (100, None, None),
    (100, 0.0, None), (100, float("nan"), None)])
def test_prefill_rate(tokens: int | None, ttft_ms: float | None, rate: float | None) -> None:
    assert prefill_rate(tokens, ttft_ms) == rate


def test_an_error_carries_headers_decided_before_it() -> None:
    exc = Busy("full", retry_after=2)
    exc.extra_headers["x-covey-sla-status"] = "meets-sla"
    assert exc.headers() == {"x-covey-sla-status": "meets-sla", "Retry-After": "2"}
    assert ModelNotFound("gone").headers() == {}

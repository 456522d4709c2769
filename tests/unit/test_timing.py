"""metrics/timing.py: TTFT and decode speed from arrival times; token counts from a stream tail."""

from __future__ import annotations

import pytest

from covey.metrics.timing import CONTENT, completion_tokens_from_tail, measure, tokens_from_body


@pytest.mark.parametrize(("t_first", "t_last", "tokens", "ttft", "tps"), [
    (1.1, 2.1, 11, 100.0, 10.0),  # (11 - 1) tokens over 1 s
    (1.25, 1.75, 2, 250.0, 2.0),
    (1.0, 3.0, 5, 0.0, 2.0),
    (None, None, 0, None, None),  # no first token: nothing to measure
    (None, 2.0, 3, None, None),
    (1.1, None, 5, 100.0, None),
    (1.1, 2.1, 1, 100.0, None),  # one token has no decode span
    (1.1, 2.1, 0, 100.0, None),
    (1.1, 1.1, 5, 100.0, None),  # every token in one read: speed cannot be seen
    (1.5, 1.2, 5, 500.0, None),  # a clock going backwards is not a speed
])
def test_measure(t_first: float | None, t_last: float | None, tokens: int,
                 ttft: float | None, tps: float | None) -> None:
    r = measure(1.0, t_first, t_last, tokens)
    assert r.completion_tokens == tokens
    if ttft is None:
        assert r.ttft_ms is None
    else:
        assert r.ttft_ms == pytest.approx(ttft)
    if tps is None:
        assert r.tokens_per_s is None
    else:
        assert r.tokens_per_s == pytest.approx(tps)


DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(("tail", "tokens"), [
    # llama.cpp's final event carries its timings
    (b'data: {"choices":[],"timings":{"predicted_n":7,"predicted_ms":70.0}}\n\n' + DONE, 7),
    # OpenAI-style usage (stream_options.include_usage)
    (b'data: {"choices":[],"usage":{"completion_tokens":9,"prompt_tokens":3}}\n\n' + DONE, 9),
    # both: usage is read first
    (b'data: {"usage":{"completion_tokens":4},"timings":{"predicted_n":5}}\n\n' + DONE, 4),
    # the last reporting event wins
    (b'data: {"usage":{"completion_tokens":1}}\n\n'
     b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
     b'data: {"usage":{"completion_tokens":2}}\n\n' + DONE, 2),
    # CRLF line endings
    (b'data: {"timings":{"predicted_n":6}}\r\n\r\ndata: [DONE]\r\n\r\n', 6),
    # the tail starts mid-event: the fragment is not a whole event
    (b'ge":{"completion_tokens":3}}\n\n' + DONE, None),
    (b'{"completion_tokens":3}}\n\ndata: {"choices":[]}\n\n' + DONE, None),
    # the tail ends mid-event: an earlier whole event still counts
    (b'data: {"usage":{"completion_tokens":4}}\n\ndata: {"usage":{"compl', 4),
    # no usage at all
    (b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n', None),
    (b'data: {"choices":[],"usage":null}\n\n' + DONE, None),
    (b'data: {"usage":{"completion_tokens":"9"}}\n\n' + DONE, None),
    (DONE, None),
    (b"", None),
])
def test_tokens_from_tail(tail: bytes, tokens: int | None) -> None:
    assert completion_tokens_from_tail(tail) == tokens


@pytest.mark.parametrize(("body", "tokens"), [
    ({"usage": {"completion_tokens": 12}}, 12),
    ({"timings": {"predicted_n": 8}}, 8),
    ({"usage": None, "timings": {"predicted_n": 8}}, 8),
    ({"usage": {}}, None),
    ({}, None),
    ([], None),
    (None, None),
])
def test_tokens_from_body(body: object, tokens: int | None) -> None:
    assert tokens_from_body(body) == tokens


@pytest.mark.parametrize(("chunk", "is_token"), [
    (b'"content":"x"', True),
    (b'"content": "x"', True),  # Python's json and others put a space after the colon
    (b'"content": ""', False),
    (b'"content": null', False),
    (b'"text":"x"', True),
    (b'"delta":{"content":"Hi"}', True),
    (b'"text":" Paris"', True),
    (b'"content":"\\n"', True),  # an escaped newline is a token
    (b'"content":null', False),
    (b'"delta":{"role":"assistant","content":null}', False),
    (b'"content":""', False),
    (b'"text":""', False),
    (b'"role":"assistant"', False),
])
def test_content_detection(chunk: bytes, is_token: bool) -> None:
    assert (CONTENT.search(chunk) is not None) is is_token

"""metrics/timing.py: TTFT and decode speed from arrival times; token counts from a stream tail."""

from __future__ import annotations

import pytest

from covey.metrics.samples import Speed
from covey.metrics.timing import (
    CONTENT,
    completion_tokens_from_tail,
    measure,
    prompt_tokens_from_body,
    tokens_from_body,
    usage_event,
    whole_speed,
)


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


# A whole llama.cpp answer's `timings`, as its server writes them (tools/server: prompt_n,
# prompt_ms, …, predicted_n, predicted_ms, predicted_per_token_ms, predicted_per_second).
def _timings(predicted_n: object = 100, predicted_ms: object = 2000.0,
             prompt_ms: object = 50.0) -> dict[str, object]:
    return {"usage": {"completion_tokens": 100},
            "timings": {"cache_n": 0, "prompt_n": 12, "prompt_ms": prompt_ms,
                        "prompt_per_token_ms": 4.0, "prompt_per_second": 240.0,
                        "predicted_n": predicted_n, "predicted_ms": predicted_ms,
                        "predicted_per_token_ms": 20.0, "predicted_per_second": 50.0}}


def test_whole_speed_from_the_engine_timings() -> None:
    assert whole_speed(_timings(), 2100.0, 4096, from_peer=False) == \
        Speed(pytest.approx(49.5), 100, "engine")  # (100 - 1) tokens in 2 s, as llama.cpp


def test_whole_speed_falls_back_to_the_node_clock() -> None:
    body = {"usage": {"completion_tokens": 30}}
    assert whole_speed(body, 1500.0, 4096, from_peer=False) == \
        Speed(pytest.approx(20.0), 30, "clock")


@pytest.mark.parametrize("body", [
    None, [], {}, {"usage": {"completion_tokens": 0}}, {"usage": {"completion_tokens": "3"}},
])
def test_whole_speed_without_anything_to_measure(body: object) -> None:
    assert whole_speed(body, 1000.0, 4096, from_peer=False) is None


@pytest.mark.parametrize("timings", [
    _timings(predicted_ms=float("nan")), _timings(predicted_ms=float("inf")),
    _timings(predicted_ms=-5.0), _timings(predicted_ms=0), _timings(predicted_ms="9"),
    _timings(predicted_ms=True), _timings(predicted_n=0), _timings(predicted_n=-3),
    _timings(predicted_n=2.5), _timings(predicted_n=True), _timings(predicted_n=1),
    _timings(prompt_ms=-1.0),
    _timings(prompt_ms=float("nan")), {"usage": {"completion_tokens": 100}, "timings": "fast"},
])
@pytest.mark.parametrize("from_peer", [False, True])
def test_bad_timings_are_ignored_for_the_clock(timings: dict[str, object],
                                               from_peer: bool) -> None:
    """Not finite, negative or mistyped: the node's own clock measures instead."""
    assert whole_speed(timings, 2000.0, 4096, from_peer) == \
        Speed(pytest.approx(50.0), 100, "clock")


def test_a_body_cannot_claim_more_tokens_than_it_carries() -> None:
    assert whole_speed(_timings(predicted_n=10**9), 2000.0, 4096, False) == \
        Speed(pytest.approx(50.0), 100, "clock")
    assert whole_speed({"usage": {"completion_tokens": 10**9}}, 1000.0, 300, False) == \
        Speed(pytest.approx(300.0), 300, "clock")


@pytest.mark.parametrize(("prompt_ms", "predicted_ms", "elapsed_ms", "decode_ms"), [
    (50.0, 2000.0, 2100.0, 2050.0),  # honest: the 50 ms hop is charged to decode
    (50.0, 1.0, 2100.0, 2050.0),  # claims a 100 000 tok/s decode: held to the clock
    (0.0, 5000.0, 2100.0, 2100.0),  # claims more time than the entry waited
    (10_000.0, 1.0, 2100.0, 1050.0),  # claims it was all prompt: at most half of it
    (900.0, 1000.0, 2100.0, 1200.0),  # a long prompt, honestly: granted in full
])
def test_a_peer_cannot_invent_time(prompt_ms: float, predicted_ms: float, elapsed_ms: float,
                                   decode_ms: float) -> None:
    body = _timings(predicted_ms=predicted_ms, prompt_ms=prompt_ms)
    assert whole_speed(body, elapsed_ms, 4096, from_peer=True) == \
        Speed(pytest.approx(99 / (decode_ms / 1000)), 100, "engine")


def test_a_local_engine_is_taken_at_its_word() -> None:
    """This node's own engine: its timings are the decode rate, whatever the wall clock."""
    assert whole_speed(_timings(predicted_ms=1000.0), 5000.0, 4096, from_peer=False) == \
        Speed(pytest.approx(99.0), 100, "engine")


def test_the_rate_agrees_with_llama_cpps_own() -> None:
    """A real whole answer's timings (the embedded Gemma 3 270M via xllamacpp, 8 tokens)."""
    timings = {"cache_n": 0, "prompt_n": 28, "prompt_ms": 926.705,
               "prompt_per_token_ms": 33.096607142857145, "prompt_per_second": 30.21457745452976,
               "predicted_n": 8, "predicted_ms": 99.696,
               "predicted_per_token_ms": 14.242285714285714,
               "predicted_per_second": 70.2134488846092}
    body = {"usage": {"completion_tokens": 8}, "timings": timings}
    speed = whole_speed(body, 1100.0, 900, from_peer=False)
    assert speed == Speed(pytest.approx(timings["predicted_per_second"]), 8, "engine")


@pytest.mark.parametrize(("body", "tokens"), [
    ({"usage": {"prompt_tokens": 12, "completion_tokens": 3}}, 12),
    ({"timings": {"prompt_n": 9}}, 9),  # llama.cpp without usage
    ({"usage": {"prompt_tokens": 5}, "timings": {"prompt_n": 2}}, 5),  # usage first
    ({"usage": {"prompt_tokens": True}}, None),  # a bool is not a count
    ({"usage": {"prompt_tokens": -4}}, None),
    ({"usage": {"prompt_tokens": 1.5}}, None),
    ({"usage": "lots"}, None),
    ([], None),
    (None, None),
])
def test_prompt_tokens_from_body(body: object, tokens: int | None) -> None:
    assert prompt_tokens_from_body(body) == tokens


def test_usage_event_from_tail() -> None:
    tail = (b'data: {"choices":[]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":4,'
            b'"completion_tokens":2}}\n\ndata: [DONE]\n\n')
    assert prompt_tokens_from_body(usage_event(tail)) == 4
    assert usage_event(b'data: {"choices":[]}\n\n') is None

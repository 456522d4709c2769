"""The bench's time to first token outside the engine: llama.cpp's own prompt time read from
a stream's last event, taken out of each sample before paths are compared."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from covey.bench.relay import Side, _added_outside, _pace_ratio, _paces, goals
from covey.metrics.probe import StreamStats, stream_chat


async def _stream_from(body: bytes) -> Any:
    """One stream_chat against a server that answers every chat with `body`."""
    async def chat(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        return await stream_chat(session, str(server.make_url("/v1")), {"model": "m"})


def _sse(timings: Any) -> bytes:
    first = {"choices": [{"delta": {"content": "Hi"}, "index": 0}]}
    last = {"choices": [{"delta": {}, "finish_reason": "length", "index": 0}],
            "usage": {"completion_tokens": 1}, "timings": timings}
    events = [json.dumps(first), json.dumps(last), "[DONE]"]
    return "".join(f"data: {e}\n\n" for e in events).encode()


@pytest.mark.parametrize(("timings", "expected"), [
    ({"prompt_ms": 41.5, "predicted_n": 1}, 41.5),
    ({"prompt_ms": 0, "predicted_n": 1}, 0.0),
    ({"prompt_ms": -3.0}, None),  # a negative time is not believed
    ({"prompt_ms": True}, None),
    ({"prompt_ms": "41"}, None),
    ({}, None),
    (None, None),  # an engine that is not llama.cpp sends no timings
])
async def test_the_engines_prompt_time_comes_from_the_last_event(
        timings: Any, expected: float | None) -> None:
    stats = await _stream_from(_sse(timings))
    assert stats.ttft_ms is not None and stats.tokens == 1
    assert stats.engine_ttft_ms == expected
    assert stats.engine_tokens_per_s is None  # one token: no decode span


@pytest.mark.parametrize(("timings", "expected"), [
    ({"predicted_n": 11, "predicted_ms": 500.0}, 20.0),  # 10 tokens after the first, in 0.5 s
    ({"predicted_n": 1, "predicted_ms": 0.5}, None),
    ({"predicted_n": 11, "predicted_ms": 0}, None),
    ({"predicted_n": 11, "predicted_ms": -5.0}, None),
    ({"predicted_n": 11}, None),
])
async def test_the_engines_own_decode_rate_comes_from_the_last_event(
        timings: Any, expected: float | None) -> None:
    stats = await _stream_from(_sse(timings))
    assert stats.engine_tokens_per_s == expected


async def test_a_non_finite_prompt_time_is_not_believed() -> None:
    # Python's json reads NaN and Infinity; a hostile or broken engine may send them.
    for word in (b"NaN", b"Infinity"):
        body = _sse({"prompt_ms": 1.0}).replace(b'"prompt_ms": 1.0', b'"prompt_ms": ' + word)
        stats = await _stream_from(body)
        assert stats.engine_ttft_ms is None


def test_added_outside_the_engine_pairs_samples_and_skips_untimed_ones() -> None:
    direct = Side("d", None, outside=[5.0, 6.0, None, 7.0])
    through = Side("t", 1, outside=[7.0, 8.5, 9.0, None])
    # Pairs 0 and 1 only: 2.0 and 2.5, nearest-rank median 2.0.
    assert _added_outside(through, direct) == 2.0
    assert _added_outside(Side("x", 1, outside=[None] * 4), direct) is None


def test_two_token_answers_are_paired_apart_from_one_token_ones() -> None:
    direct = Side("d", None, outside=[5.0], outside_2=[5.0, 6.0])
    through = Side("t", 1, outside=[9.0], outside_2=[6.0, 7.5])
    assert _added_outside(through, direct) == 4.0
    assert _added_outside(through, direct, two_tokens=True) == 1.0
    assert _added_outside(Side("x", 1, outside_2=[None] * 2), direct, two_tokens=True) is None


def test_rates_beside_the_engine_cancel_its_drift() -> None:
    """The engine ran at 40 then 30 tok/s; a relay that kept pace with it reads 1.0 though
    its raw rate is a quarter below the direct stream's."""
    direct = [StreamStats(50.0, 40.0, 64, 64, engine_tokens_per_s=40.0)]
    through = [StreamStats(51.0, 30.0, 64, 64, engine_tokens_per_s=30.0),
               StreamStats(51.0, 30.0, 64, 64)]  # no timings: left out
    assert _paces(through) == [1.0]
    assert _pace_ratio(_paces(through), _paces(direct)) == 1.0
    assert _pace_ratio([], _paces(direct)) is None


def test_the_mesh_ratio_is_judged_and_unjudged_when_unmeasured() -> None:
    assert goals({"mesh_ttft_added_ratio": 1.8})["mesh_ttft_added_ratio"] == {
        "goal": 2.0, "met": True}
    assert goals({"mesh_ttft_added_ratio": 2.6})["mesh_ttft_added_ratio"]["met"] is False
    assert goals({"mesh_ttft_added_ratio": None})["mesh_ttft_added_ratio"]["met"] is None
    assert goals({"mesh_ttft_added_ratio_2_tokens": 2.2})[
        "mesh_ttft_added_ratio_2_tokens"] == {"goal": 2.0, "met": False}

"""router/proxy.py's mesh-share hook: each complete answer to a client's request is counted
once, by who answered, with the prompt and completion tokens the answer reported; requests
relayed for peers, probes, failures and streams the engine broke are not counted.

An in-process fake engine (aiohttp) stands in for llama.cpp: this is about counting."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from covey.errors import CoveyError
from covey.router.proxy import ACCOUNT, T_RECEIVED, Relay
from covey.router.table import ServedModel
from covey.types import EngineReady
from tests.unit.test_table import _served


@dataclass
class Engine:
    usage: dict[str, Any] | None = field(default_factory=lambda: {
        "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    status: int = 200
    break_stream: bool = False
    words: tuple[str, ...] = ("a", "b", "c")


async def _engine_app(engine: Engine) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if engine.status != 200:
            return web.json_response({"error": {"message": "boom"}}, status=engine.status)
        extra = {"usage": engine.usage} if engine.usage else {}
        if not body.get("stream"):
            return web.json_response({"choices": [{"message": {"content": "a b c"}}], **extra})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in engine.words:
            chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if engine.break_stream:
            assert request.transport is not None
            request.transport.close()  # the engine dies mid-answer
            return resp
        final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra}
        await resp.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@dataclass
class Setup:
    engine: Engine
    model: ServedModel
    url: str
    answers: list[tuple[str, int | None, int]]


# A llama.cpp engine's streams are read off its socket (router/engine_stream.py); any other
# backend's, like a peer's, through aiohttp: both paths count alike.
@pytest.fixture(params=["llama.cpp", "attached"])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    engine = Engine()
    answers: list[tuple[str, int | None, int]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        server = TestServer(await _engine_app(engine))
        await server.start_server()
        model = _served("m", EngineReady(base_url=str(server.make_url("/v1"))), slots=4)
        model.engine.kind = request.param
        relay = Relay(s, on_answer=lambda *a: answers.append(a))

        async def handle(req: web.Request) -> web.StreamResponse:
            req[T_RECEIVED] = time.perf_counter()
            if req.query.get("client") == "1":
                req[ACCOUNT] = True
            body = await req.read()
            try:
                return await relay.forward(req, model, "/chat/completions", body,
                                           stream=json.loads(body).get("stream", False),
                                           headers={},
                                           measure=req.query.get("probe") != "1")
            except CoveyError as exc:
                return web.json_response({"error": exc.message}, status=502)

        app = web.Application()
        app.router.add_post("/chat", handle)
        front = TestServer(app)
        await front.start_server()
        yield Setup(engine, model, str(front.make_url("/chat")), answers)
        await front.close()
        await server.close()


async def _ask(url: str, stream: bool, **query: str) -> int:
    async with aiohttp.ClientSession() as s, s.post(
            url, params=query, json={"model": "m", "stream": stream}) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize("stream", [True, False])
async def test_a_clients_answer_counts_once_with_its_tokens(setup: Setup, stream: bool) -> None:
    assert await _ask(setup.url, stream, client="1") == 200
    assert setup.answers == [("local", 7, 3)]


@pytest.mark.parametrize("stream", [True, False])
async def test_the_serving_kind_is_the_models_source(setup: Setup, stream: bool) -> None:
    setup.model.source = "provider"
    assert await _ask(setup.url, stream, client="1") == 200
    assert setup.answers == [("provider", 7, 3)]


@pytest.mark.parametrize("stream", [True, False])
async def test_no_usage_counts_prompt_as_unknown(setup: Setup, stream: bool) -> None:
    setup.engine.usage = None
    assert await _ask(setup.url, stream, client="1") == 200
    # Streamed: the relay's estimate, one event per token less the final one and [DONE]
    # (3 here); whole: no count to read, so 0.
    assert setup.answers == [("local", None, 3 if stream else 0)]


@pytest.mark.parametrize(("query", "why"), [
    ({}, "relayed for a peer: its entry counts it"),
    ({"client": "1", "probe": "1"}, "a health probe"),
])
async def test_not_counted(setup: Setup, query: dict[str, str], why: str) -> None:
    for stream in (True, False):
        assert await _ask(setup.url, stream, **query) == 200
    assert setup.answers == [], why


async def test_failures_are_answered_by_nobody(setup: Setup) -> None:
    setup.engine.status = 500
    assert await _ask(setup.url, True, client="1") == 502
    assert await _ask(setup.url, False, client="1") == 502
    setup.engine.status, setup.engine.break_stream = 200, True
    assert await _ask(setup.url, True, client="1") == 200  # the stream ends in an error event
    assert setup.answers == []

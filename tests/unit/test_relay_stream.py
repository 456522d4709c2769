"""router/proxy.py's stream relay under the client's conditions: a client that reads slower
than the engine writes, and an HTTP/1.0 client (no chunked framing). Both paths: a llama.cpp
engine's stream read off its socket, and any other upstream's through aiohttp.

The in-process fake engine of test_relay_accounting stands in for llama.cpp: this is about
framing and flow control."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
import pytest

from covey.router import proxy
from tests.unit.test_relay_accounting import Setup, setup  # noqa: F401  (the fixture)

WORDS = tuple(f"w{i:04d}" + "x" * 500 for i in range(600))  # ~0.4 MB of events


def _words(sse: bytes) -> list[str]:
    out = []
    for line in sse.split(b"\n"):
        if line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"][0].get("delta", {})
            if "content" in delta:
                out.append(delta["content"])
    return out


async def test_a_client_that_falls_behind_gets_every_event_in_order(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # A tiny backlog: the relay stops reading the engine and drains after nearly every write.
    monkeypatch.setattr(proxy, "WRITE_BACKLOG", 1024)
    setup.engine.words = WORDS
    async with aiohttp.ClientSession() as s, s.post(
            setup.url, json={"model": "m", "stream": True}) as r:
        got = b""
        async for piece in r.content.iter_chunked(4096):
            got += piece
            await asyncio.sleep(0)  # the client reads slowly: the next read waits a turn
    assert r.status == 200
    assert _words(got) == list(WORDS)
    assert got.rstrip().endswith(b"data: [DONE]")


async def test_an_http_1_0_client_gets_the_stream_unframed(setup: Setup) -> None:  # noqa: F811
    url = urlsplit(setup.url)
    body = json.dumps({"model": "m", "stream": True}).encode()
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"POST %b HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%b" % (url.path.encode(), len(body), body))
    answer = await asyncio.wait_for(reader.read(), 30)  # HTTP/1.0: the end is the close
    writer.close()
    head, _, sse = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert sse.startswith(b"data: ")  # no chunk-size line in front
    assert _words(sse) == ["a", "b", "c"]
    assert sse.rstrip().endswith(b"data: [DONE]")


async def test_the_aiohttp_reply_drains_through_its_writer() -> None:
    """`drain()` waits on the response's writer (StreamResponse.drain is deprecated: with
    warnings as errors here, calling it would fail the answer)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def handle(request: web.Request) -> web.StreamResponse:
        reply = proxy._AiohttpReply(request)
        transport = await reply.start({"Content-Type": "text/event-stream"})
        assert transport is not None and reply.chunked
        event = b"data: one\n\n"
        transport.write(b"%x\r\n%b\r\n" % (len(event), event))
        await reply.drain()
        await reply.end(b"data: [DONE]\n\n")
        assert reply.response is not None
        return reply.response

    app = web.Application()
    app.router.add_post("/s", handle)
    async with TestServer(app) as server, aiohttp.ClientSession() as s, s.post(
            server.make_url("/s")) as r:
        body = await r.read()
    assert r.status == 200 and body.endswith(b"data: [DONE]\n\n")

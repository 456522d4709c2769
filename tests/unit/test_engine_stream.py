"""router/engine_stream.py: a local engine's streamed answer read straight off its socket.

A scripted asyncio server stands in for llama.cpp: these tests are about HTTP framing, flow
control and failures, which a real engine cannot be made to produce on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from covey.router import engine_stream
from covey.router.engine_stream import DRAIN, GO, STOP, EngineStreamError, open_stream

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Engine:
    """Serves `script` to each connection; remembers what was asked and when it hung up."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.hung_up = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        self.requests.append(head + await reader.readexactly(length))
        try:
            await self.script(reader, writer)
            await writer.drain()
            await reader.read()  # until the relay closes its end
            self.hung_up.set()
        except ConnectionError:
            self.hung_up.set()
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[tuple[Engine, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> tuple[Engine, str]:
        engine = Engine(script)
        server = await asyncio.start_server(engine.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return engine, f"http://127.0.0.1:{port}/v1/chat/completions"

    yield start
    for server in servers:
        server.close()


def collect(into: list[bytes], verdict: Callable[[bytes], int] = lambda _: GO
            ) -> Callable[[bytes], int]:
    def sink(piece: bytes) -> int:
        into.append(piece)
        return verdict(piece)
    return sink


async def no_drain() -> None:
    raise AssertionError("nothing asked to drain")


async def test_pieces_reach_the_sink_in_order_and_the_request_is_well_formed(serve) -> None:
    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        # The first piece comes with the headers, before any sink is attached.
        w.write(HEAD + chunk(b"data: a\n\n"))
        await w.drain()
        for word in (b"b", b"c"):
            w.write(chunk(b"data: " + word + b"\n\n"))
            await w.drain()
        w.write(b"0\r\n\r\n")

    engine, url = await serve(script)
    stream = await open_stream(url, b'{"stream": true}', cap=1 << 20)
    got: list[bytes] = []
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        await stream.relay(collect(got), no_drain)
    finally:
        stream.close()
    assert b"".join(got) == b"data: a\n\ndata: b\n\ndata: c\n\n"
    (request,) = engine.requests
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert request.endswith(b'\r\n\r\n{"stream": true}')


async def test_an_error_answer_gives_its_status_headers_and_body(serve) -> None:
    body = b'{"error": {"message": "context too long"}}'

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body))

    _, url = await serve(script)
    stream = await open_stream(url, b"{}", cap=1 << 20)
    try:
        assert (stream.status, stream.headers.get("retry-after")) == (503, "7")
        assert await stream.content.read(1 << 16) == body
        assert await stream.content.read(5) == body[:5]
    finally:
        stream.close()


async def test_an_engine_that_dies_mid_answer_is_an_error_not_an_end(serve) -> None:
    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunk(b"data: a\n\n"))
        await w.drain()
        w.transport.abort()

    _, url = await serve(script)
    stream = await open_stream(url, b"{}", cap=1 << 20)
    got: list[bytes] = []
    with pytest.raises(EngineStreamError, match="closed the connection"):
        await stream.relay(collect(got), no_drain)
    stream.close()
    assert got == [b"data: a\n\n"]


@pytest.mark.parametrize("answer, why", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not valid HTTP"),
    (HEAD + chunk(b"x" * 64) + chunk(b"y" * 64), "more than the answer's cap"),
])
async def test_bad_http_and_answers_over_the_cap_are_errors(serve, answer: bytes,
                                                            why: str) -> None:
    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(answer)

    engine, url = await serve(script)
    stream = await open_stream(url, b"{}", cap=100)
    with pytest.raises(EngineStreamError, match=why):
        await stream.relay(collect([]), no_drain)
    await asyncio.wait_for(engine.hung_up.wait(), 10)  # the connection was dropped
    stream.close()


async def test_a_stopped_stream_drops_the_connection_so_the_engine_stops(serve) -> None:
    go_on = asyncio.Event()

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunk(b"data: a\n\n") + chunk(b"data: [DONE]\n\n"))
        await w.drain()
        await go_on.wait()
        w.write(chunk(b"data: never seen\n\n"))

    engine, url = await serve(script)
    stream = await open_stream(url, b"{}", cap=1 << 20)
    got: list[bytes] = []
    await stream.relay(collect(got, lambda p: STOP if b"[DONE]" in p else GO), no_drain)
    go_on.set()
    stream.close()
    await asyncio.wait_for(engine.hung_up.wait(), 10)
    assert b"".join(got) == b"data: a\n\ndata: [DONE]\n\n"


async def test_a_client_that_falls_behind_pauses_reading_and_loses_nothing(serve) -> None:
    pieces = [b"data: %d\n\n" % i for i in range(200)]

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        # All in one write, so one socket read holds many pieces: those after a DRAIN in
        # the same read must wait for the sink, not vanish.
        w.write(HEAD + b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n")

    _, url = await serve(script)
    stream = await open_stream(url, b"{}", cap=1 << 20)
    got: list[bytes] = []
    drains = 0

    async def drain() -> None:
        nonlocal drains
        drains += 1

    try:
        await stream.relay(collect(got, lambda _: DRAIN), drain)
    finally:
        stream.close()
    assert b"".join(got) == b"".join(pieces)
    assert drains == len(got)


async def test_an_engine_silent_past_the_idle_limit_is_an_error(serve, monkeypatch) -> None:
    monkeypatch.setattr(engine_stream, "IDLE_S", 0.2)
    hold = asyncio.Event()

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunk(b"data: a\n\n"))
        await w.drain()
        await hold.wait()

    _, url = await serve(script)
    stream = await open_stream(url, b"{}", cap=1 << 20)
    with pytest.raises(EngineStreamError, match="sent nothing"):
        await stream.relay(collect([]), no_drain)
    hold.set()
    stream.close()


async def test_no_engine_listening_is_an_oserror() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await open_stream(f"http://127.0.0.1:{port}/v1/chat/completions", b"{}", cap=100)

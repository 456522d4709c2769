"""A streamed answer from this node's own llama.cpp engine, relayed from its socket.

A relay wakes once per token, and on a virtual machine the wake-up alone is most of what it
costs (`covey bench` measures a bare byte pipe beside the node for that reason). Read through
aiohttp's client, each chunk then also went through a StreamReader, a future, a task step and
two async iterators before the relay saw it: about 60 µs per chunk on a 2-core VM, next to
~80 µs for the wake-up. Here llama.cpp's bytes go to llhttp (httptools) in the protocol's
`data_received`, and each chunk of the body is handed to a sink in that same callback; the
handler's task sleeps until the answer ends, the sink stops it, or the client falls behind.

Used for the node's supervised llama.cpp engines (a loopback HTTP/1.1 server that answers a
stream with chunked SSE, a connection per answer) and for peers' streamed answers, on kept TLS
connections (mesh/peer_stream.py hands a finished one back through `release`). Whole answers
and attached backends go through aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

CONNECT_S: Final = 5.0  # as the engine session's sock_connect (node.py)
IDLE_S: Final = 600.0  # as its sock_read: the longest an engine may stay silent
MAX_HEADERS: Final = 64  # llama.cpp sends under ten

# What a sink says after each piece of the body.
GO: Final = 0  # send more
DRAIN: Final = 1  # the client is behind: stop reading the engine until it has caught up
STOP: Final = 2  # done (or the client left): deliver nothing more

Sink = Callable[[bytes], int]


class EngineStreamError(Exception):
    """The engine broke the answer: closed early, spoke bad HTTP, stalled, or sent too much."""


class EngineStream(asyncio.Protocol):
    """One request's connection to the engine. Use `open_stream()`; then `relay()` (a 200) or
    `content.read()` (an error's body); `close()` in every case.

    `who` names the other end in errors. `release`: given the connection at `close()` when
    the answer ended whole and the server keeps the connection (HTTP/1.1 keep-alive), instead
    of closing it."""

    def __init__(self, request: bytes, cap: int, who: str = "the engine",
                 release: Callable[[asyncio.Transport], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._request = request
        self._who = who
        self._release = release
        self._left = cap
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.status = 0
        self._keep_alive = False
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._headers_done: asyncio.Future[None] = loop.create_future()
        self._ended: asyncio.Future[None] = loop.create_future()
        self._wakeup: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._verdict = GO
        # Body the sink has not seen: it came before the sink was attached, or in the same
        # read as a DRAIN (pausing stops the next read, not the rest of this one).
        self._pending: list[bytes] = []
        self.reads = 0  # socket reads so far: the idle watchdog's evidence of life

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"{self._who}'s answer is not valid HTTP ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"{self._who} closed the connection before the answer ended")

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_HEADERS:
            self._fail(f"{self._who} sent too many headers")
            return
        self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        # Read here: llhttp forgets the message's keep-alive flag once the message ends.
        self._keep_alive = self._parser.should_keep_alive()
        if not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._left -= len(body)
        if self._left < 0:
            self._fail(f"{self._who} sent more than the answer's cap")
        elif self._verdict == GO and self._sink is not None:
            self._verdict = self._sink(body)
            if self._verdict != GO:
                self._pause()
        elif self._verdict != STOP:
            self._pending.append(body)

    def on_message_complete(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)
        self._wake()

    # the handler's side

    @property
    def content(self) -> EngineStream:
        return self  # aiohttp's shape, for the error path: `upstream.content.read(n)`

    async def read(self, n: int = -1) -> bytes:
        """The body of a whole (error) answer, at most `n` bytes."""
        with contextlib.suppress(EngineStreamError):
            await self._wait(self._ended)
        body = b"".join(self._pending)
        return body if n < 0 else body[:n]

    async def started(self) -> None:
        """Until the answer's headers have come; raises EngineStreamError if they cannot."""
        await self._wait(self._headers_done)
        self._headers_done.result()

    async def relay(self, sink: Sink, drain: Callable[[], Awaitable[None]]) -> None:
        """Hand each piece of the body to `sink` as it arrives, until the answer ends or the
        sink says STOP; on DRAIN, reading pauses until `drain()` returns. Raises
        EngineStreamError if the engine broke the answer first."""
        self._sink = sink
        self._feed_pending()
        while True:
            if self._verdict == STOP:
                return
            if self._verdict == DRAIN:
                await drain()
                self._verdict = GO
                self._feed_pending()
                if self._verdict == GO:
                    self._resume()
                continue
            if self._ended.done():
                self._ended.result()  # raises what broke it
                return
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wait(self._wakeup, self._ended)

    def close(self) -> None:
        """Drop the connection: for an unfinished answer, that is how llama.cpp learns to stop
        generating and free the slot. A finished one goes to `release` where it may."""
        transport = self._transport
        if transport is not None and self._release is not None and self._reusable():
            self._transport = None
            self._release(transport)
        elif transport is not None:
            transport.close()
        self._fail("closed")  # wakes nothing left waiting; a finished answer keeps its result

    # internals

    def _reusable(self) -> bool:
        ended = self._ended
        # Whole on the wire: what the sink was not given is the caller's business.
        return (ended.done() and not ended.cancelled() and ended.exception() is None
                and self._keep_alive)

    async def _wait(self, *futures: asyncio.Future[None]) -> None:
        """Until one of `futures` is done, raising if the engine goes silent for IDLE_S."""
        while True:
            reads = self.reads
            done, _ = await asyncio.wait(futures, timeout=IDLE_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if done:
                return
            if self.reads == reads:
                self._fail(f"{self._who} sent nothing for {IDLE_S:.0f} s")

    def _feed_pending(self) -> None:
        assert self._sink is not None
        pending, self._pending = self._pending, []
        for i, piece in enumerate(pending):
            self._verdict = self._sink(piece)
            if self._verdict != GO:
                if self._verdict == DRAIN:
                    self._pending = pending[i + 1:]
                return

    def _pause(self) -> None:
        # After a STOP, a connection that may be kept reads on to the answer's end (the few
        # bytes that close the chunked body), which `close()` needs to see to keep it.
        keep_reading = self._verdict == STOP and self._release is not None
        if not keep_reading and self._transport is not None \
                and not self._transport.is_closing():
            self._transport.pause_reading()
        self._wake()

    def _resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _fail(self, why: str) -> None:
        error = EngineStreamError(why)
        for future in (self._headers_done, self._ended):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: whoever waits next raises it, none may
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._wake()


async def open_stream(url: str, body: bytes, cap: int) -> EngineStream:
    """POST `body` (JSON) to `url` on a local engine; the stream once its headers arrived.
    Raises OSError, TimeoutError or EngineStreamError when the engine does not answer."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
               ).encode("latin-1") + body
    stream = EngineStream(request, cap)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(CONNECT_S):
            await loop.create_connection(lambda: stream, host, port)
        await stream.started()
    except BaseException:  # cancelled too: a connection made meanwhile must not linger
        stream.close()
        raise
    return stream

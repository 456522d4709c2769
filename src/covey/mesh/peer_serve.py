"""The mesh listener, and a peer's streamed prompt served off its socket: the serving side's
hot path.

The entry reads a peer's streamed answer off its socket (mesh/peer_stream.py). On the serving
node, each such prompt went through aiohttp's server first: its request objects, a task, the
router and the middleware, ~0.5 ms on a 2-core VM before the prompt reached the engine, on the
path of every relayed first token (docs/bench.md). Here each connection's requests are read
with llhttp (httptools), and a streamed prompt a peer sent over TLS is served here, after the
same checks the peer app makes:
- the caller is a member: its headers name one (or the connection is one an earlier signed
  request proved, mesh/transport.py), checked before the body is read; then the signature
  over the body, before the body is parsed;
- the body is what `serve_for_peer` would take (the OpenAI schema, a stream).
It is answered by the same relay (`Relay.stream_to`).

Anything else (another endpoint, a whole answer, a request those checks refuse, bad or odd
HTTP) goes to the peer app's aiohttp server, which is given the connection for good with
every byte received on it so far: it answers, or refuses, exactly as it would have, and
nothing was taken here before it got them (at most a member certificate the request carried
was learnt, as the app learns it, and a signature checked without its nonce being kept). So
this module never answers a request it did not take; one it took is answered as the app
would: an OpenAI error body before the first byte, the relay's in-band error after it.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import httptools
from aiohttp import web
from multidict import CIMultiDict

from covey.errors import CoveyError, error_body
from covey.mesh.peer_api import MAX_BODY, admit_caller_cert
from covey.mesh.state import MeshState
from covey.mesh.transport import H_BOUND, H_SIG, Claim, PeerRefused, RequestVerifier
from covey.router.proxy import StreamReply

log = logging.getLogger(__name__)

PREFIX: Final = "/mesh/v1/"
MAX_HEAD: Final = 16 * 1024  # request line and headers, before they go to aiohttp instead
MAX_HEADERS: Final = 64
IDLE_S: Final = 75.0  # aiohttp's keep-alive timeout: a kept connection's longest silence

# A peer's streamed prompt, parsed and checked, to be served into `reply` for the calling
# node (its id), with the request's headers and when it arrived (perf_counter()).
ServePeerStream = Callable[[StreamReply, str, Mapping[str, str], float], Awaitable[None]]
# (endpoint under /mesh/v1/, body) → how to serve it, or None: not a streamed prompt this
# node takes (api/openai.py: `OpenAIRoutes.admit_peer_stream`).
AdmitPeerStream = Callable[[str, bytes], ServePeerStream | None]
ServerFactory = Callable[[], asyncio.Protocol]  # the peer app's: aiohttp's web.Server


class _HandOver(Exception):
    """Raised in a parser callback: this request is aiohttp's."""


class _Connection(asyncio.Protocol):
    """One connection to the mesh listener, until it is handed to aiohttp."""

    def __init__(self, listener: PeerListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.tls: object | None = None  # the connection's SSLObject (None: not TLS)
        self.serving: asyncio.Task[None] | None = None
        self._extra = False  # bytes came while an answer was going out: close after it
        self._paused = False
        self._drained: list[asyncio.Future[None]] = []
        self._idle: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._received = bytearray()  # every byte of the request so far, for aiohttp
        self._url = bytearray()
        self._head = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body = bytearray()
        self._claim: Claim | None = None
        self._t_received = 0.0
        self._keep = True  # HTTP/1.1 keeps the connection unless the request said close

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here.
        self.transport = transport  # type: ignore[assignment]
        self.tls = transport.get_extra_info("ssl_object")
        self.listener.live.add(self)
        self._start_idle()

    def data_received(self, data: bytes) -> None:
        if self.serving is not None:
            self._extra = True  # a peer never sends before its answer ended
            return
        self._stop_idle()  # silent for IDLE_S from now on, it closes
        self._start_idle()
        self._received += data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self.serving is not None:  # bytes after the request it took
                self._extra = True
            else:  # bad HTTP, or a request that is aiohttp's
                self._hand_over()

    def eof_received(self) -> bool:
        return False  # close: a half-closed peer connection has nothing more to ask

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.live.discard(self)
        self._stop_idle()
        self._paused = False
        self._wake_drained()
        if self.serving is not None:
            # As aiohttp's handler_cancellation: the relay closes the engine's connection,
            # which stops generating and frees the slot.
            self.serving.cancel()

    # httptools callbacks (a raise stops the parser: see data_received)

    def on_message_begin(self) -> None:
        if self.serving is not None:
            raise _HandOver  # pipelined after a request it took: see data_received

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value))
        if len(self._headers) >= MAX_HEADERS:
            raise _HandOver
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        parser = self._parser
        length = self._headers.get("Content-Length", "")
        path = self._url.decode("latin-1")
        if (self.tls is None or parser.get_method() != b"POST"
                or parser.get_http_version() != "1.1" or not path.startswith(PREFIX)
                or "Transfer-Encoding" in self._headers or "Expect" in self._headers
                or not length.isdigit() or int(length) > MAX_BODY):
            raise _HandOver
        self._t_received = time.perf_counter()
        self._keep = parser.should_keep_alive()
        listener = self.listener
        now = listener.clock()
        try:
            if H_SIG in self._headers:  # a signed call may bring its member certificate
                admit_caller_cert(listener.state, self._headers, now)
            # Membership and freshness from the headers alone, before the body is read.
            self._claim = listener.verifier.claim(self._headers, now, connection=self.tls)
        except PeerRefused:
            raise _HandOver from None  # refused there the same way, with its reason

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        listener, claim = self.listener, self._claim
        assert claim is not None and self.transport is not None
        path, body = self._url.decode("latin-1"), bytes(self._body)
        verifier = listener.verifier
        held = verifier.holds(self.tls, claim)  # proved by this connection: nothing to check
        try:
            if not held:
                verifier.verify_signature(claim, "POST", path, body)
            serve = listener.admit(path[len(PREFIX):], body)
            if serve is None:
                raise _HandOver
            # Taken: a signed one's nonce is remembered, its connection is its node's.
            peer = claim.node_id if held else verifier.commit(claim, listener.clock(), self.tls)
        except PeerRefused:
            raise _HandOver from None
        reply = _Reply(self, verifier.vouches(self.tls, peer))
        self._stop_idle()
        self.serving = asyncio.get_running_loop().create_task(
            self._serve(serve, reply, peer, self._headers, self._t_received))

    # internals

    async def drained(self) -> None:
        """Until the transport's buffer is below its low-water mark (as aiohttp's drain)."""
        if self._paused:
            waiter = asyncio.get_running_loop().create_future()
            self._drained.append(waiter)
            await waiter

    def _wake_drained(self) -> None:
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _start_idle(self) -> None:
        # As aiohttp's keep-alive timeout: a connection silent this long with no answer in
        # progress (idle, or a request that stopped half-way) closes.
        self._idle = asyncio.get_running_loop().call_later(IDLE_S, self._idle_out)

    def _stop_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_out(self) -> None:
        if self.serving is None and self.transport is not None:
            self.transport.close()

    def _grow(self, n: int) -> None:
        self._head += n
        if self._head > MAX_HEAD:
            raise _HandOver

    def _hand_over(self) -> None:
        """Give the connection, and what came on it, to the peer app's aiohttp server."""
        assert self.transport is not None
        self.listener.live.discard(self)
        self._stop_idle()  # aiohttp keeps its own
        handler = self.listener.server()
        self.transport.set_protocol(handler)
        handler.connection_made(self.transport)
        received, self._received = bytes(self._received), bytearray()
        if received and not self.transport.is_closing():
            handler.data_received(received)

    async def _serve(self, serve: ServePeerStream, reply: _Reply, peer: str,
                     headers: Mapping[str, str], t_received: float) -> None:
        transport = self.transport
        assert transport is not None
        try:
            await serve(reply, peer, headers, t_received)
        except CoveyError as exc:  # raised before the first byte (after it: in-band)
            if not reply.started:
                reply.error(exc.status, exc.body(), exc.headers())
        except Exception:  # a bug must cost this answer, not the node
            log.exception("internal error serving a peer's stream")
            if not reply.started:
                reply.error(500, error_body("internal error; see the node's log",
                                            "server_error", "internal_error"), {})
            else:
                transport.close()
        finally:
            self.serving = None
            if self._extra or not self._keep or not reply.ended or transport.is_closing():
                transport.close()
            else:
                self._reset()  # kept: the peer's next prompt comes on it
                self._start_idle()


class _Reply:
    """A streamed answer written straight to a peer's connection (`StreamReply`)."""

    chunked = True

    def __init__(self, connection: _Connection, bound: bool) -> None:
        assert connection.transport is not None
        self.connection = connection
        self.transport = connection.transport
        self.bound = bound  # the connection is the caller's: it may send unsigned from now
        self.started = False
        self.ended = False

    async def start(self, headers: Mapping[str, str]) -> asyncio.Transport | None:
        if self.transport.is_closing():
            return None
        self._head(200, {**headers, "Transfer-Encoding": "chunked"})
        return self.transport

    async def drain(self) -> None:
        await self.connection.drained()

    async def end(self, last: bytes) -> None:
        if self.transport.is_closing():
            return
        self.transport.write((b"%x\r\n%b\r\n" % (len(last), last) if last else b"")
                             + b"0\r\n\r\n")
        self.ended = True

    def error(self, status: int, body: dict[str, object], headers: Mapping[str, str]) -> None:
        """A whole JSON answer (an error before the stream started)."""
        data = json.dumps(body).encode()
        self._head(status, {**headers, "Content-Type": "application/json",
                            "Content-Length": str(len(data))})
        self.transport.write(data)
        self.ended = True

    def _head(self, status: int, headers: Mapping[str, str]) -> None:
        fields = {**headers, **({H_BOUND: "1"} if self.bound else {})}
        if any("\r" in text or "\n" in text for item in fields.items() for text in item):
            raise ValueError("a header with a line break")  # would forge the answer
        lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self.transport.write(f"HTTP/1.1 {status} {_phrase(status)}\r\n"
                             f"{lines}\r\n".encode("latin-1"))
        self.started = True


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # a status an engine made up: the code is what counts
        return "Unknown"


class PeerListener:
    """The mesh listener: TLS, each connection read by `_Connection` until it is handed to
    `server` (the peer app's aiohttp server, whose verifier is `verifier`)."""

    def __init__(self, server: ServerFactory, verifier: RequestVerifier, state: MeshState,
                 admit: AdmitPeerStream, clock: Callable[[], float] = time.time) -> None:
        self.server = server
        self.verifier = verifier
        self.state = state
        self.admit = admit
        self.clock = clock
        self.live: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext) -> int:
        """Listen on (host, port) as aiohttp's TCPSite would; the port it got."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), host, port, ssl=ssl_context, backlog=128)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace_s: float) -> None:
        """Stop listening; let answers in flight end (up to `grace_s`), then close."""
        if self._server is not None:
            self._server.close()
        serving = [c.serving for c in self.live if c.serving is not None]
        if serving:
            await asyncio.wait(serving, timeout=grace_s)
        for connection in list(self.live):
            if connection.transport is not None:
                connection.transport.close()


def aiohttp_server(runner: web.AppRunner) -> ServerFactory:
    """The peer app's protocol factory, once `runner` is set up."""
    server = runner.server
    assert server is not None, "set the runner up first"
    return server

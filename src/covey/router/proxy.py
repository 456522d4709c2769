"""Relay one OpenAI request to an engine and its answer back, measuring it on the way.

Streams pass the engine's SSE bytes through as they arrive: no per-chunk decode/encode.
Per chunk (`_Tap`) we only look for the first content token (until it is seen) and remember
the tail, where the final usage/timings event lives. Everything else is parsed once per
request. A stream from this node's own llama.cpp engine, or from a peer, is read off its
socket (engine_stream.py, mesh/peer_stream.py), so its chunks reach the client with no task
switch; an attached backend's comes through aiohttp's client. The answer goes to aiohttp's
response, or, for a peer's stream the mesh listener took (mesh/peer_serve.py), straight to
that peer's connection (`StreamReply`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from covey.errors import BadRequest, CoveyError, UpstreamFailed, sse_error_event
from covey.ledger.receipts import new_request_id
from covey.ledger.service import H_REQUEST_ID
from covey.mesh.peer_transport import (
    MAX_STREAM,
    MAX_WHOLE,
    PeerError,
    PeerResponse,
    PeerTransport,
    engine_post,
)
from covey.metrics import server_timing
from covey.metrics.samples import ModelMeter
from covey.metrics.timing import (
    CONTENT,
    measure,
    prefill_rate,
    prompt_tokens_from_body,
    tokens_from_body,
    usage_event,
    whole_speed,
)
from covey.router.engine_stream import DRAIN, GO, STOP, EngineStream, EngineStreamError, open_stream
from covey.router.fairshare import Standing, no_standing
from covey.router.table import ServedModel

log = logging.getLogger(__name__)
_R = TypeVar("_R")

MAX_UPSTREAM_ERROR_BYTES = 64 * 1024
# A client this far behind pauses the stream until it has read some (aiohttp's own limit).
WRITE_BACKLOG = 64 * 1024
# perf_counter() when a request arrived; set by every listener's first middleware.
T_RECEIVED = web.RequestKey("t_received", float)
# Set on a request this node received from a client (it is the entry): its answer counts
# toward the mesh share. Requests peers relay here and health probes never carry it.
ACCOUNT = web.RequestKey("account", bool)
# Set on a request a peer sent here to be served by this node's engines: the peer's verified
# node id ("" if unknown), whose standing orders the engine's queue. Absent: this node's own
# client, served first on its own hardware (router/fairshare.py).
CONSUMER = web.RequestKey("consumer", str)
# Called once per answered client request: who answered (ServedModel.source), prompt tokens
# (None when the answer did not say), completion tokens.
OnAnswer = Callable[[Literal["local", "peer", "provider"], int | None, int], None]
# The ledger's receipts (ledger/service.py): on the provider, the id the relaying peer (its
# CONSUMER) gave the request it sent here (on the entry, `Asked.relayed_id`).
PEER_REQUEST_ID = web.RequestKey("peer_request_id", str)


class Receipts(Protocol):
    def expect(self, request_id: str, provider: str, model_id: str) -> None: ...

    def relayed(self, request_id: str, provider: str, model_id: str,
                prompt_tokens: int | None, completion_tokens: int, prompt_bytes: int
                ) -> None: ...

    def served(self, request_id: str, consumer: str, model_id: str, prompt_tokens: int,
               completion_tokens: int, started_at: float, ended_at: float) -> None: ...


@dataclass
class Asked:
    """What the relay reads of the request it answers: from aiohttp's request (`of`), or
    from a peer's stream served off its socket (mesh/peer_serve.py)."""

    t_received: float  # perf_counter() when it arrived
    consumer: str | None = None  # CONSUMER
    account: bool = False  # ACCOUNT
    peer_request_id: str | None = None  # PEER_REQUEST_ID
    content_length: int = 0
    # The id this node gave it when relaying it to a peer (one per attempt): its receipt's.
    relayed_id: str | None = None

    @classmethod
    def of(cls, request: web.Request) -> Asked:
        return cls(request[T_RECEIVED], request.get(CONSUMER), request.get(ACCOUNT, False),
                   request.get(PEER_REQUEST_ID), request.content_length or 0)


class StreamReply(Protocol):
    """Where a streamed answer goes: aiohttp's response (`_AiohttpReply`), or a peer's kept
    connection answered off its socket (mesh/peer_serve.py)."""

    chunked: bool  # whether each chunk is written framed as HTTP/1.1 chunked encoding

    async def start(self, headers: Mapping[str, str]) -> asyncio.Transport | None:
        """Send the 200 and `headers`; the transport the chunks go on (None: the client
        left meanwhile)."""
        ...

    async def drain(self) -> None:
        """Until the client has read enough of what was written."""
        ...

    async def end(self, last: bytes) -> None:
        """Write `last` (empty: nothing) and end the answer."""
        ...


class _AiohttpReply:
    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.chunked = False
        self._writer: AbstractStreamWriter | None = None

    async def start(self, headers: Mapping[str, str]) -> asyncio.Transport | None:
        response = self.response = web.StreamResponse(status=200, headers=headers)
        if self.request.version >= aiohttp.HttpVersion11:
            response.enable_chunked_encoding()  # so that `chunked` says how _Tap must frame
        self._writer = await response.prepare(self.request)
        self.chunked = response.chunked
        if self._writer is None or self.request.transport is None:
            return None  # the client left while the engine started answering
        return self.request.transport

    async def drain(self) -> None:
        assert self._writer is not None
        await self._writer.drain()

    async def end(self, last: bytes) -> None:
        assert self.response is not None
        with contextlib.suppress(ConnectionResetError):  # the client left after [DONE]
            await self.response.write_eof(last)


class UpstreamRejected(CoveyError):
    """The engine (or the peer) refused the request (4xx): its status and message. Whether
    the client sees it or the next candidate is tried is the dispatcher's call."""

    type, code = "invalid_request_error", "rejected_by_engine"

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


class Relay:
    """Owns the node's upstream connections. One per node.

    `session` reaches engines and attached backends, a connection per request (see
    node.engine_connector). Peers are reached through the peer `transport`, which keeps a
    pinned connection pool per peer: a fresh TLS connection costs a handshake, one or two
    network round trips added to every prompt's time to first token. A peer must start
    answering (send its response headers) within `peer_deadline_s`, or the next candidate is
    tried: a machine that vanished leaves a kept connection open but silent."""

    def __init__(self, session: aiohttp.ClientSession,
                 transport: PeerTransport | None = None,
                 peer_deadline_s: float | None = None,
                 on_answer: OnAnswer | None = None,
                 standing: Standing = no_standing) -> None:
        """`on_answer`: see `_answered` (the mesh share's counter). `standing`: a peer's
        balance, which orders a contended local engine's queue (router/fairshare.py)."""
        self.session = session
        self.transport = transport
        self.peer_deadline_s = peer_deadline_s
        self.on_answer = on_answer
        self.receipts: Receipts | None = None  # the ledger, when this node keeps one
        self.standing = standing

    async def _send(self, model: ServedModel, base_url: str, path: str, body: bytes,
                    stream: bool, request_id: str | None = None
                    ) -> PeerResponse | EngineStream:
        cap = MAX_STREAM if stream else MAX_WHOLE
        if stream and model.peer is None and model.engine.kind == "llama.cpp":
            try:  # the relay's hot path: see engine_stream.py
                return await open_stream(base_url + path, body, cap)
            except (OSError, TimeoutError, EngineStreamError) as exc:
                raise UpstreamFailed(f"engine for {model.id!r} did not answer: "
                                     f"{type(exc).__name__}", retry_after=2) from exc
        if model.peer is not None:
            assert self.transport is not None, "a peer's model needs the peer transport"
            # A stream is read off its socket like the engine's (mesh/peer_stream.py).
            call = self.transport.stream if stream else self.transport.post
            try:
                return await call(
                    model.peer, "/mesh/v1" + path, body, timeout_s=self.peer_deadline_s,
                    max_bytes=cap,
                    headers={H_REQUEST_ID: request_id} if request_id else None)
            except PeerError as exc:
                raise UpstreamFailed(f"{model.peer.label} did not answer: {exc}",
                                     retry_after=2) from exc
        try:
            # A provider's key and deadline (SLA fallback); engines have neither.
            async with asyncio.timeout(model.first_byte_timeout_s):
                return await engine_post(self.session, base_url + path, body,
                                         {"Content-Type": "application/json",
                                          **model.upstream_headers}, cap)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamFailed(f"engine for {model.id!r} did not answer: "
                                 f"{type(exc).__name__}", retry_after=2) from exc

    def _answered(self, asked: Asked, model: ServedModel, measured: bool,
                  prompt_tokens: int | None, completion_tokens: int) -> None:
        """Count one complete answer for the mesh share: only a client's request (ACCOUNT,
        set by the entry's API), once, by who answered; never a probe (`measure=False`)."""
        if self.on_answer is not None and measured and asked.account:
            self.on_answer(model.source, prompt_tokens, completion_tokens)
        if self.receipts is None or not measured:
            return
        relayed_id = asked.relayed_id
        if model.source == "peer" and model.peer is not None and relayed_id:
            self.receipts.relayed(relayed_id, model.peer.node_id, model.id, prompt_tokens,
                                  completion_tokens, asked.content_length)
        elif (model.source == "local" and (request_id := asked.peer_request_id)
              and (consumer := asked.consumer)):
            now, elapsed = time.time(), time.perf_counter() - asked.t_received
            self.receipts.served(request_id, consumer, model.id, prompt_tokens or 0,
                                 completion_tokens, now - elapsed, now)

    async def forward(self, request: web.Request, model: ServedModel, path: str,
                      body: bytes, stream: bool, headers: Mapping[str, str],
                      measure: bool = True) -> web.StreamResponse:
        """Send `body` to the model's engine at `path`; raises CoveyError before any byte is
        sent to the client, and ends a started stream with an in-band error instead.
        `measure=False` (health probes) keeps the request out of the model's figures."""
        _check_endpoint(model, path)
        asked = Asked.of(request)

        async def answer(upstream: PeerResponse | EngineStream, meter: ModelMeter,
                         headers: Mapping[str, str]) -> web.StreamResponse:
            if not stream:
                return await self._whole(asked, model, meter, upstream, headers, measure)
            reply = _AiohttpReply(request)
            await self._stream(asked, reply, model, meter, upstream, headers, measure)
            assert reply.response is not None
            return reply.response

        return await self._forward(asked, model, path, body, stream, headers, measure, answer)

    async def stream_to(self, asked: Asked, reply: StreamReply, model: ServedModel,
                        path: str, body: bytes, headers: Mapping[str, str],
                        measure: bool = True) -> None:
        """`forward` of a streamed request, its answer written to `reply` (a peer's stream
        served off its socket: mesh/peer_serve.py)."""
        _check_endpoint(model, path)

        async def answer(upstream: PeerResponse | EngineStream, meter: ModelMeter,
                         headers: Mapping[str, str]) -> None:
            await self._stream(asked, reply, model, meter, upstream, headers, measure)

        await self._forward(asked, model, path, body, True, headers, measure, answer)

    async def _forward(self, asked: Asked, model: ServedModel, path: str, body: bytes,
                       stream: bool, headers: Mapping[str, str], measure: bool,
                       answer: Callable[[PeerResponse | EngineStream, ModelMeter,
                                         Mapping[str, str]], Awaitable[_R]]) -> _R:
        """The engine's (or peer's) answer, once its headers came, to `answer` with the
        meter it counts in and the headers to send (Server-Timing added)."""
        t_request = asked.t_received
        meter = model.meter if measure else ModelMeter(window_s=1.0)
        # Waits here, in fair-share order, while a local engine's slots are all taken; that
        # wait is part of the request's measured time to first token.
        base_url = await model.acquire(asked.consumer, self.standing)
        try:
            t_sent = time.perf_counter()
            try:
                if (self.receipts is not None and model.source == "peer"
                        and model.peer is not None):
                    asked.relayed_id = new_request_id()
                    self.receipts.expect(asked.relayed_id, model.peer.node_id, model.id)
                upstream = await self._send(model, base_url, path, body, stream,
                                            asked.relayed_id)
            except UpstreamFailed:
                meter.requests_failed += 1
                raise
            t_headers = time.perf_counter()
            parts = server_timing.split(
                (t_sent - t_request) * 1000, (t_headers - t_sent) * 1000,
                server_timing.parse(upstream.headers.get("Server-Timing"))
                if model.peer is not None else None)
            try:
                if upstream.status != 200:
                    await _raise_for_upstream(upstream, model, meter, path)
                return await answer(upstream, meter, {
                    **headers, "Server-Timing": server_timing.render(parts)})
            finally:
                # For an unfinished answer, closing drops the connection: that is how the
                # engine (or the peer) learns to stop generating and free the slot. A
                # connection read to its end is already back in its pool.
                upstream.close()
        finally:
            model.release()

    async def _whole(self, asked: Asked, model: ServedModel, meter: ModelMeter,
                     upstream: PeerResponse | EngineStream, headers: Mapping[str, str],
                     measured: bool) -> web.Response:
        try:
            data = await upstream.read()
        except (aiohttp.ClientError, TimeoutError, PeerError) as exc:
            meter.requests_failed += 1
            raise UpstreamFailed(f"engine for {model.id!r} failed mid-response "
                                 f"({type(exc).__name__}); retry", retry_after=2) from exc
        elapsed_ms = (time.perf_counter() - asked.t_received) * 1000
        try:  # parsed once per request: the body is already whole in memory
            body = json.loads(data)
        except ValueError:  # not JSON (an odd backend): it counts, with nothing to measure
            body = None
        tokens = tokens_from_body(body) or 0
        # A whole answer has no first token to time (TTFT stays streamed-only), but its
        # decode speed is in llama.cpp's timings, or else on this node's clock.
        speed = whole_speed(body, elapsed_ms, len(data), from_peer=model.peer is not None)
        if speed is None:
            meter.record(None, None, tokens, time.monotonic(), latency_ms=elapsed_ms)
        else:
            meter.record(None, speed.tokens_per_s, speed.tokens, time.monotonic(),
                         source=speed.source, latency_ms=elapsed_ms)
        # Counted capped at the body's size, as whole_speed does: every token is a byte of it.
        self._answered(asked, model, measured, prompt_tokens_from_body(body),
                       min(tokens, len(data)))
        return web.Response(body=data, status=200, headers={
            **headers, "Content-Type": upstream.headers.get("Content-Type", "application/json")})

    async def _stream(self, asked: Asked, reply: StreamReply, model: ServedModel,
                      meter: ModelMeter, upstream: PeerResponse | EngineStream,
                      headers: Mapping[str, str], measured: bool) -> None:
        transport = await reply.start({
            **headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        if transport is None:
            return  # the client left while the engine started answering
        tap = _Tap(transport, reply.chunked)
        try:
            if isinstance(upstream, EngineStream):  # this node's engine: from its socket
                await upstream.relay(tap, reply.drain)
            else:
                async for chunk in upstream.content.iter_any():
                    verdict = tap(chunk)
                    if verdict == STOP:
                        break
                    if verdict == DRAIN:
                        await reply.drain()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError,
                EngineStreamError) as exc:
            # The engine broke after the client got bytes: never retry, never invent a
            # finish_reason; say so in-band so the client library raises.
            meter.requests_failed += 1
            log.warning("model %s: engine stream broke (%s)", model.id, type(exc).__name__)
            err = UpstreamFailed(f"the engine serving {model.id!r} failed mid-stream "
                                 f"({type(exc).__name__}); the answer is incomplete")
            await reply.end(sse_error_event(err))
            return
        if tap.client_gone:
            # Returning closes the engine connection (see forward), which frees the slot;
            # this is not the engine's failure.
            return
        usage = usage_event(tap.tail())
        tokens = tokens_from_body(usage)
        if tokens is None:  # a backend without usage: one content event ≈ one token
            tokens = max(0, tap.events - 2)
        t_request = asked.t_received
        result = measure(t_request, tap.t_first, tap.t_last, tokens)
        meter.record(result.ttft_ms, result.tokens_per_s, result.completion_tokens,
                     time.monotonic(), latency_ms=(time.perf_counter() - t_request) * 1000)
        prompt_tokens = prompt_tokens_from_body(usage)  # once: the gate and the share use it
        prefill = prefill_rate(prompt_tokens, result.ttft_ms)
        if prefill is not None:  # for the SLA gate's TTFT prediction
            meter.prefill_tokens_per_s.add(prefill, time.monotonic())
        # Counted when the answer is complete, before [DONE] goes out (see _Tap); a stream
        # the client left or the engine broke was answered by nobody.
        self._answered(asked, model, measured, prompt_tokens, tokens)
        await reply.end(tap.last)


class _Tap:
    """A streamed answer on its way to the client, one chunk at a time: timed, counted and
    written to the client's transport, in whichever callback the chunk arrived (the engine's
    socket, or a peer's stream). This runs once per token per stream: it does no parsing.

    The chunk holding [DONE] is kept back, not written: clients close as soon as they read
    it, which cancels the handler, so the answer is measured first; it then goes out in one
    write with the response's end, so a relaying entry node sees the end at once and can keep
    its connection to this node."""

    __slots__ = (
        "_chunked",
        "_transport",
        "client_gone",
        "events",
        "last",
        "older",
        "prev",
        "t_first",
        "t_last",
    )

    def __init__(self, transport: asyncio.Transport, chunked: bool) -> None:
        self._transport = transport
        self._chunked = chunked  # HTTP/1.1: frame each chunk as aiohttp's writer would
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.events = 0
        # The last two chunks written and the held-back last one, kept by reference (no copy
        # per chunk): the final usage/timings event is in them unless TCP split it into more
        # than three reads, and then the event count stands in.
        self.older = self.prev = self.last = b""
        self.client_gone = False

    def __call__(self, chunk: bytes) -> int:
        now = time.perf_counter()
        if CONTENT.search(chunk) is not None:
            if self.t_first is None:
                self.t_first = now
            self.t_last = now
        self.events += chunk.count(b"data: ")
        if b"data: [DONE]" in chunk:
            self.last = chunk
            return STOP
        transport = self._transport
        if transport.is_closing():
            self.client_gone = True
            return STOP
        transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        self.older, self.prev = self.prev, chunk
        return DRAIN if transport.get_write_buffer_size() > WRITE_BACKLOG else GO

    def tail(self) -> bytes:
        return self.older + self.prev + self.last


def _check_endpoint(model: ServedModel, path: str) -> None:
    if model.card.embeddings_only and path != "/embeddings":
        # Its engine would answer 500 ("does not support logits"); this is the client's
        # mistake, and every node serving the model would say the same.
        raise BadRequest(f"model {model.id!r} serves embeddings only; use /v1/embeddings",
                         code="embeddings_only", param="model")


async def _raise_for_upstream(upstream: PeerResponse | EngineStream, model: ServedModel,
                              meter: ModelMeter, path: str) -> None:
    """Translate an engine's non-200 answer into our error shape, keeping its message."""
    raw = await upstream.content.read(MAX_UPSTREAM_ERROR_BYTES)
    message = f"engine answered HTTP {upstream.status}"
    try:
        body = json.loads(raw)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
        elif isinstance(err, str):
            message = err
    except ValueError:
        pass
    if upstream.status == 501 and path == "/embeddings":
        raise BadRequest(f"model {model.id!r} does not serve embeddings: {message}",
                         code="embeddings_not_supported", param="model")
    if 400 <= upstream.status < 500:
        retry_after = upstream.headers.get("Retry-After")
        raise UpstreamRejected(upstream.status, message,
                               retry_after=_seconds(retry_after) if retry_after else None)
    meter.requests_failed += 1
    raise UpstreamFailed(f"engine for {model.id!r} failed: {message}", retry_after=2,
                         upstream_status=upstream.status)


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return min(value, 3600.0) if value >= 0 else None

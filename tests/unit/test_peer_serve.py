"""mesh/peer_serve.py: the mesh listener serves a peer's streamed prompt off the socket, after
the peer app's checks, and gives every other request, and every connection it cannot serve,
to the peer app's aiohttp server with the bytes received so far.

Two real mesh members (the creator, whose listener this is, and a member it certified), the
real peer app behind the listener on TLS, and a fake relay: `admit` serves a three-chunk
stream (no engine: this is about HTTP, authentication and hand-over, not tokens)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest
from aiohttp import web

from covey.errors import Busy
from covey.mesh import identity, state
from covey.mesh.client import signer_for
from covey.mesh.peer_api import MAX_BODY, VERIFIER, build_peer_app
from covey.mesh.peer_serve import PeerListener, ServePeerStream, aiohttp_server
from covey.mesh.peer_stream import client_context
from covey.mesh.state import MeshState
from covey.mesh.transport import H_BOUND, H_NODE, tls_identity
from covey.router.proxy import StreamReply, UpstreamRejected

PATH = "/mesh/v1/chat/completions"
PROMPT = json.dumps({"model": "m", "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]}).encode()


@dataclass
class Relay:
    """The fake relay behind `admit`, and what reached the peer app instead."""

    served: list[str] = field(default_factory=list)  # calling node per stream served here
    by_app: list[str] = field(default_factory=list)  # paths the app's `serve` got
    fail: Exception | None = None  # raised by the next stream before its first byte
    hold: asyncio.Event | None = None  # a stream waits for this before answering
    cancelled: bool = False

    def admit(self, path: str, body: bytes) -> ServePeerStream | None:
        if path != "chat/completions" or not json.loads(body).get("stream"):
            return None

        async def serve(reply: StreamReply, peer: str, headers: Mapping[str, str],
                        t_received: float) -> None:
            self.served.append(peer)
            if self.fail is not None:
                raise self.fail
            if self.hold is not None:
                try:
                    await self.hold.wait()
                except asyncio.CancelledError:
                    self.cancelled = True
                    raise
            transport = await reply.start({"Content-Type": "text/event-stream"})
            assert transport is not None and reply.chunked
            for i in range(3):
                event = b'data: {"n": %d}\n\n' % i
                transport.write(b"%x\r\n%b\r\n" % (len(event), event))
            await reply.end(b"data: [DONE]\n\n")
        return serve

    async def app_serve(self, request: web.Request) -> web.StreamResponse:
        self.by_app.append(request.path)
        return web.json_response({"via": "aiohttp"})


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _Reader:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class Conn:
    """One TLS connection to the listener, speaking HTTP/1.1 by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, raw: bytes) -> Answer:
        self.writer.write(raw)
        await self.writer.drain()
        return await self.answer()

    async def answer(self) -> Answer:
        got = _Reader()
        parser = httptools.HttpResponseParser(got)
        while not got.done:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("closed before the answer ended")
            parser.feed_data(data)
        return Answer(parser.get_status_code(), got.headers, bytes(got.body))

    async def closed(self) -> bool:
        """Whether the listener closed this connection (within a deadline)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 10) == b""
        except (ConnectionError, TimeoutError):
            return True


def request(body: bytes, headers: Mapping[str, str], path: str = PATH) -> bytes:
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: peer\r\nContent-Type: application/json\r\n"
            f"{fields}Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class Harness:
    relay: Relay
    creator: MeshState
    member: MeshState
    fingerprint: str
    port: int
    listener: PeerListener
    opened: list[Conn]

    def signed(self, body: bytes = PROMPT, path: str = PATH) -> dict[str, str]:
        return signer_for(self.member)(self.fingerprint, path, body)

    async def connect(self) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                       ssl=client_context())
        conn = Conn(reader, writer)
        self.opened.append(conn)
        return conn


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    now = time.time()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    creator = MeshState.load_or_create(tmp_path / "a", identity.load_or_create(tmp_path / "a"),
                                       now)
    assert creator.authority is not None
    member_id = identity.load_or_create(tmp_path / "b")
    member = MeshState.save(tmp_path / "b", member_id, creator.info,
                            state.issue_cert(creator.authority, member_id.public_bytes, now,
                                             3600))
    tls = tls_identity(creator.identity.key, tmp_path / "a")
    relay = Relay()
    app = build_peer_app(creator, tls.fingerprint, serve=relay.app_serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = PeerListener(aiohttp_server(runner), app[VERIFIER], creator, relay.admit)
    port = await listener.start("127.0.0.1", 0, tls.server_context())
    h = Harness(relay, creator, member, tls.fingerprint, port, listener, [])
    try:
        yield h
    finally:
        for conn in h.opened:
            conn.writer.close()
        await listener.close(1.0)
        await runner.cleanup()


def _events(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line.startswith(b"data: ")]


async def test_a_signed_prompt_is_served_here_and_its_connection_then_needs_no_signature(
        harness: Harness) -> None:
    conn = await harness.connect()
    first = await conn.send(request(PROMPT, harness.signed()))
    assert first.status == 200 and first.headers.get(H_BOUND) == "1"
    assert _events(first.body) == [b'data: {"n": 0}', b'data: {"n": 1}', b'data: {"n": 2}',
                                   b"data: [DONE]"]
    me = harness.member.identity.node_id
    again = await conn.send(request(PROMPT, {H_NODE: me}))  # kept, unsigned
    assert again.status == 200 and len(_events(again.body)) == 4
    assert harness.relay.served == [me, me] and harness.relay.by_app == []


async def test_an_unsigned_prompt_on_a_new_connection_is_refused_by_the_peer_app(
        harness: Harness) -> None:
    conn = await harness.connect()
    answer = await conn.send(request(PROMPT, {H_NODE: harness.member.identity.node_id}))
    assert answer.status == 403 and answer.headers.get(H_BOUND) == "0"
    assert harness.relay.served == [] and harness.relay.by_app == []


async def test_a_prompt_signed_for_another_body_is_refused_by_the_peer_app(
        harness: Harness) -> None:
    conn = await harness.connect()
    headers = harness.signed(PROMPT.replace(b"hi", b"ho"))
    answer = await conn.send(request(PROMPT, headers))
    assert answer.status == 403 and b"bad_signature" in answer.body
    assert harness.relay.served == []


async def test_a_replayed_prompt_is_refused(harness: Harness) -> None:
    headers = harness.signed()
    first = await (await harness.connect()).send(request(PROMPT, headers))
    replay = await (await harness.connect()).send(request(PROMPT, headers))
    assert first.status == 200 and replay.status == 403 and b"replay" in replay.body
    assert len(harness.relay.served) == 1


async def test_a_whole_answer_goes_to_the_peer_app_which_takes_the_same_signature(
        harness: Harness) -> None:
    """Handed over after its signature was checked here: nothing was remembered, so the app
    checks it again and takes it (its nonce is not a replay)."""
    body = PROMPT.replace(b'"stream": true', b'"stream": false')
    conn = await harness.connect()
    answer = await conn.send(request(body, harness.signed(body)))
    assert answer.status == 200 and json.loads(answer.body) == {"via": "aiohttp"}
    assert harness.relay.by_app == [PATH] and harness.relay.served == []
    # The connection is the app's now, and it was bound there: unsigned calls pass.
    me = harness.member.identity.node_id
    assert (await conn.send(request(PROMPT, {H_NODE: me}))).status == 200
    assert harness.relay.by_app == [PATH, PATH] and harness.relay.served == []


async def test_bad_http_and_a_body_over_the_cap_are_answered_by_the_peer_app(
        harness: Harness) -> None:
    bad = await harness.connect()
    assert (await bad.send(b"NOT HTTP AT ALL\r\n\r\n")).status == 400
    big = await harness.connect()
    head = (f"POST {PATH} HTTP/1.1\r\nHost: peer\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY + 1}\r\n").encode()
    signed = "".join(f"{k}: {v}\r\n" for k, v in harness.signed().items()).encode()
    big.writer.write(head + signed + b"\r\n" + b"x" * (MAX_BODY + 1))
    answer = await big.answer()
    assert answer.status == 413 and harness.relay.served == []


async def test_an_error_before_the_first_byte_is_an_openai_error_and_keeps_the_connection(
        harness: Harness) -> None:
    harness.relay.fail = Busy("all slots busy", retry_after=2)
    conn = await harness.connect()
    answer = await conn.send(request(PROMPT, harness.signed()))
    assert answer.status == 429 and answer.headers.get("retry-after") == "2"
    assert json.loads(answer.body)["error"]["message"] == "all slots busy"
    harness.relay.fail = None
    me = harness.member.identity.node_id
    assert (await conn.send(request(PROMPT, {H_NODE: me}))).status == 200


async def _until(condition: Callable[[], bool], why: str, deadline_s: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while not condition():
        assert loop.time() < deadline, why
        await asyncio.sleep(0.01)


async def _held_answer(harness: Harness) -> Conn:
    """A connection whose signed prompt was taken and whose answer waits on `hold`."""
    harness.relay.hold = asyncio.Event()
    conn = await harness.connect()
    conn.writer.write(request(PROMPT, harness.signed()))
    await conn.writer.drain()
    await _until(lambda: bool(harness.relay.served), "the stream never started")
    return conn


async def test_a_peer_that_hangs_up_cancels_its_answer(harness: Harness) -> None:
    conn = await _held_answer(harness)
    conn.writer.close()
    await _until(lambda: harness.relay.cancelled, "the answer went on after its peer left")


async def test_bytes_sent_during_an_answer_close_the_connection_after_it(
        harness: Harness) -> None:
    """A peer never sends while its answer is streaming (the entry's connections are kept
    one answer at a time): such a connection is not kept."""
    conn = await _held_answer(harness)
    conn.writer.write(request(PROMPT, {H_NODE: harness.member.identity.node_id}))
    await conn.writer.drain()
    await _until(lambda: any(c._extra for c in harness.listener.live),  # it read them
                 "the listener never read the extra request")
    assert harness.relay.hold is not None
    harness.relay.hold.set()
    answer = await conn.answer()
    assert answer.status == 200 and len(_events(answer.body)) == 4
    assert await conn.closed()
    assert len(harness.relay.served) == 1


async def test_an_engine_status_http_does_not_name_is_passed_on(harness: Harness) -> None:
    harness.relay.fail = UpstreamRejected(499, "the engine made this one up")
    answer = await (await harness.connect()).send(request(PROMPT, harness.signed()))
    assert answer.status == 499
    assert json.loads(answer.body)["error"]["message"] == "the engine made this one up"

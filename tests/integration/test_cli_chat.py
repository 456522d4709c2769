"""`covey chat` against a scripted server: a stream that breaks after it began is told
apart from a node that is not there (both used to read "no Covey node answers")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator

import pytest


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (Transfer-Encoding: chunked)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(payload: object) -> bytes:
    return _chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _token(text: str) -> bytes:
    return _event({"id": "c1", "object": "chat.completion.chunk", "model": "scripted",
                   "choices": [{"index": 0, "delta": {"content": text}}]})


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nx-covey-served-by: scripted\r\n\r\n")
TWO_TOKENS = HEAD + _token("Hello") + _token(" there")
DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


@contextlib.asynccontextmanager
async def _serve(script: bytes, close_after: bool) -> AsyncIterator[str]:
    """A one-purpose HTTP server: reads the request, writes `script` verbatim, then hangs up
    (mid-body when `script` does not finish the chunked body)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(script)
        await writer.drain()
        if close_after:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def _covey_chat(url: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "covey", "chat", "--url", url, "hello",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("script", "reason"), [
    # The connection drops mid-body (a node killed mid-answer, a cut network).
    (TWO_TOKENS, "the connection to"),
    # The node ends the stream with an in-band error event, as Covey's relay does.
    (TWO_TOKENS + _event({"error": {"message": "engine crashed [exit 9]", "type": "server_error",
                                    "code": "upstream_failed"}}) + DONE,
     "engine crashed [exit 9]"),
    # The body ends properly but without [DONE]: the answer is incomplete.
    (TWO_TOKENS + b"0\r\n\r\n", "the stream ended without [DONE]"),
])
async def test_a_stream_that_breaks_is_not_a_missing_node(script: bytes, reason: str) -> None:
    async with _serve(script, close_after=True) as url:
        code, out, err = await _covey_chat(url)
    assert code == 1
    assert out == "Hello there\n"  # what arrived is shown, then the reason
    assert "the answer stopped after 2 tokens: " in err and reason in err, err
    assert "no Covey node answers" not in err
    assert "Traceback" not in err


async def test_a_whole_stream_ends_with_its_summary() -> None:
    async with _serve(TWO_TOKENS + DONE, close_after=True) as url:
        code, out, err = await _covey_chat(url)
    assert (code, out) == (0, "Hello there\n"), err
    assert "model scripted · served by scripted" in err


async def test_no_node_is_named_as_such() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = await _covey_chat(f"http://127.0.0.1:{port}")
    assert code == 1
    assert f"no Covey node answers at http://127.0.0.1:{port}" in err
    assert "stopped" not in err

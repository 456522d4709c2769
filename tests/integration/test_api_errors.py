"""Every documented API error, in OpenAI's shape, with the right status, against a real node."""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.conftest import FakeBackend, NodeProcess, http, wait_for

pytestmark = pytest.mark.engine

CHAT = "/v1/chat/completions"


def _assert_error(body: object, code: str | None = None) -> dict[str, object]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "code"} <= set(err), err
    assert "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def test_malformed_json_is_400(shared_node: NodeProcess) -> None:
    code, _, body = http("POST", shared_node.url + CHAT, raw=b'{"messages": [')
    assert code == 400
    _assert_error(body, "invalid_json")


@pytest.mark.parametrize(("payload", "field"), [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
    # Was a hole: passed through unchecked, llama.cpp answered 500 ("Failed to parse tools")
    # and the node reported 503 "every node ... failed", blaming a healthy engine.
    ({"messages": [{"role": "user", "content": "hi"}], "tools": -1}, "tools"),
])
def test_schema_violation_names_the_field(shared_node: NodeProcess, payload: dict[str, object],
                                          field: str) -> None:
    code, _, body = http("POST", shared_node.url + CHAT, payload)
    assert code == 400
    err = _assert_error(body, "invalid_request")
    assert err["param"] == field
    assert str(err["message"]).startswith(field)


def test_unknown_model_is_404_listing_ids(shared_node: NodeProcess, openai_client: Callable[
        [str], openai.OpenAI]) -> None:
    client = openai_client(shared_node.url)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", max_tokens=1,
                                       messages=[{"role": "user", "content": "hi"}])
    assert "gemma-3-270m-q4_k_m" in str(info.value)


def test_body_over_limit_is_413(shared_node: NodeProcess) -> None:
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (5 * 1024 * 1024) + b'"}]}'
    code, _, body = http("POST", shared_node.url + CHAT, raw=big)
    assert code == 413
    _assert_error(body, "payload_too_large")


def test_body_over_limit_without_length_is_413(shared_node: NodeProcess) -> None:
    """Chunked upload: no Content-Length to check up front; the read itself must stop."""
    host, port = shared_node.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(80):  # 5 MiB
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the node may answer and close before we finish: that is the point
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


@pytest.mark.parametrize(("headers", "status"), [
    ({"Host": "evil.example"}, 403),
    ({"Host": "evil.example:7272"}, 403),
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "http://localhost:3000"}, 200),
    ({"Host": "localhost"}, 200),
    ({"X-Forwarded-For": "127.0.0.1", "Host": "evil.example"}, 403),
])
def test_host_and_origin_guard(shared_node: NodeProcess, headers: dict[str, str],
                               status: int) -> None:
    code, _, body = http("GET", shared_node.url + "/v1/models", headers=headers)
    assert code == status, body
    if status == 403:
        _assert_error(body, "forbidden_host")


def test_unknown_endpoint_and_method(shared_node: NodeProcess) -> None:
    code, _, body = http("GET", shared_node.url + "/v1/nope")
    assert code == 404
    _assert_error(body, "not_found")
    code, _, body = http("GET", shared_node.url + CHAT)
    assert code == 405
    _assert_error(body, "method_not_allowed")


def test_node_survives_garbage(shared_node: NodeProcess) -> None:
    host, port = shared_node.url.removeprefix("http://").split(":")
    for junk in (b"\x00\xff garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                 b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(junk)
            s.recv(4096)
    code, _, _ = http("GET", shared_node.url + "/health")
    assert code == 200


def test_queue_full_is_429(start_node: Callable[..., NodeProcess],
                           fake_backend: Callable[..., FakeBackend]) -> None:
    """Fake backend: a real engine cannot be held busy on demand. One slot, no queue."""
    url = fake_backend(tokens=30, token_delay=0.1).url
    node = start_node("--backend", url, "--parallel", "1", "--max-queue", "0", "--no-baseline")
    node.wait_listening()
    node.wait_ready("fake-model")
    req = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
           "stream": True}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(http, "POST", node.url + CHAT, req)
        wait_for(lambda: node.model("fake-model")["in_flight"] == 1, 10, "the slot to fill")
        code, headers, body = http("POST", node.url + CHAT, req)
        assert code == 429
        assert int(headers["retry-after"]) >= 1
        _assert_error(body, "queue_full")
        assert first.result()[0] == 200
    assert node.model("fake-model")["in_flight"] == 0

"""api/schemas.py: request validation that names the field and keeps unknown fields."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from covey.api.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, parse
from covey.errors import BadRequest

MSG = {"role": "user", "content": "x"}


def _chat(**fields: object) -> bytes:
    return json.dumps({"messages": [MSG], **fields}).encode()


@pytest.mark.parametrize("raw", [b"{", b"", b"not json", b"\xff", b'{"a": 1,}'])
def test_malformed_json(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="not valid JSON") as info:
        parse(raw, ChatRequest)
    assert (info.value.code, info.value.status, info.value.param) == ("invalid_json", 400, None)


@pytest.mark.parametrize("raw", [b"[1]", b"[]", b'"x"', b"1", b"null", b"true"])
def test_body_must_be_an_object(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="must be a JSON object") as info:
        parse(raw, ChatRequest)
    assert info.value.code == "invalid_json" and info.value.status == 400


@pytest.mark.parametrize(("schema", "raw", "param"), [
    (ChatRequest, b"{}", "messages"),
    (ChatRequest, b'{"messages": []}', "messages"),
    (ChatRequest, b'{"messages": "hi"}', "messages"),
    (ChatRequest, b'{"messages": [{}]}', "messages.0.role"),
    (ChatRequest, b'{"messages": [{"role": ""}]}', "messages.0.role"),
    (ChatRequest, _chat(stream="yes"), "stream"),
    (ChatRequest, _chat(stream=1), "stream"),
    (ChatRequest, _chat(max_tokens=0), "max_tokens"),
    (ChatRequest, _chat(max_tokens="5"), "max_tokens"),
    (ChatRequest, _chat(max_tokens=True), "max_tokens"),
    (ChatRequest, _chat(max_completion_tokens=0), "max_completion_tokens"),
    (ChatRequest, _chat(temperature=3), "temperature"),
    (ChatRequest, _chat(temperature=-0.1), "temperature"),
    (ChatRequest, _chat(n=2), "n"),
    (ChatRequest, _chat(model=""), "model"),
    (ChatRequest, _chat(model="m" * 257), "model"),
    (CompletionRequest, b"{}", "prompt"),
    (EmbeddingRequest, b"{}", "input"),
])
def test_schema_errors_name_the_field(schema: type[BaseModel], raw: bytes, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(raw, schema)
    assert (info.value.code, info.value.status, info.value.param) == ("invalid_request", 400,
                                                                      param)
    assert info.value.message.startswith(f"{param}: ")


# Was a bug: for a field typed as a union, pydantic's error location carries the union member
# ("temperature.float", "prompt.str", "messages.0.content.str"), and parse() copies it into
# `param` and the message, so the error does not name the field the client sent.
@pytest.mark.parametrize(("schema", "raw", "param"), [
    (ChatRequest, _chat(temperature="hot"), "temperature"),
    (ChatRequest, b'{"messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
    (CompletionRequest, b'{"prompt": 5}', "prompt"),
    (EmbeddingRequest, b'{"input": {"a": 1}}', "input"),
], ids=["temperature", "content", "prompt", "input"])
def test_union_field_errors_name_the_field(schema: type[BaseModel], raw: bytes,
                                           param: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(raw, schema)
    assert info.value.param == param


def test_unknown_fields_are_kept() -> None:
    req, data = parse(_chat(ignore_eos=True, top_k=40, stream=True), ChatRequest)
    assert req.model is None and req.stream is True
    assert data == {"messages": [MSG], "ignore_eos": True, "top_k": 40, "stream": True}
    assert req.model_extra == {"ignore_eos": True, "top_k": 40}


@pytest.mark.parametrize(("schema", "body"), [
    (ChatRequest, {"messages": [MSG], "max_tokens": 1, "temperature": 0, "n": 1}),
    (ChatRequest, {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
    (ChatRequest, {"messages": [{"role": "assistant", "content": None}], "model": "m"}),
    (CompletionRequest, {"prompt": "x"}),
    (CompletionRequest, {"prompt": [[1, 2], [3]]}),
    (EmbeddingRequest, {"input": ["a", "b"]}),
])
def test_valid_requests(schema: type[BaseModel], body: dict[str, object]) -> None:
    _, data = parse(json.dumps(body).encode(), schema)
    assert data == body

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


# Was a hole: these fields passed through unchecked, and the engine answered a malformed one
# with a 500 ("Failed to parse tools"), which the node took for a broken engine. Each must be
# a 400 at the entry naming the field.
FUNC = {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(("schema", "fields", "param"), [
    (ChatRequest, {"tools": -1}, "tools"),
    (ChatRequest, {"tools": "f"}, "tools"),
    (ChatRequest, {"tools": {"type": "function"}}, "tools"),
    (ChatRequest, {"tools": [FUNC] * 129}, "tools"),
    (ChatRequest, {"tools": [5]}, "tools.0"),
    (ChatRequest, {"tools": [{"function": {"name": "f"}}]}, "tools.0.type"),
    (ChatRequest, {"tools": [{"type": "retrieval", "function": {"name": "f"}}]},
     "tools.0.type"),
    (ChatRequest, {"tools": [{"type": "function"}]}, "tools.0.function"),
    (ChatRequest, {"tools": [{"type": "function", "function": {}}]}, "tools.0.function.name"),
    (ChatRequest, {"tools": [{"type": "function", "function": {"name": ""}}]},
     "tools.0.function.name"),
    (ChatRequest, {"tools": [{"type": "function", "function": {"name": 7}}]},
     "tools.0.function.name"),
    (ChatRequest, {"tools": [{"type": "function", "function": {"name": "f",
                                                               "parameters": "{}"}}]},
     "tools.0.function.parameters"),
    (ChatRequest, {"tools": [{"type": "function", "function": {"name": "f",
                                                               "description": 1}}]},
     "tools.0.function.description"),
    (ChatRequest, {"tools": [{"type": "function", "function": {"name": "f",
                                                               "strict": "yes"}}]},
     "tools.0.function.strict"),
    (ChatRequest, {"tool_choice": -1}, "tool_choice"),
    (ChatRequest, {"tool_choice": "any"}, "tool_choice"),
    (ChatRequest, {"tool_choice": ["auto"]}, "tool_choice"),
    (ChatRequest, {"tool_choice": {"type": "function"}}, "tool_choice.function"),
    (ChatRequest, {"tool_choice": {"type": "function", "function": {}}},
     "tool_choice.function.name"),
    (ChatRequest, {"tool_choice": {"type": "tool", "function": {"name": "f"}}},
     "tool_choice.type"),
    (ChatRequest, {"parallel_tool_calls": "true"}, "parallel_tool_calls"),
    (ChatRequest, {"response_format": "json"}, "response_format"),
    (ChatRequest, {"response_format": {}}, "response_format.type"),
    (ChatRequest, {"response_format": {"type": "xml"}}, "response_format.type"),
    (ChatRequest, {"response_format": {"type": "json_schema"}}, "response_format"),
    (ChatRequest, {"response_format": {"type": "json_schema", "json_schema": []}},
     "response_format.json_schema"),
    (ChatRequest, {"response_format": {"type": "json_schema", "json_schema": {}}},
     "response_format.json_schema.name"),
    (ChatRequest, {"response_format": {"type": "json_schema",
                                       "json_schema": {"name": "x", "schema": "{}"}}},
     "response_format.json_schema.schema"),
    (ChatRequest, {"response_format": {"type": "json_schema",
                                       "json_schema": {"name": "x", "strict": 1}}},
     "response_format.json_schema.strict"),
    (ChatRequest, {"stop": 5}, "stop"),
    (ChatRequest, {"stop": {"a": 1}}, "stop"),
    (ChatRequest, {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (ChatRequest, {"stop": ["a", 1]}, "stop.1"),
    (ChatRequest, {"stream_options": True}, "stream_options"),
    (ChatRequest, {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    (ChatRequest, {"logprobs": 1}, "logprobs"),
    (ChatRequest, {"logprobs": "true"}, "logprobs"),
    (ChatRequest, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    (ChatRequest, {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    (ChatRequest, {"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
    (ChatRequest, {"top_logprobs": 2}, "top_logprobs"),
    (ChatRequest, {"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    (ChatRequest, {"seed": "42"}, "seed"),
    (ChatRequest, {"seed": 4.5}, "seed"),
    (ChatRequest, {"seed": True}, "seed"),
    (ChatRequest, {"seed": 2**64}, "seed"),
    (ChatRequest, {"top_p": 1.5}, "top_p"),
    (ChatRequest, {"top_p": -0.1}, "top_p"),
    (ChatRequest, {"top_p": "1"}, "top_p"),
    (ChatRequest, {"presence_penalty": 2.5}, "presence_penalty"),
    (ChatRequest, {"presence_penalty": -3}, "presence_penalty"),
    (ChatRequest, {"frequency_penalty": 2.1}, "frequency_penalty"),
    (ChatRequest, {"frequency_penalty": "0"}, "frequency_penalty"),
    (ChatRequest, {"max_tokens": 2**31}, "max_tokens"),
    (ChatRequest, {"max_completion_tokens": 2**40}, "max_completion_tokens"),
    (CompletionRequest, {"prompt": "x", "stop": 1}, "stop"),
    (CompletionRequest, {"prompt": "x", "seed": "1"}, "seed"),
    (CompletionRequest, {"prompt": "x", "logprobs": True}, "logprobs"),
    (CompletionRequest, {"prompt": "x", "logprobs": 6}, "logprobs"),
    (CompletionRequest, {"prompt": "x", "stream_options": []}, "stream_options"),
    (CompletionRequest, {"prompt": "x", "top_p": 2}, "top_p"),
])
def test_passed_through_fields_are_checked(schema: type[BaseModel], fields: dict[str, object],
                                           param: str) -> None:
    body = {"messages": [MSG]} if schema is ChatRequest else {}
    with pytest.raises(BadRequest) as info:
        parse(json.dumps({**body, **fields}).encode(), schema)
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_request",
                                                                      param)
    assert info.value.message.startswith(f"{param}: ")
    assert "NamedToolChoice" not in info.value.message  # no class names of ours


@pytest.mark.parametrize("raw", [b'{"messages": [], "temperature": NaN}',
                                 b'{"prompt": "x", "top_p": Infinity}',
                                 b'{"prompt": "x", "x": -Infinity}'])
def test_nan_and_infinity_are_not_json(raw: bytes) -> None:
    """Python's json reads them; an engine handed them fails on the body (500)."""
    with pytest.raises(BadRequest, match="not valid JSON") as info:
        parse(raw, CompletionRequest)
    assert info.value.code == "invalid_json"


TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.mark.parametrize(("schema", "body"), [
    (ChatRequest, {"messages": [MSG], "max_tokens": 1, "temperature": 0, "n": 1}),
    (ChatRequest, {"messages": [MSG], "tools": [TOOL], "tool_choice": "auto",
                   "parallel_tool_calls": False}),
    (ChatRequest, {"messages": [MSG], "tools": [FUNC], "tool_choice": "required"}),
    (ChatRequest, {"messages": [MSG], "tools": [], "tool_choice": "none"}),
    (ChatRequest, {"messages": [MSG], "tools": [TOOL],
                   "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    (ChatRequest, {"messages": [MSG], "tools": None, "tool_choice": None}),
    (ChatRequest, {"messages": [MSG], "response_format": {"type": "text"}}),
    (ChatRequest, {"messages": [MSG], "response_format": {"type": "json_object"}}),
    # llama.cpp's own extension: a schema straight in response_format (unknown: kept)
    (ChatRequest, {"messages": [MSG], "response_format": {"type": "json_object",
                                                          "schema": {"type": "object"}}}),
    (ChatRequest, {"messages": [MSG], "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True, "schema": {"type": "object"}}}}),
    (ChatRequest, {"messages": [MSG], "stop": "\n"}),
    (ChatRequest, {"messages": [MSG], "stop": ["a", "b", "c", "d"]}),
    (ChatRequest, {"messages": [MSG], "stop": []}),
    (ChatRequest, {"messages": [MSG], "stop": None}),
    (ChatRequest, {"messages": [MSG], "stream": True, "stream_options": {"include_usage": True}}),
    (ChatRequest, {"messages": [MSG], "stream_options": {"include_usage": False, "x": 1}}),
    (ChatRequest, {"messages": [MSG], "logprobs": True, "top_logprobs": 20}),
    (ChatRequest, {"messages": [MSG], "logprobs": True, "top_logprobs": 0}),
    (ChatRequest, {"messages": [MSG], "logprobs": False}),
    (ChatRequest, {"messages": [MSG], "top_logprobs": None}),
    (ChatRequest, {"messages": [MSG], "seed": 42}),
    (ChatRequest, {"messages": [MSG], "seed": -1}),
    (ChatRequest, {"messages": [MSG], "top_p": 1, "presence_penalty": -2,
                   "frequency_penalty": 1.5, "max_tokens": 2**31 - 1}),
    (CompletionRequest, {"prompt": "x", "logprobs": 5, "echo": True, "stop": ["x"],
                         "seed": 1, "top_p": 0.5}),
    (ChatRequest, {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
    (ChatRequest, {"messages": [{"role": "assistant", "content": None}], "model": "m"}),
    (CompletionRequest, {"prompt": "x"}),
    (CompletionRequest, {"prompt": [[1, 2], [3]]}),
    (EmbeddingRequest, {"input": ["a", "b"]}),
])
def test_valid_requests(schema: type[BaseModel], body: dict[str, object]) -> None:
    _, data = parse(json.dumps(body).encode(), schema)
    assert data == body

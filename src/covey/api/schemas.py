"""Validation of OpenAI request bodies. Unknown fields pass through to the engine untouched;
the fields Covey reads and the OpenAI fields an engine parses (tools, tool_choice,
response_format, stop, stream_options, logprobs, seed, the sampling ranges) are checked for
the shape the OpenAI API reference gives them, and errors name the field.

Why every passed-through field, not only the ones Covey reads: an engine answers a malformed
one with a 500 (llama.cpp: "Failed to parse tools"), which looks exactly like a broken engine.
A request's own content must be refused here, as a 400 naming the field, so it never counts
against a healthy peer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, NoReturn, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from covey.errors import BadRequest

T = TypeVar("T", bound=BaseModel)

INT32_MAX = 2**31 - 1  # llama.cpp reads token counts into an int: larger wraps
MAX_TOOLS = 128  # OpenAI's limit on tools per request
MAX_STOP = 4  # OpenAI's limit on stop sequences


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


def _json_kind(value: Any) -> str | None:
    """The JSON type of a value, as the tag of the union member that takes it."""
    for kind, name in ((str, "str"), (list, "list"), (dict, "dict")):
        if type(value) is kind:
            return name
    return None


def _by_kind(message: str) -> Discriminator:
    """Choose a union's member by the JSON type of the input (members tagged "str", "list",
    "dict"), so an error comes from the member meant for that input rather than the first one
    tried, and any other type gets `message`. `parse` drops these tags from error locations."""
    return Discriminator(_json_kind, custom_error_type="invalid_type",
                         custom_error_message=message)


class ChatMessage(_Open):
    role: str = Field(min_length=1, max_length=64)
    content: str | list[dict[str, Any]] | None = None


class FunctionDefinition(_Open):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Open):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("str")]
    | Annotated[NamedToolChoice, Tag("dict")],
    _by_kind('Input should be "none", "auto", "required" or '
             '{"type": "function", "function": {"name": ...}}')]


class JsonSchemaFormat(_Open):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> Self:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a "json_schema" object')
        return self


class StreamOptions(_Open):
    include_usage: bool | None = None


Stop = Annotated[
    Annotated[str, Tag("str")]
    | Annotated[list[str], Field(max_length=MAX_STOP), Tag("list")],
    _by_kind(f"Input should be a string or a list of at most {MAX_STOP} strings")]


class _Generation(_Open):
    model: str | None = Field(default=None, min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | int | None = Field(default=None, ge=0, le=2)
    top_p: float | int | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | int | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | int | None = Field(default=None, ge=-2, le=2)
    n: int | None = Field(default=None, ge=1, le=1)  # llama.cpp returns one choice
    stop: Stop | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what JSON engines hold


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("logprobs") is not True:
            raise ValueError('needs "logprobs": true')
        return value


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)  # legacy API: a count, not a flag
    echo: bool | None = None


class EmbeddingRequest(_Open):
    model: str | None = Field(default=None, min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]


def _no_constant(name: str) -> NoReturn:
    # Python's json accepts NaN and Infinity; JSON does not, and an engine that is handed
    # them fails to parse the body (llama.cpp answers 500).
    raise ValueError(f"{name} is not a JSON value")


def parse(raw: bytes, schema: type[T]) -> tuple[T, dict[str, Any]]:
    """(validated request, the decoded JSON object). Raises BadRequest naming the field."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data), data
    except ValidationError as exc:
        first = exc.errors()[0]
        # A union field's location ends in the member tried ("temperature.float",
        # "prompt.list[int]"); the client sent "temperature" or "prompt".
        where = ".".join(str(p) for p in first["loc"] if not _is_type_tag(p)) or "body"
        message = "Input should be an object" if first["type"] == "model_type" \
            else first["msg"]
        raise BadRequest(f"{where}: {message}", param=where) from exc


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part)

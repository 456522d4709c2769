"""Validation of OpenAI request bodies. Unknown fields pass through to the engine untouched;
the fields Covey relies on are checked strictly, and errors name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from covey.errors import BadRequest

T = TypeVar("T", bound=BaseModel)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_Open):
    role: str = Field(min_length=1, max_length=64)
    content: str | list[dict[str, Any]] | None = None


class _Generation(_Open):
    model: str | None = Field(default=None, min_length=1, max_length=256)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | int | None = Field(default=None, ge=0, le=2)
    n: int | None = Field(default=None, ge=1, le=1)  # llama.cpp returns one choice


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_Open):
    model: str | None = Field(default=None, min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]


def parse(raw: bytes, schema: type[T]) -> tuple[T, dict[str, Any]]:
    """(validated request, the decoded JSON object). Raises BadRequest naming the field."""
    try:
        data = json.loads(raw)
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
        raise BadRequest(f"{where}: {first['msg']}", param=where) from exc


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part)

"""Memory values, validated: everything here may have come from the network.

`parse_new` and `parse_filters` turn decoded JSON into frozen values or raise
`MemoryInputError` naming the field (never echoing its content: texts are user data, like
prompts). Bounds are constants so the API, the CLI and the tests share them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_TEXT_CHARS = 8192
MAX_PROJECT_CHARS = 64
MAX_TAGS = 16
MAX_TAG_CHARS = 64
MAX_SOURCE_CHARS = 256
MAX_FILTER_PROJECTS = 64
MAX_K = 1000  # results one search may ask for
MAX_DIM = 4096  # vector dimensions
MAX_MODEL_ID_CHARS = 128
DEFAULT_PROJECT = "default"

_PROJECT_RE = re.compile(r"[A-Za-z0-9._-]+")
_ID_RE = re.compile(r"mem_[0-9a-f]{24}")


class MemoryInputError(ValueError):
    """A memory, filter or search argument is invalid; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class NewMemory:
    text: str
    project: str = DEFAULT_PROJECT
    tags: tuple[str, ...] = ()
    source: str = ""
    confidence: float = 1.0
    pinned: bool = False

    def __post_init__(self) -> None:
        # Constructed in code as well as by parse_new: the same checks either way.
        _check_text(self.text)
        _check_project("project", self.project)
        _check_tags("tags", self.tags)
        _check_str("source", self.source, 0, MAX_SOURCE_CHARS)
        _check_unit("confidence", self.confidence)
        if not isinstance(self.pinned, bool):
            raise MemoryInputError("pinned", "must be true or false")


@dataclass(frozen=True)
class Memory:
    id: str
    text: str
    project: str
    tags: tuple[str, ...]
    source: str
    confidence: float
    pinned: bool
    created_at: float  # unix seconds
    updated_at: float
    accessed_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "project": self.project,
            "tags": list(self.tags),
            "source": self.source,
            "confidence": self.confidence,
            "pinned": self.pinned,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "accessed_at": self.accessed_at,
        }


@dataclass(frozen=True)
class Filters:
    projects: tuple[str, ...] | None = None  # None: every project
    tags: tuple[str, ...] = ()  # every one must be present
    min_confidence: float = 0.0
    since: float | None = None  # unix seconds: updated_at >= since

    @property
    def empty(self) -> bool:
        return (
            self.projects is None
            and not self.tags
            and self.min_confidence <= 0.0
            and self.since is None
        )


@dataclass(frozen=True)
class Hit:
    memory: Memory
    score: float  # cosine similarity, -1..1


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    considered: int  # vectors left after the filters
    method: str  # "exact" | "ann"
    corrupt: int  # rows the store skipped as corrupt so far


def is_memory_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def parse_new(obj: object) -> NewMemory:
    """One memory from decoded JSON; unknown keys are ignored (newer clients may send more)."""
    if not isinstance(obj, dict):
        raise MemoryInputError("memory", "must be a JSON object")
    text = obj.get("text")
    if not isinstance(text, str):
        raise MemoryInputError("text", "must be a string")
    tags = obj.get("tags", [])
    if not isinstance(tags, list):
        raise MemoryInputError("tags", "must be a list of strings")
    if len(tags) > MAX_TAGS:
        raise MemoryInputError("tags", f"at most {MAX_TAGS} tags (got {len(tags)})")
    return NewMemory(
        text=text.strip(),
        project=obj.get("project", DEFAULT_PROJECT),
        tags=_dedupe(tuple(tags)),
        source=obj.get("source", ""),
        confidence=_number("confidence", obj.get("confidence", 1.0)),
        pinned=obj.get("pinned", False),
    )


def parse_filters(obj: dict[str, Any]) -> Filters:
    """Filters from a search or list request body; keys other than the filters are ignored."""
    if not isinstance(obj, dict):
        raise MemoryInputError("filters", "must be a JSON object")
    projects: tuple[str, ...] | None = None
    raw = obj.get("project")
    if isinstance(raw, str):
        projects = (raw,)
    elif isinstance(raw, list):
        if not 1 <= len(raw) <= MAX_FILTER_PROJECTS:
            raise MemoryInputError("project", f"list of 1..{MAX_FILTER_PROJECTS} projects")
        projects = _dedupe(tuple(raw))
    elif raw is not None:
        raise MemoryInputError("project", "must be a string or a list of strings")
    if projects is not None:
        for p in projects:
            _check_project("project", p)
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise MemoryInputError("tags", f"must be a list of at most {MAX_TAGS} strings")
    tag_tuple = _dedupe(tuple(tags))
    _check_tags("tags", tag_tuple)
    min_conf = _number("min_confidence", obj.get("min_confidence", 0.0))
    _check_unit("min_confidence", min_conf)
    since_raw = obj.get("since")
    since = None if since_raw is None else _number("since", since_raw)
    if since is not None and since < 0:
        raise MemoryInputError("since", "must be unix seconds, not negative")
    return Filters(projects=projects, tags=tag_tuple, min_confidence=min_conf, since=since)


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise MemoryInputError("k", f"must be an integer 1..{MAX_K}")
    return k


def check_min_score(value: object) -> float:
    score = _number("min_score", value)
    if not -1.0 <= score <= 1.0:
        raise MemoryInputError("min_score", "must be between -1 and 1")
    return score


def _number(field: str, value: object) -> float:
    # bool is an int in Python but never a number in JSON's sense.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MemoryInputError(field, "must be a number")
    out = float(value)
    if not math.isfinite(out):
        raise MemoryInputError(field, "must be finite")
    return out


def _check_unit(field: str, value: object) -> None:
    v = _number(field, value)
    if not 0.0 <= v <= 1.0:
        raise MemoryInputError(field, "must be between 0 and 1")


def _check_str(field: str, value: object, lo: int, hi: int) -> str:
    if not isinstance(value, str):
        raise MemoryInputError(field, "must be a string")
    if not lo <= len(value) <= hi:
        raise MemoryInputError(field, f"must be {lo}..{hi} characters (got {len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON "\ud800": SQLite would refuse them
        raise MemoryInputError(field, "must be valid Unicode") from None
    return value


def _check_text(value: object) -> None:
    text = _check_str("text", value, 1, MAX_TEXT_CHARS)
    if not text.strip():
        raise MemoryInputError("text", "must not be blank")


def is_project_name(value: str) -> bool:
    """A project name: 1..64 letters, digits, '.', '_' or '-' (settings check it too)."""
    return len(value) <= MAX_PROJECT_CHARS and _PROJECT_RE.fullmatch(value) is not None


def _check_project(field: str, value: object) -> None:
    project = _check_str(field, value, 1, MAX_PROJECT_CHARS)
    if _PROJECT_RE.fullmatch(project) is None:
        raise MemoryInputError(field, "may hold only letters, digits, '.', '_' and '-'")


def _check_tags(field: str, tags: object) -> None:
    if not isinstance(tags, tuple):
        raise MemoryInputError(field, "must be a tuple of strings")
    if len(tags) > MAX_TAGS:
        raise MemoryInputError(field, f"at most {MAX_TAGS} tags (got {len(tags)})")
    for tag in tags:
        t = _check_str(field, tag, 1, MAX_TAG_CHARS)
        if not t.isprintable():
            raise MemoryInputError(field, "tags must be printable")


def _dedupe(values: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        return tuple(dict.fromkeys(values))
    except TypeError:  # an unhashable element (a list, a dict): the field check names it
        return values


def check_model_id(model_id: object) -> None:
    if (
        not isinstance(model_id, str)
        or not 1 <= len(model_id) <= MAX_MODEL_ID_CHARS
        or not model_id.isprintable()
    ):
        raise MemoryInputError("model_id", f"must be 1..{MAX_MODEL_ID_CHARS} printable characters")


def unit_rows(vectors: object, n: int) -> npt.NDArray[np.float32]:
    """`vectors` as n unit rows of float32, or MemoryInputError naming what is wrong."""
    try:
        # A float64 past float32's range becomes inf here, refused just below.
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):  # ragged lists, strings, objects
        raise MemoryInputError("vectors", "must be numbers") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] != n or not 1 <= arr.shape[1] <= MAX_DIM:
        raise MemoryInputError("vectors", f"must be {n} rows of 1..{MAX_DIM} numbers")
    if not np.isfinite(arr).all():
        raise MemoryInputError("vectors", "must be finite")
    # Scale by the largest component first: squaring 1e30 would overflow float32.
    peak = np.abs(arr).max(axis=1)
    if not (peak > 0).all():
        raise MemoryInputError("vectors", "must not be zero")
    scaled = arr / peak[:, None]
    out: npt.NDArray[np.float32] = (scaled / np.linalg.norm(scaled, axis=1)[:, None]).astype(
        np.float32
    )
    return out

"""The SQLite side of the memory store: its schema, filters as SQL, and rows to values.

Rows are trusted in nothing: the file may have been edited or damaged behind the store's back
(SQLite's columns are dynamically typed). A bad row raises RowError, which the store counts
and skips."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from covey.memory.matrix import RowMeta
from covey.memory.records import MAX_TAGS, Filters, Memory, is_memory_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    project TEXT NOT NULL,
    tags TEXT NOT NULL,
    source TEXT NOT NULL,
    confidence REAL NOT NULL,
    pinned INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    accessed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_created ON memories(created_at);
CREATE TABLE IF NOT EXISTS vectors (
    seq INTEGER PRIMARY KEY REFERENCES memories(seq) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vec BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS vectors_model ON vectors(model_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('vector_epoch', 0);
"""


ROW_COLUMNS = (
    "memories.seq, memories.id, memories.text, memories.project, memories.tags, "
    "memories.source, memories.confidence, memories.pinned, memories.created_at, "
    "memories.updated_at, memories.accessed_at"
)
# What the in-memory filters need: no text, so loading 100k rows stays light.
META_COLUMNS = (
    "memories.seq, memories.id, memories.project, memories.tags, memories.confidence, "
    "memories.updated_at"
)


class RowError(ValueError):
    """A stored row that cannot be read as a memory; the message says which field."""


def memory_from_row(row: Sequence[Any]) -> Memory:
    """A ROW_COLUMNS row as a Memory."""
    _, mid, text, project, tags, source, confidence, pinned, created, updated, accessed = row
    if not is_memory_id(mid):
        raise RowError("id")
    if not isinstance(text, str):
        raise RowError("text")
    if not isinstance(source, str):
        raise RowError("source")
    if pinned not in (0, 1):
        raise RowError("pinned")
    return Memory(
        id=mid,
        text=text,
        project=_project(project),
        tags=_tags(tags),
        source=source,
        confidence=_unit(confidence),
        pinned=bool(pinned),
        created_at=_time("created_at", created),
        updated_at=_time("updated_at", updated),
        accessed_at=_time("accessed_at", accessed),
    )


def meta_from_row(row: Sequence[Any]) -> RowMeta:
    """A META_COLUMNS row as the filter columns of one memory."""
    _, mid, project, tags, confidence, updated = row
    if not is_memory_id(mid):
        raise RowError("id")
    return RowMeta(
        project=_project(project),
        tags=_tags(tags),
        confidence=_unit(confidence),
        updated_at=_time("updated_at", updated),
    )


def meta_of(mem: Memory) -> RowMeta:
    return RowMeta(mem.project, mem.tags, mem.confidence, mem.updated_at)


def _project(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise RowError("project")
    return value


def _tags(value: object) -> tuple[str, ...]:
    if value == "[]":  # the common case, without a JSON parse
        return ()
    if not isinstance(value, str):
        raise RowError("tags")
    try:
        tags = json.loads(value)
    except ValueError:
        raise RowError("tags") from None
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise RowError("tags")
    if not all(isinstance(t, str) for t in tags):
        raise RowError("tags")
    return tuple(tags)


def _unit(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError("confidence")
    v = float(value)
    if not 0.0 <= v <= 1.0:  # also false for NaN
        raise RowError("confidence")
    return v


def _time(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RowError(field)
    return float(value)


def sql_filters(filters: Filters) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if filters.projects is not None:
        clauses.append(f"project IN ({','.join('?' * len(filters.projects))})")
        args.extend(filters.projects)
    if filters.min_confidence > 0.0:
        clauses.append("confidence >= ?")
        args.append(filters.min_confidence)
    if filters.since is not None:
        clauses.append("updated_at >= ?")
        args.append(filters.since)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

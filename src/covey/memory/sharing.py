"""What a peer may search, and how answers from several machines become one list (pure).

Sharing is per project and read-only: a node started with `--share-memory PROJECT` (repeat;
`*` for every project) answers other members' `/mesh/memory/search` over those projects
only. A peer's query carries the *vector* of the question, never its text, and the id of
the model that made it: vectors of different models cannot be compared, so a node whose
memories were embedded by another model refuses the query instead of answering noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covey.memory.records import (
    MAX_DIM,
    MAX_TEXT_CHARS,
    Filters,
    Hit,
    MemoryInputError,
    check_k,
    check_min_score,
    check_model_id,
    parse_filters,
    unit_rows,
)

ALL = "*"
MAX_K = 100  # results a peer is asked for, or answers
# Only what a search result needs crosses the mesh: no source, no access times, no pin.
SHARED_FIELDS = ("id", "text", "project", "tags", "confidence", "updated_at")


class Refused(Exception):
    """This node will not answer the query: `status` 503 (sharing off), 403 (a project not
    shared) or 409 (another embedding model)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class PeerQuery:
    vector: np.ndarray
    model: str
    filters: Filters
    k: int
    min_score: float


def parse_peer_query(body: Mapping[str, Any]) -> PeerQuery:
    """A member's `/mesh/memory/search` body, validated. Raises MemoryInputError."""
    raw = body.get("vector")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_DIM or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in raw):
        raise MemoryInputError("vector", f"must be a list of 1..{MAX_DIM} numbers")
    vector = unit_rows(raw, 1)[0]
    model = body.get("model")
    check_model_id(model)
    assert isinstance(model, str)
    k = check_k(body.get("k", 10))
    if k > MAX_K:
        raise MemoryInputError("k", f"must be an integer 1..{MAX_K}")
    filters = body.get("filters", {})
    if not isinstance(filters, dict):
        raise MemoryInputError("filters", "must be an object")
    return PeerQuery(vector, model, parse_filters(filters), k,
                     check_min_score(body.get("min_score", 0.0)))


def scope(shared: frozenset[str], asked: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The projects a peer's query may search here: None means every project.

    Raises Refused: 503 when nothing is shared, 403 when it names a project not shared."""
    if not shared:
        raise Refused(503, "memory_sharing_off",
                      "this node does not share its memory; its owner can turn it on with "
                      "`covey serve --share-memory PROJECT` (or `*` for every project)")
    if ALL in shared:
        return asked
    if asked is None:
        return tuple(sorted(shared))
    hidden = [p for p in asked if p not in shared]
    if hidden:
        raise Refused(403, "project_not_shared",
                      f"project {hidden[0]!r} is not shared by this node")
    return asked


def shared_view(hit: Hit) -> dict[str, Any]:
    """A local hit as it leaves this node for a peer: the result fields only."""
    m = hit.memory.to_json()
    return {**{k: m[k] for k in SHARED_FIELDS}, "score": round(float(hit.score), 6)}


@dataclass(frozen=True)
class SourceAnswer:
    """What one source (this node, or a peer) said: its hits, or why it gave none."""

    node_id: str
    name: str
    status: str  # answered | timeout | refused | error
    hits: Sequence[Mapping[str, Any]] = ()
    reason: str = ""
    ms: float | None = None


def parse_peer_hits(answer: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """A peer's answer, validated: at most `k` hits with bounded fields, finite scores.
    A malformed hit is dropped, not the whole answer. Raises MemoryInputError when the
    answer has no hit list at all."""
    raw = answer.get("hits")
    if not isinstance(raw, list):
        raise MemoryInputError("hits", "the answer has no hits list")
    hits: list[dict[str, Any]] = []
    for item in raw[:k]:
        if not isinstance(item, dict):
            continue
        text, project, score = item.get("text"), item.get("project"), item.get("score")
        tags = item.get("tags", [])
        if not (isinstance(text, str) and 0 < len(text) <= MAX_TEXT_CHARS
                and isinstance(project, str) and 0 < len(project) <= 64
                and isinstance(score, int | float) and not isinstance(score, bool)
                and math.isfinite(score) and -1.0 <= score <= 1.0
                and isinstance(tags, list) and len(tags) <= 16
                and all(isinstance(t, str) and len(t) <= 64 for t in tags)):
            continue
        conf, updated = item.get("confidence"), item.get("updated_at")
        hits.append({
            "id": str(item.get("id", ""))[:64], "text": text, "project": project,
            "tags": tags, "score": float(score),
            "confidence": float(conf) if isinstance(conf, int | float)
            and math.isfinite(conf) and 0 <= conf <= 1 else None,
            "updated_at": float(updated) if isinstance(updated, int | float)
            and math.isfinite(updated) else None})
    return hits


@dataclass
class Merged:
    results: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)


def merge(answers: Iterable[SourceAnswer], k: int) -> Merged:
    """One list, best score first, at most `k`: each result labelled with its source (node,
    project); identical texts (ignoring case and spacing) appear once, at their best score,
    with every node that holds them in `also_on`. Ties break by node id then memory id, so
    the order is the same on every run."""
    best: dict[str, dict[str, Any]] = {}
    sources = []
    for a in answers:
        sources.append({"node_id": a.node_id, "name": a.name, "status": a.status,
                        "hits": len(a.hits), **({"reason": a.reason} if a.reason else {}),
                        **({"ms": round(a.ms, 1)} if a.ms is not None else {})})
        for h in a.hits:
            key = " ".join(str(h["text"]).lower().split())
            row = {**h, "node_id": a.node_id, "node": a.name}
            held = best.get(key)
            if held is None:
                best[key] = {**row, "also_on": []}
            elif _order(row) < _order(held):
                best[key] = {**row, "also_on": sorted({*held["also_on"], held["node_id"]}
                                                      - {a.node_id})}
            elif a.node_id != held["node_id"] and a.node_id not in held["also_on"]:
                held["also_on"] = sorted([*held["also_on"], a.node_id])
    ranked = sorted(best.values(), key=_order)[:k]
    return Merged(ranked, sources)


def _order(row: Mapping[str, Any]) -> tuple[float, str, str]:
    return (-float(row["score"]), str(row["node_id"]), str(row.get("id", "")))

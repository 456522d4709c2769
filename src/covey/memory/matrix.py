"""The vectors of one model in memory, with the columns the search filters read.

Rows are unit vectors (float32) in a growable buffer; row i belongs to the memory whose
SQLite rowid is `keys[i]`. Deleting moves the last row into the hole, so rows stay dense
and a scan is one matrix-vector product. Filters are evaluated here on NumPy columns rather
than in SQL: at 100k rows a mask over the columns takes well under a millisecond where the
equivalent SQL query takes tens (`python -m covey.bench.memory` prints both).

Not thread-safe: the store holds its lock around every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from covey.memory.records import Filters

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class RowMeta:
    """What the filters need of one memory."""

    project: str
    tags: tuple[str, ...]
    confidence: float
    updated_at: float


class VectorMatrix:
    def __init__(self, model_id: str, dim: int) -> None:
        self.model_id = model_id
        self.dim = dim
        self._n = 0
        self._vecs: F32 = np.zeros((0, dim), np.float32)
        self._keys: I64 = np.zeros(0, np.int64)
        self._project: npt.NDArray[np.int32] = np.zeros(0, np.int32)
        self._confidence: npt.NDArray[np.float64] = np.zeros(0, np.float64)
        self._updated: npt.NDArray[np.float64] = np.zeros(0, np.float64)
        self._tags: list[tuple[str, ...]] = []
        self._pos: dict[int, int] = {}  # key -> row
        self._project_codes: dict[str, int] = {}
        self._by_tag: dict[str, set[int]] = {}  # tag -> keys

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: int) -> bool:
        return key in self._pos

    @property
    def keys(self) -> I64:
        return self._keys[: self._n]

    @property
    def vectors(self) -> F32:
        return self._vecs[: self._n]

    def add(self, keys: list[int], vectors: F32, metas: list[RowMeta]) -> None:
        """Add or replace rows; `vectors` must already be unit vectors of this dim."""
        if len(keys) != len(vectors) or len(keys) != len(metas):
            raise ValueError("keys, vectors and metas differ in length")
        for key in keys:
            if key in self._pos:
                self.remove(key)
        m = len(keys)
        self._grow(self._n + m)
        lo, hi = self._n, self._n + m
        # Bulk assignment: loading 100k rows one by one would take most of a second.
        self._vecs[lo:hi] = vectors
        self._keys[lo:hi] = keys
        self._project[lo:hi] = [
            self._project_codes.setdefault(meta.project, len(self._project_codes)) for meta in metas
        ]
        self._confidence[lo:hi] = [meta.confidence for meta in metas]
        self._updated[lo:hi] = [meta.updated_at for meta in metas]
        for i, (key, meta) in enumerate(zip(keys, metas, strict=True), start=lo):
            self._tags.append(meta.tags)
            for tag in meta.tags:
                self._by_tag.setdefault(tag, set()).add(key)
            self._pos[key] = i
        self._n = hi

    def remove(self, key: int) -> bool:
        i = self._pos.pop(key, None)
        if i is None:
            return False
        for tag in self._tags[i]:
            holders = self._by_tag.get(tag)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._by_tag[tag]
        last = self._n - 1
        if i != last:
            self._vecs[i] = self._vecs[last]
            self._keys[i] = self._keys[last]
            self._project[i] = self._project[last]
            self._confidence[i] = self._confidence[last]
            self._updated[i] = self._updated[last]
            self._tags[i] = self._tags[last]
            self._pos[int(self._keys[i])] = i
        self._tags.pop()
        self._n = last
        return True

    def vector(self, key: int) -> F32 | None:
        i = self._pos.get(key)
        return None if i is None else self._vecs[i]

    def candidates(self, filters: Filters) -> I64 | None:
        """Rows passing the filters; None means every row (no copy needed)."""
        if filters.empty:
            return None
        n = self._n
        rows: I64 | None = None
        if filters.tags:
            # Tags are selective as a rule: start from the smallest holder set.
            sets = sorted((self._by_tag.get(t, set()) for t in filters.tags), key=len)
            keys = set(sets[0]).intersection(*sets[1:]) if sets[0] else set()
            rows = np.fromiter((self._pos[k] for k in keys), np.int64, len(keys))
            rows.sort()
        mask: npt.NDArray[np.bool_] | None = None

        def both(m: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
            return m if mask is None else mask & m

        if filters.projects is not None:
            codes = [self._project_codes[p] for p in filters.projects if p in self._project_codes]
            col = self._project[:n] if rows is None else self._project[rows]
            mask = both(np.isin(col, np.asarray(codes, np.int32)))
        if filters.min_confidence > 0.0:
            col_c = self._confidence[:n] if rows is None else self._confidence[rows]
            mask = both(col_c >= filters.min_confidence)
        if filters.since is not None:
            col_u = self._updated[:n] if rows is None else self._updated[rows]
            mask = both(col_u >= filters.since)
        if mask is None:
            return rows if rows is not None else np.arange(n, dtype=np.int64)
        picked = np.flatnonzero(mask)
        return picked if rows is None else rows[picked]

    def row_of(self, key: int) -> int | None:
        return self._pos.get(key)

    def top_k(self, query: F32, rows: I64 | None, k: int) -> tuple[I64, F32]:
        """Exact cosine: the best k of `rows` (None: all), best first, as (keys, scores)."""
        if rows is None:
            scores = self._vecs[: self._n] @ query
            keys = self._keys[: self._n]
        else:
            scores = self._vecs[rows] @ query
            keys = self._keys[rows]
        if len(scores) > k:
            part = np.argpartition(-scores, k - 1)[:k]
        else:
            part = np.arange(len(scores))
        order = part[np.argsort(-scores[part], kind="stable")]
        return keys[order], scores[order]

    def score(self, keys: I64, query: F32) -> F32:
        rows = np.fromiter((self._pos[int(k)] for k in keys), np.int64, len(keys))
        out: F32 = self._vecs[rows] @ query
        return out

    def _grow(self, need: int) -> None:
        cap = len(self._keys)
        if need <= cap:
            return
        new = max(need, cap * 2, 64)
        vecs = np.zeros((new, self.dim), np.float32)
        vecs[: self._n] = self._vecs[: self._n]
        self._vecs = vecs
        self._keys = np.resize(self._keys, new)
        self._project = np.resize(self._project, new)
        self._confidence = np.resize(self._confidence, new)
        self._updated = np.resize(self._updated, new)

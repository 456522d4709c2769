"""The approximate nearest-neighbour index (usearch HNSW) of one model's vectors.

Keys are the memories' SQLite rowids. The index lives in a file next to the database with a
small JSON sidecar naming the model, the dimension, the count and the store's vector epoch
(a counter SQLite bumps in every transaction that changes a vector). On open the file is
trusted only if all four agree with SQLite and every key is present; otherwise it is rebuilt
from the vectors SQLite holds, and one line is logged. The file is written on close: after a
crash the epoch disagrees and the index is rebuilt rather than silently missing rows.

Scores are not taken from the index: it stores half-precision vectors and only proposes
candidates; the store re-scores them exactly from its float32 matrix.

Not thread-safe: the store holds its lock around every call.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from usearch.index import Index

from covey.memory.matrix import VectorMatrix

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
# Candidates asked of the ANN index for a filtered search; a filter so selective that more
# would be needed is answered exactly (its survivors are then few relative to the store).
MAX_ANN_CANDIDATES = 4096
SERIAL_INSERTS = 2048  # vectors inserted on one thread before inserts go parallel


@dataclass(frozen=True)
class AnnParams:
    # Tuned with `python -m covey.bench.memory` for recall@10 >= 0.98 at 100k (see that module).
    connectivity: int = 16  # HNSW "M": graph edges per node and layer
    expansion_add: int = 128  # "efConstruction": search depth while inserting
    expansion_search: int = 128  # "ef": search depth while querying (at least the k asked)


class AnnIndex:
    def __init__(self, dim: int, params: AnnParams) -> None:
        self.dim = dim
        self.params = params
        self._index = _new_index(dim, params)

    def __len__(self) -> int:
        return len(self._index)

    def add(self, keys: I64, vectors: F32) -> None:
        # Parallel inserts into a near-empty graph link it poorly (measured: up to 2% of the
        # top 10 lost at 400 vectors, varying run to run); the first vectors go in one by one.
        serial = max(0, min(len(keys), SERIAL_INSERTS - len(self._index)))
        ukeys = keys.astype(np.uint64)
        if serial:
            self._index.add(ukeys[:serial], vectors[:serial], threads=1)
        if len(keys) > serial:
            self._index.add(ukeys[serial:], vectors[serial:], threads=0)

    def remove(self, keys: I64) -> None:
        if len(keys):
            self._index.remove(keys.astype(np.uint64))

    def contains_all(self, keys: I64) -> bool:
        if not len(keys):
            return True
        return bool(np.all(self._index.contains(keys.astype(np.uint64))))

    def search(self, query: F32, count: int) -> I64:
        """Keys of up to `count` approximate nearest neighbours, nearest first."""
        if not len(self._index):
            return np.zeros(0, np.int64)
        matches = self._index.search(query, count)
        keys: I64 = np.asarray(matches.keys, np.int64)[: len(matches)]
        return keys

    def save(self, path: Path, model_id: str, epoch: int) -> None:
        """Write the index and its sidecar atomically (temp file, then rename)."""
        tmp = path.with_name(path.name + ".tmp")
        self._index.save(str(tmp))
        os.replace(tmp, path)
        meta = {"model_id": model_id, "dim": self.dim, "count": len(self), "epoch": epoch}
        _write_atomic(_meta_path(path), json.dumps(meta).encode())

    @classmethod
    def build(cls, dim: int, params: AnnParams, keys: I64, vectors: F32) -> AnnIndex:
        index = cls(dim, params)
        index.add(keys, vectors)
        return index

    @classmethod
    def open(
        cls,
        path: Path,
        params: AnnParams,
        model_id: str,
        epoch: int,
        keys: I64,
        vectors: F32,
    ) -> AnnIndex:
        """The index at `path` if it matches SQLite's view (model, dim, count, epoch, keys),
        else one rebuilt from `keys`/`vectors`. Never raises for a bad file."""
        dim = vectors.shape[1]
        reason = _check_file(path, model_id, dim, epoch, len(keys))
        if reason is None:
            index = cls(dim, params)
            try:
                index._index.load(str(path))
            # usearch reports a truncated or foreign file as RuntimeError or ValueError.
            except (RuntimeError, ValueError, OSError):
                reason = "unreadable"
            else:
                if len(index) != len(keys) or not index.contains_all(keys):
                    reason = "keys differ"
                else:
                    return index
        started = time.perf_counter()
        index = cls.build(dim, params, keys, vectors)
        log.warning(
            "memory index rebuilt: reason=%s vectors=%d took_s=%.2f",
            reason,
            len(keys),
            time.perf_counter() - started,
        )
        return index


def approximate_top_k(
    ann: AnnIndex, matrix: VectorMatrix, query: F32, rows: I64 | None, considered: int, k: int
) -> tuple[I64, F32] | None:
    """Approximate top k, post-filtered; None when it cannot be trusted to fill k (the
    caller then searches exactly)."""
    want = k
    if rows is not None:
        # Ask for enough that, at this selectivity, about 2k pass the filters.
        want = math.ceil(2 * k * len(matrix) / considered)
    if want > MAX_ANN_CANDIDATES:
        return None
    # Twice k: the index ranks in half precision, so a near-tie at the k-th place can come
    # out one place late; re-scored exactly, the true k-th is back in. Free while 2k stays
    # under expansion_search, which bounds the work either way.
    found = ann.search(query, max(want, 2 * k))
    found = found[np.fromiter((int(x) in matrix for x in found), np.bool_, len(found))]
    if rows is not None and len(found):
        at = np.fromiter((matrix.row_of(int(x)) or 0 for x in found), np.int64, len(found))
        found = found[np.isin(at, rows)]
    if len(found) < min(k, considered):
        return None
    scores = matrix.score(found, query)
    order = np.argsort(-scores, kind="stable")[:k]
    return found[order], scores[order]


def _new_index(dim: int, params: AnnParams) -> Index:
    # Inner product on unit vectors is cosine; f16 halves the memory and the candidates are
    # re-scored exactly anyway.
    return Index(
        ndim=dim,
        metric="ip",
        dtype="f16",
        connectivity=params.connectivity,
        expansion_add=params.expansion_add,
        expansion_search=params.expansion_search,
    )


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _check_file(path: Path, model_id: str, dim: int, epoch: int, count: int) -> str | None:
    """Why the file at `path` cannot be used, or None if its sidecar matches."""
    if not path.exists():
        return "missing"
    try:
        raw = _meta_path(path).read_bytes()
        if len(raw) > 4096:
            return "sidecar too large"
        meta = json.loads(raw)
    except (OSError, ValueError):  # no sidecar, or not JSON: the file cannot be vouched for
        return "no sidecar"
    if not isinstance(meta, dict):
        return "bad sidecar"
    if meta.get("model_id") != model_id or meta.get("dim") != dim:
        return "other model"
    if meta.get("count") != count:
        return "count differs"
    if meta.get("epoch") != epoch:
        return "stale"
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

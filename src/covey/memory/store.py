"""The node's memory store: SQLite (WAL) for memories and vectors, NumPy for exact search,
usearch (ann.py) past a measured size.

Tables: `memories` (seq: the rowid and the key of the ANN index; id: "mem_" + 24 hex; the
fields of records.Memory, tags as JSON) and `vectors` (one per memory: the memory's seq, the
model id, the dimension, float32 bytes). A memory whose vector is missing or from another
model is "stale": it waits for `set_vectors` (the node re-embeds in the background) and takes
no part in searches meanwhile.

One model is active at a time: its vectors sit in a VectorMatrix (matrix.py), and, once it
holds `ann_threshold` vectors, in the ANN index. A search for another model makes that one
active (loading its vectors; the node searches with one model, so this happens on a model
change, not per query).

Search: filters first, on in-memory columns; then exact cosine over the survivors while
there are at most `ann_threshold` of them, the ANN index past that. With filters the index
is asked for more candidates than k (in proportion to how selective the filters are) and its
answer is post-filtered; if fewer than k survive, the search falls back to exact over the
filtered rows, so a selective filter never loses results.

Corrupt rows (bad JSON tags, wrong field types, a vector of the wrong length, NaN or zero)
are skipped, logged once by id and listed by `corrupt_rows()`; a memory whose vector is
corrupt counts as stale, so re-embedding repairs it.

Thread-safe: every public method takes the instance's lock (the node calls it from worker
threads). Blocking: call it from a worker thread, never on the event loop.
"""

from __future__ import annotations

import builtins
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from covey.memory.ann import AnnIndex, AnnParams, approximate_top_k
from covey.memory.matrix import RowMeta, VectorMatrix
from covey.memory.records import (
    MAX_DIM,
    MAX_K,
    MAX_MODEL_ID_CHARS,
    Filters,
    Hit,
    Memory,
    MemoryInputError,
    NewMemory,
    SearchResult,
    check_k,
    check_min_score,
    check_model_id,
    is_memory_id,
    unit_rows,
)
from covey.memory.rows import (
    META_COLUMNS,
    ROW_COLUMNS,
    SCHEMA,
    RowError,
    memory_from_row,
    meta_from_row,
    meta_of,
    sql_filters,
)

log = logging.getLogger(__name__)

# Exact search answers alone up to this many candidate vectors (after the filters); past it,
# the ANN index. Measured on a shared 2-core VM, dim 384, k=10, 200 queries, clustered data
# (`python -m covey.bench.memory --sizes 100,1000,5000,10000,100000` and
# `--sizes 10000,20000,30000,50000 --no-uniform`), p50/p95 ms of the whole search:
#     size     exact          ann
#     5k       0.21 / 0.27    0.51 / 0.89
#     10k      0.30 / 0.43    0.29-0.40 / 0.45-0.66
#     20k      0.42 / 0.56    0.35 / 0.50
#     50k      2.05 / 2.53    0.41 / 0.53
#     100k     4.35 / 6.70    0.49 / 0.81   (ANN recall@10 0.9985)
# NumPy's matrix-vector product keeps a linear scan under a millisecond well past the 5k-10k
# where the field's reference scan breaks; the two meet at about 10k here, so exact (recall
# 1.0, no index to build) answers up to there and the index only past it.
ANN_THRESHOLD = 10_000
MAX_BATCH = 1000  # memories one add may carry
MAX_LIST = 1000
# Memories whose vector is missing, from another model (?: the current one) or corrupt (?:
# their seqs as a JSON list): what re-embedding works through.
_STALE = ("FROM memories m LEFT JOIN vectors v ON v.seq = m.seq WHERE v.seq IS NULL "
          "OR v.model_id != ? OR m.seq IN (SELECT value FROM json_each(?))")
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class MemoryStore:
    def __init__(
        self,
        path: Path,
        index_path: Path | None = None,
        ann_threshold: int = ANN_THRESHOLD,
        clock: Callable[[], float] = time.time,
        ann_params: AnnParams | None = None,
    ) -> None:
        self._path = Path(path)
        self._index_path = index_path or self._path.with_name(self._path.name + ".usearch")
        self._threshold = max(0, ann_threshold)
        self._clock = clock
        self._ann_params = ann_params or AnnParams()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL: a commit survives a crash of the process, and at worst
        # the last commits are lost on power failure; the search path writes accessed_at.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._corrupt: dict[str, str] = {}  # memory id (or "seq:N") -> reason
        self._bad_vectors: set[int] = set()  # seqs of the active model with corrupt vectors
        self._matrix: VectorMatrix | None = None
        self._ann: AnnIndex | None = None
        self._closed = False
        with self._lock:
            model = self._initial_model()
            if model is not None:
                self._activate(model)

    # ---- writes -------------------------------------------------------------------------

    def add(self, items: Sequence[NewMemory], vectors: np.ndarray, model_id: str) -> list[Memory]:
        """Store memories and their vectors in one transaction; returns them with their ids."""
        if not 1 <= len(items) <= MAX_BATCH:
            raise MemoryInputError("memories", f"1..{MAX_BATCH} per call (got {len(items)})")
        for item in items:
            if not isinstance(item, NewMemory):
                raise MemoryInputError("memories", "must be NewMemory values")
        check_model_id(model_id)
        vecs = unit_rows(vectors, len(items))
        now = self._clock()
        with self._lock:
            self._check_dim(model_id, vecs.shape[1])
            out: list[Memory] = []
            seqs: list[int] = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for item, vec in zip(items, vecs, strict=True):
                    mem = Memory(
                        id="mem_" + secrets.token_hex(12),
                        text=item.text,
                        project=item.project,
                        tags=item.tags,
                        source=item.source,
                        confidence=item.confidence,
                        pinned=item.pinned,
                        created_at=now,
                        updated_at=now,
                        accessed_at=now,
                    )
                    cur = self._db.execute(
                        "INSERT INTO memories(id, text, project, tags, source, confidence, "
                        "pinned, created_at, updated_at, accessed_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            mem.id,
                            mem.text,
                            mem.project,
                            json.dumps(list(mem.tags)),
                            mem.source,
                            mem.confidence,
                            int(mem.pinned),
                            now,
                            now,
                            now,
                        ),
                    )
                    seq = cur.lastrowid
                    assert seq is not None
                    self._db.execute(
                        "INSERT INTO vectors(seq, model_id, dim, vec) VALUES (?, ?, ?, ?)",
                        (seq, model_id, vecs.shape[1], vec.tobytes()),
                    )
                    seqs.append(seq)
                    out.append(mem)
                self._bump_epoch()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if self._matrix is None:
                self._matrix = VectorMatrix(model_id, vecs.shape[1])
            if self._matrix.model_id == model_id:
                metas = [meta_of(m) for m in out]
                self._matrix.add(seqs, vecs, metas)
                self._ann_add(np.asarray(seqs, np.int64), vecs)
            return out

    def delete(self, memory_id: str) -> bool:
        if not is_memory_id(memory_id):
            return False
        with self._lock:
            row = self._db.execute("SELECT seq FROM memories WHERE id = ?", (memory_id,)).fetchone()
            if row is None:
                return False
            seq = int(row[0])
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM vectors WHERE seq = ?", (seq,))
                self._db.execute("DELETE FROM memories WHERE seq = ?", (seq,))
                self._bump_epoch()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._corrupt.pop(memory_id, None)
            self._bad_vectors.discard(seq)
            self._forget_active(np.asarray([seq], np.int64))
            return True

    def set_vectors(self, ids: Sequence[str], vectors: np.ndarray, model_id: str) -> int:
        """Replace the vectors of `ids` (re-embedding); ids deleted meanwhile are skipped.
        Returns how many were set."""
        if not 1 <= len(ids) <= MAX_BATCH:
            raise MemoryInputError("ids", f"1..{MAX_BATCH} per call (got {len(ids)})")
        check_model_id(model_id)
        vecs = unit_rows(vectors, len(ids))
        with self._lock:
            self._check_dim(model_id, vecs.shape[1])
            wanted = {mid: i for i, mid in enumerate(ids) if is_memory_id(mid)}
            found = self._rows_by_id(list(wanted))
            if not found:
                return 0
            seqs = [int(r[0]) for r in found]
            picked = vecs[[wanted[r[1]] for r in found]]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO vectors(seq, model_id, dim, vec) VALUES (?, ?, ?, ?)",
                    [
                        (seq, model_id, vecs.shape[1], v.tobytes())
                        for seq, v in zip(seqs, picked, strict=True)
                    ],
                )
                self._bump_epoch()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            keys = np.asarray(seqs, np.int64)
            self._bad_vectors.difference_update(seqs)
            if self._matrix is None:
                self._matrix = VectorMatrix(model_id, vecs.shape[1])
            if self._matrix.model_id != model_id:
                self._forget_active(keys)  # their vectors now belong to another model
                return len(seqs)
            self._forget_active(keys)
            parsed = [self._parse(r) for r in found]
            ok = [i for i, m in enumerate(parsed) if m is not None]
            metas = [meta_of(m) for m in parsed if m is not None]
            self._matrix.add([seqs[i] for i in ok], picked[ok], metas)
            self._ann_add(keys[ok], picked[ok])
            return len(seqs)

    # ---- reads --------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        if not is_memory_id(memory_id):
            return None
        with self._lock:
            row = self._db.execute(
                f"SELECT {ROW_COLUMNS} FROM memories WHERE id = ?", (memory_id,)
            ).fetchone()
            return None if row is None else self._parse(row)

    def list(self, filters: Filters, limit: int = 100, offset: int = 0) -> list[Memory]:
        """Memories passing the filters, newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise MemoryInputError("limit", f"must be an integer 1..{MAX_LIST}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise MemoryInputError("offset", "must be a non-negative integer")
        where, args = sql_filters(filters)
        sql = f"SELECT {ROW_COLUMNS} FROM memories{where} ORDER BY created_at DESC, seq DESC"
        out: builtins.list[Memory] = []
        with self._lock:
            if not filters.tags:
                rows = self._db.execute(sql + " LIMIT ? OFFSET ?", (*args, limit, offset))
                return [m for m in map(self._parse, rows) if m is not None]
            # Tags live in a JSON column: filtered here, so a corrupt row is skipped, not fatal.
            skipped = 0
            for row in self._db.execute(sql, args):
                mem = self._parse(row)
                if mem is None or not set(filters.tags).issubset(mem.tags):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(mem)
                if len(out) >= limit:
                    break
            return out

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM memories").fetchone()[0])

    def search(
        self,
        vector: np.ndarray,
        model_id: str,
        filters: Filters,
        k: int,
        min_score: float = 0.0,
    ) -> SearchResult:
        """The k memories nearest `vector` (cosine) among those passing `filters` whose vector
        is from `model_id`, best first; bumps accessed_at of the memories returned."""
        check_k(k)
        min_score = check_min_score(min_score)
        check_model_id(model_id)
        query = unit_rows(vector, 1)[0] if np.ndim(vector) == 1 else None
        if query is None:
            raise MemoryInputError("vector", "must be one vector (1-D)")
        with self._lock:
            if self._matrix is None or self._matrix.model_id != model_id:
                if not self._has_model(model_id):
                    return SearchResult([], 0, "exact", len(self._corrupt))
                self._activate(model_id)
            matrix = self._matrix
            assert matrix is not None
            if query.shape[0] != matrix.dim:
                raise MemoryInputError(
                    "vector", f"model {model_id} has dimension {matrix.dim}, not {query.shape[0]}"
                )
            rows = matrix.candidates(filters)
            considered = len(matrix) if rows is None else len(rows)
            keys: I64 = np.zeros(0, np.int64)
            scores: F32 = np.zeros(0, np.float32)
            method = "exact"
            if considered > self._threshold and considered > 0:
                ann = self._ensure_ann()
                got = (
                    None
                    if ann is None
                    else approximate_top_k(ann, matrix, query, rows, considered, k)
                )
                if got is not None:
                    keys, scores = got
                    method = "ann"
            if method == "exact" and considered > 0:
                keys, scores = matrix.top_k(query, rows, k)
            keep = scores >= min_score
            hits = self._hits(keys[keep], scores[keep])
            return SearchResult(hits, considered, method, len(self._corrupt))

    def stale(self, model_id: str, limit: int) -> builtins.list[tuple[str, str]]:
        """(id, text) of memories whose vector is missing, corrupt or from another model."""
        check_model_id(model_id)
        limit = max(1, min(int(limit), MAX_BATCH))
        with self._lock:
            bad = self._bad_for(model_id)
            rows = self._db.execute(
                f"SELECT m.id, m.text, m.seq {_STALE} ORDER BY m.seq LIMIT ?",
                (model_id, json.dumps(bad), limit),
            ).fetchall()
            return [(r[0], r[1]) for r in rows if isinstance(r[0], str) and isinstance(r[1], str)]

    def stale_count(self, model_id: str) -> int:
        check_model_id(model_id)
        with self._lock:
            bad = self._bad_for(model_id)
            row = self._db.execute(f"SELECT COUNT(*) {_STALE}",
                                   (model_id, json.dumps(bad))).fetchone()
            return int(row[0])

    def iter_all(self) -> Iterator[Memory]:
        """Every readable memory, oldest first (for export); pages so no lock is held between
        items."""
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {ROW_COLUMNS} FROM memories WHERE seq > ? ORDER BY seq LIMIT 500",
                    (last,),
                ).fetchall()
                parsed = [self._parse(r) for r in rows]
            if not rows:
                return
            last = int(rows[-1][0])
            yield from (m for m in parsed if m is not None)

    def corrupt_rows(self) -> builtins.list[str]:
        with self._lock:
            return sorted(self._corrupt)

    @property
    def active_model(self) -> str | None:
        with self._lock:
            return None if self._matrix is None else self._matrix.model_id

    def close(self) -> None:
        """Write the ANN index file (if one is held) and close the database."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._ann is not None and self._matrix is not None:
                try:
                    self._ann.save(self._index_path, self._matrix.model_id, self._epoch())
                # A failed save costs a rebuild on the next open, not the close.
                except (OSError, RuntimeError) as exc:
                    log.warning("memory index not saved: %s", type(exc).__name__)
            self._db.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- internals (lock held) -------------------------------------------------------------

    def _parse(self, row: Sequence[Any]) -> Memory | None:
        try:
            return memory_from_row(row)
        except RowError as exc:
            ident = row[1] if is_memory_id(row[1]) else f"seq:{row[0]}"
            self._note_corrupt(str(ident), str(exc))
            return None

    def _note_corrupt(self, ident: str, reason: str) -> None:
        if ident not in self._corrupt:
            self._corrupt[ident] = reason
            log.warning("memory row corrupt, skipped: id=%s reason=%s", ident, reason)

    def _epoch(self) -> int:
        return int(
            self._db.execute("SELECT value FROM meta WHERE key='vector_epoch'").fetchone()[0]
        )

    def _bump_epoch(self) -> None:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'vector_epoch'")

    def _has_model(self, model_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM vectors WHERE model_id = ? LIMIT 1", (model_id,))
        return row.fetchone() is not None

    def _initial_model(self) -> str | None:
        """The model the saved index was for, else the one with the most vectors."""
        try:
            meta = json.loads(
                self._index_path.with_name(self._index_path.name + ".json").read_bytes()
            )
            model = meta.get("model_id") if isinstance(meta, dict) else None
            if isinstance(model, str) and self._has_model(model):
                return model
        except (OSError, ValueError):  # no sidecar yet, or garbage: pick by count instead
            pass
        row = self._db.execute(
            "SELECT model_id, COUNT(*) AS n FROM vectors GROUP BY model_id ORDER BY n DESC LIMIT 1"
        ).fetchone()
        return None if row is None or not isinstance(row[0], str) else row[0]

    def _check_dim(self, model_id: str, dim: int) -> None:
        if self._matrix is not None and self._matrix.model_id == model_id:
            known: int | None = self._matrix.dim
        else:
            row = self._db.execute(
                "SELECT dim, COUNT(*) AS n FROM vectors WHERE model_id = ? "
                "GROUP BY dim ORDER BY n DESC LIMIT 1",
                (model_id,),
            ).fetchone()
            known = None if row is None else int(row[0])
        if known is not None and known != dim:
            raise MemoryInputError("vectors", f"model {model_id} has dimension {known}, not {dim}")

    def _activate(self, model_id: str) -> None:
        """Load `model_id`'s vectors into memory (and its ANN index when big enough)."""
        if self._ann is not None and self._matrix is not None:
            # Leaving a model: keep its index file for when it comes back.
            try:
                self._ann.save(self._index_path, self._matrix.model_id, self._epoch())
            except (OSError, RuntimeError):  # a rebuild later, not a failed search now
                pass
        self._matrix, self._ann = None, None
        self._bad_vectors = set()
        row = self._db.execute(
            "SELECT dim, COUNT(*) AS n FROM vectors WHERE model_id = ? "
            "GROUP BY dim ORDER BY n DESC LIMIT 1",
            (model_id,),
        ).fetchone()
        if row is None or not isinstance(row[0], int) or not 1 <= row[0] <= MAX_DIM:
            return
        dim = int(row[0])
        rows = self._db.execute(
            f"SELECT vectors.dim, vectors.vec, {META_COLUMNS} FROM vectors "
            "JOIN memories ON memories.seq = vectors.seq WHERE vectors.model_id = ? "
            "ORDER BY vectors.seq",
            (model_id,),
        ).fetchall()
        want = dim * 4
        keys: builtins.list[int] = []
        blobs: builtins.list[bytes] = []
        ids: builtins.list[str] = []
        metas: builtins.list[RowMeta] = []
        for vdim, blob, *mrow in rows:
            seq, mid = int(mrow[0]), mrow[1]
            try:
                meta = meta_from_row(mrow)
            except RowError as exc:
                self._note_corrupt(mid if is_memory_id(mid) else f"seq:{seq}", str(exc))
                continue
            if vdim != dim or not isinstance(blob, bytes) or len(blob) != want:
                self._bad_vector(seq, mid, "vector length")
                continue
            keys.append(seq)
            ids.append(mid)
            blobs.append(blob)
            metas.append(meta)
        vecs = np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), dim)
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.linalg.norm(vecs, axis=1)
        good = np.isfinite(vecs).all(axis=1) & np.isfinite(norms) & (norms > 0)
        for i in np.flatnonzero(~good):
            self._bad_vector(keys[i], ids[i], "vector not finite or zero")
        idx = np.flatnonzero(good)
        vecs = (vecs[idx] / norms[idx, None]).astype(np.float32)
        matrix = VectorMatrix(model_id, dim)
        matrix.add([keys[i] for i in idx], vecs, [metas[i] for i in idx])
        self._matrix = matrix
        if len(matrix) >= self._threshold and len(matrix) > 0:
            self._ann = AnnIndex.open(
                self._index_path,
                self._ann_params,
                model_id,
                self._epoch(),
                matrix.keys.copy(),
                matrix.vectors,
            )

    def _bad_vector(self, seq: int, ident: str, reason: str) -> None:
        self._bad_vectors.add(seq)
        self._note_corrupt(ident if is_memory_id(ident) else f"seq:{seq}", reason)

    def _bad_for(self, model_id: str) -> builtins.list[int]:
        if self._matrix is not None and self._matrix.model_id == model_id:
            return sorted(self._bad_vectors)
        return []

    def _ann_add(self, keys: I64, vecs: F32) -> None:
        """Keep the index in step with the matrix (rows already added there)."""
        if self._ann is not None:
            self._ann.add(keys, vecs)
        else:
            self._ensure_ann()

    def _ensure_ann(self) -> AnnIndex | None:
        """The index, built from the matrix the first time the model reaches the threshold."""
        matrix = self._matrix
        if self._ann is None and matrix is not None and len(matrix) >= max(1, self._threshold):
            started = time.perf_counter()
            self._ann = AnnIndex.build(
                matrix.dim, self._ann_params, matrix.keys.copy(), matrix.vectors
            )
            log.info(
                "memory index built: vectors=%d took_s=%.2f",
                len(matrix),
                time.perf_counter() - started,
            )
        return self._ann

    def _forget_active(self, keys: I64) -> None:
        if self._matrix is None:
            return
        present = np.asarray([k for k in keys if int(k) in self._matrix], np.int64)
        for k in present:
            self._matrix.remove(int(k))
        if self._ann is not None and len(present):
            self._ann.remove(present)

    def _rows_by_id(self, ids: builtins.list[str]) -> builtins.list[tuple[Any, ...]]:
        out: builtins.list[tuple[Any, ...]] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            out.extend(
                self._db.execute(
                    f"SELECT {ROW_COLUMNS} FROM memories WHERE id IN "
                    f"({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
            )
        return out

    def _hits(self, keys: I64, scores: F32) -> builtins.list[Hit]:
        if not len(keys):
            return []
        now = self._clock()
        seqs = [int(k) for k in keys]
        marks = ",".join("?" * len(seqs))
        self._db.execute(
            f"UPDATE memories SET accessed_at = ? WHERE seq IN ({marks})", (now, *seqs)
        )
        rows = self._db.execute(
            f"SELECT {ROW_COLUMNS} FROM memories WHERE seq IN ({marks})", seqs
        ).fetchall()
        by_seq = {int(r[0]): r for r in rows}
        hits = []
        for seq, score in zip(seqs, scores, strict=True):
            row = by_seq.get(seq)
            mem = None if row is None else self._parse(row)
            if mem is not None:
                hits.append(Hit(mem, float(score)))
        return hits


__all__ = ["ANN_THRESHOLD", "MAX_DIM", "MAX_K", "MAX_MODEL_ID_CHARS", "MemoryStore"]

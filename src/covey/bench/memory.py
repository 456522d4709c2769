"""Local memory search: latency by store size, and the ANN index's recall against exact.

    python -m covey.bench.memory [--json] [--sizes 100,1000,5000,10000,100000] [--queries 200]

Synthetic vectors, dim 384 (all-MiniLM-L6-v2's): real sentence embeddings are clustered by
topic, so the main data set is a mixture of Gaussian clusters (`--clusters` centres drawn
uniformly on the sphere, each point its centre plus isotropic noise of the same norm, then
normalised: about 0.7 cosine to its centre, 0.5 to its cluster's other points). Queries are
fresh draws from the same mixture, not stored points. Uniform random unit vectors, the worst
case for HNSW (no structure for the graph to exploit, near-equal distances), are measured
once at the largest size (`--no-uniform` skips them).

Each size is one store in a temporary directory, searched three ways with the same queries
(k=10, no filters, each figure the real `MemoryStore.search`: filters, scoring, reading the
hits from SQLite and bumping their accessed_at):
  exact  threshold past the size: NumPy cosine over every vector
  ann    threshold 0: the usearch index, candidates re-scored exactly
  store  the default ANN_THRESHOLD: what a node does (its method is printed)
recall@10 is the share of the exact top 10 the ANN search returns. At the largest size a
project filter (a tenth of the memories) is also timed, and the filters alone: on the
in-memory columns (what the store does) against the same query in SQL.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from covey.memory.ann import AnnParams
from covey.memory.matrix import RowMeta, VectorMatrix
from covey.memory.records import Filters, NewMemory
from covey.memory.store import ANN_THRESHOLD, MemoryStore
from covey.metrics.samples import percentile

F32 = npt.NDArray[np.float32]
MODEL = "bench-384"
PROJECTS = 10
K = 10
NEVER = 10**12  # a threshold no store reaches: exact search only


def clustered(rng: np.random.Generator, n: int, dim: int, centres: F32) -> F32:
    pick = rng.integers(0, len(centres), n)
    noise = rng.standard_normal((n, dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return _unit(centres[pick] + noise)


def uniform(rng: np.random.Generator, n: int, dim: int) -> F32:
    return _unit(rng.standard_normal((n, dim)).astype(np.float32))


def _unit(x: F32) -> F32:
    out: F32 = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def _ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50": round(percentile(s, 50) * 1000, 3), "p95": round(percentile(s, 95) * 1000, 3)}


def _items(n: int, start: int) -> list[NewMemory]:
    return [
        NewMemory(
            text=f"synthetic memory {start + i}",
            project=f"p{(start + i) % PROJECTS}",
            tags=(f"t{(start + i) % 20}",),
            confidence=0.5 + ((start + i) % 5) / 10,
        )
        for i in range(n)
    ]


def _time_search(
    store: MemoryStore, queries: F32, filters: Filters
) -> tuple[list[float], list[list[str]], set[str]]:
    times, ids, methods = [], [], set()
    for q in queries:
        t0 = time.perf_counter()
        res = store.search(q, MODEL, filters, K)
        times.append(time.perf_counter() - t0)
        ids.append([h.memory.id for h in res.hits])
        methods.add(res.method)
    return times, ids, methods


def _recall(approx: list[list[str]], exact: list[list[str]]) -> float:
    got = sum(len(set(a) & set(e)) for a, e in zip(approx, exact, strict=True))
    total = sum(len(e) for e in exact)
    return round(got / total, 4) if total else 1.0


def bench_size(
    root: Path, vectors: F32, queries: F32, params: AnnParams, filtered: bool
) -> dict[str, Any]:
    """Build one store of `vectors` and time it three ways (see the module doc)."""
    n = len(vectors)
    root.mkdir(parents=True, exist_ok=True)
    db = root / f"m{n}.db"
    t0 = time.perf_counter()
    # Threshold 0: the index is built as the vectors arrive, as in a store that grew.
    with MemoryStore(db, ann_threshold=0, ann_params=params) as store:
        for lo in range(0, n, 1000):
            hi = min(n, lo + 1000)
            store.add(_items(hi - lo, lo), vectors[lo:hi], MODEL)
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {"size": n, "build_s": round(build_s, 2)}
    nofilter = Filters()
    runs: dict[str, tuple[list[float], list[list[str]], set[str]]] = {}
    for name, threshold in (("exact", NEVER), ("ann", 0), ("store", ANN_THRESHOLD)):
        t0 = time.perf_counter()
        with MemoryStore(db, ann_threshold=threshold, ann_params=params) as store:
            out[f"{name}_open_s"] = round(time.perf_counter() - t0, 2)
            runs[name] = _time_search(store, queries, nofilter)
            if filtered and name != "ann":
                runs[name + "_filtered"] = _time_search(
                    store, queries, Filters(projects=("p3",))
                )
    for name, (times, _, methods) in runs.items():
        out[f"{name}_ms"] = _ms(times)
        if name.startswith("store"):
            out[f"{name}_method"] = "+".join(sorted(methods))
    out["recall_at_10"] = _recall(runs["ann"][1], runs["exact"][1])
    out["store_recall_at_10"] = _recall(runs["store"][1], runs["exact"][1])
    if filtered:
        out["store_filtered_recall_at_10"] = _recall(
            runs["store_filtered"][1], runs["exact_filtered"][1]
        )
        out["filter_ms"] = _filter_timing(db, vectors, queries)
    return out


def _filter_timing(db: Path, vectors: F32, queries: F32) -> dict[str, dict[str, float]]:
    """The same filter (one project, confidence >= 0.7) in SQL and on the in-memory columns."""
    n = len(vectors)
    matrix = VectorMatrix(MODEL, vectors.shape[1])
    metas = [RowMeta(m.project, m.tags, m.confidence, 0.0) for m in _items(n, 0)]
    matrix.add(list(range(1, n + 1)), vectors, metas)
    filters = Filters(projects=("p3",), min_confidence=0.7)
    mem_t, sql_t = [], []
    conn = sqlite3.connect(db)
    try:
        for _ in range(len(queries)):
            t0 = time.perf_counter()
            matrix.candidates(filters)
            mem_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            conn.execute(
                "SELECT seq FROM memories WHERE project IN (?) AND confidence >= ?", ("p3", 0.7)
            ).fetchall()
            sql_t.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return {"columns": _ms(mem_t), "sql": _ms(sql_t)}


def run(
    sizes: list[int],
    n_queries: int,
    dim: int = 384,
    clusters: int = 256,
    seed: int = 0,
    uniform_too: bool = True,
    params: AnnParams | None = None,
) -> dict[str, Any]:
    params = params or AnnParams()
    rng = np.random.default_rng(seed)
    largest = max(sizes)
    centres = uniform(rng, clusters, dim)
    data = clustered(rng, largest, dim, centres)
    queries = clustered(rng, n_queries, dim, centres)
    result: dict[str, Any] = {
        "dim": dim,
        "k": K,
        "queries": n_queries,
        "data": f"mixture of {clusters} Gaussian clusters on the unit sphere, dim {dim}",
        "ann_params": asdict(params),
        "ann_threshold": ANN_THRESHOLD,
        "clustered": [],
    }
    with tempfile.TemporaryDirectory(prefix="covey-bench-memory-") as tmp:
        root = Path(tmp)
        for n in sorted(sizes):
            # Prefixes of one data set: each size is the same store grown further.
            row = bench_size(root / "c", data[:n], queries, params, filtered=n == largest)
            result["clustered"].append(row)
            _unlink_all(root)
        if uniform_too:
            u = uniform(rng, largest, dim)
            uq = uniform(rng, n_queries, dim)
            result["uniform"] = bench_size(root / "u", u, uq, params, filtered=False)
    return result


def _unlink_all(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            p.unlink()


def _table(result: dict[str, Any]) -> str:
    lines = [
        f"data: {result['data']}; {result['queries']} queries, k={result['k']}; "
        f"ANN {result['ann_params']}; ANN_THRESHOLD {result['ann_threshold']}",
        f"{'size':>8} {'build s':>8} {'exact p50/p95 ms':>18} {'ann p50/p95 ms':>16} "
        f"{'store p50/p95 ms':>18} {'method':>7} {'recall@10':>9}",
    ]
    rows = [*result["clustered"]]
    if "uniform" in result:
        rows.append({**result["uniform"], "label": "uniform"})
    for r in rows:
        e, a, s = r["exact_ms"], r["ann_ms"], r["store_ms"]
        lines.append(
            f"{r['size']:>8} {r['build_s']:>8} {e['p50']:>8}/{e['p95']:<9} "
            f"{a['p50']:>7}/{a['p95']:<8} {s['p50']:>8}/{s['p95']:<9} "
            f"{r['store_method']:>7} {r['recall_at_10']:>9} {r.get('label', '')}"
        )
        if "store_filtered_ms" in r:
            ef, sf, fm = r["exact_filtered_ms"], r["store_filtered_ms"], r["filter_ms"]
            lines.append(
                f"{'':>8} one project of {PROJECTS}: exact {ef['p50']}/{ef['p95']} ms, "
                f"store {sf['p50']}/{sf['p95']} ms ({r['store_filtered_method']}, recall "
                f"{r['store_filtered_recall_at_10']}); filter alone: columns "
                f"{fm['columns']['p50']}/{fm['columns']['p95']} ms, "
                f"SQL {fm['sql']['p50']}/{fm['sql']['p95']} ms"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m covey.bench.memory", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--sizes", default="100,1000,5000,10000,100000", help="store sizes")
    ap.add_argument("--queries", type=int, default=200, help="queries per measurement")
    ap.add_argument("--dim", type=int, default=384, help="vector dimension")
    ap.add_argument("--clusters", type=int, default=256, help="clusters in the data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-uniform", action="store_true", help="skip the uniform data set")
    defaults = AnnParams()
    ap.add_argument("--connectivity", type=int, default=defaults.connectivity)
    ap.add_argument("--expansion-add", type=int, default=defaults.expansion_add)
    ap.add_argument("--expansion-search", type=int, default=defaults.expansion_search)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    params = AnnParams(args.connectivity, args.expansion_add, args.expansion_search)
    result = run(
        sizes,
        args.queries,
        dim=args.dim,
        clusters=args.clusters,
        seed=args.seed,
        uniform_too=not args.no_uniform,
        params=params,
    )
    print(json.dumps(result) if args.json else _table(result))


if __name__ == "__main__":
    main()

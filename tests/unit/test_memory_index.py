"""The ANN path: agrees with exact search, stays in step on delete, rebuilds a lost or stale
index file; corrupt rows are reported, never fatal."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from covey.memory.records import Filters, NewMemory
from covey.memory.store import MemoryStore

DIM = 32
N = 400
NEVER = 10**9


def data(seed: int = 7, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, DIM))
    x = centres[rng.integers(0, 8, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fill(store: MemoryStore, vecs: np.ndarray) -> list[str]:
    items = [
        NewMemory(f"m{i}", project=f"p{i % 3}", tags=("far",) if i < 40 else ())
        for i in range(len(vecs))
    ]
    return [m.id for m in store.add(items, vecs, "m")]


def exact_ids(
    ids: list[str], vecs: np.ndarray, q: np.ndarray, k: int, keep: list[int]
) -> list[str]:
    scores = vecs[keep] @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[keep[i]] for i in order]


def top(store: MemoryStore, q: np.ndarray, k: int = 10, f: Filters | None = None) -> list[str]:
    res = store.search(q, "m", f or Filters(), k, min_score=-1.0)
    return [h.memory.id for h in res.hits]


def test_ann_path_matches_exact_top_k(tmp_path: Path) -> None:
    vecs = data()
    queries = data(seed=8, n=30)
    with MemoryStore(tmp_path / "m.db", ann_threshold=50) as store:
        ids = fill(store, vecs)
        assert store.search(queries[0], "m", Filters(), 10).method == "ann"
        everyone = list(range(N))
        got = [top(store, q) for q in queries]
        want = [exact_ids(ids, vecs, q, 10, everyone) for q in queries]
        # HNSW over a few hundred points (inserted serially, so the graph is the same each
        # run) with a wide search finds the true top 10, in order: the candidates are
        # re-scored exactly. A miss would be an index out of step with the store.
        assert got == want


def test_filtered_ann_post_filters_and_falls_back_to_exact(tmp_path: Path) -> None:
    vecs = data()
    # The tagged memories point away from the query: the index's nearest candidates hold
    # few of them, so the search must fall back to exact over the filtered rows.
    vecs[:40] = -vecs[:40]
    q = vecs[100]
    with MemoryStore(tmp_path / "m.db", ann_threshold=30) as store:
        ids = fill(store, vecs)
        p1 = [i for i in range(N) if i % 3 == 1]
        res = store.search(q, "m", Filters(projects=("p1",)), 10, min_score=-1.0)
        assert res.considered == len(p1) and res.method == "ann"
        assert [h.memory.id for h in res.hits] == exact_ids(ids, vecs, q, 10, p1)
        far = store.search(q, "m", Filters(tags=("far",)), 10, min_score=-1.0)
        assert far.considered == 40 and far.method == "exact"
        assert [h.memory.id for h in far.hits] == exact_ids(ids, vecs, q, 10, list(range(40)))


def test_delete_removes_from_the_index(tmp_path: Path) -> None:
    vecs = data()
    with MemoryStore(tmp_path / "m.db", ann_threshold=50) as store:
        ids = fill(store, vecs)
        q = vecs[123]
        assert top(store, q, 1) == [ids[123]]
        assert store.delete(ids[123])
        res = top(store, q, 10)
        assert ids[123] not in res and len(res) == 10
        # A new memory with the same vector is found (a fresh key, not the removed one).
        [again] = store.add([NewMemory("again")], q[None, :], "m")
        assert top(store, q, 1) == [again.id]


def test_lost_index_file_is_rebuilt_with_identical_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vecs = data()
    queries = data(seed=9, n=10)
    db = tmp_path / "m.db"
    with MemoryStore(db, ann_threshold=50) as store:
        fill(store, vecs)
        before = [top(store, q) for q in queries]
    index = tmp_path / "m.db.usearch"
    assert index.exists()
    with caplog.at_level(logging.WARNING, "covey.memory"), MemoryStore(db, ann_threshold=50) as s:
        assert [top(s, q) for q in queries] == before
    assert not [r for r in caplog.records if "rebuilt" in r.getMessage()]  # the file was good
    index.unlink()
    with caplog.at_level(logging.WARNING, "covey.memory"), MemoryStore(db, ann_threshold=50) as s:
        assert [top(s, q) for q in queries] == before
    [line] = [r.getMessage() for r in caplog.records if "rebuilt" in r.getMessage()]
    assert "reason=missing" in line
    assert index.exists()  # written again on close


@pytest.mark.parametrize("damage", ["garbage", "truncated", "sidecar"])
def test_damaged_index_file_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    vecs = data()
    db = tmp_path / "m.db"
    with MemoryStore(db, ann_threshold=50) as store:
        fill(store, vecs)
        before = top(store, vecs[5])
    index = tmp_path / "m.db.usearch"
    if damage == "garbage":
        index.write_bytes(b"\x00not an index" * 100)
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:1000])
    else:
        (tmp_path / "m.db.usearch.json").write_text('{"model_id": "m", "count": 3}')
    with caplog.at_level(logging.WARNING, "covey.memory"), MemoryStore(db, ann_threshold=50) as s:
        assert top(s, vecs[5]) == before
    assert any("rebuilt" in r.getMessage() for r in caplog.records)


def test_an_index_behind_sqlite_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows written while the index file was not kept (as after a crash) are not lost."""
    vecs = data()
    db = tmp_path / "m.db"
    with MemoryStore(db, ann_threshold=50) as store:
        fill(store, vecs[:300])
    with MemoryStore(db, ann_threshold=NEVER) as store:  # holds no index, writes none
        late = store.add([NewMemory("late")], vecs[350][None, :], "m")[0]
    with caplog.at_level(logging.WARNING, "covey.memory"), MemoryStore(db, ann_threshold=50) as s:
        res = s.search(vecs[350], "m", Filters(), 1)
        assert res.method == "ann" and [h.memory.id for h in res.hits] == [late.id]
    assert any("reason=count differs" in r.getMessage() for r in caplog.records)


def test_corrupt_rows_are_reported_not_fatal(tmp_path: Path) -> None:
    vecs = data(n=100)
    db = tmp_path / "m.db"
    with MemoryStore(db, ann_threshold=50) as store:
        ids = fill(store, vecs)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE memories SET tags = '[not json' WHERE id = ?", (ids[0],))
        conn.execute("UPDATE memories SET confidence = 'high' WHERE id = ?", (ids[1],))
        seqs = dict(conn.execute("SELECT id, seq FROM memories"))
        conn.execute("UPDATE vectors SET vec = x'00ff' WHERE seq = ?", (seqs[ids[2]],))
        nan = np.full(DIM, np.nan, np.float32).tobytes()
        conn.execute("UPDATE vectors SET vec = ? WHERE seq = ?", (nan, seqs[ids[3]]))
    conn.close()
    with MemoryStore(db, ann_threshold=50) as store:
        res = store.search(vecs[0], "m", Filters(), 100, min_score=-1.0)
        found = {h.memory.id for h in res.hits}
        assert found == set(ids[4:])
        assert res.corrupt == 4
        assert store.corrupt_rows() == sorted(ids[:4])
        assert store.get(ids[0]) is None and store.get(ids[2]) is not None
        assert {m.id for m in store.iter_all()} == set(ids) - {ids[0], ids[1]}
        assert {m.id for m in store.list(Filters(), limit=1000)} == set(ids) - {ids[0], ids[1]}
        # A corrupt vector counts as stale: re-embedding repairs it.
        stale = dict(store.stale("m", 10))
        assert set(stale) == {ids[2], ids[3]}
        assert store.set_vectors([ids[2], ids[3]], vecs[2:4], "m") == 2
        assert store.stale_count("m") == 0
        assert top(store, vecs[3], 1) == [ids[3]]
    with MemoryStore(db, ann_threshold=50) as store:
        assert store.corrupt_rows() == sorted(ids[:2])

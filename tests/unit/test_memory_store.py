"""store.py: round trips, filters, ranking, model isolation, re-embedding, concurrency."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from covey.memory.records import Filters, MemoryInputError, NewMemory
from covey.memory.store import MAX_BATCH, MemoryStore


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MemoryStore]:
    s = MemoryStore(tmp_path / "memory.db", clock=clock)
    yield s
    s.close()


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, np.float32)
    return v / np.linalg.norm(v)


def test_add_get_list_delete_round_trip(store: MemoryStore, clock: Clock) -> None:
    [a, b] = store.add(
        [NewMemory("alpha", tags=("x",), source="cli", confidence=0.5), NewMemory("beta")],
        np.stack([unit(1, 0, 0), unit(0, 1, 0)]),
        "m",
    )
    assert a.id.startswith("mem_") and a.id != b.id
    assert a.created_at == a.updated_at == a.accessed_at == clock.t
    assert store.get(a.id) == a
    assert store.count() == 2
    assert [m.id for m in store.list(Filters())] == [b.id, a.id]  # newest first (seq breaks ties)
    assert a.to_json()["tags"] == ["x"]
    assert store.delete(a.id)
    assert not store.delete(a.id)
    assert store.get(a.id) is None
    assert store.count() == 1
    assert [m.id for m in store.iter_all()] == [b.id]
    assert store.get("not an id") is None and not store.delete("mem_../../x")


def test_list_filters_and_paging(store: MemoryStore, clock: Clock) -> None:
    made = []
    for i in range(6):
        clock.t = 1000.0 + i
        made += store.add(
            [
                NewMemory(
                    f"m{i}",
                    project="a" if i % 2 else "b",
                    tags=("x", "y") if i % 3 == 0 else ("x",),
                    confidence=i / 10,
                )
            ],
            unit(1, i, 0)[None, :],
            "m",
        )
    texts = lambda ms: [m.text for m in ms]  # noqa: E731
    assert texts(store.list(Filters(projects=("a",)))) == ["m5", "m3", "m1"]
    assert texts(store.list(Filters(tags=("x", "y")))) == ["m3", "m0"]
    assert texts(store.list(Filters(min_confidence=0.4))) == ["m5", "m4"]
    assert texts(store.list(Filters(since=1004.0))) == ["m5", "m4"]
    assert texts(store.list(Filters(), limit=2, offset=1)) == ["m4", "m3"]
    assert texts(store.list(Filters(tags=("x",)), limit=2, offset=1)) == ["m4", "m3"]
    with pytest.raises(MemoryInputError):
        store.list(Filters(), limit=0)


def test_search_ranks_by_cosine_and_applies_filters(store: MemoryStore) -> None:
    mems = store.add(
        [
            NewMemory("east", project="a", confidence=0.9),
            NewMemory("north-east", project="b", tags=("t",)),
            NewMemory("north", project="a", tags=("t",), confidence=0.2),
            NewMemory("west", project="b"),
        ],
        np.stack([unit(1, 0), unit(1, 1), unit(0, 1), unit(-1, 0)]),
        "m",
    )
    res = store.search(unit(1, 0.1), "m", Filters(), k=3)
    assert [h.memory.text for h in res.hits] == ["east", "north-east", "north"]
    assert res.hits[0].score == pytest.approx(float(unit(1, 0.1) @ unit(1, 0)), abs=1e-6)
    assert res.method == "exact" and res.considered == 4 and res.corrupt == 0
    # The default min_score 0 leaves out the opposite direction; -1 keeps everything.
    assert len(store.search(unit(1, 0.1), "m", Filters(), 9).hits) == 3
    everything = store.search(unit(1, 0.1), "m", Filters(), 9, min_score=-1.0)
    assert [h.memory.text for h in everything.hits] == ["east", "north-east", "north", "west"]
    # min_score drops the far ones.
    assert len(store.search(unit(1, 0.1), "m", Filters(), 4, min_score=0.5).hits) == 2
    by = lambda f: [h.memory.text for h in store.search(unit(1, 0), "m", f, 4, -1.0).hits]  # noqa: E731
    assert by(Filters(projects=("a",))) == ["east", "north"]
    assert by(Filters(projects=("zzz",))) == []
    assert by(Filters(tags=("t",))) == ["north-east", "north"]
    assert by(Filters(tags=("t", "missing"))) == []
    assert by(Filters(min_confidence=0.5)) == ["east", "north-east", "west"]  # west: -1
    assert by(Filters(projects=("a",), tags=("t",))) == ["north"]
    assert store.search(unit(1, 0), "m", Filters(projects=("a",)), 4).considered == 2
    assert mems[0].id in {h.memory.id for h in store.search(unit(1, 0), "m", Filters(), 1).hits}


def test_search_bumps_accessed_at(store: MemoryStore, clock: Clock) -> None:
    [a, b] = store.add([NewMemory("a"), NewMemory("b")], np.stack([unit(1, 0), unit(0, 1)]), "m")
    clock.t = 2000.0
    [hit] = store.search(unit(1, 0), "m", Filters(), 1).hits
    assert hit.memory.id == a.id and hit.memory.accessed_at == 2000.0
    got_a, got_b = store.get(a.id), store.get(b.id)
    assert got_a is not None and got_a.accessed_at == 2000.0
    assert got_b is not None and got_b.accessed_at == 1000.0


def test_since_filter_in_search(store: MemoryStore, clock: Clock) -> None:
    store.add([NewMemory("old")], unit(1, 0)[None, :], "m")
    clock.t = 5000.0
    store.add([NewMemory("new")], unit(1, 0.2)[None, :], "m")
    res = store.search(unit(1, 0), "m", Filters(since=4000.0), 5)
    assert [h.memory.text for h in res.hits] == ["new"]


def test_only_vectors_of_the_model_take_part(store: MemoryStore) -> None:
    store.add([NewMemory("from m1")], unit(1, 0, 0)[None, :], "m1")
    store.add([NewMemory("from m2")], unit(1, 0)[None, :], "m2")  # another dimension: fine
    assert [h.memory.text for h in store.search(unit(1, 0, 0), "m1", Filters(), 5).hits] == [
        "from m1"
    ]
    assert [h.memory.text for h in store.search(unit(1, 0), "m2", Filters(), 5).hits] == ["from m2"]
    assert store.active_model == "m2"
    assert store.search(unit(1, 0), "unknown", Filters(), 5).hits == []
    with pytest.raises(MemoryInputError):
        store.search(unit(1, 0, 0, 0), "m1", Filters(), 5)  # m1 is 3-dimensional
    with pytest.raises(MemoryInputError):
        store.add([NewMemory("x")], unit(1, 0, 0, 0)[None, :], "m1")


@pytest.mark.parametrize(
    "vectors",
    [
        np.array([[np.nan, 1.0]], np.float32),
        np.array([[np.inf, 1.0]], np.float32),
        np.array([[0.0, 0.0]], np.float32),
        np.array([[1.0, 0.0], [0.0, 1.0]], np.float32),  # two rows for one memory
        np.zeros((1, 0), np.float32),
        np.array([["a", "b"]]),
        [[1.0, 0.0], [1.0]],
        np.array([[1e39, 1.0]]),  # finite in float64, inf in float32
    ],
)
def test_bad_vectors_are_refused(store: MemoryStore, vectors: object) -> None:
    with pytest.raises(MemoryInputError) as err:
        store.add([NewMemory("x")], vectors, "m")  # type: ignore[arg-type]
    assert err.value.field == "vectors"
    assert store.count() == 0


def test_bad_calls_are_refused(store: MemoryStore) -> None:
    with pytest.raises(MemoryInputError):
        store.add([], np.zeros((0, 2), np.float32), "m")
    with pytest.raises(MemoryInputError):
        store.add([NewMemory("x")] * (MAX_BATCH + 1), np.ones((MAX_BATCH + 1, 2), np.float32), "m")
    with pytest.raises(MemoryInputError):
        store.add([{"text": "x"}], unit(1, 0)[None, :], "m")  # type: ignore[list-item]
    with pytest.raises(MemoryInputError):
        store.add([NewMemory("x")], unit(1, 0)[None, :], "")
    with pytest.raises(MemoryInputError):
        store.search(unit(1, 0), "m", Filters(), 0)
    with pytest.raises(MemoryInputError):
        store.search(unit(1, 0), "m", Filters(), 5, min_score=float("nan"))
    with pytest.raises(MemoryInputError):
        store.search(np.array([np.nan, 1.0]), "m", Filters(), 5)
    with pytest.raises(MemoryInputError):
        store.search(np.ones((2, 2)), "m", Filters(), 5)


def test_stale_and_set_vectors_re_embed(store: MemoryStore) -> None:
    mems = store.add([NewMemory(f"m{i}") for i in range(5)], np.eye(5, dtype=np.float32), "old")
    assert store.stale_count("old") == 0
    assert store.stale_count("new") == 5
    batch = store.stale("new", 3)
    assert [t for _, t in batch] == ["m0", "m1", "m2"]
    assert store.set_vectors([i for i, _ in batch], np.eye(3, dtype=np.float32), "new") == 3
    assert store.stale_count("new") == 2
    assert store.stale_count("old") == 3
    # The new model's search sees the re-embedded ones only; the old one the rest.
    res = store.search(unit(1, 0, 0), "new", Filters(), 10)
    assert {h.memory.text for h in res.hits} == {"m0", "m1", "m2"}
    res = store.search(np.eye(5, dtype=np.float32)[0], "old", Filters(), 10)
    assert {h.memory.text for h in res.hits} == {"m3", "m4"}
    # A memory deleted mid-way is skipped; unknown ids too.
    store.delete(mems[3].id)
    rest = store.stale("new", 10)
    assert [t for _, t in rest] == ["m4"]
    ids = [rest[0][0], mems[3].id, "mem_" + "f" * 24]
    assert store.set_vectors(ids, np.eye(3, dtype=np.float32), "new") == 1
    assert store.stale_count("new") == 0
    res = store.search(unit(1, 0, 0), "new", Filters(), 10)
    assert {h.memory.text for h in res.hits} == {"m0", "m1", "m2", "m4"}


def test_state_survives_reopen(tmp_path: Path, clock: Clock) -> None:
    with MemoryStore(tmp_path / "m.db", clock=clock) as s:
        [a] = s.add([NewMemory("kept", project="p")], unit(1, 2)[None, :], "m")
    with MemoryStore(tmp_path / "m.db", clock=clock) as s:
        assert s.get(a.id) == a
        assert s.active_model == "m"
        assert [h.memory.id for h in s.search(unit(1, 2), "m", Filters(), 1).hits] == [a.id]


def test_concurrent_adds_and_searches(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "m.db", ann_threshold=40)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        rng = np.random.default_rng(w)  # a Generator is not shared between threads
        try:
            for i in range(20):
                store.add(
                    [NewMemory(f"w{w}-{i}")], rng.standard_normal((1, 8)).astype(np.float32), "m"
                )
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    def reader() -> None:
        rng = np.random.default_rng(99)
        try:
            for _ in range(40):
                store.search(rng.standard_normal(8).astype(np.float32), "m", Filters(), 5)
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 60
    res = store.search(np.ones(8, np.float32), "m", Filters(), 60, min_score=-1.0)
    assert len(res.hits) == 60 and res.method == "ann"
    assert {h.memory.id for h in res.hits} == {m.id for m in store.iter_all()}
    store.close()

"""cache.py: a bounded LRU of query embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from covey.memory.cache import QueryCache


def v(x: float) -> np.ndarray:
    return np.array([x, 1.0], np.float32)


def test_least_recently_used_is_evicted() -> None:
    cache = QueryCache(maxsize=2)
    cache.put("m", "a", v(1))
    cache.put("m", "b", v(2))
    assert cache.get("m", "a") is not None  # a is now the most recent
    cache.put("m", "c", v(3))
    assert cache.get("m", "b") is None
    got = cache.get("m", "a")
    assert got is not None and got[0] == 1.0
    assert cache.get("m", "c") is not None
    assert len(cache) == 2
    assert (cache.hits, cache.misses) == (3, 1)


def test_keys_include_the_model_and_values_are_frozen_copies() -> None:
    cache = QueryCache(maxsize=4)
    original = v(1)
    cache.put("m1", "q", original)
    original[0] = 9.0
    assert cache.get("m2", "q") is None
    got = cache.get("m1", "q")
    assert got is not None and got[0] == 1.0
    with pytest.raises(ValueError):
        got[0] = 5.0
    cache.put("m1", "q", v(2))  # replacing keeps one entry
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        QueryCache(maxsize=0)

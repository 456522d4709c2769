"""An LRU cache of query embeddings: (model id, query text) -> vector.

Agents repeat queries; an embedding costs a model call (milliseconds to tens of them), a
lookup here microseconds. Bounded by entry count; vectors are stored read-only so a caller
cannot alter a cached value in place. Thread-safe (searches run in worker threads).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import numpy.typing as npt


class QueryCache:
    def __init__(self, maxsize: int = 1024) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, str], npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, model_id: str, text: str) -> npt.NDArray[np.float32] | None:
        key = (model_id, text)
        with self._lock:
            vec = self._items.get(key)
            if vec is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return vec

    def put(self, model_id: str, text: str, vector: npt.NDArray[np.float32]) -> None:
        vec = np.array(vector, dtype=np.float32, copy=True)
        vec.setflags(write=False)
        key = (model_id, text)
        with self._lock:
            self._items[key] = vec
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

"""The perturbed copy of the real Gemma GGUF (bench/impostors.py's defaults, used by the
verification tests and `python -m covey.bench.verify`): same size, same metadata and tensor
table, and only the chosen tensor's bytes differ."""

from __future__ import annotations

from pathlib import Path

import pytest

from covey.bench.impostors import DEFAULT_TENSOR, perturbed_gguf
from covey.engine.gguf import read_metadata, read_tensor_table

np = pytest.importorskip("numpy")
pytest.importorskip("gguf")


def test_perturbed_gemma_differs_only_in_one_tensor(model_path: Path, tmp_path: Path) -> None:
    dst = tmp_path / model_path.name
    changed = perturbed_gguf(model_path, dst)
    assert changed["tensor"] == DEFAULT_TENSOR and changed["bytes_changed"] > 0
    assert dst.stat().st_size == model_path.stat().st_size
    assert read_metadata(dst) == read_metadata(model_path)
    assert read_tensor_table(dst) == read_tensor_table(model_path)
    a = np.memmap(model_path, dtype=np.uint8, mode="r")
    b = np.memmap(dst, dtype=np.uint8, mode="r")
    start, end = changed["offset"], changed["offset"] + changed["n_bytes"]
    step = 16 * 1024 * 1024  # compare in slices: two 253 MB masks at once are not needed
    outside = sum(int(np.count_nonzero(a[i:min(i + step, start)] != b[i:min(i + step, start)]))
                  for i in range(0, start, step))
    outside += sum(int(np.count_nonzero(a[i:i + step] != b[i:i + step]))
                   for i in range(end, a.size, step))
    assert outside == 0
    assert int(np.count_nonzero(a[start:end] != b[start:end])) == changed["bytes_changed"]

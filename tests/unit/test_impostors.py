"""bench/impostors.py's perturbed copy, and engine/gguf.py's tensor table, on a small GGUF
written with the `gguf` package (the real model's copy is checked in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from covey.bench.impostors import perturbed_gguf
from covey.engine.gguf import read_metadata, read_tensor_table

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")


def _tiny(path: Path) -> None:
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_tensor("norm.weight", rng.standard_normal(64).astype(np.float32))
    for name, qtype in (("blk.0.ffn_down.weight", gguf.GGMLQuantizationType.Q8_0),
                        ("blk.0.attn_q.weight", gguf.GGMLQuantizationType.Q5_0),
                        ("blk.0.ffn_up.weight", gguf.GGMLQuantizationType.Q4_K),
                        ("output.weight", gguf.GGMLQuantizationType.Q6_K)):
        # Raw blocks (the package cannot quantize every type): bytes up to 0x3b make every
        # fp16 scale, wherever it sits in a block, a finite number below 1.
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        row_bytes = 256 // block_elems * block_bytes  # 256 weights a row
        w.add_tensor(name, rng.integers(0, 0x3C, (8, row_bytes), dtype=np.uint8),
                     raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def differing(a: Path, b: Path) -> tuple[int, int, int]:
    """(count, first, last) of the byte positions where two equal-sized files differ."""
    x, y = np.fromfile(a, dtype=np.uint8), np.fromfile(b, dtype=np.uint8)
    where = np.flatnonzero(x != y)
    return len(where), int(where[0]), int(where[-1])


def test_tensor_table_matches_the_gguf_package(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _tiny(path)
    theirs = {t.name: (int(t.data_offset), int(t.tensor_type)) for t in
              gguf.GGUFReader(path).tensors}
    ours = {t.name: (t.offset, t.ggml_type) for t in read_tensor_table(path)}
    assert ours == theirs


@pytest.mark.parametrize("tensor", ["blk.0.ffn_down.weight", "blk.0.attn_q.weight",
                                    "blk.0.ffn_up.weight", "output.weight", "norm.weight"])
def test_perturbed_copy_changes_only_that_tensor(tmp_path: Path, tensor: str) -> None:
    src, dst = tmp_path / "tiny.gguf", tmp_path / "copy.gguf"
    _tiny(src)
    changed = perturbed_gguf(src, dst, tensor=tensor, factor=1.5)
    assert dst.stat().st_size == src.stat().st_size
    assert read_metadata(dst) == read_metadata(src)
    assert read_tensor_table(dst) == read_tensor_table(src)
    count, first, last = differing(src, dst)
    assert count == changed["bytes_changed"] > 0
    assert changed["offset"] <= first <= last < changed["offset"] + changed["n_bytes"]
    assert changed["tensor"] == tensor and changed["blocks_changed"] == changed["blocks"]


def test_fraction_and_errors(tmp_path: Path) -> None:
    src, dst = tmp_path / "tiny.gguf", tmp_path / "copy.gguf"
    _tiny(src)
    some = perturbed_gguf(src, dst, tensor="blk.0.ffn_down.weight", factor=2.0, fraction=0.25)
    assert some["blocks_changed"] == some["blocks"] // 4
    with pytest.raises(ValueError, match="no tensor"):
        perturbed_gguf(src, dst, tensor="nope")
    with pytest.raises(ValueError, match="fraction"):
        perturbed_gguf(src, dst, fraction=0)

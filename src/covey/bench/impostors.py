"""Impostor model files for verification tests and the calibration bench.

`perturbed_gguf` copies a GGUF and rescales the block scales of one tensor: the copy has the
same metadata, the same tensor table and the same size, and only that tensor's bytes differ.
It stands for the cheat verification must catch without help from the file's header: weights
that are not the claimed ones (a cheaper quantization, a fine-tune, a corrupted copy) behind
the claimed name.

Needs the `gguf` package (a dependency, for engine/bert_gguf.py); it is imported when called,
so importing this module costs nothing.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from covey.engine.gguf import read_tensor_table

# Where the block's fp16 super-scale `d` sits, in bytes from the block's start, for the
# quantization types a GGUF of interest holds (ggml's block_q*_* structs). Scaling `d` scales
# every weight of the block (for *_K and Q4_1/Q5_1, the part that the offset `dmin`/`m` does
# not carry), like a quantizer that chose a different scale.
_SCALE_OFFSET = {"Q4_0": 0, "Q4_1": 0, "Q5_0": 0, "Q5_1": 0, "Q8_0": 0, "Q4_K": 0, "Q5_K": 0,
                 "Q6_K": 208}

# Chosen from measurements on Gemma 3 270M Q4_K_M (docs/verify.md): a middle layer's MLP output
# projection, every block's scale times 1.2. The 12-token greedy text is word for word the
# honest one in about 40% of audits (and plausible in the rest); weaker changes (1.05, 1.1)
# hide inside the noise an honest engine shows when it batches the audit with other requests.
DEFAULT_TENSOR = "blk.8.ffn_down.weight"
DEFAULT_FACTOR = 1.2


def perturbed_gguf(src: Path, dst: Path, tensor: str = DEFAULT_TENSOR,
                   factor: float = DEFAULT_FACTOR, fraction: float = 1.0,
                   seed: int = 0) -> dict[str, Any]:
    """Copy `src` to `dst` with the scales of `fraction` of `tensor`'s blocks (chosen with
    `seed`) multiplied by `factor`; F32/F16 tensors have their values multiplied instead.

    Returns what changed, for a test log: tensor, type, blocks, blocks_changed, factor,
    bytes_changed, offset and n_bytes (the tensor's byte range in the file). Raises
    ValueError for an unknown tensor or an unsupported quantization type. Blocking."""
    import gguf
    import numpy as np

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    # The header is read with Covey's own reader: gguf.GGUFReader takes seconds to parse the
    # tokenizer arrays; the gguf package supplies the type names and block sizes.
    info = next((t for t in read_tensor_table(src) if t.name == tensor), None)
    if info is None:
        raise ValueError(f"{src.name} has no tensor {tensor!r}")
    qtype = gguf.GGMLQuantizationType(info.ggml_type)
    type_name = qtype.name
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    offset = info.offset
    n_bytes = math.prod(info.shape) // block_elems * block_bytes
    shutil.copyfile(src, dst)
    data = np.memmap(dst, dtype=np.uint8, mode="r+", offset=offset, shape=(n_bytes,))
    try:
        before = np.array(data)
        rng = np.random.default_rng(seed)
        if type_name in ("F32", "F16"):
            values = data.view(np.float32 if type_name == "F32" else np.float16)
            chosen = _choose(np, rng, values.size, fraction)
            values[chosen] = (values[chosen].astype(np.float32) * factor).astype(values.dtype)
            blocks = values.size
        elif type_name in _SCALE_OFFSET:
            at = _SCALE_OFFSET[type_name]
            scales = data.reshape(-1, block_bytes)[:, at:at + 2].view(np.float16)
            blocks = scales.shape[0]
            chosen = _choose(np, rng, blocks, fraction)
            scales[chosen] = (scales[chosen].astype(np.float32) * factor).astype(np.float16)
        else:
            raise ValueError(f"{tensor} is {type_name}; supported: F32, F16, "
                             f"{', '.join(_SCALE_OFFSET)}")
        data.flush()
        changed = int(np.count_nonzero(before != data))
    finally:
        del data
    return {"tensor": tensor, "type": type_name, "blocks": int(blocks),
            "blocks_changed": int(chosen.size), "factor": factor, "bytes_changed": changed,
            "offset": offset, "n_bytes": n_bytes}


def _choose(np: Any, rng: Any, n: int, fraction: float) -> Any:
    """Indices of round(fraction * n) distinct items (at least one), sorted."""
    k = max(1, round(fraction * n))
    return np.arange(n) if k >= n else np.sort(rng.choice(n, size=k, replace=False))

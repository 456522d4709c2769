"""Facts about GGUF files and whether a model fits in memory (the embedded models: embedded.py)."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from covey.engine.gguf import MAGIC, GGUFError, read_metadata
from covey.types import ModelCard, ModelId

log = logging.getLogger(__name__)

FIT_FACTOR = 1.1  # a model is served solo only with 10 % headroom over its file size

# llama.cpp's `general.file_type` (enum llama_ftype) → the name people use for the quant.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}
_QUANT_IN_NAME = re.compile(r"(?i)(?:^|[-_.])((?:i?q\d[a-z0-9_]*)|f16|f32|bf16)$")


class ModelFileError(Exception):
    """The file cannot be served: missing, not a GGUF, truncated, or too big for memory."""


def read_card(path: Path) -> ModelCard:
    """Read the GGUF header. Raises ModelFileError with a reason a user can act on."""
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"not a file: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror}") from exc
    if magic != MAGIC:
        raise ModelFileError(f"{path.name} is not a GGUF file (it does not start with 'GGUF')")
    size = path.stat().st_size
    try:
        meta = read_metadata(path)
    except GGUFError as exc:
        raise ModelFileError(
            f"{path.name} is a damaged or truncated GGUF file ({exc}); download or copy it again"
        ) from exc
    arch = meta.get("general.architecture")
    ctx = meta.get(f"{arch}.context_length")
    ftype = meta.get("general.file_type")
    quant = _FILE_TYPES.get(ftype) if isinstance(ftype, int) else None
    return ModelCard(
        id=model_id_for(path, quant),
        path=path,
        size_bytes=size,
        quantization=quant or quant_from_name(path.stem),
        architecture=arch if isinstance(arch, str) else None,
        context_length=ctx if isinstance(ctx, int) else None,
        declares_pooling=f"{arch}.pooling_type" in meta,
        embeddings_only=is_embedding_model(meta),
    )


def is_embedding_model(meta: dict[str, object]) -> bool:
    """Pure: does a GGUF's metadata describe an embedding model (BERT, nomic-bert, an
    embedding-tuned decoder…)? Those declare how to pool token vectors into one, or have
    non-causal attention; chat models do neither."""
    arch = meta.get("general.architecture")
    return f"{arch}.pooling_type" in meta or meta.get(f"{arch}.attention.causal") is False


def quant_from_name(stem: str) -> str | None:
    """The quantization a file name or model id ends with, upper case (`…-q4_k_m` -> Q4_K_M)."""
    m = _QUANT_IN_NAME.search(stem)
    return m.group(1).upper() if m else None


def model_id_for(path: Path, quant: str | None) -> ModelId:
    """A stable, readable id: the file name, lower-cased, with the quantisation suffix kept.

    The file name is what users see and type; GGUF `general.name` is often vague
    ("Gemma 3 270m") and would collide across quantisations of the same model.
    """
    stem = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-.") or "model"
    if quant and quant_from_name(stem) is None:
        stem = f"{stem}-{quant.lower()}"
    return ModelId(stem)


# --- fitting in memory -------------------------------------------------------------------


def fast_memory_bytes(override: int | None, memory: Any = None) -> int:
    """Memory available for model weights. CPU builds: available RAM (from `memory`, a
    `psutil.virtual_memory()` the caller already read, else read here)."""
    if override is not None:
        return override
    return int((memory or psutil.virtual_memory()).available)


PUBLISHED_MEMORY_STEP = 256 * 1024 * 1024
HARDWARE_EVERY_S = 10.0  # how often the machine's memory is read again for the record


def machine_hardware(fast_memory_override: int | None) -> dict[str, int | None]:
    """What this node publishes about its machine (in its signed record). Measured available
    memory is rounded down to 256 MiB: to the byte it changes every round, and a changed record is
    signed and gossiped again; models are placed by the GiB."""
    memory = psutil.virtual_memory()  # once: it reads and parses /proc/meminfo every call
    fast = fast_memory_bytes(fast_memory_override, memory)
    if fast_memory_override is None:
        fast -= fast % PUBLISHED_MEMORY_STEP
    return {"ram_bytes": memory.total, "gpu_bytes": gpu_memory_bytes(),
            "fast_memory_bytes": fast}


class HardwareReader:
    """`machine_hardware` for the node's record, read again only every `every_s`: it is
    asked every gossip round, psutil parses /proc/meminfo each time (~0.4 ms of an idle
    node's cold CPU), and the published figure only moves by 256 MiB steps. Figures above
    `cap` read None (the record refuses them)."""

    def __init__(self, fast_memory_override: int | None, cap: int,
                 every_s: float = HARDWARE_EVERY_S,
                 read: Callable[[int | None], dict[str, int | None]] | None = None) -> None:
        self._override, self._cap, self._every_s = fast_memory_override, cap, every_s
        self._read = read or machine_hardware
        self._last: tuple[float, dict[str, int | None]] | None = None  # (when, figures)

    def read(self, now: float) -> dict[str, int | None]:
        """The figures, read again if older than `every_s` at `now` (a monotonic clock)."""
        if self._last is None or not 0 <= now - self._last[0] < self._every_s:
            figures = self._read(self._override)
            self._last = (now, {k: v if v is None or v <= self._cap else None
                                for k, v in figures.items()})
        return self._last[1]


@functools.cache
def gpu_memory_bytes() -> int | None:
    """Total memory of this machine's NVIDIA GPUs, asked of `nvidia-smi` once; None where
    there is none or it does not answer (unknown, never a guess)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
        mib = [int(line) for line in out.split() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.info("GPU memory unknown: nvidia-smi failed (%s)", type(exc).__name__)
        return None
    return sum(mib) * 1024 * 1024 if mib else None


def check_fits(card: ModelCard, available: int) -> None:
    if card.size_bytes is None:
        return
    need = int(card.size_bytes * FIT_FACTOR)
    if available < need:
        raise ModelFileError(
            f"{card.id} needs {_gib(need)} of memory (1.1 × its {_gib(card.size_bytes)} file) "
            f"but only {_gib(available)} is available; free memory or pick a smaller quantisation"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


# --- hashing ---------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()

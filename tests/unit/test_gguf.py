"""GGUF header reading and model facts, on small synthetic files (never the real model)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from covey.engine import catalog
from covey.engine.gguf import GGUFError, read_metadata


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(kv: list[tuple[str, int, bytes]], version: int = 3) -> bytes:
    """A GGUF header with the given (key, value type, encoded value) entries."""
    out = b"GGUF" + struct.pack("<IQQ", version, 0, len(kv))
    for key, vtype, value in kv:
        out += _string(key) + struct.pack("<I", vtype) + value
    return out


VOCAB = struct.pack("<IQ", 8, 3) + _string("a") + _string("bb") + _string("ccc")
HEADER = gguf_bytes([
    ("general.architecture", 8, _string("llama")),
    ("tokenizer.ggml.tokens", 9, VOCAB),
    ("llama.context_length", 4, struct.pack("<I", 8192)),
    ("general.file_type", 4, struct.pack("<I", 15)),
    ("general.name", 8, _string("Tiny")),
])


def test_reads_scalars_and_skips_arrays(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(HEADER)
    meta = read_metadata(path)
    assert meta == {"general.architecture": "llama", "llama.context_length": 8192,
                    "general.file_type": 15, "general.name": "Tiny"}


def test_every_truncation_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    for n in range(len(HEADER)):
        path.write_bytes(HEADER[:n])
        with pytest.raises(GGUFError):
            read_metadata(path)


@pytest.mark.parametrize("data", [
    b"GGUF" + struct.pack("<IQQ", 1, 0, 0),  # unsupported version
    b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 40),  # implausible count
    gguf_bytes([("k", 8, struct.pack("<Q", 1 << 40))]),  # implausible string
    gguf_bytes([("k", 9, struct.pack("<IQ", 8, 1 << 40))]),  # implausible array
    gguf_bytes([("k", 99, b"")]),  # unknown type
    b"NOPE",
])
def test_garbage_is_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError):
        read_metadata(path)


def test_card(tmp_path: Path) -> None:
    path = tmp_path / "Tiny-Model.gguf"
    path.write_bytes(HEADER)
    card = catalog.read_card(path)
    assert card.id == "tiny-model-q4_k_m"
    assert card.quantization == "Q4_K_M" and card.architecture == "llama"
    assert card.context_length == 8192 and card.size_bytes == len(HEADER)
    assert not card.declares_pooling


@pytest.mark.parametrize(("content", "message"), [
    (None, "model file not found"),
    (b"text file", "is not a GGUF file"),
    (HEADER[:40], "damaged or truncated"),
])
def test_card_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "m.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(catalog.ModelFileError, match=message):
        catalog.read_card(path)


@pytest.mark.parametrize(("name", "quant", "expected"), [
    ("gemma-3-270m-q4_k_m.gguf", "Q4_K_M", "gemma-3-270m-q4_k_m"),
    ("Qwen2.5-7B-Instruct-Q8_0.gguf", "Q8_0", "qwen2.5-7b-instruct-q8_0"),
    ("llama.gguf", "Q4_K_M", "llama-q4_k_m"),
    ("My Model (v2).gguf", None, "my-model-v2"),
    ("phi-f16.gguf", None, "phi-f16"),
])
def test_model_ids(name: str, quant: str | None, expected: str) -> None:
    assert catalog.model_id_for(Path(name), quant) == expected


def test_fit_check(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(HEADER)
    card = catalog.read_card(path)
    catalog.check_fits(card, available=int(len(HEADER) * 1.1) + 1)
    with pytest.raises(catalog.ModelFileError, match=r"needs 0\.00 GiB .* only 0\.00 GiB"):
        catalog.check_fits(card, available=len(HEADER))

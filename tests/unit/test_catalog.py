"""engine/catalog.py: model cards from synthetic GGUF headers, model ids, and the memory fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from covey.engine import catalog
from covey.types import ModelCard, ModelId
from tests.unit.synthetic_gguf import TINY, Value, gguf_header, string, u32, u64

GiB = 2**30


def test_card(tmp_path: Path) -> None:
    path = tmp_path / "Tiny-Model.gguf"
    path.write_bytes(TINY)
    assert catalog.read_card(path) == ModelCard(
        id=ModelId("tiny-model-q4_k_m"), path=path, size_bytes=len(TINY),
        quantization="Q4_K_M", architecture="llama", context_length=8192,
        declares_pooling=False,
    )


LLAMA = ("general.architecture", string("llama"))


@pytest.mark.parametrize(("name", "entries", "expected"), [
    # general.file_type names the quantisation, appended to an id that lacks one
    ("m.gguf", [LLAMA, ("general.file_type", u32(7))],
     {"id": "m-q8_0", "quantization": "Q8_0"}),
    # no file_type: the quantisation is read from the file name
    ("Phi-3-Q5_K_S.gguf", [LLAMA], {"id": "phi-3-q5_k_s", "quantization": "Q5_K_S"}),
    # an unknown file_type falls back to the name, and to None without one
    ("m-IQ2_XXS.gguf", [("general.file_type", u32(999))],
     {"id": "m-iq2_xxs", "quantization": "IQ2_XXS"}),
    ("plain.gguf", [("general.file_type", u32(999))], {"id": "plain", "quantization": None}),
    # no architecture: no context length either
    ("m.gguf", [("llama.context_length", u32(4096))],
     {"architecture": None, "context_length": None}),
    # the context length is read for the declared architecture only, in any integer width
    ("m.gguf", [LLAMA, ("gemma3.context_length", u32(4096))], {"context_length": None}),
    ("m.gguf", [LLAMA, ("llama.context_length", u64(131072))], {"context_length": 131072}),
    # embedding models declare a pooling type
    ("e.gguf", [("general.architecture", string("bert")), ("bert.pooling_type", u32(1))],
     {"architecture": "bert", "declares_pooling": True}),
])
def test_card_fields(tmp_path: Path, name: str, entries: list[tuple[str, Value]],
                     expected: dict[str, object]) -> None:
    path = tmp_path / name
    path.write_bytes(gguf_header(entries))
    card = catalog.read_card(path)
    assert {key: getattr(card, key) for key in expected} == expected


@pytest.mark.parametrize(("content", "message"), [
    (None, "model file not found"),
    ("dir", "not a file"),
    (b"", "is not a GGUF file"),
    (b"text file", "is not a GGUF file"),
    (TINY[:40], "damaged or truncated"),
    (gguf_header([("k", (99, b""))]), "damaged or truncated"),
])
def test_card_errors(tmp_path: Path, content: bytes | str | None, message: str) -> None:
    path = tmp_path / "m.gguf"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(catalog.ModelFileError, match=message):
        catalog.read_card(path)


@pytest.mark.parametrize(("name", "quant", "expected"), [
    ("gemma-3-270m-q4_k_m.gguf", "Q4_K_M", "gemma-3-270m-q4_k_m"),
    ("Qwen2.5-7B-Instruct-Q8_0.gguf", "Q8_0", "qwen2.5-7b-instruct-q8_0"),
    ("/models/sub/Llama-3.gguf", "Q4_0", "llama-3-q4_0"),  # the stem only
    ("llama.gguf", "Q4_K_M", "llama-q4_k_m"),  # appended when missing
    ("llama.gguf", None, "llama"),
    ("model.Q4_K_M.gguf", "Q4_K_M", "model.q4_k_m"),  # a dot also separates the quant
    ("llama-q8_0.gguf", "Q4_K_M", "llama-q8_0"),  # the name's own quant is kept
    ("tiny-IQ2_XXS.gguf", "IQ2_XXS", "tiny-iq2_xxs"),
    ("phi-f16.gguf", None, "phi-f16"),
    ("phi-BF16.gguf", "BF16", "phi-bf16"),
    ("My Model (v2).gguf", None, "my-model-v2"),  # odd characters become one dash
    ("a+b=c.gguf", "Q4_0", "a-b-c-q4_0"),
    ("--x--.gguf", None, "x"),
    ("!!!.gguf", None, "model"),  # nothing usable left
    ("!!!.gguf", "Q4_0", "model-q4_0"),
])
def test_model_ids(name: str, quant: str | None, expected: str) -> None:
    assert catalog.model_id_for(Path(name), quant) == expected


def _card(size: int | None) -> ModelCard:
    return ModelCard(id=ModelId("big-q4_0"), path=None, size_bytes=size, quantization="Q4_0",
                     architecture=None, context_length=None)


@pytest.mark.parametrize(("size", "available", "fits"), [
    (10 * GiB, 11 * GiB, True),  # exactly 1.1 × the file
    (10 * GiB, 11 * GiB - 1, False),
    (10 * GiB, 64 * GiB, True),
    (10 * GiB, 10 * GiB, False),  # the file alone is not enough
    (None, 0, True),  # attached backends have no file to weigh
])
def test_check_fits(size: int | None, available: int, fits: bool) -> None:
    if fits:
        catalog.check_fits(_card(size), available)
    else:
        with pytest.raises(catalog.ModelFileError):
            catalog.check_fits(_card(size), available)


def test_check_fits_message_names_need_and_available() -> None:
    with pytest.raises(catalog.ModelFileError) as info:
        catalog.check_fits(_card(10 * GiB), 8 * GiB)
    assert str(info.value) == (
        "big-q4_0 needs 11.00 GiB of memory (1.1 × its 10.00 GiB file) but only 8.00 GiB is "
        "available; free memory or pick a smaller quantisation"
    )


@pytest.mark.parametrize(("script", "expected"), [
    ("echo 81559; echo 81559", 2 * 81559 * 1024 * 1024),  # two GPUs: their sum, MiB → bytes
    ("echo 'NVIDIA-SMI has failed'; exit 9", None),  # driver not loaded
    ("echo '[N/A]'", None),  # unparsable: unknown, not zero
    ("exit 0", None),  # no GPU listed
])
def test_gpu_memory_from_nvidia_smi(script: str, expected: int | None, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{script}\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    catalog.gpu_memory_bytes.cache_clear()
    try:
        assert catalog.gpu_memory_bytes() == expected
    finally:
        catalog.gpu_memory_bytes.cache_clear()


def test_no_nvidia_smi_means_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    catalog.gpu_memory_bytes.cache_clear()
    try:
        assert catalog.gpu_memory_bytes() is None
    finally:
        catalog.gpu_memory_bytes.cache_clear()

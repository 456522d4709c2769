"""The native-baseline cache: keyed by model file size and mtime, expired after refresh_s."""

from __future__ import annotations

import os
from pathlib import Path

from covey.metrics.baseline import cache_key, load_cached, store
from covey.metrics.samples import ModelMeter
from covey.router.table import ServedModel
from covey.types import Baseline, EngineStopped, ModelCard, ModelId


class _NoEngine:
    kind = "llama.cpp"
    pid = None
    state = EngineStopped()


def _model(path: Path | None) -> ServedModel:
    card = ModelCard(id=ModelId("m"), path=path, size_bytes=None, quantization=None,
                     architecture=None, context_length=None)
    return ServedModel(card=card, engine=_NoEngine(), upstream_name="m", slots=1, max_queue=0,
                       meter=ModelMeter(window_s=60))


def test_round_trip_and_expiry(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    key = cache_key(_model(gguf))
    assert key is not None
    baseline = Baseline(tokens_per_s=25.0, ttft_ms=120.0, measured_at=1000.0, runs=3)
    store(tmp_path, key, baseline)
    assert load_cached(tmp_path, key, now=1000.0 + 60, refresh_s=3600) == baseline
    assert load_cached(tmp_path, key, now=1000.0 + 3601, refresh_s=3600) is None


def test_changed_file_changes_the_key(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    before = cache_key(_model(gguf))
    gguf.write_bytes(b"GGUF" + b"\0" * 101)
    assert cache_key(_model(gguf)) != before
    os.utime(gguf, ns=(1, 1))
    assert cache_key(_model(gguf)) != before


def test_missing_or_corrupt_cache_means_measure_again(tmp_path: Path) -> None:
    assert load_cached(tmp_path, "k", now=0, refresh_s=10) is None
    (tmp_path / "baselines.json").write_text("{not json")
    assert load_cached(tmp_path, "k", now=0, refresh_s=10) is None
    (tmp_path / "baselines.json").write_text('{"k": {"tokens_per_s": "fast"}}')
    assert load_cached(tmp_path, "k", now=0, refresh_s=10) is None
    (tmp_path / "baselines.json").write_text(
        '{"k": {"tokens_per_s": "fast", "ttft_ms": 1, "measured_at": 0, "runs": 3}}')
    assert load_cached(tmp_path, "k", now=0, refresh_s=10) is None


def test_attached_models_have_no_file_key() -> None:
    assert cache_key(_model(None)) is None

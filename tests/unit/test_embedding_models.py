"""Embedding models (issue 16): recognised from their GGUF, started in embedding mode without
a flag, and never sent a chat by the node itself: not by the native baseline, the
fingerprint, the audits, the health probes or a request that names no model; a client's chat
to one gets a 400 that says what to use instead."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from covey.engine import embedded
from covey.engine.catalog import is_embedding_model
from covey.engine.supervisor import EngineOptions, engine_argv
from covey.errors import BadRequest
from covey.health.probe import _has_vector
from covey.mesh.records import ModelAd, NodeRecord
from covey.metrics.baseline import BaselineKeeper, measure_baseline
from covey.router.proxy import Relay
from covey.router.table import ModelTable, ServedModel
from covey.router.tiers import DAILY, Offer, TierPolicy, default_model
from covey.types import EngineReady, EngineState, ModelCard, ModelId
from covey.verify import fingerprint
from covey.verify.auditor import targets
from tests.unit.test_table import _served

READY = EngineReady(base_url="http://127.0.0.1:9/v1")


def _embedder(name: str = "mini-f16", state: EngineState = READY,
              path: Path | None = None) -> ServedModel:
    model = _served(name, state)
    model.card = ModelCard(id=ModelId(name), path=path, size_bytes=None, quantization="F16",
                           architecture="bert", context_length=512, declares_pooling=True,
                           embeddings_only=True)
    return model


class NoSession:
    """Any request the code under test tries to send fails the test."""

    def post(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the node sent a request: {args}")


@pytest.mark.parametrize(("meta", "expected"), [
    ({"general.architecture": "bert", "bert.pooling_type": 1}, True),
    ({"general.architecture": "nomic-bert", "nomic-bert.pooling_type": 2}, True),
    # An embedding-tuned decoder declares a pooling too (Qwen3-Embedding: last token).
    ({"general.architecture": "qwen3", "qwen3.pooling_type": 3}, True),
    ({"general.architecture": "bert", "bert.attention.causal": False}, True),
    ({"general.architecture": "llama"}, False),
    ({"general.architecture": "gemma3", "gemma3.attention.causal": True}, False),
    # Another architecture's key says nothing about this one.
    ({"general.architecture": "llama", "bert.pooling_type": 1}, False),
    ({}, False),
])
def test_is_embedding_model(meta: dict[str, object], expected: bool) -> None:
    assert is_embedding_model(meta) is expected


OPTIONS = EngineOptions(ctx_size=512, parallel=2, threads=None, gpu_layers=None,
                        embeddings=False, start_timeout_s=60, backoff_s=1, backoff_max_s=2)


@pytest.mark.parametrize(("pooling", "only", "flag", "expected"), [
    (True, True, False, ["--embeddings"]),  # an embedding model: no flag needed
    (True, True, True, ["--embeddings"]),  # its own pooling, never overridden
    (False, True, False, ["--embeddings", "--mean-pooling"]),  # non-causal, no pooling named
    (False, False, False, []),  # a chat model
    (False, False, True, ["--embeddings", "--mean-pooling"]),  # a chat model, by request
])
def test_engine_argv_embedding_mode(pooling: bool, only: bool, flag: bool,
                                    expected: list[str]) -> None:
    card = ModelCard(id=ModelId("m"), path=Path("m.gguf"), size_bytes=1, quantization=None,
                     architecture=None, context_length=None, declares_pooling=pooling,
                     embeddings_only=only)
    options = EngineOptions(**{**OPTIONS.__dict__, "embeddings": flag})
    argv = engine_argv(card, options)
    assert argv[:3] == [sys.executable, "-m", "covey.engine.llamacpp"]
    assert [a for a in argv if a in ("--embeddings", "--mean-pooling")] == expected


def test_a_chat_to_an_embedding_model_is_a_clear_400() -> None:
    relay = Relay(None)  # type: ignore[arg-type]  # refused before any connection is made
    for path in ("/chat/completions", "/completions"):
        with pytest.raises(BadRequest) as info:
            asyncio.run(relay.forward(None, _embedder(), path, b"{}",  # type: ignore[arg-type]
                                      False, {}))
        assert info.value.status == 400 and info.value.code == "embeddings_only"
        assert info.value.message == ("model 'mini-f16' serves embeddings only; use "
                                      "/v1/embeddings")


def test_no_model_named_never_defaults_to_an_embedding_model() -> None:
    policy = TierPolicy(rules=(("*", DAILY),))
    offers = [Offer("mini-f16", True, embeddings_only=True), Offer("chat", True)]
    assert default_model(offers, policy) == "chat"
    assert default_model(offers[:1], policy) is None  # the caller's fallback decides
    table = ModelTable()
    table.add(_embedder())
    table.add(_served("chat", READY))
    assert table.default() is table.models[ModelId("chat")]
    alone = ModelTable()
    alone.add(_embedder())
    assert alone.default() is alone.models[ModelId("mini-f16")]  # the only one: a clear 400


async def test_no_native_baseline_for_an_embedding_model() -> None:
    assert await measure_baseline(NoSession(), _embedder(), 8) is None  # type: ignore[arg-type]


async def test_the_fingerprint_of_an_embedding_model_is_its_file(
        embed_model_path: Path) -> None:
    taken = await fingerprint.take(NoSession(), _embedder(path=embed_model_path))  # type: ignore[arg-type]
    assert taken is not None
    assert (taken["architecture"], taken["probes"]) == ("bert", [])
    assert taken["sha256"] == embedded.MINILM.sha256


async def test_the_baseline_keeper_stops_after_the_fingerprint(tmp_path: Path) -> None:
    taken: list[str] = []

    async def take(session: Any, model: ServedModel) -> None:
        taken.append(model.id)

    keeper = BaselineKeeper(_embedder(), tmp_path, 8, 0.0, 3600.0, take)
    await asyncio.wait_for(keeper.run(), 10)  # returns: nothing more to measure
    assert taken == ["mini-f16"] and keeper.model.baseline is None


def test_audits_skip_embedding_models() -> None:
    table = ModelTable()
    table.add(_embedder(path=Path("mini-f16.gguf")))
    chat = _served("chat", READY)
    chat.card = ModelCard(id=ModelId("chat"), path=Path("chat.gguf"), size_bytes=None,
                          quantization=None, architecture=None, context_length=None)
    table.add(chat)
    record = NodeRecord.model_construct(node_id="peer", models=[
        ModelAd(id="mini-f16", state="ready", embeddings_only=True),
        ModelAd(id="chat", state="ready")])
    assert [(r.node_id, m.id) for r, m in targets(table, [record])] == [("peer", "chat")]


def test_records_carry_the_flag_and_older_ones_read_as_chat() -> None:
    assert ModelAd.model_validate({"id": "m", "embeddings_only": True}).embeddings_only
    assert not ModelAd.model_validate({"id": "m"}).embeddings_only


@pytest.mark.parametrize(("raw", "ok"), [
    (b'{"data": [{"embedding": [0.1, -0.2, 3]}]}', True),
    (b'{"data": [{"embedding": []}]}', False),
    (b'{"data": [{"embedding": ["a"]}]}', False),
    (b'{"data": []}', False),
    (b'{"error": {"message": "no"}}', False),
    (b'[1, 2]', False),
    (b'{"data": [{"embedding": [0.1', False),  # cut short
])
def test_has_vector(raw: bytes, ok: bool) -> None:
    assert _has_vector(raw) is ok

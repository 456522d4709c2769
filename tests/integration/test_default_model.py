"""The default model chats: a real node with no --model serves SmolLM2 135M Instruct with its
chat template applied, so answers are text, not ChatML debris. Gemma 3 270M stays one name
away (`--model gemma-3-270m`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from covey.engine import embedded
from covey.engine.gguf import read_metadata
from tests.conftest import NodeProcess, http, seed_models

pytestmark = pytest.mark.engine

TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>",
                   "<|endoftext|>")
SMOL = "smollm2-135m-instruct-q4_1"
GEMMA = "gemma-3-270m-q4_k_m"


def test_default_model_answers_hello_without_template_tokens(
        chat_model_path: Path, tmp_path: Path, start_node: Callable[..., NodeProcess],
        openai_client: Callable[[str], openai.OpenAI]) -> None:
    # Seeded so the node finds the (already fetched) file in place, as on a second start.
    node = start_node("--no-baseline", data_dir=seed_models(tmp_path / "node", chat_model_path))
    node.wait_listening()
    model = node.wait_ready()
    assert model["id"] == SMOL

    answer = openai_client(node.url).chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "hello"}], max_tokens=48,
        temperature=0)
    text = answer.choices[0].message.content or ""
    assert text.strip(), answer
    assert not [t for t in TEMPLATE_TOKENS if t in text], text

    # The engine formats chats with the GGUF's own template. llama.cpp reports a template
    # even for a GGUF without one (its ChatML fallback, which is what Gemma got), so the
    # check is that it is the file's own.
    code, _, props = http("GET", model["engine_url"].removesuffix("/v1") + "/props")
    assert code == 200, props
    own = read_metadata(chat_model_path)["tokenizer.chat_template"]
    assert isinstance(own, str) and "SmolLM" in own
    assert props["chat_template"] == own


def test_both_embedded_models_by_name(model_path: Path, chat_model_path: Path, tmp_path: Path,
                                      start_node: Callable[..., NodeProcess],
                                      openai_client: Callable[[str], openai.OpenAI]) -> None:
    data_dir = seed_models(tmp_path / "node", model_path, chat_model_path)
    node = start_node("--no-baseline", "--model", embedded.GEMMA.name,
                      "--model", embedded.SMOLLM2.name, data_dir=data_dir)
    node.wait_listening()
    for model_id in (GEMMA, SMOL):
        assert node.wait_ready(model_id)["path"] == str(data_dir.resolve() / "models" /
                                                        f"{model_id}.gguf")
    client = openai_client(node.url)
    assert [m.id for m in client.models.list()] == [GEMMA, SMOL]
    for model_id in (GEMMA, SMOL):
        r = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert r.model == model_id

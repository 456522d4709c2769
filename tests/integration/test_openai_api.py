"""The official openai client against one real node and a real llama.cpp engine."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from covey.metrics.server_timing import parse as parse_server_timing
from tests.conftest import NodeProcess, http, wait_for

pytestmark = pytest.mark.engine

MODEL = "gemma-3-270m-q4_k_m"


@pytest.fixture(scope="module")
def client(shared_node: NodeProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=shared_node.url + "/v1", api_key="unused",
                       max_retries=0) as client:
        yield client


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_whole(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a haiku about rain"}],
        max_tokens=8, temperature=0)
    assert r.model == MODEL
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens == 8


def test_chat_stream(client: openai.OpenAI, shared_node: NodeProcess) -> None:
    before = shared_node.model()["tokens_per_s"]["count"]
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to ten"}], max_tokens=32,
        stream=True, temperature=0, extra_body={"ignore_eos": True})
    pieces = [c.choices[0].delta.content for c in stream
              if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2
    # The node records the sample after the engine closes the stream, just after [DONE].
    model = wait_for(lambda: (m := shared_node.model())["tokens_per_s"]["count"] > before and m,
                     5, "the stream's sample to be recorded")
    assert model["tokens_per_s"]["count"] == before + 1
    assert model["tokens_per_s"]["p50"] > 0
    assert model["ttft_ms"]["p50"] > 0
    row = next(r for r in shared_node.status()["catalog"] if r["id"] == MODEL)
    assert row["source"] == "this node" and row["samples"] >= 1
    assert row["tokens_per_s_p50"] > 0 and row["history"][-1][1] > 0
    assert row["nodes"][0]["id"] == shared_node.status()["node"]["id"]


def test_request_without_model_uses_default(shared_node: NodeProcess) -> None:
    code, headers, body = http("POST", shared_node.url + "/v1/chat/completions",
                               {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert code == 200, body
    assert body["model"] == MODEL
    node_id = shared_node.status()["node"]["id"]
    assert headers["x-covey-served-by"].startswith(node_id)
    assert headers["x-covey-route"].startswith("local")
    timing = parse_server_timing(headers["server-timing"])
    assert set(timing) == {"route", "engine"} and timing["engine"] > 0


def test_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4)
    assert r.choices[0].text
    chunks = list(client.completions.create(model=MODEL, prompt="One, two,", max_tokens=4,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_embeddings_unsupported_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="hello")
    assert info.value.status_code == 400
    assert "embeddings" in str(info.value)
    assert info.value.code == "embeddings_not_supported"


def test_status_and_metrics(shared_node: NodeProcess) -> None:
    model = shared_node.model(MODEL)
    assert model["state"] == "ready"
    assert isinstance(model["pid"], int) and model["pid"] in shared_node.engine_pids()
    assert model["quantization"] == "Q4_K_M"
    # The native baseline is measured in the background once the engine settles.
    baseline = wait_for(lambda: shared_node.model(MODEL)["baseline"], 60, "native baseline")
    assert baseline["tokens_per_s"] > 0 and baseline["runs"] == 3
    code, headers, text = http("GET", shared_node.url + "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    assert f'covey_model_ready{{model="{MODEL}"}} 1.0' in text
    assert f'covey_native_tokens_per_second{{model="{MODEL}"}}' in text

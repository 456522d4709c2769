"""Attach mode (a server the user already runs), API keys, bind rules, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.conftest import FakeBackend, NodeProcess, http, wait_for

pytestmark = pytest.mark.engine

MODEL = "gemma-3-270m-q4_k_m"


def _covey(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "covey", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_attach_to_a_running_engine(shared_node: NodeProcess,
                                    start_node: Callable[..., NodeProcess],
                                    openai_client: Callable[[str], openai.OpenAI]) -> None:
    """The backend here is a real llama.cpp server started by another node."""
    engine_url = shared_node.model()["engine_url"]
    node = start_node("--backend", engine_url, "--no-baseline")
    node.wait_listening()
    model = node.wait_ready(MODEL)
    assert model["engine"] == "attached" and model["pid"] is None
    client = openai_client(node.url)
    assert [m.id for m in client.models.list()] == [MODEL]
    whole = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}],
                                           model=MODEL, max_tokens=3)
    assert whole.choices[0].message.content
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        messages=[{"role": "user", "content": "hi"}], model=MODEL, max_tokens=4, stream=True)
        if c.choices)
    assert text
    # TTFT is always measured; decode speed only when tokens arrive in separate reads.
    wait_for(lambda: node.model(MODEL)["ttft_ms"]["count"] == 1, 5,
             f"the stream's sample to be recorded ({text!r}, {node.model(MODEL)})")
    assert node.model(MODEL)["requests_ok"] == 2


def test_attached_backend_going_away_is_a_named_503(
        start_node: Callable[..., NodeProcess], fake_backend: Callable[..., FakeBackend]) -> None:
    """Fake backend: we need to kill it at will."""
    backend = fake_backend(models="fake-a,fake-b")
    node = start_node("--backend", backend.url, "--no-baseline")
    node.wait_listening()
    node.wait_ready("fake-a")
    assert {m["id"] for m in node.status()["models"]} == {"fake-a", "fake-b"}
    chat = {"model": "fake-b", "messages": [{"role": "user", "content": "hi"}]}
    assert http("POST", node.url + "/v1/chat/completions", chat)[0] == 200
    backend.stop()

    def refused() -> tuple[int, dict[str, str], dict[str, dict[str, str]]] | None:
        answer = http("POST", node.url + "/v1/chat/completions", chat)
        assert answer[0] in (502, 503), answer
        # First "did not answer" from the failed attempt, then, once the poll notices, the
        # backend's state itself.
        return answer if "unreachable" in answer[2]["error"]["message"] else None

    _, headers, body = wait_for(refused, 15, "the node to report the backend unreachable")
    assert "unreachable" in body["error"]["message"] and backend.url in body["error"]["message"]
    assert int(headers["retry-after"]) >= 1


def test_api_key_required_when_set(start_node: Callable[..., NodeProcess],
                                   fake_backend: Callable[..., FakeBackend]) -> None:
    node = start_node("--backend", fake_backend().url, "--no-baseline",
                      env={"COVEY_API_KEY": "s3cret"})
    node.wait_listening()
    code, _, body = http("GET", node.url + "/v1/models")
    assert code == 401 and body["error"]["code"] == "invalid_api_key"
    code, _, _ = http("GET", node.url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert code == 401
    code, _, _ = http("GET", node.url + "/v1/models",
                      headers={"Authorization": "Bearer nope", "X-Forwarded-For": "127.0.0.1"})
    assert code == 401, "a forwarded-for header is never a credential"
    code, _, _ = http("GET", node.url + "/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert code == 200
    assert http("GET", node.url + "/health")[0] == 200


def test_non_loopback_bind_needs_a_key(tmp_path: Path) -> None:
    r = _covey("serve", "--data-dir", str(tmp_path), "--host", "0.0.0.0", "--no-default-model")
    assert r.returncode == 2
    assert "requires an API key" in r.stderr and "--api-key" in r.stderr
    assert not (tmp_path / "node.json").exists()


def test_bad_setting_is_named(tmp_path: Path) -> None:
    r = _covey("serve", "--data-dir", str(tmp_path), "--port", "99999")
    assert r.returncode == 2 and "port=99999" in r.stderr


def test_cli_chat_status_models(shared_node: NodeProcess) -> None:
    url = shared_node.url
    chat = _covey("chat", "--url", url, "--max-tokens", "6", "Write a haiku about rain")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()
    summary = chat.stderr.strip().splitlines()[-1]
    node_id = shared_node.status()["node"]["id"]
    assert MODEL in summary and node_id in summary and "TTFT" in summary and "tok/s" in summary

    status = _covey("status", "--url", url, "--json")
    assert status.returncode == 0
    snap = json.loads(status.stdout)
    assert snap["models"][0]["id"] == MODEL and snap["models"][0]["pid"]
    table = _covey("status", "--data-dir", str(shared_node.data_dir))  # found via node.json
    assert table.returncode == 0 and "TTFT" in table.stdout

    models = _covey("models", "--url", url, "--json")
    assert json.loads(models.stdout)[0] == {
        "id": MODEL, "size_bytes": snap["models"][0]["size_bytes"], "quantization": "Q4_K_M",
        "state": "ready", "reason": None, "engine": "llama.cpp"}
    listing = _covey("models", "--url", url)
    assert MODEL in listing.stdout
    assert "smollm2-135m-instruct (a chat model" in listing.stdout  # the names one can serve
    assert "gemma-3-270m (a base model" in listing.stdout


def test_cli_without_a_node_says_how_to_start_one(tmp_path: Path) -> None:
    r = _covey("status", "--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and "covey serve" in r.stderr

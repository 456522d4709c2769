"""Engine faults with real processes: a child killed mid-stream, bad model files beside a good
one, a client that hangs up, and shutdown leaving no orphans."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path

import openai
import psutil
import pytest

from tests.conftest import NodeProcess, http, wait_for

pytestmark = pytest.mark.engine

MODEL = "gemma-3-270m-q4_k_m"
LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story"}],
        "max_tokens": 400, "stream": True, "ignore_eos": True}


def _open_stream(url: str, body: dict[str, object]) -> tuple[HTTPConnection, object]:
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


def test_engine_crash_mid_stream_then_restart(start_node: Callable[..., NodeProcess],
                                              model_path: Path, openai_client: Callable[
                                                  [str], openai.OpenAI]) -> None:
    node = start_node("--model", str(model_path), "--no-baseline")
    node.wait_listening()
    pid = node.wait_ready()["pid"]
    client = openai_client(node.url)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell a long story"}],
        max_tokens=400, stream=True, extra_body={"ignore_eos": True})
    received = 0
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
                if received == 3:
                    killed_at = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
            assert not (chunk.choices and chunk.choices[0].finish_reason), \
                "a killed engine must not produce an invented finish_reason"
    assert "failed mid-stream" in info.value.message
    assert time.monotonic() - killed_at < 5, "the broken stream was noticed late"

    # While it restarts: a named 503 with Retry-After for a whole (non-streamed) request.
    def restarting() -> tuple[int, dict[str, str], object] | None:
        answer = http("POST", node.url + "/v1/chat/completions",
                      {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        # Until the node notices the crash, a request fails against the dead port (named,
        # too); once it has, the engine's own state answers.
        return answer if answer[0] == 503 and answer[2]["error"]["code"] == \
            "model_not_ready" else None

    _, headers, body = wait_for(restarting, 5, "a 503 while the engine restarts")
    assert int(headers["retry-after"]) >= 1
    assert body["error"]["code"] == "model_not_ready"

    model = node.wait_ready(timeout=60)
    assert model["pid"] != pid and model["restarts"] == 1
    r = client.chat.completions.create(model=MODEL, max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content is not None


# Loaded by the engine child through PYTHONPATH (tests only): the first child to load the
# model holds before it reports ready, writing its pid, until the test kills it. Children
# after it (the marker exists) load straight through.
HOLD_ONCE_HOOK = """
import os, signal, sys
marker = os.environ.get("COVEY_TEST_HOLD_ONCE")
if marker and "--alias" in sys.argv and not os.path.exists(marker):
    import xllamacpp
    real_server = xllamacpp.Server

    def held(params):
        server = real_server(params)  # the model is in memory; the ready line is not sent
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
        while True:
            signal.pause()

    xllamacpp.Server = held
"""


# Was a bug: a child killed before it reported ready (the OOM killer's SIGKILL while
# loading) was taken for a bad file and never restarted.
def test_engine_killed_while_loading_is_restarted(start_node: Callable[..., NodeProcess],
                                                  model_path: Path, tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_ONCE_HOOK)
    marker = tmp_path / "held-pid"
    node = start_node("--model", str(model_path), "--no-baseline", env={
        "COVEY_TEST_HOLD_ONCE": str(marker),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook),
                                                    os.environ.get("PYTHONPATH")]))})
    node.wait_listening()
    pid = wait_for(lambda: marker.exists() and int(marker.read_text()), 90,
                   "the engine child to load and hold")
    assert node.model(MODEL)["state"] == "starting"
    os.kill(pid, signal.SIGKILL)

    def settled() -> dict[str, object] | None:
        m = node.model(MODEL)
        final = m["state"] == "failed" and "restarting" not in str(m["reason"])
        return m if m["state"] == "ready" or final else None

    model = wait_for(settled, 90, "the engine to be restarted (or to fail for good)")
    assert model["state"] == "ready", model
    assert model["restarts"] == 1 and model["pid"] != pid
    assert "died while loading (killed by SIGKILL; out of memory?); restarting in" in node.log()
    code, _, body = http("POST", node.url + "/v1/chat/completions",
                         {"model": MODEL, "max_tokens": 1,
                          "messages": [{"role": "user", "content": "hi"}]})
    assert code == 200, body


def test_bad_models_beside_a_good_one(start_node: Callable[..., NodeProcess], model_path: Path,
                                      tmp_path: Path) -> None:
    not_gguf = tmp_path / "notes-q4_0.gguf"
    not_gguf.write_text("these are not weights")
    truncated = tmp_path / "cut-q4_k_m.gguf"  # header intact, tensor data cut: llama.cpp fails
    with model_path.open("rb") as src, truncated.open("wb") as dst:
        dst.write(src.read(model_path.stat().st_size // 2))
    missing = tmp_path / "missing-q8_0.gguf"
    node = start_node("--model", str(model_path), "--model", str(not_gguf),
                      "--model", str(truncated), "--model", str(missing), "--no-baseline")
    node.wait_listening()
    node.wait_ready(MODEL)

    def failures() -> dict[str, str] | None:
        reasons = {m["id"]: m["reason"] for m in node.status()["models"]
                   if m["state"] == "failed"}
        return reasons if len(reasons) == 3 else None

    failed = wait_for(failures, 60, "all three bad models to show as failed")
    assert "not a GGUF" in failed["notes-q4_0"]
    assert "not found" in failed["missing-q8_0"]
    assert "could not load" in failed["cut-q4_k_m"]
    for model_id, reason in failed.items():
        code, _, body = http("POST", node.url + "/v1/chat/completions",
                                   {"model": model_id, "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "hi"}]})
        assert code == 503
        assert reason in body["error"]["message"]
    code, _, body = http("POST", node.url + "/v1/chat/completions",
                         {"model": MODEL, "max_tokens": 1,
                          "messages": [{"role": "user", "content": "hi"}]})
    assert code == 200, body


def test_model_too_big_for_memory(start_node: Callable[..., NodeProcess],
                                  model_path: Path) -> None:
    node = start_node("--model", str(model_path), "--fast-memory-bytes", str(100 * 2**20))
    node.wait_listening()
    model = node.model(MODEL)
    assert model["state"] == "failed"
    assert "needs 0.26 GiB" in model["reason"] and "0.10 GiB is available" in model["reason"]
    assert node.engine_pids() == []


def test_client_disconnect_frees_the_slot(shared_node: NodeProcess) -> None:
    # The native baseline is the only other traffic; let it finish so slots count just ours.
    wait_for(lambda: shared_node.model()["baseline"], 60, "the native baseline to finish")
    conn, resp = _open_stream(shared_node.url, LONG)
    resp.read1(4096)  # type: ignore[attr-defined]
    engine = shared_node.model()["engine_url"].removesuffix("/v1")

    def busy_slots() -> int:
        return sum(s["is_processing"] for s in http("GET", engine + "/slots")[2])

    assert busy_slots() == 1 and shared_node.model()["in_flight"] == 1
    conn.sock.shutdown(2)  # the client hangs up mid-stream
    resp.close()  # type: ignore[attr-defined]
    conn.close()
    wait_for(lambda: busy_slots() == 0, 5, "the engine slot to be freed")
    wait_for(lambda: shared_node.model()["in_flight"] == 0, 5, "the node to release the request")


def test_shutdown_finishes_streams_and_leaves_no_orphans(
        start_node: Callable[..., NodeProcess], model_path: Path, tmp_path: Path) -> None:
    # A grace no loaded machine runs out of (24 tokens took over FAST's 3 s on a busy 2-core
    # runner): what is tested is that the stream is finished, not how fast.
    node = start_node("--model", str(model_path), "--no-baseline", "--shutdown-grace-s", "60")
    node.wait_listening()
    node.wait_ready()
    engine_pids = node.engine_pids()
    assert engine_pids
    conn, resp = _open_stream(node.url, {**LONG, "max_tokens": 24})
    try:
        resp.read1(1024)  # type: ignore[attr-defined]
        node.proc.send_signal(signal.SIGTERM)
        rest = resp.read().decode()  # the stream finishes within the grace period
    finally:
        resp.close()  # type: ignore[attr-defined]
        conn.close()
    assert rest.rstrip().endswith("data: [DONE]")
    assert '"finish_reason":"length"' in rest
    assert node.proc.wait(60) == 0
    for pid in engine_pids:
        wait_for(lambda pid=pid: not psutil.pid_exists(pid), 10, f"engine {pid} to exit")
    assert not (node.data_dir / "node.json").exists()


def test_engine_exits_when_its_node_is_killed(start_node: Callable[..., NodeProcess],
                                              model_path: Path) -> None:
    """SIGKILL gives the node no chance to clean up: the child must notice on its own."""
    node = start_node("--model", str(model_path), "--no-baseline")
    node.wait_listening()
    node.wait_ready()
    engine_pids = node.engine_pids()
    node.proc.kill()
    node.proc.wait()
    for pid in engine_pids:
        wait_for(lambda pid=pid: not psutil.pid_exists(pid), 10, f"orphan engine {pid} to exit")


def test_several_models(start_node: Callable[..., NodeProcess], model_path: Path,
                        tmp_path: Path,
                        openai_client: Callable[[str], openai.OpenAI]) -> None:
    second = tmp_path / "gemma-copy-q4_k_m.gguf"
    try:
        second.symlink_to(model_path)
    except OSError:
        shutil.copy(model_path, second)
    node = start_node("--model", str(model_path), "--model", str(second), "--no-baseline",
                      "--parallel", "1")
    node.wait_listening()
    for model_id in (MODEL, "gemma-copy-q4_k_m"):
        node.wait_ready(model_id)
    client = openai_client(node.url)
    assert [m.id for m in client.models.list()] == [MODEL, "gemma-copy-q4_k_m"]
    pids = {m["pid"] for m in node.status()["models"]}
    assert len(pids) == 2, "each model runs in its own engine process"
    for model_id in (MODEL, "gemma-copy-q4_k_m"):
        r = client.chat.completions.create(model=model_id, max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])
        assert r.model == model_id


def test_embeddings_mode(start_node: Callable[..., NodeProcess], model_path: Path,
                         openai_client: Callable[[str], openai.OpenAI]) -> None:
    """`--embeddings` makes /v1/embeddings work, even for a model that declares no pooling."""
    node = start_node("--model", str(model_path), "--embeddings", "--no-baseline",
                      "--parallel", "1")
    node.wait_listening()
    node.wait_ready()
    result = openai_client(node.url).embeddings.create(model=MODEL, input=["hello", "rain"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 640  # Gemma 3 270M's embedding width
    assert result.data[0].embedding != result.data[1].embedding

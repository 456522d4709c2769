"""`covey bench` runs end to end and reports every figure (no timing goals asserted here:
timings belong to the benchmark, not to tests on a shared machine)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.engine


def test_bench_reports_all_figures(model_path: Path, tmp_path: Path) -> None:
    # Few TTFT pairs and a short idle window: the figures' presence is tested, not their noise.
    r = subprocess.run([sys.executable, "-m", "covey", "bench", "--json", "--runs", "1",
                        "--max-tokens", "8", "--ttft-pairs", "4", "--idle-s", "2",
                        "--model", str(model_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    for key in ("ratio_1_stream", "ratio_4_streams", "cpu_us_per_chunk",
                "cpu_us_per_chunk_floor", "through_tokens_per_s_1_stream"):
        assert result[key] > 0, key
    assert result["mesh_ratio_1_stream"] > 0 and result["mesh_ratio_4_streams"] > 0
    for key in ("ttft_added_ms_p50", "ttft_added_ms_p99", "mesh_ttft_added_ms_p50",
                "mesh_ttft_added_ms_p99"):
        assert isinstance(result[key], float)
    assert result["events_relayed"] >= 5 * 8  # 1 + 4 streams of at least 8 tokens
    assert result["ttft_pairs"] == 4
    assert result["cpu_floor_ratio"] > 0
    assert result["cpu_ms_per_s_idle"] >= 0 and result["cpu_us_per_chunk_idle"] >= 0
    assert result["cpu_floor_ratio_net"] is not None
    assert result["event_loop"] in {"uvloop", "asyncio"}
    # llama.cpp reports its own prompt time on every path, the mesh's included.
    for key in ("ttft_added_outside_engine_ms_p50", "mesh_ttft_added_outside_engine_ms_p50",
                "ttft_added_outside_engine_ms_p50_2_tokens",
                "mesh_ttft_added_outside_engine_ms_p50_2_tokens",
                "ratio_1_stream_beside_engine", "ratio_4_streams_beside_engine",
                "mesh_ratio_1_stream_beside_engine", "mesh_ratio_4_streams_beside_engine"):
        assert isinstance(result[key], float), key
    assert "mesh_ttft_added_ratio" in result and "mesh_ttft_added_ratio_2_tokens" in result
    assert set(result["goals"]) == {"ratio_1_stream", "ratio_4_streams", "ttft_added_ms_p50",
                                    "cpu_us_per_chunk", "cpu_floor_ratio", "mesh_ratio_1_stream",
                                    "mesh_ratio_4_streams", "mesh_ttft_added_ms_p50",
                                    "mesh_ttft_added_ratio", "mesh_ttft_added_ratio_2_tokens"}


def test_sigterm_stops_every_process_the_bench_started(model_path: Path) -> None:
    """`timeout covey bench` used to leave the bench's nodes (and the floor relay) running."""
    bench = subprocess.Popen([sys.executable, "-m", "covey", "bench", "--json", "--runs", "1",
                              "--max-tokens", "8", "--model", str(model_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(bench.pid)
        started: list[psutil.Process] = []

        def node_and_engine() -> bool:  # the serving node and its llama.cpp child
            started[:] = parent.children(recursive=True)
            return len(started) >= 2

        wait_for(node_and_engine, 120, "the bench to start its node and engine")
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(90) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], f"left running: {[p.cmdline()[:4] for p in alive]}"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()

"""Issue 16's cross-machine figure: the latency of a member's memory search from another
"machine" (network namespace), at 100 .. 100k memories on the searched node.

Not part of the suite (pytest collects only test_*.py); run it by path, as root:

    .venv/bin/python -m pytest -s tests/integration/bench_memory_mesh.py

Node A (real `covey serve`, README flags, `--share-memory '*'`) holds N memories whose
vectors are synthetic (clustered unit vectors, written to its store before it starts, as
`python -m covey.bench.memory` makes them: embedding 100k texts would take an hour here and
measure the embedder, not the search). From B's namespace a member's signed client sends
`/mesh/memory/search` with a query vector over the bridge, as a mesh search does, and
times the whole call (signing, TLS, A's search, the answer). Prints one JSON line per size
and a summary; the goal: p95 at 100k no worse than p95 at 1k plus 10 ms.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from covey.memory.records import NewMemory
from covey.memory.store import MemoryStore
from tests.conftest import seed_models, wait_for
from tests.netns import Host, NsNode, lan, ns_run, unusable_reason

pytestmark = pytest.mark.skipif(unusable_reason() is not None,
                                reason=unusable_reason() or "")

SIZES = (100, 1_000, 5_000, 10_000, 100_000)
QUERIES = 200
MODEL = "all-minilm-l6-v2-f16"
DIM = 384

CLIENT = """
import asyncio, json, statistics, sys, time
from pathlib import Path
import numpy as np
from covey.mesh import identity
from covey.mesh.client import signer_for
from covey.mesh.peer_transport import HttpPeerTransport, Peer, call_json
from covey.mesh.state import MeshState
from covey.mesh.transport import tls_identity
data, callee, address, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
state = MeshState.load(data, identity.load_or_create(data))
peer = Peer(tls_identity(identity.load_or_create(callee).key, callee).fingerprint, (address,))
rng = np.random.default_rng(7)
async def main():
    async with HttpPeerTransport(signer_for(state)) as t:
        times = []
        for i in range(n + 10):
            v = rng.standard_normal(384).astype("float32")
            body = {"vector": (v / np.linalg.norm(v)).tolist(), "model": sys.argv[5], "k": 10}
            t0 = time.perf_counter()
            got = await call_json(t, peer, "/mesh/memory/search", body, 30)
            if i >= 10:  # the first calls open the connection and warm caches
                times.append((time.perf_counter() - t0) * 1000)
            assert len(got["hits"]) == 10, got
    times.sort()
    print(json.dumps({"p50": times[len(times) // 2], "p95": times[int(len(times) * .95)]}))
asyncio.run(main())
"""


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(2, subnet="10.82.0") as made:
        yield made


def fill(path: Path, n: int, rng: np.random.Generator) -> None:
    """`n` memories with clustered synthetic vectors (64 topics, as real notes cluster)."""
    centres = rng.standard_normal((64, DIM)).astype(np.float32)
    store = MemoryStore(path, path.with_suffix(".usearch"))
    try:
        for start in range(0, n, 1_000):
            m = min(1_000, n - start)
            vectors = centres[rng.integers(0, 64, m)] + 0.6 * rng.standard_normal(
                (m, DIM)).astype(np.float32)
            store.add([NewMemory(text=f"synthetic memory {start + i}", project="bench")
                       for i in range(m)], vectors, MODEL)
    finally:
        store.close()


@pytest.mark.timeout(3600)
def test_cross_machine_search_latency(hosts: list[Host], tmp_path: Path,
                                      embed_model_path: Path) -> None:
    ha, hb = hosts
    a_dir = seed_models(tmp_path / "a", embed_model_path)
    b_dir = seed_models(tmp_path / "b", embed_model_path)
    flags = ["--mesh-host", "0.0.0.0", "--no-default-model"]
    a = NsNode(ha.ns, a_dir, *flags)
    a.wait_listening()
    invite = a.covey("invite", "--data-dir", str(a_dir)).strip()
    b = NsNode(hb.ns, b_dir, "--join", invite, *flags)
    rng = np.random.default_rng(1)
    rows = []
    try:
        b.wait_listening()
        for n in SIZES:
            a.stop()
            for name in ("memory.sqlite3", "memory.sqlite3-wal", "memory.sqlite3-shm",
                         "memory.usearch"):
                (a_dir / name).unlink(missing_ok=True)
            fill(a_dir / "memory.sqlite3", n, rng)
            shutil.copy(a_dir / "memory.sqlite3", tmp_path / "last.sqlite3")
            a = NsNode(ha.ns, a_dir, *flags, "--share-memory", "*")
            port = a.wait_listening(120)["mesh_addresses"][0].rsplit(":", 1)[1]
            wait_for(lambda a=a, n=n: a.get("/v1/memory?limit=1")["memory"]["count"] == n, 300,
                     "A to open its store")
            out = ns_run(hb.ns, sys.executable, "-c", CLIENT, str(b_dir), str(a_dir),
                         f"{ha.address}:{port}", str(QUERIES), MODEL, timeout=900)
            assert out.returncode == 0, out.stderr
            row = {"memories": n, **json.loads(out.stdout)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        p95 = {r["memories"]: r["p95"] for r in rows}
        print(json.dumps({"p95_100k_minus_p95_1k_ms": p95[100_000] - p95[1_000],
                          "goal_ms": 10.0}))
    finally:
        a.stop()
        b.stop()

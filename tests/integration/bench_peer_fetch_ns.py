"""Issue 12's transfer figure: Gemma 3 270M's file (253 MB) fetched between two "machines"
(network namespaces on one bridge) by real nodes, against `curl` of the same file from a
static HTTP server (sendfile, tests/file_server.py) on the same link; then from two sources.

Not part of the suite (pytest collects only test_*.py); run it by path, as root:

    .venv/bin/python -m pytest -s tests/integration/bench_peer_fetch_ns.py

Each figure is the median of RUNS; the node's figure is the fetch's own wall time (manifest,
chunks, verification, the whole-file sha256, the rename), from /api/status → fetches. Measured
three times in one run: on the bare veth link (memory speed), then with every port shaped to
1 Gbit/s and to 2.5 Gbit/s both ways (`tc tbf`), like machines on a gigabit (2.5 GbE) switch.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.netns import Host, NsNode, lan, ns_run, unusable_reason

pytestmark = pytest.mark.skipif(unusable_reason() is not None,
                                reason=unusable_reason() or "")

MODEL = "tinygem-q4_k_m"
RUNS = 3
FLAGS = ["--mesh-host", "0.0.0.0"]


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(3, subnet="10.84.0") as made:
        yield made


def _fetch(host: Host, data_dir: Path, invite: str, name: str) -> tuple[NsNode, dict]:
    node = NsNode(host.ns, data_dir, "--join", invite, *FLAGS, "--node-name", name,
                  "--model", MODEL, "--no-baseline", "--verify", "off")
    node.wait_listening()
    done = wait_for(lambda: (f := node.status()["fetches"].get(MODEL, {})).get("state")
                    == "fetched" and f, 300, f"{name} to fetch")
    return node, done


def shape(hosts: list[Host], rate: str) -> None:
    """Every port at `rate`, both ways: each host's eth0 (host → switch) and the switch's
    port to it (switch → host), like machines on a switch of that speed."""
    tag = hosts[0].ns.rsplit("-", 1)[1]
    switch = f"covey-sw-{tag}"
    for i, host in enumerate(hosts):
        for ns, dev in ((host.ns, "eth0"), (switch, f"p{tag}{i}")):
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev,
                            "root",
                            "tbf", "rate", rate, "burst", "512kb", "latency", "50ms"],
                           check=True, capture_output=True, timeout=10)


def measure(hosts: list[Host], a: NsNode, work: Path, size: int,
            nodes: list[NsNode]) -> dict[str, float]:
    ha, hb, hc = hosts
    work.mkdir(parents=True, exist_ok=True)
    curl = []
    for _ in range(RUNS):
        out = ns_run(hb.ns, "curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}",
                     f"http://{ha.address}:18080/{MODEL}.gguf", timeout=300)
        curl.append(float(out.stdout) / 1e6)
    one, two = [], []
    for run in range(RUNS):
        invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
        b, got = _fetch(hb, work / f"b{run}", invite, "b")
        nodes.append(b)
        one.append(size / 1e6 / got["seconds"])
        wait_for(lambda b=b: any(m["id"] == MODEL and m["state"] == "ready"
                                 for p in a.status()["peers"] if p["id"] == b.node_id
                                 for m in p["models"]), 120, "B to serve it")
        invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
        c, got = _fetch(hc, work / f"c{run}", invite, "c")
        nodes.append(c)
        two.append(size / 1e6 / got["seconds"])
        # Stopped B's of earlier runs are still in records for a while: dropped, harmless.
        live = {k: v for k, v in got["bytes_from"].items() if v}
        assert len(live) == 2, got
        for n in (b, c):
            n.stop()
            nodes.remove(n)
    row = {"curl_MBps": statistics.median(curl), "peer_1_source_MBps": statistics.median(one),
           "peer_2_sources_MBps": statistics.median(two)}
    row["ratio_1_source"] = row["peer_1_source_MBps"] / row["curl_MBps"]
    row["ratio_2_sources"] = row["peer_2_sources_MBps"] / row["curl_MBps"]
    return {k: round(v, 3) for k, v in row.items()}


@pytest.mark.timeout(3600)
def test_transfer_speed(hosts: list[Host], tmp_path: Path, model_path: Path) -> None:
    ha = hosts[0]
    files = tmp_path / "files"
    files.mkdir()
    source = files / f"{MODEL}.gguf"
    try:
        os.link(model_path, source)
    except OSError:
        shutil.copyfile(model_path, source)
    size = source.stat().st_size
    server = subprocess.Popen(["ip", "netns", "exec", ha.ns, sys.executable, "-m",
                               "tests.file_server", str(files), "--host", ha.address,
                               "--port", "18080"], stdout=subprocess.PIPE, text=True)
    a = NsNode(ha.ns, tmp_path / "a", *FLAGS, "--node-name", "a", "--model", str(source),
               "--no-baseline", "--verify", "off")
    nodes = [a]
    try:
        assert server.stdout is not None
        server.stdout.readline()
        a.wait_listening()
        rows = []
        for label, rate in (("veth, unshaped", None), ("1 Gbit/s ports", "1gbit"),
                            ("2.5 Gbit/s ports", "2500mbit")):
            if rate:
                shape(hosts, rate)
            row = measure(hosts, a, tmp_path / label.split(",")[0].replace(" ", "-"), size,
                          nodes)
            rows.append({"link": label, **row})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
        for n in nodes:
            n.stop()

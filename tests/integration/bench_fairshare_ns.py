"""Fair share on real nodes (issue 15): two contributors and a free-rider saturate one
provider, each a "machine" of its own (network namespaces), every node started with the
README's flags. A benchmark, not a test (timings on a shared machine): run it by hand,

    .venv/bin/python -m pytest -s tests/integration/bench_fairshare_ns.py

    P: creates the mesh (keeps the ledger), serves a fake engine: 4 slots, every answer
       40 tokens at 25 ms (1 s); grants A and B credits, so they are members in credit
    A, B: contributors, each sending Poisson arrivals at a quarter of P's capacity
       (together half of it), whole answers
    F: the free-rider (no credit), 12 requests always outstanding

A fake engine because the figure needs an engine that saturates on demand and answers in a
known time; everything else is real: relays, signed peer calls, the ledger's standing, the
admission queue. Three runs, P restarted before each (its queue-wait window starts empty),
A and B with the same seeds in each: alone; with F and the default headroom; with F and
`--headroom 0` (P's queue before the headroom). P's own measurement of the queue wait per
class (`/api/status` → `queue_wait_ms`) is the figure; the contributors' end-to-end latency
is printed beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from covey.metrics.samples import percentile
from tests.conftest import wait_for
from tests.integration.test_ledger import README_MESH
from tests.netns import Host, NsNode, lan, running, unusable_reason

pytestmark = pytest.mark.skipif(unusable_reason() is not None,
                                reason=unusable_reason() or "")

MODEL = "fake-model"
SLOTS, TOKENS, TOKEN_S = 4, 40, 0.025
SECONDS = 60.0
CONTRIBUTOR_RATE = 0.25 * SLOTS / (TOKENS * TOKEN_S)  # each; both: half the capacity
FREE_RIDER_USERS = 12

LOAD = """
import json, random, sys, threading, time, urllib.request
url, model, mode, arg, seconds, seed = sys.argv[1:7]
arg, seconds = float(arg), float(seconds)
body = json.dumps({"model": model, "max_tokens": 40,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
latencies, errors, lock = [], [], threading.Lock()
def one():
    t = time.monotonic()
    try:
        req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=900) as r:
            r.read()
        with lock:
            latencies.append(time.monotonic() - t)
    except Exception as e:
        with lock:
            errors.append(type(e).__name__)
end = time.monotonic() + seconds
threads = []
if mode == "poisson":
    rng, at = random.Random(int(seed)), time.monotonic()
    while True:
        at += rng.expovariate(arg)
        if at >= end:
            break
        time.sleep(max(0.0, at - time.monotonic()))
        threads.append(threading.Thread(target=one))
        threads[-1].start()
else:
    def user():
        while time.monotonic() < end:
            one()
    threads = [threading.Thread(target=user) for _ in range(int(arg))]
    for th in threads:
        th.start()
for th in threads:
    th.join()
print(json.dumps({"latencies": latencies, "errors": errors}))
"""


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(4, subnet="10.82.0") as made:
        yield made


def _fake_engine(ns: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    with log.open("ab") as err:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.fake_backend", "--models",
             MODEL, "--tokens", str(TOKENS), "--token-delay", str(TOKEN_S)],
            stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("FAKE-LISTENING"), line
    return proc, line.split()[1]


def _load(node: NsNode, mode: str, arg: float, seed: int) -> subprocess.Popen[str]:
    url = node.wait_listening()["url"]
    return subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-c", LOAD, url,
                             MODEL, mode, str(arg), str(SECONDS), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _spread(values: list[float]) -> str:
    v = sorted(values)
    if not v:
        return "none"
    return f"p50 {percentile(v, 50):.3f} p95 {percentile(v, 95):.3f} max {v[-1]:.3f}"


def _run(provider: NsNode, clients: list[tuple[str, NsNode, str, float, int]]
         ) -> dict[str, Any]:
    for _, node, *_ in clients:  # every client's node sees P's model before the clock runs
        wait_for(lambda n=node: any(m["id"] == MODEL and m["state"] == "ready"
                                    for p in n.status()["peers"] for m in p["models"]),
                 90, "the client's node to see P's model")
    procs = [(name, _load(node, mode, arg, seed)) for name, node, mode, arg, seed in clients]
    out: dict[str, Any] = {}
    for name, proc in procs:
        stdout, stderr = proc.communicate(timeout=SECONDS + 900)
        assert proc.returncode == 0, stderr
        out[name] = json.loads(stdout)
    model = next(m for m in provider.status()["models"] if m["id"] == MODEL)
    out["queue_wait_ms"] = model["queue_wait_ms"]
    return out


def _report(run: str, r: dict[str, Any]) -> None:
    waits = r["queue_wait_ms"]
    print(f"\n  {run}: P's queue wait (ms) member {waits['member']}, rest {waits['rest']}")
    for name in ("contributor-a", "contributor-b", "free-rider"):
        if name in r:
            lat = r[name]["latencies"]
            print(f"    {name:14} served {len(lat):4} errors {len(r[name]['errors'])}  "
                  f"latency s {_spread(lat)}")


@pytest.mark.timeout(1200)
def test_bench_fair_share_on_real_nodes(hosts: list[Host], tmp_path: Path) -> None:
    hp, ha, hb, hf = hosts
    engine, engine_url = _fake_engine(hp.ns, tmp_path / "engine.log")
    flags = [*README_MESH, "--no-default-model", "--no-baseline", "--backend", engine_url,
             "--parallel", str(SLOTS), "--max-queue", "64"]
    p = NsNode(hp.ns, tmp_path / "p", *flags)
    try:
        with running([p]) as nodes:
            p.wait_listening()
            members = {}
            for name, host in (("a", ha), ("b", hb), ("f", hf)):
                invite = p.covey("invite", "--data-dir", str(p.data_dir)).strip()
                members[name] = NsNode(host.ns, tmp_path / name, "--join", invite, *README_MESH,
                                       "--no-default-model")
                nodes.append(members[name])
            a, b, f = members["a"], members["b"], members["f"]
            for member in (a, b):
                member.wait_listening()
                p.covey("ledger", "grant", member.node_id, "100", "--data-dir", str(p.data_dir))
            f.wait_listening()
            contributors = [("contributor-a", a, "poisson", CONTRIBUTOR_RATE, 1),
                            ("contributor-b", b, "poisson", CONTRIBUTOR_RATE, 2)]
            free_rider = ("free-rider", f, "closed", float(FREE_RIDER_USERS), 3)
            results = {}
            for run, extra, clients in (("alone", [], contributors),
                                        ("headroom 0.5", [], [*contributors, free_rider]),
                                        ("headroom 0", ["--headroom", "0"],
                                         [*contributors, free_rider])):
                p.stop()
                nodes.remove(p)
                p = NsNode(hp.ns, tmp_path / "p", *flags, *extra)
                nodes.append(p)
                p.wait_listening()
                results[run] = _run(p, clients)
                _report(run, results[run])
            print(f"\nfair share on real nodes: {SLOTS} slots, answers "
                  f"{TOKENS * TOKEN_S:.1f} s, contributors {2 * CONTRIBUTOR_RATE:.2f} req/s "
                  f"together (half the capacity), free-rider {FREE_RIDER_USERS} users, "
                  f"{SECONDS:.0f} s per run")
            alone, fair, before = (results[k]["queue_wait_ms"]["member"]["p50"]
                                   for k in ("alone", "headroom 0.5", "headroom 0"))
            print(f"  member p50 wait: alone {alone} ms, with the free-rider {fair} ms "
                  f"(headroom 0: {before} ms)")
            assert results["headroom 0.5"]["queue_wait_ms"]["rest"]["count"] > 0  # still served
    finally:
        engine.terminate()
        engine.wait(10)
        if engine.stdout is not None:
            engine.stdout.close()

"""Issue 14: audits tell honest peers from impostors, with real engines on separate "machines".

Five network namespaces on one bridge (tests/netns.py), each node started with the README's
flags. The entry serves Gemma 3 270M from its own file (the ground truth) and audits, every
~0.3 s here, four peers that all claim `gemma-3-270m-q4_k_m`:
- an honest one: the same file with one thread and four slots while a client streams other
  requests on it (audits then share batches with other work; the calibration bench,
  docs/verify.md, covers more honest variants over hundreds of audits);
- SmolLM2's GGUF under Gemma's file name (model ids come from file names);
- a perturbed copy of Gemma's GGUF: one tensor's block scales changed, same metadata and size
  (the hard case: its greedy text is often word for word the honest one);
- an attached backend answering canned text under Gemma's id.
Enforce mode, K=2: the three cheats are suspect and demoted, the honest peer verified and
never failed once, and the entry routes nothing to a demoted peer.

Every engine runs on one thread: four engines and the honest peer's load share the test
machine's cores, and a two-thread llama.cpp whose second core is taken waits on its own
threads (docs/bench.md), which made each audit take seconds and the test four minutes. The
cheats are no easier to catch for it, and the honest peer's answers matched a ground truth on
two threads as well as they match one on one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from covey.bench.impostors import perturbed_gguf
from tests.conftest import FakeBackend, wait_for
from tests.netns import Host, NsNode, lan, ns_run, unusable_reason

pytestmark = pytest.mark.skipif(unusable_reason() is not None,
                                reason=unusable_reason() or "")

GEMMA = "gemma-3-270m-q4_k_m"
README_MESH = ["--mesh-host", "0.0.0.0"]
ENFORCE = ["--verify", "enforce", "--verify-interval-s", "0.3", "--verify-fails", "2"]

# Streams chats at a node's own API until killed: the honest peer's concurrent load.
LOAD = """
import json, sys, urllib.request
body = json.dumps({"model": sys.argv[2], "max_tokens": 8, "stream": True,
                   "messages": [{"role": "user", "content": "Tell me about rivers."}]}).encode()
while True:
    req = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=30).read()
    except OSError:
        pass
"""

# Asks the entry four times; prints who served each answer and its x-covey-verified.
ASK = """
import json, sys, urllib.request
out = []
for _ in range(4):
    body = json.dumps({"model": sys.argv[2], "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out.append([r.headers["x-covey-served-by"].split()[0], r.headers["x-covey-verified"]])
print(json.dumps(out))
"""


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(5, subnet="10.79.0") as made:
        yield made


@pytest.mark.timeout(480)
def test_audits_flag_impostors_never_the_honest_peer(
        hosts: list[Host], tmp_path: Path, model_path: Path, chat_model_path: Path) -> None:
    h_entry, h_busy, h_smol, h_pert, h_canned = hosts
    entry = NsNode(h_entry.ns, tmp_path / "entry", *README_MESH, "--model", str(model_path),
                   "--no-default-model", "--threads", "1", *ENFORCE)
    nodes, names = [entry], {}
    load: subprocess.Popen[bytes] | None = None
    canned: FakeBackend | None = None
    try:
        entry.wait_listening()

        def join(host: Host, name: str, *args: str) -> NsNode:
            invite = entry.covey("invite", "--data-dir", str(entry.data_dir)).strip()
            node = NsNode(host.ns, tmp_path / name, "--join", invite, *README_MESH,
                          "--no-default-model", *args)
            nodes.append(node)
            names[node.node_id] = name
            return node

        busy = join(h_busy, "honest", "--model", str(model_path), "--threads", "1",
                    "--parallel", "4")
        smol_file = tmp_path / "smol" / f"{GEMMA}.gguf"
        smol_file.parent.mkdir()
        smol_file.write_bytes(chat_model_path.read_bytes())
        join(h_smol, "smollm2", "--model", str(smol_file), "--threads", "1")
        pert_file = tmp_path / "perturbed" / f"{GEMMA}.gguf"
        pert_file.parent.mkdir()
        changed = perturbed_gguf(model_path, pert_file)
        assert pert_file.stat().st_size == model_path.stat().st_size, changed
        join(h_pert, "perturbed", "--model", str(pert_file), "--threads", "1")
        canned = FakeBackend(GEMMA, tokens=12, token_delay=0.0, ns=h_canned.ns)
        join(h_canned, "canned", "--backend", canned.url)

        busy_url = busy.wait_listening()["url"]
        busy.wait_ready_model()
        load = subprocess.Popen(["ip", "netns", "exec", h_busy.ns, sys.executable, "-c", LOAD,
                                 busy_url, GEMMA], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def verdicts() -> dict[str, dict[str, Any]]:
            return {names[v["node_id"]]: v for v in entry.status()["verification"]["peers"]
                    if v["node_id"] in names and v["model"] == GEMMA}

        def settled() -> bool:
            v = verdicts()
            return (v.get("honest", {}).get("passes", 0) >= 3
                    and all(v.get(c, {}).get("status") == "suspect"
                            for c in ("smollm2", "perturbed", "canned")))

        try:
            # About half the audits ask for log-probabilities, the only ones that can pass;
            # on a loaded runner the busy honest peer gets few in 240 s (1 pass in 10 seen).
            wait_for(settled, 360, "audits to verify the honest peer and flag the cheats")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; verdicts: {json.dumps(verdicts(), indent=1)}") \
                from None
        v = verdicts()
        print(json.dumps({"perturbed": changed, "verdicts": v}, indent=1))
        assert v["honest"]["fails"] == 0 and v["honest"]["status"] == "verified", v["honest"]
        for cheat in ("smollm2", "perturbed", "canned"):
            assert v[cheat]["demoted_until"] is not None, v[cheat]
            assert v[cheat]["evidence"], v[cheat]

        # Demoted peers get no routes: the entry serves from itself or an honest peer.
        out = ns_run(h_entry.ns, sys.executable, "-c", ASK, entry.wait_listening()["url"],
                     GEMMA, timeout=120)
        assert out.returncode == 0, out.stderr
        for served_by, verified in json.loads(out.stdout):
            assert names.get(served_by, "entry") in ("entry", "honest"), served_by
            assert verified == "verified", (served_by, verified)
    except BaseException:
        for node in nodes:
            print(f"--- {node.ns} ---\n{node.log()[-3000:]}")
        raise
    finally:
        if load is not None:
            load.kill()
            load.wait()
        if canned is not None:
            canned.stop()
        for node in nodes:
            node.stop()

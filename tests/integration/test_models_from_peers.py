"""Issue 12: a model's file fetched from the peers that serve it, across three "machines"
(network namespaces), real nodes started with the README's flags.

    A: creates the mesh, serves `tinygem-q4_k_m` (Gemma 3 270M's file under another name:
       the embedded id would be assembled locally instead of fetched)
    B: joins with `--model tinygem-q4_k_m`: fetches the file from A, serves it, answers a chat
    C: joins the same way once B serves it: fetches from A and B at once
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from covey.engine.catalog import sha256_file
from tests.conftest import wait_for
from tests.netns import Host, NsNode, lan, ns_run, running, unsigned_post, unusable_reason

pytestmark = [pytest.mark.skipif(unusable_reason() is not None,
                                 reason=unusable_reason() or ""), pytest.mark.engine]

README_MESH = ["--mesh-host", "0.0.0.0"]
MODEL = "tinygem-q4_k_m"

CHAT = """
import json, sys, urllib.request
body = json.dumps({"model": sys.argv[2], "max_tokens": 8,
                   "messages": [{"role": "user", "content": "Say hi."}]}).encode()
req = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", data=body,
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    print(json.dumps({"by": r.headers["x-covey-served-by"].split()[0],
                      "text": json.loads(r.read())["choices"][0]["message"]["content"]}))
"""


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(3, subnet="10.83.0") as made:
        yield made


def _serving_a(host: Host, tmp_path: Path, model_path: Path) -> tuple[NsNode, Path, str]:
    """A creates the mesh and serves Gemma's file as MODEL: the node (started), the file,
    and its sha256."""
    source = tmp_path / "files" / f"{MODEL}.gguf"
    source.parent.mkdir()
    try:
        os.link(model_path, source)
    except OSError:
        shutil.copyfile(model_path, source)
    return (NsNode(host.ns, tmp_path / "a", *README_MESH, "--node-name", "a", "--model",
                   str(source)), source, sha256_file(source))


def _ready_here(node: NsNode) -> bool:
    return any(m["id"] == MODEL and m["state"] == "ready" and m.get("engine") == "llama.cpp"
               for m in node.status()["models"])


@pytest.mark.timeout(600)
def test_a_model_comes_from_the_peers_that_serve_it(hosts: list[Host], tmp_path: Path,
                                                    model_path: Path) -> None:
    ha, hb, hc = hosts
    a, _, want = _serving_a(ha, tmp_path, model_path)
    with running([a], tail=4000) as nodes:
        a.wait_listening()
        wait_for(lambda: _ready_here(a), 120, "A's model to be ready")
        invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
        b = NsNode(hb.ns, tmp_path / "b", "--join", invite, *README_MESH, "--node-name", "b",
                   "--model", MODEL)
        nodes.append(b)
        b.wait_listening()
        wait_for(lambda: _ready_here(b), 240, "B to fetch the model from A and serve it")
        fetched = b.status()["fetches"][MODEL]
        assert fetched["state"] == "fetched" and fetched["sha256"] == want, fetched
        assert set(fetched["bytes_from"]) == {"a"} and not fetched["dropped"], fetched
        assert sha256_file(b.data_dir / "models" / f"{MODEL}.gguf") == want
        assert not list((b.data_dir / "models").glob("*.part*"))

        def answered_by_b() -> bool:
            out = ns_run(hb.ns, sys.executable, "-c", CHAT, b.wait_listening()["url"], MODEL,
                         timeout=180)
            assert out.returncode == 0, out.stderr
            return bool(json.loads(out.stdout)["by"] == b.node_id)

        # B's router sends a chat where it expects the answer soonest: A (measured) may get
        # the first ones while B's own copy has no measurement yet; B's engine answers soon.
        wait_for(answered_by_b, 120, "B's own copy to answer a chat")

        # C fetches once B serves it too: from both at once.
        wait_for(lambda: any(m["id"] == MODEL and m["state"] == "ready" and m["sha256"] == want
                             for p in a.status()["peers"] if p["id"] == b.node_id
                             for m in p["models"]), 60, "A to hear that B serves the model")
        invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
        c = NsNode(hc.ns, tmp_path / "c", "--join", invite, *README_MESH, "--node-name", "c",
                   "--model", MODEL)
        nodes.append(c)
        c.wait_listening()

        def two_sources() -> dict[str, Any] | None:
            got = c.status()["fetches"].get(MODEL, {})
            return got if got.get("state") == "fetched" else None

        fetched = wait_for(two_sources, 240, "C to fetch the model")
        assert set(fetched["bytes_from"]) == {"a", "b"}, fetched
        assert all(n > 0 for n in fetched["bytes_from"].values()), fetched
        assert sha256_file(c.data_dir / "models" / f"{MODEL}.gguf") == want
        wait_for(lambda: _ready_here(c), 120, "C to serve the fetched model")

        # Not a member: refused before any work.
        port = a.wait_listening()["mesh_addresses"][0].rsplit(":", 1)[1]
        assert unsigned_post(hc.ns, f"https://{ha.address}:{port}/mesh/files/manifest",
                             json.dumps({"sha256": want})) == 403


@pytest.mark.timeout(420)
def test_a_member_sending_bad_chunks_is_dropped(hosts: list[Host], tmp_path: Path,
                                                model_path: Path) -> None:
    """A lying member (a real process in its own namespace, tests/liar_peer.py) claims the
    model under the honest sha256 and manifest and flips a byte in every chunk it sends: C
    drops it at its first chunk, says so, and completes the file from A."""
    ha, hl, hc = hosts
    a, source, want = _serving_a(ha, tmp_path, model_path)
    liar = None
    try:
        with running([a], tail=4000) as nodes:
            a.wait_listening()
            wait_for(lambda: _ready_here(a), 120, "A's model to be ready")
            invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
            liar = subprocess.Popen(["ip", "netns", "exec", hl.ns, sys.executable, "-m",
                                     "tests.liar_peer", str(tmp_path / "liar"), invite, hl.address,
                                     MODEL, str(source)], stdout=subprocess.PIPE, text=True)
            assert liar.stdout is not None and liar.stdout.readline().strip() == "ready"
            wait_for(lambda: any(p["name"] == "liar" and any(m["id"] == MODEL for m in p["models"])
                                 for p in a.status()["peers"]), 30, "A to hear the liar's claim")
            invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
            c = NsNode(hc.ns, tmp_path / "c", "--join", invite, *README_MESH, "--node-name", "c",
                       "--model", MODEL)
            nodes.append(c)
            c.wait_listening()
            fetched = wait_for(lambda: (f := c.status()["fetches"].get(MODEL, {})).get("state")
                               == "fetched" and f, 240, "C to fetch the model")
            assert "liar" in fetched["dropped"], fetched
            assert fetched["bytes_from"]["a"] == fetched["size"] - fetched["resumed_bytes"]
            assert sha256_file(c.data_dir / "models" / f"{MODEL}.gguf") == want
            assert "liar" in c.log() and "dropped" in c.log()
            wait_for(lambda: _ready_here(c), 120, "C to serve the fetched model")
    finally:
        if liar is not None:
            liar.terminate()
            liar.wait(10)
            if liar.stdout is not None:
                liar.stdout.close()

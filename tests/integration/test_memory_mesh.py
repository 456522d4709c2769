"""Issue 16: memory across two "machines" (network namespaces), real nodes started with the
README's flags, the real embedder (all-MiniLM-L6-v2 on llama.cpp) and the README's
`covey memory` commands.

    A: creates the mesh, stores memories in two projects; shares nothing, then `infra`
    B: joins, stores one memory of its own, searches with --mesh
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import seed_models, wait_for
from tests.netns import Host, NsNode, lan, ns_run, running, unsigned_post, unusable_reason

pytestmark = [pytest.mark.skipif(unusable_reason() is not None,
                                 reason=unusable_reason() or ""), pytest.mark.engine]

README_MESH = ["--mesh-host", "0.0.0.0"]
FACT = "The staging database runs on the host called tern, port 5433."
QUERY = "where is the staging db?"

# A member's signed call to a path that would write: there is none.
SIGNED_CALL = """
import asyncio, json, sys, time
from pathlib import Path
from covey.mesh import identity
from covey.mesh.client import signer_for
from covey.mesh.peer_transport import HttpPeerTransport, Peer
from covey.mesh.state import MeshState
from covey.mesh.transport import tls_identity
data, callee = Path(sys.argv[1]), Path(sys.argv[2])
state = MeshState.load(data, identity.load_or_create(data))
fingerprint = tls_identity(identity.load_or_create(callee).key, callee).fingerprint
async def main():
    async with HttpPeerTransport(signer_for(state)) as t:
        peer = Peer(fingerprint, (sys.argv[3],))
        async with await t.post(peer, sys.argv[4], json.dumps({"text": "x"}).encode(),
                                timeout_s=10) as r:
            print(r.status)
asyncio.run(main())
"""


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(2, subnet="10.81.0") as made:
        yield made


def search(node: NsNode, *extra: str) -> dict[str, Any]:
    return json.loads(node.covey("memory", "search", QUERY, "--mesh", "--json",
                                 "--data-dir", str(node.data_dir), *extra, timeout=120))


def source(answer: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(s for s in answer["sources"] if s["node_id"] == node_id)


@pytest.mark.timeout(420)
def test_memory_is_searchable_across_machines_only_when_shared(
        hosts: list[Host], tmp_path: Path, embed_model_path: Path) -> None:
    ha, hb = hosts
    dirs = {n: seed_models(tmp_path / n, embed_model_path) for n in "ab"}
    a = NsNode(ha.ns, dirs["a"], *README_MESH, "--no-default-model")
    with running([a]) as nodes:
        a.wait_listening()
        invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
        b = NsNode(hb.ns, dirs["b"], "--join", invite, *README_MESH, "--no-default-model")
        nodes.append(b)
        b.wait_listening()
        on_a = ["--data-dir", str(a.data_dir)]
        fact_id = a.covey("memory", "add", FACT, "--project", "infra", *on_a,
                          timeout=180).strip()
        a.covey("memory", "add", "Ana keeps the router password in the blue notebook.",
                "--project", "home", *on_a)
        b.covey("memory", "add", "B's own note: lunch is at noon.", "--data-dir",
                str(b.data_dir), timeout=180)
        # Found on A itself, by meaning, with the embedder started on first use.
        local = json.loads(a.covey("memory", "search", QUERY, "--json", *on_a))
        assert local["data"][0]["id"] == fact_id, local

        # A shares nothing: B's mesh search gets nothing of A's, and is told why.
        wait_for(lambda: any(p["id"] == a.node_id for p in b.status()["peers"]), 60,
                 "B to see A")
        answer = search(b)
        assert all(r["node_id"] != a.node_id for r in answer["data"]), answer
        assert a.node_id not in {s["node_id"] for s in answer["sources"]} or \
            source(answer, a.node_id)["status"] == "refused"

        # A opts in for `infra` (a restart with the README's flag).
        a.stop()
        nodes.remove(a)
        a = NsNode(ha.ns, dirs["a"], *README_MESH, "--no-default-model",
                   "--share-memory", "infra")
        nodes.append(a)
        a.wait_listening()

        def found_from_b() -> dict[str, Any] | None:
            got = search(b)
            return got if any(r["node_id"] == a.node_id for r in got["data"]) else None

        answer = wait_for(found_from_b, 120, "B to find A's shared memory")
        top = answer["data"][0]
        assert (top["id"], top["project"], top["node_id"]) == (fact_id, "infra", a.node_id)
        assert source(answer, a.node_id)["status"] == "answered"
        assert "source" not in top or top["node_id"] == b.node_id  # only result fields cross
        # A project A does not share: refused (403), and nothing of it comes back.
        other = search(b, "--project", "home")
        assert source(other, a.node_id)["status"] == "refused"
        assert "project_not_shared" in source(other, a.node_id)["reason"]
        assert not any(r["node_id"] == a.node_id for r in other["data"])

        # Not a member: refused before any work. A member writing through the mesh: no
        # such endpoint.
        mesh_url = f"https://{ha.address}:{a.wait_listening()['mesh_addresses'][0].split(':')[-1]}"
        assert unsigned_post(hb.ns, mesh_url + "/mesh/memory/search", '{"k": 1}') == 403
        address = f"{ha.address}:{mesh_url.rsplit(':', 1)[1]}"
        for path in ("/mesh/memory", "/mesh/v1/memory"):
            out = ns_run(hb.ns, sys.executable, "-c", SIGNED_CALL, str(b.data_dir), str(a.data_dir),
                         address, path)
            assert out.stdout.strip() in ("404", "405"), (path, out.stdout, out.stderr)
        assert len(json.loads(a.covey("memory", "ls", "--json", *on_a))["data"]) == 2

        # Export from A, import on B: JSON lines; a bad line is named and skipped, the rest
        # land (exit code 2 says some were skipped).
        exported = tmp_path / "a.jsonl"
        a.covey("memory", "export", "-o", str(exported), *on_a)
        lines = exported.read_text().splitlines()
        assert sorted(json.loads(x)["project"] for x in lines) == ["home", "infra"]
        exported.write_text("\n".join([*lines, "{not json", json.dumps({"text": ""})]) + "\n")
        out = ns_run(hb.ns, sys.executable, "-m", "covey", "memory", "import", str(exported),
                     "--data-dir", str(b.data_dir), timeout=120)
        assert out.returncode == 2, out.stderr
        assert "line 3: not JSON" in out.stderr and "line 4" in out.stderr, out.stderr
        listed = json.loads(b.covey("memory", "ls", "--json", "--data-dir", str(b.data_dir)))
        assert listed["memory"]["count"] == 3

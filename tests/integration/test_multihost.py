"""Three "machines" (network namespaces on one bridge) join exactly as the README says:

    machine 1:  covey serve --mesh-host 0.0.0.0            (creates the mesh, serves a model)
                covey invite
    machine 2:  covey serve --join 'covey-invite:…' --mesh-host 0.0.0.0
    machine 3:  covey invite (on machine 2), then the same on machine 3

plus only the test-speed flags (conftest FAST), never `--advertise`. Machine 1 also has an
interface no other machine can reach (10.99.0.1 on dummy0, a veth kept inside), and it
sorts first in its advertised addresses: joiners and peers must fall back to its LAN
address. A client on machine 3 (the official `openai` client, against 127.0.0.1 inside
machine 3) is served by machine 1's model, streamed and whole.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.netns import Host, NsNode, ip, lan, ns_run, unusable_reason

pytestmark = pytest.mark.skipif(unusable_reason() is not None,
                                reason=unusable_reason() or "")

README_MESH = ["--mesh-host", "0.0.0.0"]

CLIENT = """
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
messages = [{"role": "user", "content": "Say hello."}]
whole = client.chat.completions.with_raw_response.create(
    model=sys.argv[2], messages=messages, max_tokens=8, temperature=0)
out = {"whole_by": whole.headers.get("x-covey-served-by"),
       "whole_text": whole.parse().choices[0].message.content}
with client.chat.completions.with_streaming_response.create(
        model=sys.argv[2], messages=messages, max_tokens=8, temperature=0, stream=True) as r:
    out["stream_by"] = r.headers.get("x-covey-served-by")
    out["stream_text"] = "".join(c.choices[0].delta.content or ""
                                 for c in r.parse() if c.choices)
client.close()
print(json.dumps(out))
"""


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(3) as made:
        # An address on machine 1 that nobody else can reach, on an interface that sorts
        # before eth0. A veth pair kept inside the namespace (kernels without the `dummy`
        # module have veth); only dummy0 gets an address.
        ns = made[0].ns
        ip("-n", ns, "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1")
        ip("-n", ns, "addr", "add", "10.99.0.1/24", "dev", "dummy0")
        ip("-n", ns, "link", "set", "dummy0", "up")
        ip("-n", ns, "link", "set", "dummy1", "up")
        yield made


def test_three_machines_join_and_serve(hosts: list[Host], tmp_path: Path,
                                       model_path: Path) -> None:
    ha, hb, hc = hosts
    a = NsNode(ha.ns, tmp_path / "a", *README_MESH, "--model", str(model_path))
    nodes = [a]
    try:
        mesh = a.wait_listening()["mesh_addresses"]
        port = mesh[0].rsplit(":", 1)[1]
        # Every usable address of machine 1, the unreachable one first; never loopback.
        assert mesh == [f"10.99.0.1:{port}", f"{ha.address}:{port}"], mesh
        assert a.status()["mesh"]["addresses"] == mesh

        # B joins with an invite minted on A (the README's `covey invite`).
        invite_a = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
        b = NsNode(hb.ns, tmp_path / "b", "--join", invite_a, *README_MESH,
                   "--no-default-model")
        nodes.append(b)
        b.wait_listening()
        wait_for(lambda: a.node_id in {p["id"] for p in b.status()["peers"]}, 30,
                 "b to learn a's record")

        # C joins with an invite minted on B, which is not the creator.
        invite_b = b.covey("invite", "--data-dir", str(b.data_dir)).strip()
        assert invite_b.startswith("covey-invite:")
        c = NsNode(hc.ns, tmp_path / "c", "--join", invite_b, *README_MESH,
                   "--no-default-model")
        nodes.append(c)
        c.wait_listening()
        everyone = {a.node_id, b.node_id}
        wait_for(lambda: {p["id"] for p in c.status()["peers"]} == everyone, 30,
                 "c to learn a and b")

        model = a.wait_ready_model()
        wait_for(lambda: _usable(c, a.node_id), 90, "c's checks of a to pass")
        out = ns_run(hc.ns, sys.executable, "-c", CLIENT, c.wait_listening()["url"], model,
                     timeout=120)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["whole_by"].startswith(a.node_id), answer
        assert answer["stream_by"].startswith(a.node_id), answer
        assert answer["whole_text"] and answer["stream_text"], answer
    except BaseException:
        for node in nodes:
            print(f"--- {node.ns} ---\n{node.log()[-4000:]}")
        raise
    finally:
        for node in nodes:
            node.stop()


def _usable(node: NsNode, peer_id: str) -> bool:
    peer = next((p for p in node.status()["peers"] if p["id"] == peer_id), None)
    return bool(peer and peer["health"] and peer["health"]["ok"]
                and any(m["state"] == "ready" for m in peer["models"]))

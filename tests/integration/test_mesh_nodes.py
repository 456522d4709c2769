"""Several real nodes on 127.0.0.1 joined into one mesh by invites: any node answers for the
model one of them serves; a dead server gives a named 503 quickly; strangers are refused."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from http.client import HTTPSConnection
from pathlib import Path

import openai
import pytest

from covey.metrics.server_timing import parse as parse_server_timing
from tests.conftest import NodeProcess, http, mesh_invite, wait_for

pytestmark = pytest.mark.engine

MODEL = "gemma-3-270m-q4_k_m"


def _peers(node: NodeProcess) -> set[str]:
    return {p["id"] for p in node.status()["peers"]}


def test_three_nodes_one_server(start_node: Callable[..., NodeProcess], model_path: Path,
                                openai_client: Callable[[str], openai.OpenAI]) -> None:
    server = start_node("--model", str(model_path), "--no-baseline", name="server")
    server.wait_listening()
    server.wait_ready()
    entries = []
    for name in ("b", "c"):
        node = start_node("--no-default-model", "--join", mesh_invite(server), name=name)
        node.wait_listening()
        entries.append(node)
    ids = {n.status()["node"]["id"] for n in (server, *entries)}
    for node in (server, *entries):
        wait_for(lambda node=node: _peers(node) == ids - {node.status()["node"]["id"]}, 20,
                 "every node to see the other two")
    server_id = server.status()["node"]["id"]
    for node in entries:
        client = openai_client(node.url)
        listed = {m.id: m for m in client.models.list()}
        assert MODEL in listed
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-covey-served-by"].startswith(server_id)
        assert raw.headers["x-covey-route"].startswith(f"peer {server_id}")
        assert raw.parse().model == MODEL
        timing = parse_server_timing(raw.headers["server-timing"])
        assert set(timing) == {"route", "network", "engine"}, timing
        assert timing["engine"] > 0 and timing["network"] > 0
        def streamed(client: openai.OpenAI = client) -> str:
            return "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(
                               model=MODEL, max_tokens=6, stream=True,
                               messages=[{"role": "user", "content": "hi"}]) if c.choices)

        def opened(node: NodeProcess = node) -> int:
            return sum(p["connections_opened"] or 0 for p in node.status()["peers"]
                       if p["id"] == server_id)

        assert streamed()
        # Later streams go on the connection the first one left kept (mesh/peer_stream.py):
        # no TLS handshake per relayed prompt.
        before = opened()
        for _ in range(3):
            assert streamed()
        assert opened() == before, "a new connection per relayed stream"

    # The server dies: entries answer with a named 503 within seconds, not a hang.
    server.proc.kill()
    server.proc.wait()
    entry = entries[0]
    started = time.monotonic()
    code, headers, body = http("POST", entry.url + "/v1/chat/completions",
                               {"model": MODEL, "max_tokens": 2,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert code == 503, body
    assert time.monotonic() - started < 15
    assert int(headers["retry-after"]) >= 1
    assert MODEL in body["error"]["message"]

    # Restarted (new ports: --mesh-port 0), it finds the mesh through the peers it
    # remembered, and the entries serve through it again.
    again = NodeProcess(server.data_dir, server.args)
    try:
        again.wait_listening()

        def served() -> bool:
            code, headers, _ = http("POST", entry.url + "/v1/chat/completions",
                                    {"model": MODEL, "max_tokens": 2,
                                     "messages": [{"role": "user", "content": "hi"}]})
            return code == 200 and headers["x-covey-served-by"].startswith(server_id)

        wait_for(served, 90, "the restarted server to serve through the entry", interval=0.5)
    finally:
        again.stop()


def test_strangers_and_spent_invites_are_refused(start_node: Callable[..., NodeProcess],
                                                 tmp_path: Path) -> None:
    a = start_node("--no-default-model", name="a")
    a.wait_listening()
    token = mesh_invite(a)
    b = start_node("--no-default-model", "--join", token, name="b")
    b.wait_listening()
    wait_for(lambda: len(_peers(a)) == 1, 20, "a to see b")

    # The same invite again: refused, and the node says why and exits.
    r = subprocess.run([sys.executable, "-m", "covey", "serve", "--data-dir",
                        str(tmp_path / "again"), "--port", "0", "--mesh-port", "0",
                        "--no-default-model", "--join", token],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "already used" in r.stderr
    r = subprocess.run([sys.executable, "-m", "covey", "serve", "--data-dir",
                        str(tmp_path / "late"), "--port", "0", "--mesh-port", "0",
                        "--no-default-model", "--join", mesh_invite(a, ttl=-1)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "expired" in r.stderr

    # Without a member's signature the mesh listener serves nothing (TLS alone is no pass).
    host, port = json.loads((a.data_dir / "node.json").read_text())["mesh"].split(":")
    conn = HTTPSConnection(host, int(port), timeout=10,
                           context=ssl._create_unverified_context())
    try:
        for path in ("/mesh/gossip", "/mesh/v1/chat/completions"):
            conn.request("POST", path, body=b"{}", headers={"X-Forwarded-For": "127.0.0.1"})
            r = conn.getresponse()
            answer = json.loads(r.read())
            assert r.status == 403 and answer["error"]["code"] == "unsigned", answer
    finally:
        conn.close()


def _mesh_of(n: int, start_node: Callable[..., NodeProcess]) -> list[NodeProcess]:
    first = start_node("--no-default-model", name="n0")
    first.wait_listening()
    nodes = [first]
    for i in range(1, n):
        node = start_node("--no-default-model", "--join", mesh_invite(first), name=f"n{i}")
        node.wait_listening()
        nodes.append(node)
    for node in nodes:
        wait_for(lambda node=node: len(_peers(node)) == n - 1, 20, "the mesh to converge")
    return nodes


def test_revoked_node_is_refused_everywhere(start_node: Callable[..., NodeProcess]) -> None:
    authority, member, revoked = _mesh_of(3, start_node)
    revoked_id = revoked.status()["node"]["id"]
    r = subprocess.run([sys.executable, "-m", "covey", "revoke", revoked_id, "--data-dir",
                        str(authority.data_dir)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for node in (authority, member):
        wait_for(lambda node=node: revoked_id not in _peers(node), 10,
                 "the revoked node to vanish from every member")
    # The revoked node learns it from the members that now refuse it.
    problem = wait_for(lambda: revoked.status()["mesh"]["problem"], 10,
                       "the revoked node to report its revocation")
    assert "revoked" in problem and "new invite" in problem
    time.sleep(1.5)  # three more gossip rounds: it must stay gone, not come back
    assert revoked_id not in _peers(authority) and revoked_id not in _peers(member)


def test_copied_data_dir_is_detected(start_node: Callable[..., NodeProcess],
                                     tmp_path: Path) -> None:
    _, second = _mesh_of(2, start_node)
    second.stop()
    clone_dir = tmp_path / "clone"
    shutil.copytree(second.data_dir, clone_dir)  # the mistake: a copied data dir
    copies = [NodeProcess(second.data_dir, second.args), NodeProcess(clone_dir, second.args)]
    try:
        for node in copies:
            node.wait_listening()

        def reported() -> str | None:
            problems = [n.status()["mesh"]["problem"] for n in copies]
            return next((p for p in problems if p), None)

        problem = wait_for(reported, 20, "a copy to report the shared key")
        assert "another node uses this node's key" in problem and "node.key" in problem
    finally:
        for node in copies:
            node.stop()


"""Data-plane health checks with injected faults, real node processes on 127.0.0.1: each
fault is named at its layer, with a fix, by `/api/doctor`, `covey doctor` and /api/status.

Servers here run without models unless the fault needs an engine: the layers below 10 do not
care what a node serves, and an engine would only slow the test down.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import FakeBackend, NodeProcess, http, mesh_invite, wait_for

MODEL = "gemma-3-270m-q4_k_m"


def _pair(start_node: Callable[..., NodeProcess], *server_args: str,
          entry_args: tuple[str, ...] = ()) -> tuple[NodeProcess, NodeProcess, str]:
    """(server, entry, server id): the entry joined the server's mesh and sees it."""
    server = start_node("--no-default-model", *server_args, name="server")
    server.wait_listening()
    entry = start_node("--no-default-model", "--health-timeout-s", "1", *entry_args,
                       "--join", mesh_invite(server), name="entry")
    entry.wait_listening()
    server_id = server.status()["node"]["id"]
    wait_for(lambda: server_id in {p["id"] for p in entry.status()["peers"]}, 20,
             "the entry to see the server")
    return server, entry, server_id


def _doctor(entry: NodeProcess, peer: str | None = None, token: bool = False
            ) -> dict[str, Any]:
    query = "&".join(([f"peer={peer}"] if peer else []) + ([] if token else ["token=0"]))
    code, _, body = http("GET", f"{entry.url}/api/doctor?{query}")
    assert code == 200, body
    return body  # type: ignore[no-any-return]


def _peer_failure(entry: NodeProcess, peer_id: str) -> dict[str, Any] | None:
    peer = next(p for p in _doctor(entry)["peers"] if p["id"] == peer_id)
    return peer["first_failure"]  # type: ignore[no-any-return]


def _wait_failure(entry: NodeProcess, peer_id: str, layer: int, what: str,
                  timeout: float = 20) -> dict[str, Any]:
    return wait_for(lambda: (f := _peer_failure(entry, peer_id)) and f["layer"] == layer and f,
                    timeout, what, interval=0.3)


def test_a_healthy_path_passes_every_layer(start_node: Callable[..., NodeProcess],
                                           model_path: Path) -> None:
    server, entry, server_id = _pair(start_node, "--model", str(model_path), "--no-baseline")
    server.wait_ready()
    wait_for(lambda: entry.status()["peers"][0]["health"]["ok"]
             and entry.status()["peers"][0]["models"][0]["state"] == "ready", 60,
             "the entry to see the server's model ready and its path pass")
    report = _doctor(entry, token=True)
    assert report["ok"], report
    peer = report["peers"][0]
    assert [layer["ok"] for layer in peer["layers"]] == [True] * 7  # layers 5–11
    assert "first token" in peer["layers"][-1]["detail"]
    r = subprocess.run([sys.executable, "-m", "covey", "doctor", "--url", entry.url,
                        server_id[:8]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all layers pass" in r.stdout and "one token back" in r.stdout


def test_engine_killed_on_the_peer(start_node: Callable[..., NodeProcess],
                                   model_path: Path) -> None:
    # A long restart backoff holds the engine down long enough to look at.
    server, entry, server_id = _pair(start_node, "--model", str(model_path), "--no-baseline",
                                     "--restart-backoff-s", "60")
    server.wait_ready()
    for pid in server.engine_pids():
        psutil.Process(pid).kill()
    failure = _wait_failure(entry, server_id, 10, "layer 10 to name the engine")
    assert MODEL in failure["detail"] and "covey status" in failure["fix"]
    # Once gossip says so too, the entry sends no prompt there; the 503 says why.
    wait_for(lambda: entry.status()["peers"][0]["models"][0]["state"] != "ready", 10,
             "the server's record to show the engine down")
    code, _, body = http("POST", entry.url + "/v1/chat/completions", {
        "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert code == 503 and "covey doctor" in body["error"]["message"], body


def test_peer_process_killed(start_node: Callable[..., NodeProcess]) -> None:
    """A dead peer's record is still fresh for a while, so a connect is tried and refused
    (layer 6); once it is STALE_ROUNDS (nine) gossip rounds old, layer 5 names the silence
    instead. At the tests' 0.5 s rounds that came a few seconds after the kill, before
    `covey doctor` had run once on a busy CI machine: 2 s rounds leave 18 s for the checks
    below."""
    slow_gossip = ("--gossip-interval-s", "2")
    server, entry, server_id = _pair(start_node, *slow_gossip, entry_args=slow_gossip)
    server.proc.kill()
    server.proc.wait()
    failure = _wait_failure(entry, server_id, 6, "connection refused at layer 6")
    assert "connection refused" in failure["detail"] and "covey serve" in failure["fix"]
    # The monitor's cached view says the same on /api/status.
    wait_for(lambda: (h := entry.status()["peers"][0]["health"])["ok"] is False
             and h["first_failure"]["layer"] == 6, 10, "/api/status to show layer 6")
    r = subprocess.run([sys.executable, "-m", "covey", "doctor", "--url", entry.url,
                        "--no-token"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "connection refused" in r.stdout, r.stdout + r.stderr


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose accept queue is full: connection attempts get no answer at all, as
    behind a firewall that drops packets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    yield port
    for c in fillers:
        c.close()
    listener.close()


def test_silent_drop_is_named_a_firewall(start_node: Callable[..., NodeProcess],
                                         black_hole: int) -> None:
    # Restarted to advertise an address where packets vanish: its own gossip still reaches
    # the entry, so the roster says "alive" while the data plane is dead.
    server, entry, server_id = _pair(start_node)
    mesh_port = json.loads((server.data_dir / "node.json").read_text())["mesh"].rsplit(":")[1]
    server.stop()
    start_node("--no-default-model", "--mesh-port", mesh_port, "--advertise",
               f"127.0.0.1:{black_hole}", data_dir=server.data_dir).wait_listening()
    failure = _wait_failure(entry, server_id, 6, "a connect timeout at layer 6")
    assert "timed out" in failure["detail"] and "gossiped" in failure["detail"]
    assert "firewall" in failure["fix"] and str(black_hole) in failure["fix"]


def test_a_revoked_node_is_told_it_is_not_a_member(
        start_node: Callable[..., NodeProcess]) -> None:
    """Layer 8 names a refusal of the signed probe. (Doctor never probes a node outside the
    roster: there would be no key to pin. So the refused node is this one, revoked.)"""
    server, entry, server_id = _pair(start_node)
    entry_id = entry.status()["node"]["id"]
    r = subprocess.run([sys.executable, "-m", "covey", "revoke", entry_id, "--data-dir",
                        str(server.data_dir)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    failure = _wait_failure(entry, server_id, 8, "the server to refuse the revoked entry")
    assert "not_member" in failure["detail"], failure
    assert "revoked" in failure["fix"]


# Was a hole: `?peer=HOST:PORT` probed any address, unpinned (TCP, TLS, signed posts), on
# behalf of whoever could call the API. Only members are probed now; anything else is a 404
# naming the known peers, and nothing is sent to the address.
def test_doctor_probes_only_members(start_node: Callable[..., NodeProcess]) -> None:
    server, entry, server_id = _pair(start_node)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        code, _, body = http("GET", f"{entry.url}/api/doctor?peer={address}&token=0")
        assert code == 404, body
        assert body["error"]["param"] == "peer"
        assert f"known peers: {server.status()['node']['name']} ({server_id[:12]})" in \
            body["error"]["message"]
        r = subprocess.run([sys.executable, "-m", "covey", "doctor", "--url", entry.url,
                            address], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "known peers" in r.stderr, r.stdout + r.stderr
        with pytest.raises(BlockingIOError):  # the doctor answered without connecting here
            listener.accept()
    assert _doctor(entry, peer=server_id[:6])["peers"][0]["id"] == server_id
    name = server.status()["node"]["name"]
    assert _doctor(entry, peer=name)["peers"][0]["id"] == server_id


class StallingProxy:
    """tests/stalling_proxy.py in a process of its own: forwards TCP both ways, but stops
    forwarding a connection's uploads after `limit` bytes (an MTU black hole)."""

    def __init__(self, target_port: int, limit: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.stalling_proxy", "--target", str(target_port),
             "--limit", str(limit)], stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).parents[2])
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("PROXY-LISTENING "), line
        self.port = int(line.split()[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


def test_large_probe_black_hole_is_named_mtu(start_node: Callable[..., NodeProcess]) -> None:
    with socket.socket() as s:  # a free port for the mesh listener, known before it starts
        s.bind(("127.0.0.1", 0))
        mesh_port = s.getsockname()[1]
    proxy = StallingProxy(mesh_port, limit=32 * 1024)
    try:
        # Peers reach the server only through the proxy; the invite carries its address.
        _, entry, server_id = _pair(start_node, "--mesh-port", str(mesh_port),
                                    "--advertise", f"127.0.0.1:{proxy.port}")
        failure = _wait_failure(entry, server_id, 9, "the large probe to fail at layer 9")
        assert "KiB probe" in failure["detail"] and "small" in failure["detail"]
        assert "MTU" in failure["fix"]
    finally:
        proxy.stop()


def test_stale_roster_entry(start_node: Callable[..., NodeProcess]) -> None:
    server, entry, server_id = _pair(start_node)
    server.proc.send_signal(signal.SIGSTOP)  # alive but silent: its record stops refreshing
    try:
        failure = _wait_failure(entry, server_id, 5, "layer 5 to call the record stale")
        assert "old" in failure["detail"] and "stopped gossiping" in failure["fix"]
    finally:
        server.proc.send_signal(signal.SIGCONT)


def test_a_failed_token_probe_is_retried_and_the_model_comes_back(
        start_node: Callable[..., NodeProcess],
        fake_backend: Callable[..., FakeBackend]) -> None:
    # The server's backend answers HTTP 500 to its first three chats: the first request's
    # one-token probe and the request itself, then the first re-probe (two token failures in
    # a row take the model out). It works from then on; the server gossips all along, so its
    # record never expires. Before health/state.py one failed probe took the model out until
    # the record expired, and nothing probed it again: every request got a 503 from then on.
    backend = fake_backend(models="fake-model", tokens=4, token_delay=0.01, fail_first=3)
    _, entry, server_id = _pair(start_node, "--no-baseline", "--backend", backend.url)

    def peer_health() -> dict[str, Any]:
        return entry.status()["peers"][0]["health"]  # type: ignore[no-any-return]

    wait_for(lambda: peer_health()["ok"] and entry.status()["peers"][0]["models"]
             and entry.status()["peers"][0]["models"][0]["state"] == "ready", 30,
             "the entry to prove the server's path and see its model ready")
    chat = {"model": "fake-model", "max_tokens": 2, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    code, _, body = http("POST", entry.url + "/v1/chat/completions", chat)
    assert code == 503, body
    wait_for(lambda: (f := peer_health()["first_failure"]) and f["layer"] == 11, 20,
             "the failed re-probe to take the model out (layer 11)", interval=0.2)
    wait_for(lambda: peer_health()["ok"], 30, "a later re-probe to bring the model back")
    code, headers, body = http("POST", entry.url + "/v1/chat/completions", chat)
    assert code == 200 and body.rstrip().endswith("data: [DONE]"), body
    assert headers["x-covey-served-by"].startswith(server_id), headers

"""Connections that scale with peers: an idle mesh of five nodes keeps at most two
connections per pair (one kept connection each way), opens no new ones round after round
(every new connection is a TLS handshake), and its open files stay flat.

Was a hole: gossip and probes built a new `aiohttp.Fingerprint` per request, which never
matched a pooled connection, so every exchange paid a handshake and left an idle socket.

Loopback, not namespaces: this is about the pool, not about crossing machines. Each node's
client-side sockets are read with psutil; a pair's connections are counted from the calling
side (its remote port is the other node's mesh port), so each is counted once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import psutil

from tests.conftest import NodeProcess, mesh_invite, wait_for

NODES = 5
# 16 gossip and health rounds at the test pace (0.5 s); COVEY_IDLE_WINDOW_S=600 for a soak.
WINDOW_S = float(os.environ.get("COVEY_IDLE_WINDOW_S", "8"))


def _mesh_port(node: NodeProcess) -> int:
    return int(json.loads((node.data_dir / "node.json").read_text())["mesh"].rsplit(":", 1)[1])


def _calls(node: NodeProcess, ports: dict[int, int]) -> dict[int, int]:
    """Established connections `node` opened, by the index of the node they go to."""
    out: dict[int, int] = {}
    for c in psutil.Process(node.proc.pid).net_connections(kind="tcp"):
        if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port in ports:
            j = ports[c.raddr.port]
            out[j] = out.get(j, 0) + 1
    return out


def _opened(node: NodeProcess) -> int:
    return sum(p["connections_opened"] or 0 for p in node.status()["peers"])


def test_an_idle_mesh_keeps_its_connections(start_node: Callable[..., NodeProcess]) -> None:
    first = start_node("--no-default-model", name="n0")
    first.wait_listening()
    nodes = [first]
    for i in range(1, NODES):
        node = start_node("--no-default-model", "--join", mesh_invite(first), name=f"n{i}")
        node.wait_listening()
        nodes.append(node)

    def settled() -> bool:
        return all(len(n.status()["peers"]) == NODES - 1
                   and all(p["health"]["ok"] for p in n.status()["peers"]) for n in nodes)

    wait_for(settled, 60, "every node to see and prove every other", interval=0.5)
    ports = {_mesh_port(n): i for i, n in enumerate(nodes)}
    opened_before = [_opened(n) for n in nodes]
    files_before = [psutil.Process(n.proc.pid).num_fds() for n in nodes]
    worst_pair = 0
    # An observation window, not a synchronisation: steady state is what is measured.
    deadline = time.monotonic() + WINDOW_S
    while time.monotonic() < deadline:
        calls = [_calls(n, ports) for n in nodes]
        for i in range(NODES):
            for j in range(i + 1, NODES):
                worst_pair = max(worst_pair, calls[i].get(j, 0) + calls[j].get(i, 0))
        time.sleep(0.5)
    opened_after = [_opened(n) for n in nodes]
    files_after = [psutil.Process(n.proc.pid).num_fds() for n in nodes]
    print(f"\nidle mesh of {NODES}: most connections per pair {worst_pair}; connections "
          f"opened during {WINDOW_S:.0f}s: "
          f"{[b - a for a, b in zip(opened_before, opened_after, strict=True)]}; open files "
          f"{files_before} -> {files_after}")
    assert worst_pair <= 2, f"{worst_pair} connections between one pair"
    assert opened_after == opened_before, "new connections (TLS handshakes) while idle"
    for before, after in zip(files_before, files_after, strict=True):
        assert after <= before + 2, (files_before, files_after)

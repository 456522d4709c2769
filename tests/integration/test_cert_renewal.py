"""Member certificates renew themselves: with a 6 s validity, a creator and a member are
still each other's members, and still gossiping, after four times that."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from covey.mesh.sealed import b64d
from tests.conftest import NodeProcess, mesh_invite, wait_for

VALIDITY_S = 6.0


def _cert_times(data_dir: Path) -> tuple[float, float]:
    """(issued_at, expires_at) of the node's saved certificate."""
    body = json.loads(b64d(json.loads((data_dir / "member.cert").read_bytes())["body"]))
    return float(body["issued_at"]), float(body["expires_at"])


def _fresh_peer(node: NodeProcess, peer_id: str) -> bool:
    peer = next((p for p in node.status()["peers"] if p["id"] == peer_id), None)
    return peer is not None and time.time() - peer["last_seen"] < 3


def test_certificates_renew_before_they_expire(start_node: Callable[..., NodeProcess]
                                               ) -> None:
    flags = ["--no-default-model", "--cert-validity-s", str(VALIDITY_S)]
    a = start_node(*flags, name="a")
    a.wait_listening()
    b = start_node(*flags, "--join", mesh_invite(a), name="b")
    b.wait_listening()
    a_id = json.loads((a.data_dir / "node.json").read_text())["node_id"]
    b_id = json.loads((b.data_dir / "node.json").read_text())["node_id"]
    started = time.time()
    # Each certificate is replaced again and again (every ~4 s, a third before expiry) ...
    wait_for(lambda: min(_cert_times(a.data_dir)[0], _cert_times(b.data_dir)[0])
             > started + 3 * VALIDITY_S, 60, "both certificates to be renewed past 4× "
             "their validity", interval=0.5)
    assert time.time() - started >= 3 * VALIDITY_S
    for node in (a, b):
        issued, expires = _cert_times(node.data_dir)
        assert expires - issued == VALIDITY_S and expires > time.time()
    # ... and the two still accept each other's fresh records.
    wait_for(lambda: _fresh_peer(a, b_id) and _fresh_peer(b, a_id), 10,
             "both nodes to hold a fresh record of the other")
    assert "certificate renewed" in b.log()
    assert "not a member" not in a.log() + b.log()

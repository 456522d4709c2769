"""mDNS discovery between two network namespaces joined by a veth pair: a member that lost
every address it knew (no invite, no remembered peers) finds its mesh on the LAN.

Each node runs inside its own namespace (`ip netns exec`), so its mesh traffic and its
multicast really cross the veth link; the test reads their status from inside the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for network namespaces")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def lan() -> Iterator[tuple[str, str]]:
    """Two namespaces, 10.77.0.1 and 10.77.0.2, on one veth link (multicast-capable)."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"covey-a-{tag}", f"covey-b-{tag}"
    for ns in (a, b):
        _ip("netns", "add", ns)
    try:
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for ns, dev, addr in ((a, f"va{tag}", "10.77.0.1/24"), (b, f"vb{tag}", "10.77.0.2/24")):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


class NsNode:
    """`covey serve` inside a namespace."""

    def __init__(self, ns: str, data_dir: Path, *args: str) -> None:
        self.ns, self.data_dir = ns, data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = (data_dir / "node-test.log").open("ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "covey", "serve", "--data-dir",
             str(data_dir), *FAST, "--no-default-model", *args],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL)

    def runtime(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.data_dir / "node.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        runtime = self.runtime()
        assert runtime, "node is not listening"
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c",
             "import sys, urllib.request; "
             "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
             runtime["url"] + "/api/status"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def log(self) -> str:
        return (self.data_dir / "node-test.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self._log.close()


def test_members_find_each_other_by_mdns(lan: tuple[str, str], tmp_path: Path) -> None:
    ns_a, ns_b = lan
    a = NsNode(ns_a, tmp_path / "a", "--mesh-host", "10.77.0.1")
    nodes = [a]
    try:
        wait_for(a.runtime, 60, "node a to listen")
        invite = subprocess.run([sys.executable, "-m", "covey", "invite", "--data-dir",
                                 str(a.data_dir)], capture_output=True, text=True, timeout=30)
        assert invite.returncode == 0, invite.stderr
        # b joins by invite once, then forgets every address it knew.
        b = NsNode(ns_b, tmp_path / "b", "--mesh-host", "10.77.0.2", "--no-mdns",
                   "--join", invite.stdout.strip())
        nodes.append(b)
        wait_for(lambda: b.runtime() and len(b.status()["peers"]) == 1, 30, "b to join a")
        b.stop()
        (b.data_dir / "peers.json").unlink()

        # Restarted without --join or remembered peers, on a new mesh port (a's memory of
        # b's old address is useless): only mDNS can bring them together again.
        b = NsNode(ns_b, tmp_path / "b", "--mesh-host", "10.77.0.2")
        nodes.append(b)
        a_id = wait_for(a.runtime, 10, "a's runtime file")["node_id"]
        wait_for(lambda: b.runtime() and [p["id"] for p in b.status()["peers"]] == [a_id],
                 30, "b to find a by mDNS", interval=0.5)
        assert "found member at 10.77.0.1:" in b.log()
        b_id = b.runtime()["node_id"]  # type: ignore[index]
        wait_for(lambda: b_id in {p["id"] for p in a.status()["peers"]}, 20,
                 "a to learn b's new record")
    finally:
        for node in nodes:
            node.stop()

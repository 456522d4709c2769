"""Separate "machines" for tests: Linux network namespaces on one bridge, and `covey`
processes running inside them.

Each namespace has its own interfaces, addresses and loopback, so a node inside one sees
what a node on its own machine would: a wildcard bind finds only that namespace's
addresses, and 127.0.0.1 reaches only itself. Nothing here routes outside the machine.
Needs root and iproute2 (`usable()` says why not).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import FAST, wait_for


def unusable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`) for network namespaces"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def ns_run(ns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `cmd` inside namespace `ns`; its output as text."""
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=timeout)


# A POST with no member signature (anyone on the LAN): prints the HTTP status it got.
_UNSIGNED = """
import ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(),
                             headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=10, context=ctx)
    print(200)
except urllib.error.HTTPError as e:
    print(e.code)
"""


def unsigned_post(ns: str, url: str, body: str) -> int:
    """The status a stranger in namespace `ns` gets for POSTing `body` to a mesh listener."""
    out = ns_run(ns, sys.executable, "-c", _UNSIGNED, url, body)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@dataclass(frozen=True)
class Host:
    ns: str  # the namespace name
    address: str  # its address on the LAN (on its eth0)


@contextmanager
def lan(count: int, subnet: str = "10.78.0") -> Iterator[list[Host]]:
    """`count` namespaces, each with an `eth0` at `<subnet>.<i+1>/24`, on one bridge that
    lives in a namespace of its own (multicast forwarded, so mDNS works). Removed after."""
    tag = uuid.uuid4().hex[:6]
    switch = f"covey-sw-{tag}"
    hosts = [Host(f"covey-{chr(ord('a') + i)}-{tag}", f"{subnet}.{i + 1}") for i in range(count)]
    made: list[str] = []
    try:
        for name in (switch, *(h.ns for h in hosts)):
            ip("netns", "add", name)
            made.append(name)
        ip("-n", switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", switch, "link", "set", "br0", "up")
        for i, host in enumerate(hosts):
            outer, inner = f"p{tag}{i}", f"e{tag}{i}"
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", outer, "netns", switch)
            ip("-n", switch, "link", "set", outer, "master", "br0", "up")
            ip("link", "set", inner, "netns", host.ns)
            ip("-n", host.ns, "link", "set", inner, "name", "eth0")
            ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.ns, "link", "set", "eth0", "up", "multicast", "on")
            ip("-n", host.ns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


class NsNode:
    """`covey serve` inside a namespace, with the test-speed flags (FAST) and `args`."""

    def __init__(self, ns: str, data_dir: Path, *args: str) -> None:
        self.ns, self.data_dir = ns, data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = (data_dir / "node-test.log").open("ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "covey", "serve", "--data-dir",
             str(data_dir), *FAST, *args],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL)

    def runtime(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return json.loads((self.data_dir / "node.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def wait_listening(self, timeout: float = 60) -> dict[str, Any]:
        return wait_for(self.runtime, timeout, f"the node in {self.ns} to listen")  # type: ignore[no-any-return]

    @property
    def node_id(self) -> str:
        return str(self.wait_listening()["node_id"])

    def get(self, path: str) -> Any:
        """GET the node's client API from inside its namespace (its 127.0.0.1)."""
        runtime = self.runtime()
        assert runtime, "node is not listening"
        out = ns_run(self.ns, sys.executable, "-c",
                     "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                     "sys.argv[1], timeout=5).read().decode())", runtime["url"] + path,
                     timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def status(self) -> dict[str, Any]:
        return self.get("/api/status")  # type: ignore[no-any-return]

    def wait_ready_model(self, timeout: float = 120) -> str:
        """The id of this node's first model, once it is ready."""
        return wait_for(lambda: next((m["id"] for m in self.status()["models"]
                                      if m["state"] == "ready"), None),
                        timeout, f"a model in {self.ns} to be ready")  # type: ignore[no-any-return]

    def covey(self, *args: str, timeout: float = 60) -> str:
        """Run a `covey` command inside this node's namespace; its stdout (must succeed)."""
        out = ns_run(self.ns, sys.executable, "-m", "covey", *args, timeout=timeout)
        assert out.returncode == 0, f"covey {args[0]} failed: {out.stderr}"
        return out.stdout

    def log(self) -> str:
        return (self.data_dir / "node-test.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextmanager
def running(nodes: list[NsNode], tail: int = 3000) -> Iterator[list[NsNode]]:
    """Stop every node in `nodes` at the end (the list may change inside: nodes restarted
    or added); when the body fails, print each node's log tail first, so the failure says
    what the nodes saw."""
    try:
        yield nodes
    except BaseException:
        for node in nodes:
            print(f"--- {node.ns} ---\n{node.log()[-tail:]}")
        raise
    finally:
        for node in nodes:
            node.stop()

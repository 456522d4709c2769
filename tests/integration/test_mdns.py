"""mDNS discovery between two network namespaces on one bridge: a member that lost every
address it knew (no invite, no remembered peers) finds its mesh on the LAN.

Each node runs inside its own namespace (`tests/netns.py`), so its mesh traffic and its
multicast really cross the bridge; the test reads their status from inside the namespace.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.netns import Host, NsNode, lan, unusable_reason

pytestmark = pytest.mark.skipif(unusable_reason() is not None,
                                reason=unusable_reason() or "")


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lan(2, subnet="10.77.0") as made:
        yield made


def test_members_find_each_other_by_mdns(hosts: list[Host], tmp_path: Path) -> None:
    ha, hb = hosts
    a = NsNode(ha.ns, tmp_path / "a", "--no-default-model", "--mesh-host", ha.address)
    nodes = [a]
    try:
        a.wait_listening()
        invite = a.covey("invite", "--data-dir", str(a.data_dir)).strip()
        # b joins by invite once, then forgets every address it knew.
        b = NsNode(hb.ns, tmp_path / "b", "--no-default-model", "--mesh-host", hb.address,
                   "--no-mdns", "--join", invite)
        nodes.append(b)
        wait_for(lambda: b.runtime() and len(b.status()["peers"]) == 1, 30, "b to join a")
        b.stop()
        (b.data_dir / "peers.json").unlink()

        # Restarted without --join or remembered peers, on a new mesh port (a's memory of
        # b's old address is useless): only mDNS can bring them together again.
        b = NsNode(hb.ns, tmp_path / "b", "--no-default-model", "--mesh-host", hb.address)
        nodes.append(b)
        a_id = a.node_id
        wait_for(lambda: b.runtime() and [p["id"] for p in b.status()["peers"]] == [a_id],
                 30, "b to find a by mDNS", interval=0.5)
        assert f"found member at {ha.address}:" in b.log()
        b_id = b.node_id
        wait_for(lambda: b_id in {p["id"] for p in a.status()["peers"]}, 20,
                 "a to learn b's new record")
    finally:
        for node in nodes:
            node.stop()

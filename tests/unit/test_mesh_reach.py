"""Which of a peer's addresses to use: the one that last answered, else the first."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.mesh.reach import Reachability
from covey.mesh.records import NodeRecord, new_record


def _record(*addresses: str) -> NodeRecord:
    return new_record(Ed25519PrivateKey.generate(), mesh_id="m", seq=1, now=0, ttl_s=60,
                      addresses=list(addresses))


def test_the_address_that_worked_comes_first() -> None:
    reach = Reachability()
    r = _record("10.99.0.1:1", "10.78.0.1:1", "10.78.0.2:1")
    assert reach.order(r) == ["10.99.0.1:1", "10.78.0.1:1", "10.78.0.2:1"]
    reach.worked(r.node_id, "10.78.0.1:1")
    assert reach.order(r) == ["10.78.0.1:1", "10.99.0.1:1", "10.78.0.2:1"]
    assert reach.chosen([r]) == {r.node_id: "10.78.0.1:1"}
    reach.failed(r.node_id, "10.78.0.1:1")
    assert reach.address(r) == "10.99.0.1:1"


def test_an_address_the_record_no_longer_lists_is_not_used() -> None:
    reach = Reachability()
    r = _record("10.0.0.1:1")
    reach.worked(r.node_id, "10.0.0.9:1")  # the node moved since
    assert reach.order(r) == ["10.0.0.1:1"]
    assert reach.address(_record()) is None
    reach.forget(set())
    assert reach.chosen([r]) == {r.node_id: "10.0.0.1:1"}

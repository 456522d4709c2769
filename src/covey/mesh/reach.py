"""Which of a peer's advertised addresses works from here: node id → the last one that did.

A node advertises several addresses (every interface, `--advertise` first); some may be
unreachable from a given peer (another subnet, a VPN that is down). Gossip and the
data-plane checks try a record's addresses in order and note the one that answered; routing
and later checks use that one first.

Temporary and deliberately small: the peer transport (connection pools per peer) is meant to
own this choice; until it does, this is the one place that makes it.
"""

from __future__ import annotations

from collections.abc import Iterable

from covey.mesh.records import NodeRecord


class Reachability:
    def __init__(self) -> None:
        self._working: dict[str, str] = {}

    def order(self, record: NodeRecord) -> list[str]:
        """The record's addresses to try, the one that last worked first."""
        known = self._working.get(record.node_id)
        if known in record.addresses:
            return [known, *(a for a in record.addresses if a != known)]
        return list(record.addresses)

    def address(self, record: NodeRecord) -> str | None:
        """The address to use for `record` now (None: it advertises none)."""
        order = self.order(record)
        return order[0] if order else None

    def worked(self, node_id: str, address: str) -> None:
        self._working[node_id] = address

    def failed(self, node_id: str, address: str) -> None:
        if self._working.get(node_id) == address:
            del self._working[node_id]

    def chosen(self, records: Iterable[NodeRecord]) -> dict[str, str]:
        """node id → address to use, for every record that advertises one."""
        return {r.node_id: a for r in records if (a := self.address(r)) is not None}

    def forget(self, keep: set[str]) -> None:
        """Drop nodes not in `keep` (gone from the roster)."""
        for node_id in set(self._working) - keep:
            del self._working[node_id]

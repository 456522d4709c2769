"""Peers remembered in the data dir (`peers.json`), so a restarted node finds its mesh again
without an invite: the inviter at first, then the peers gossip has shown it.

Each entry is an address and the TLS fingerprint to pin there; a damaged file is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FILE = "peers.json"
MAX_REMEMBERED = 16


@dataclass(frozen=True)
class Bootstrap:
    address: str
    fingerprint: str


def load(data_dir: Path) -> list[Bootstrap]:
    try:
        entries = json.loads((data_dir / FILE).read_text())
        return [Bootstrap(str(e["address"]), str(e["fingerprint"]))
                for e in entries][:MAX_REMEMBERED]
    # No file yet, or a damaged one: gossip works without it once peers are known.
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save(data_dir: Path, peers: list[Bootstrap]) -> None:
    path = data_dir / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"address": p.address, "fingerprint": p.fingerprint}
                               for p in peers[:MAX_REMEMBERED]]))
    tmp.replace(path)


def merge(live: list[Bootstrap], known: list[Bootstrap]) -> list[Bootstrap]:
    """Live peers first (freshest knowledge), then earlier entries for other nodes; a node
    that moved (same TLS key, new address) keeps only its new address."""
    addresses = {b.address for b in live}
    keys = {b.fingerprint for b in live}
    older = [b for b in known if b.address not in addresses and b.fingerprint not in keys]
    return (live + older)[:MAX_REMEMBERED]

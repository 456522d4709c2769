"""A `--model ID` that no file here holds: its file comes from the peers that serve it.

The node starts with a row for the model in state "starting" (requests for it are routed to
the peers meanwhile), waits for a member whose record serves that id with a published
sha256, fetches the file from every member that serves the same sha256 at once
(peers.py: chunks verified before they are written, a bad source dropped), and then hands
the file to the node, which starts an engine on it like on any GGUF. A failed fetch shows
as the row's failure with its reason and is tried again; what was verified is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from covey.errors import FetchError
from covey.fetch import inventory
from covey.fetch.peers import fetch_from_peers
from covey.mesh.peer_transport import PeerTransport, peer_of
from covey.mesh.records import NodeRecord
from covey.types import EngineFailed, EngineStarting, EngineState

log = logging.getLogger(__name__)

RETRY_S = 30.0  # after a failed fetch
POLL_S = 1.0  # while no peer serves the model yet


def sources_for(model_id: str, records: list[NodeRecord]
                ) -> tuple[str, int | None, list[NodeRecord]] | None:
    """Pure: the sha256 most peers serve `model_id` under (ready, with a published sha256),
    its size, and those peers; None when no peer does."""
    by_sha: dict[str, list[NodeRecord]] = {}
    sizes: dict[str, int | None] = {}
    for record in records:
        for ad in record.models:
            if ad.id == model_id and ad.state == "ready" and ad.sha256:
                by_sha.setdefault(ad.sha256, []).append(record)
                sizes[ad.sha256] = ad.size_bytes
    if not by_sha:
        return None
    votes = Counter({sha: len(rs) for sha, rs in by_sha.items()})
    sha = max(votes, key=lambda s: (votes[s], s))
    return sha, sizes[sha], by_sha[sha]


class WantedModel:
    """Stands in the model table for a model being fetched from peers (an engine-like
    placeholder: `state`, `kind`, `pid`), and runs the fetch."""

    kind = "peer fetch"
    pid = None

    def __init__(self, model_id: str, data_dir: Path, peers: Callable[[], list[NodeRecord]],
                 transport: PeerTransport | None,
                 on_file: Callable[[Path], Awaitable[None]]) -> None:
        """`peers` and `transport` are set by the node once its mesh is up."""
        self.model_id = model_id
        self.target = inventory.models_dir(data_dir) / f"{model_id}.gguf"
        self.peers = peers
        self.transport = transport
        self.on_file = on_file
        self.state: EngineState = EngineStarting()
        self.progress: dict[str, Any] = {"state": "waiting for a peer that serves it"}

    async def run(self) -> None:
        waiting_logged = False
        while True:
            found = sources_for(self.model_id, self.peers())
            if found is None:
                if not waiting_logged:
                    log.info("model %s: no file here; waiting for a peer that serves it",
                             self.model_id)
                    waiting_logged = True
                await asyncio.sleep(POLL_S)
                continue
            sha, size, records = found
            try:
                await self._fetch(sha, size, records)
            except FetchError as exc:
                self.state = EngineFailed(f"fetch from peers failed: {exc}", RETRY_S)
                self.progress = {"state": "failed", "reason": str(exc)}
                log.warning("model %s: fetch from peers failed (%s); trying again in %.0fs",
                            self.model_id, exc, RETRY_S)
                await asyncio.sleep(RETRY_S)
                self.state = EngineStarting()
                continue
            await self.on_file(self.target)
            return

    async def _fetch(self, sha: str, size: int | None, records: list[NodeRecord]) -> None:
        held = await asyncio.to_thread(inventory.read_sidecar, self.target) \
            if self.target.exists() else None
        if held is not None and held.get("sha256") == sha:
            return  # fetched before: the sidecar's sha256 was checked when it was written
        names = ", ".join(r.name or r.node_id[:12] for r in records)
        log.info("model %s: fetching %s from %d peer(s): %s", self.model_id,
                 f"{size / 1e6:.0f} MB" if size else "its file", len(records), names)
        started = time.monotonic()
        self.progress = {"state": "fetching", "sha256": sha, "done": 0, "total": size,
                         "sources": [r.name or r.node_id for r in records]}
        reported = [0.0]

        def progress(done: int, total: int) -> None:
            self.progress.update(done=done, total=total)
            if total and done / total - reported[0] >= 0.25:
                reported[0] = done / total
                log.info("model %s: %.0f%% fetched", self.model_id, 100 * done / total)

        if self.transport is None:
            raise FetchError("the mesh is not up yet")
        result = await fetch_from_peers(sha, size, [peer_of(r) for r in records],
                                        self.transport, self.target, progress)
        await asyncio.to_thread(inventory.write_sidecar, self.target,
                                source=f"peer:{self.model_id}", sha256=result.sha256,
                                now=datetime.now(UTC))
        seconds = time.monotonic() - started
        self.progress = {"state": "fetched", "sha256": result.sha256, "size": result.size,
                         "seconds": round(seconds, 2), "bytes_from": result.bytes_from,
                         "dropped": result.dropped, "resumed_bytes": result.resumed_bytes}
        log.info("model %s: fetched %d bytes in %.1fs (%.0f MB/s) from %s%s", self.model_id,
                 result.size, seconds, result.size / 1e6 / max(seconds, 1e-6),
                 ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in result.bytes_from.items()),
                 f"; dropped {result.dropped}" if result.dropped else "")

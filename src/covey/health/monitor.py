"""Which peers can take a prompt right now: schedules data-plane checks and feeds their
results to each peer's `PeerState` (health/state.py holds every rule; this module only runs
probes and keeps the tasks).

Every `interval_s` each live peer gets the cheap check (layers 5–10: roster, TCP, TLS pin,
small and large authenticated probes, engines ready); the large probe only when it is due
(health/state.py's `large_probe_due`), its last pass standing in between. The one-token
probe (layer 11) runs when a route is about to use a peer whose proof for that model is
stale, and, on the same tick as the cheap checks, for every model whose last token probe
failed once its backoff has passed.
Real traffic that streams a token back is proof too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from covey.health import layers as L
from covey.health.local import roster_layer
from covey.health.probe import Target, check_peer, one_token, token_timeout
from covey.health.state import (
    CheapCheck,
    Observation,
    PeerState,
    Policy,
    RealRequest,
    TokenProbe,
    large_kept,
    large_probe_due,
    path_failure,
)
from covey.mesh.peer_transport import PeerTransport, peer_of
from covey.mesh.records import NodeRecord
from covey.mesh.runtime import STALE_ROUNDS, MeshRuntime

log = logging.getLogger(__name__)


def target_for(record: NodeRecord, now: float) -> Target:
    return Target(peer_of(record), max(0.0, now - record.issued_at))


def ready_models(record: NodeRecord) -> list[str]:
    return [ad.id for ad in record.models if ad.state == "ready"]


def all_models(record: NodeRecord) -> list[str]:
    return [ad.id for ad in record.models]


def embedding_models(record: NodeRecord) -> frozenset[str]:
    """The peer's embedding models: probed with an embeddings request, not a chat."""
    return frozenset(ad.id for ad in record.models if ad.embeddings_only)


class HealthMonitor:
    def __init__(self, mesh: MeshRuntime, interval_s: float, timeout_s: float,
                 down_after: int = 2, clock: Callable[[], float] = time.time) -> None:
        self.mesh = mesh
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.clock = clock  # wall time: `checked_at` is shown next to the status page's now
        # A check older than this is out of date: a few missed rounds, or one slow check
        # (every layer may take `timeout_s`).
        self.policy = Policy(down_after=down_after,
                             fresh_s=max(3 * interval_s, 2 * timeout_s) + 1)
        self.peers: dict[str, PeerState] = {}
        # Per peer: the large probe's last pass, and the cheap checks that have reused it.
        self._large: dict[str, tuple[L.LayerResult, int]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._transport: PeerTransport | None = None  # while running

    @property
    def fresh_s(self) -> float:
        """A record older than this is stale: its node should have republished by now."""
        return max(3.0, STALE_ROUNDS * self.mesh.interval_s)

    # --- routing questions --------------------------------------------------------------

    def usable(self, node_id: str, model: str) -> bool:
        h = self.peers.get(node_id)
        return h is not None and h.usable(model, self.clock())

    def why_not(self, node_id: str, model: str) -> str:
        h = self.peers.get(node_id)
        return "not checked yet" if h is None else h.why_not(model, self.clock())

    def request_done(self, node_id: str, model: str, ok: bool) -> None:
        """Real traffic: a streamed answer proves the whole path; a failure before the first
        byte counts like a failed check of the path."""
        self._observe(node_id, RealRequest(model, ok))

    def about_to_use(self, record: NodeRecord, model: str) -> None:
        """A route picked this peer: refresh its token proof in the background if stale."""
        h = self.peers.get(record.node_id)
        if h is not None and h.wants_token_probe(model, self.clock()):
            self._probe_token(record, model)

    # --- status -------------------------------------------------------------------------

    def status(self, node_id: str) -> dict[str, Any]:
        h = self.peers.get(node_id)
        if h is None:
            return L.report(L.settle([], L.PEER_LAYERS), None)
        return h.report(self.clock())

    # --- checking -----------------------------------------------------------------------

    async def run(self) -> None:
        assert self.mesh.transport is not None, "the node sets the transport before run()"
        self._transport = self.mesh.transport
        try:
            while True:
                self._tick()
                await asyncio.sleep(self.interval_s)
        finally:
            for task in self._running.values():
                task.cancel()
            self._transport = None

    def _tick(self) -> None:
        """One round: forget gone peers, start cheap checks, re-probe failing models whose
        backoff has passed (nothing else would: no route picks a model that was removed)."""
        now = self.clock()
        live = {r.node_id: r for r in self.mesh.peers(now)}
        for gone in set(self.peers) - set(live):
            del self.peers[gone]
            self._large.pop(gone, None)
        for node_id, record in live.items():
            if f"check:{node_id}" not in self._running:
                self._start(f"check:{node_id}", self._check(record))
            h = self.peers.get(node_id)
            if h is None:
                continue
            ready = ready_models(record)
            self.peers[node_id] = h = h.forget_models(set(all_models(record)))
            for model in h.failing_models():
                if model in ready and h.wants_token_probe(model, now):
                    self._probe_token(record, model)

    async def check_now(self, record: NodeRecord, token: bool) -> list[L.LayerResult]:
        """A full fresh check of one peer (for `covey doctor`): layers 5–11."""
        now = self.clock()
        roster = roster_layer(record, record.name or record.node_id, now, self.fresh_s)
        if not roster.ok or self._transport is None:
            return L.settle([roster], L.PEER_LAYERS)
        results = await check_peer(self._transport, target_for(record, now),
                                   all_models(record), ready_models(record)[:8] if token
                                   else [], self.timeout_s,
                                   embedding_models=embedding_models(record))
        return L.settle([roster, *results], L.PEER_LAYERS)

    def _start(self, key: str, coro: Any) -> None:
        task = asyncio.create_task(coro, name=key)
        self._running[key] = task
        task.add_done_callback(lambda _t: self._running.pop(key, None))

    def _probe_token(self, record: NodeRecord, model: str) -> None:
        key = f"token:{record.node_id}:{model}"
        if self._transport is not None and key not in self._running:
            self._start(key, self._token_probe(record, model))

    def _observe(self, node_id: str, observation: Observation) -> None:
        """Feed one observation to the peer's state; log what changed (one line each)."""
        before = self.peers.get(node_id) or PeerState(self.policy)
        now = self.clock()
        after = before.observe(observation, now)
        self.peers[node_id] = after
        if after.up and not before.up:
            log.info("health: peer %s is reachable (all layers pass)", node_id)
        elif before.up and not after.up:
            failure = path_failure(after.results) if isinstance(observation, CheapCheck) \
                else None
            what = (f"layer {failure.layer} ({failure.name}): {failure.detail}" if failure
                    else "requests to it failed")
            log.warning("health: peer %s is down: %s", node_id, what)
        if isinstance(observation, (TokenProbe, RealRequest)):
            model = observation.model
            if after.removed(model) and not before.removed(model):
                failure = after.models[model].last_failure
                log.warning("health: %s cannot serve %s: %s", node_id, model,
                            failure.detail if failure else "token probes failed")
            elif before.removed(model) and not after.removed(model):
                log.info("health: %s serves %s again (a token came back)", node_id, model)

    async def _check(self, record: NodeRecord) -> None:
        assert self._transport is not None
        now = self.clock()
        roster = roster_layer(record, record.name or record.node_id, now, self.fresh_s)
        results = [roster]
        last, since = self._large.get(record.node_id, (None, 0))
        due = large_probe_due(last, since, self.policy)
        if roster.ok:
            results += await check_peer(self._transport, target_for(record, now),
                                        all_models(record), [], self.timeout_s,
                                        reuse_large=None if due else last)
        kept = large_kept(results, due, since)
        if kept is None:
            self._large.pop(record.node_id, None)
        else:
            self._large[record.node_id] = kept
        self._observe(record.node_id, CheapCheck(tuple(results)))

    async def _token_probe(self, record: NodeRecord, model: str) -> None:
        assert self._transport is not None
        result = await one_token(self._transport, target_for(record, self.clock()), model,
                                 token_timeout(self.timeout_s),
                                 embeddings=model in embedding_models(record))
        self._observe(record.node_id, TokenProbe(model, result))

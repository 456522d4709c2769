"""Which peers can take a prompt right now: data-plane checks, cached and debounced.

Every `interval_s` each live peer gets the cheap check (layers 5–10: roster, TCP, TLS pin,
small and large signed probes, engines ready). The one-token probe (layer 11) runs only when
a route is about to use a peer whose last proof for that model is older than
`TOKEN_STALE_S`; real traffic that streams a token back is proof too.

Debouncing: `down_after` consecutive failures (probes or real requests) mark a peer down; one
success marks it up. A peer never checked is not routed to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from covey.health import layers as L
from covey.health.local import roster_layer
from covey.health.probe import Target, check_peer, one_token, token_timeout
from covey.mesh.records import NodeRecord
from covey.mesh.runtime import MeshRuntime

log = logging.getLogger(__name__)
TOKEN_STALE_S = 60.0


@dataclass
class PeerHealth:
    results: list[L.LayerResult] = field(default_factory=list)
    checked_at: float | None = None  # wall clock of the last cheap check
    failures: int = 0  # consecutive
    up: bool = False
    token_ok_at: dict[str, float] = field(default_factory=dict)  # model → monotonic
    token_failed: dict[str, L.LayerResult] = field(default_factory=dict)


def target_for(record: NodeRecord, now: float, address: str | None = None) -> Target:
    """`address`: which of the record's addresses to check (default: its first)."""
    if address is None:
        address = record.addresses[0] if record.addresses else ""
    return Target(record.node_id, record.name, address, record.tls_fingerprint or None,
                  max(0.0, now - record.issued_at))


def ready_models(record: NodeRecord) -> list[str]:
    return [ad.id for ad in record.models if ad.state == "ready"]


def all_models(record: NodeRecord) -> list[str]:
    return [ad.id for ad in record.models]


def path_failure(results: list[L.LayerResult]) -> L.LayerResult | None:
    """The first failure below the engine layer: the peer as a whole is unreachable. An
    engine that is down (layer 10) only rules out its model, which the record says too."""
    return L.first_failure([r for r in results if r.layer < 10])


class HealthMonitor:
    def __init__(self, mesh: MeshRuntime, interval_s: float, timeout_s: float,
                 down_after: int = 2) -> None:
        self.mesh = mesh
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.down_after = down_after
        self.peers: dict[str, PeerHealth] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def fresh_s(self) -> float:
        """A record older than this is stale: its node should have republished by now."""
        return max(3.0, 6 * self.mesh.interval_s)

    # --- routing questions --------------------------------------------------------------

    def usable(self, node_id: str, model: str) -> bool:
        h = self.peers.get(node_id)
        if h is None or not h.up or model in h.token_failed or h.checked_at is None:
            return False
        return time.time() - h.checked_at < max(3 * self.interval_s, 2 * self.timeout_s) + 1

    def why_not(self, node_id: str, model: str) -> str:
        h = self.peers.get(node_id)
        if h is None or h.checked_at is None:
            return "not checked yet"
        failure = h.token_failed.get(model) or L.first_failure(h.results)
        if failure is None:
            return "checks are out of date" if h.up else "recovering"
        return f"layer {failure.layer} ({failure.name}): {failure.detail}"

    def request_done(self, node_id: str, model: str, ok: bool) -> None:
        """Real traffic: a streamed answer proves the whole path; a failure before the first
        byte counts like a failed probe."""
        h = self.peers.setdefault(node_id, PeerHealth())
        if ok:
            h.token_ok_at[model] = time.monotonic()
            h.token_failed.pop(model, None)
            self._success(node_id, h)
        else:
            self._failure(node_id, h, None)

    def about_to_use(self, record: NodeRecord, model: str) -> None:
        """A route picked this peer: refresh its token proof in the background if stale."""
        h = self.peers.get(record.node_id)
        if h is None or self._session is None:
            return
        proved = h.token_ok_at.get(model)
        key = f"token:{record.node_id}:{model}"
        if (proved is None or time.monotonic() - proved > TOKEN_STALE_S) \
                and key not in self._running:
            self._start(key, self._token_probe(record, model))

    # --- status -------------------------------------------------------------------------

    def status(self, node_id: str) -> dict[str, Any]:
        h = self.peers.get(node_id)
        if h is None:
            return L.report(L.settle([], L.PEER_LAYERS), None)
        results = list(h.results)
        token = next(iter(h.token_failed.values()), None)
        if token is None and h.token_ok_at and h.up:
            age = time.monotonic() - max(h.token_ok_at.values())
            token = L.passed(11, f"a token came back {age:.0f}s ago")
        if token is not None:
            results = [r for r in results if r.layer != 11] + [token]
        return L.report(L.settle(results, L.PEER_LAYERS), h.checked_at)

    # --- checking -----------------------------------------------------------------------

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            self._session = session
            try:
                while True:
                    now = time.time()
                    live = {r.node_id: r for r in self.mesh.peers(now)}
                    for gone in set(self.peers) - set(live):
                        del self.peers[gone]
                    for node_id, record in live.items():
                        if f"check:{node_id}" not in self._running:
                            self._start(f"check:{node_id}", self._check(record))
                    await asyncio.sleep(self.interval_s)
            finally:
                for task in self._running.values():
                    task.cancel()
                self._session = None

    async def check_now(self, record: NodeRecord, token: bool) -> list[L.LayerResult]:
        """A full fresh check of one peer (for `covey doctor`): layers 5–11."""
        now = time.time()
        roster = roster_layer(record, record.name or record.node_id, now, self.fresh_s)
        if not roster.ok or self._session is None:
            return L.settle([roster], L.PEER_LAYERS)
        results = await check_peer(self._session,
                                   target_for(record, now, self.mesh.reach.address(record)),
                                   self.mesh.sign, all_models(record),
                                   ready_models(record)[:8] if token else [], self.timeout_s)
        return L.settle([roster, *results], L.PEER_LAYERS)

    async def check_address(self, address: str, token: bool) -> list[L.LayerResult]:
        """Layers 6–9 against an address not in the roster (nothing to pin)."""
        if self._session is None:
            return []
        t = Target("", address, address, None)
        results = await check_peer(self._session, t, self.mesh.sign, [], [], self.timeout_s)
        return L.settle([L.skipped(5, f"{address} is not in the roster: checking the address "
                                      "directly"), *results], L.PEER_LAYERS)

    def _start(self, key: str, coro: Any) -> None:
        task = asyncio.create_task(coro, name=key)
        self._running[key] = task
        task.add_done_callback(lambda _t: self._running.pop(key, None))

    async def _check(self, record: NodeRecord) -> None:
        assert self._session is not None
        now = time.time()
        roster = roster_layer(record, record.name or record.node_id, now, self.fresh_s)
        results = [roster]
        if roster.ok:
            # A peer advertises several addresses; the first that connects is the one to use
            # (remembered in mesh.reach, so routing uses it too).
            for address in self.mesh.reach.order(record) or [""]:
                results = [roster, *await check_peer(
                    self._session, target_for(record, now, address), self.mesh.sign,
                    all_models(record), [], self.timeout_s)]
                failure = path_failure(results)
                if failure is None or failure.layer > 6:
                    if failure is None and address:
                        self.mesh.reach.worked(record.node_id, address)
                    break
                self.mesh.reach.failed(record.node_id, address)
        h = self.peers.setdefault(record.node_id, PeerHealth())
        h.results, h.checked_at = results, time.time()
        failure = path_failure(results)
        if failure is None:
            self._success(record.node_id, h)
        else:
            self._failure(record.node_id, h, failure)

    async def _token_probe(self, record: NodeRecord, model: str) -> None:
        assert self._session is not None
        result = await one_token(self._session, target_for(record, time.time(),
                                                           self.mesh.reach.address(record)),
                                 self.mesh.sign, model, token_timeout(self.timeout_s))
        h = self.peers.setdefault(record.node_id, PeerHealth())
        if result.ok:
            h.token_ok_at[model] = time.monotonic()
            h.token_failed.pop(model, None)
        else:
            if model not in h.token_failed:
                log.warning("health: %s (%s) cannot serve %s: %s", record.node_id,
                            record.name, model, result.detail)
            h.token_failed[model] = result

    def _success(self, node_id: str, h: PeerHealth) -> None:
        h.failures = 0
        if not h.up:
            log.info("health: peer %s is reachable (all layers pass)", node_id)
        h.up = True

    def _failure(self, node_id: str, h: PeerHealth, failure: L.LayerResult | None) -> None:
        h.failures += 1
        if h.up and h.failures >= self.down_after:
            h.up = False
            what = (f"layer {failure.layer} ({failure.name}): {failure.detail}" if failure
                    else "requests to it failed")
            log.warning("health: peer %s is down: %s", node_id, what)

"""Sending a request to the best candidate, and the failover policy when one fails.

`judge()` is the failover table (pure): what a failure before the first byte means. Only an
error about the client's own request goes back to the client; anything a node did (refused,
busy, model gone, engine failed, nothing in time) moves on to the next candidate, and only
the failures that say the path or the engine is broken count against the peer's health.
After the first byte nothing is retried: the relay ends the stream with an error event.

`Dispatcher` asks `plan()` for candidates, relays through them in order and records the
outcome; the API module only parses and answers.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from covey.errors import Busy, CoveyError, ModelNotFound, Unavailable, UpstreamFailed
from covey.health.monitor import HealthMonitor
from covey.mesh.records import NodeRecord
from covey.mesh.runtime import MeshRuntime
from covey.metrics.samples import ModelMeter
from covey.router.plan import offers, plan
from covey.router.proxy import Relay, UpstreamRejected
from covey.router.select import Candidate, LocalView
from covey.router.table import ModelTable, ServedModel, unavailable_reason
from covey.router.tiers import TierPolicy, default_model
from covey.types import EngineReady, EngineState, ModelCard, ModelId, NodeId

# A node's answer that is about the request itself: another node would say the same.
CLIENT_FAULTS = frozenset({400, 413, 422})


@dataclass(frozen=True)
class Verdict:
    try_next: bool  # False: the error goes back to the client
    peer_fault: bool  # counts against the node's health (path or engine broken)
    busy: bool = False  # the node was full: if every node was, the client gets 429


def judge(exc: CoveyError) -> Verdict:
    """The failover table for an error raised before the first byte reached the client."""
    if isinstance(exc, UpstreamRejected):  # the node answered 4xx
        if exc.status in CLIENT_FAULTS:
            return Verdict(try_next=False, peer_fault=False)
        # 403: it refused our signed request (clock skew, membership): the path is broken
        # from here. 404: the model is gone there (a stale record). 429: full.
        return Verdict(try_next=True, peer_fault=exc.status == 403, busy=exc.status == 429)
    if isinstance(exc, UpstreamFailed):
        # 503: the node is up but cannot serve the model now (loading, its own candidates
        # failed): not a broken path. No answer at all, or a 5xx from its engine: broken.
        return Verdict(try_next=True, peer_fault=exc.upstream_status != 503)
    if isinstance(exc, Busy):  # this node's own copy is full
        return Verdict(try_next=True, peer_fault=False, busy=True)
    if isinstance(exc, Unavailable):  # this node's own copy is loading or failed
        return Verdict(try_next=True, peer_fault=False)
    return Verdict(try_next=False, peer_fault=False)


class _PeerEngine:
    """A peer's node as seen by the relay: always 'ready'; the transport knows where."""

    kind = "peer"
    pid = None
    state: EngineState = EngineReady(base_url="")


class Dispatcher:
    """Routes one request through the mesh. Keeps a handle per (peer, model) so in-flight
    counts and this entry's through-mesh measurements persist across requests."""

    def __init__(self, table: ModelTable, relay: Relay, mesh: MeshRuntime,
                 health: HealthMonitor | None, node_id: NodeId, node_name: str,
                 rng: random.Random | None = None, *,
                 tiers: Callable[[], TierPolicy] = TierPolicy) -> None:
        """`tiers`: the mesh's tier policy as this node applies it now."""
        self.table = table
        self.tiers = tiers
        self.relay = relay
        self.mesh = mesh
        self.health = health
        self.node_id = node_id
        self.node_name = node_name
        self.served_by = f"{node_id} ({node_name})"
        self.rng = rng or random.Random()
        self.peer_models: dict[tuple[str, str], ServedModel] = {}

    async def dispatch(self, request: web.Request, path: str, model_name: str | None,
                       data: dict[str, Any], raw: bytes, stream: bool,
                       max_tokens: int | None, catalog: list[str]) -> web.StreamResponse:
        model_id = model_name or self.default_model(catalog)
        local = self.table.models.get(ModelId(model_id)) if model_id else None
        if model_id is None:
            raise Unavailable("no node in the mesh serves any model yet", code="no_models")
        now = time.time()
        chosen = plan(model_id, self._local_view(local), self.mesh.peers(now),
                      self._usable, now, self.rng,
                      in_flight={nid: m.in_flight for (nid, _), m in self.peer_models.items()},
                      observed=self._observed(model_id), tokens=max_tokens or 256)
        if not chosen.candidates:
            if local is not None and not chosen.serving:
                local.admit()  # raises the local reason (loading, failed, busy)
            if chosen.serving:
                raise Unavailable(self._unreachable(model_id, chosen.serving),
                                  retry_after=2, code="no_ready_node")
            raise ModelNotFound(f"model {model_id!r} not found; available: "
                                f"{', '.join(sorted(catalog)) or 'none'}", param="model")
        failures: list[str] = []
        all_busy = True
        header_ids = ",".join(c.node_id for c in chosen.candidates)
        records = {r.node_id: r for r in chosen.serving}
        for i, c in enumerate(chosen.candidates):
            target = local if c.local and local else self._peer_model(c, model_id)
            if self.health is not None and c.node_id in records:
                self.health.about_to_use(records[c.node_id], model_id)
            body = raw
            if data.get("model") != target.upstream_name:
                data["model"] = target.upstream_name
                body = json.dumps(data).encode()
            headers = {"x-covey-served-by": target.served_by or self.served_by,
                       "x-covey-candidates": header_ids,
                       "x-covey-route": _route_reason(c, i, failures)}
            try:
                response = await self.relay.forward(request, target, f"/{path}", body, stream,
                                                    headers)
            except CoveyError as exc:
                verdict = judge(exc)
                if not verdict.try_next:
                    raise
                failures.append(f"{c.name or c.node_id}: {exc.message}")
                all_busy = all_busy and verdict.busy
                if self.health is not None and not c.local and verdict.peer_fault:
                    self.health.request_done(c.node_id, model_id, ok=False)
                continue
            if self.health is not None and not c.local:
                self.health.request_done(c.node_id, model_id, ok=True)
            return response
        if all_busy:
            raise Busy(f"every node serving {model_id!r} is busy: " + "; ".join(failures),
                       retry_after=2)
        raise Unavailable(f"every node serving {model_id!r} failed: " + "; ".join(failures),
                          retry_after=2, code="all_candidates_failed")

    def meters(self, model_id: str) -> list[ModelMeter]:
        """This entry's measurements of `model_id` relayed to peers."""
        return [m.meter for (_, mid), m in self.peer_models.items() if mid == model_id]

    def default_model(self, catalog: list[str]) -> str | None:
        """What a request naming no model gets: the best-served daily-driver model in
        `catalog`; without one, this node's default, else the first in the catalog."""
        def all_meters(mid: str) -> list[ModelMeter]:
            local = self.table.models.get(ModelId(mid))
            return ([local.meter] if local else []) + self.meters(mid)
        chosen = default_model(offers(catalog, self.table, self.mesh.peers(time.time()),
                                      all_meters, time.monotonic()), self.tiers())
        local = self.table.default()
        return chosen or (local.id if local else None) or next(iter(catalog), None)

    def _usable(self, node_id: str, model_id: str) -> bool:
        # Only peers whose data plane was proven recently may get a prompt.
        return self.health is None or self.health.usable(node_id, model_id)

    def _unreachable(self, model_id: str, serving: list[NodeRecord]) -> str:
        local = self.table.models.get(ModelId(model_id))
        why = [f"{r.name or r.node_id}: "
               + (self.health.why_not(r.node_id, model_id) if self.health else "not ready")
               for r in serving]
        if local is not None:
            why.insert(0, f"{self.node_name} (here): "
                          + unavailable_reason(local.id, local.engine.state))
        return (f"nodes serve {model_id!r} but none can take it now: " + "; ".join(why)
                + "; see `covey doctor`")

    def _observed(self, model_id: str) -> dict[str, tuple[float | None, float | None]]:
        """Per peer, the TTFT (s) and tokens/s p50 this entry measured through the mesh."""
        now = time.monotonic()
        out = {}
        for (node_id, mid), m in self.peer_models.items():
            if mid == model_id:
                ttft = m.meter.ttft_ms.summary(now).p50
                out[node_id] = (ttft / 1000 if ttft is not None else None,
                                m.meter.tokens_per_s.summary(now).p50)
        return out

    def _local_view(self, model: ServedModel | None) -> LocalView | None:
        if model is None:
            return None
        now = time.monotonic()
        ttft = model.meter.ttft_ms.summary(now).p50
        return LocalView(self.node_id, self.node_name,
                         isinstance(model.engine.state, EngineReady)
                         and model.in_flight < model.slots + model.max_queue,
                         model.slots, model.queue_depth,
                         ttft / 1000 if ttft is not None else None,
                         model.meter.tokens_per_s.summary(now).p50)

    def _peer_model(self, c: Candidate, model_id: str) -> ServedModel:
        """The relay's handle on `model_id` at peer `c` (kept, so in-flight counts persist)."""
        assert c.peer is not None
        key = (c.node_id, model_id)
        model = self.peer_models.get(key)
        if model is None:
            card = ModelCard(id=ModelId(model_id), path=None, size_bytes=None,
                             quantization=None, architecture=None, context_length=None)
            model = ServedModel(card=card, engine=_PeerEngine(), upstream_name=model_id,
                                slots=c.slots, max_queue=1_000_000,
                                meter=ModelMeter(window_s=3600),
                                served_by=f"{c.node_id} ({c.name})", peer=c.peer,
                                source="peer")
            self.peer_models[key] = model
        # Updated in place (its addresses or slots may have changed): requests in flight
        # hold this same object and release it when they end.
        model.peer, model.slots = c.peer, c.slots
        return model


def _route_reason(c: Candidate, index: int, failures: list[str]) -> str:
    where = "local" if c.local else f"peer {c.node_id}"
    how = "measured" if c.measured else "prior (not yet measured)"
    text = f"{where}; expected {c.expected_s:.2f}s ({how})"
    if index:
        text += f"; after {index} failed candidate(s)"
    return text

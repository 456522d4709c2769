"""Sending a request to the best candidate, and the failover policy when one fails.

`judge()` is the failover table (pure): what a failure before the first byte means. Only an
error about the client's own request goes back to the client; anything a node did (refused,
busy, model gone, engine failed, nothing in time) moves on to the next candidate, and only
the failures that say the path or the engine is broken count against the peer's health.
After the first byte nothing is retried: the relay ends the stream with an error event.

`Dispatcher` asks `plan()` for candidates, asks the SLA gate (`sla.py`) whether they meet
the model's tier targets for this request, relays through them in order (or through an
external provider, `fallback.py`, when the gate missed or no node could take it) and records
the outcome; the API module only parses and answers. Every answer and every error carries
the gate's headers.
"""

from __future__ import annotations

import json
import logging
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
from covey.router import fallback, sla
from covey.router.fallback import Fallback
from covey.router.plan import Plan, offers, plan
from covey.router.proxy import Relay, UpstreamRejected
from covey.router.select import Candidate, LocalView
from covey.router.table import ModelTable, ServedModel, unavailable_reason
from covey.router.tiers import TierPolicy, default_model
from covey.types import EngineReady, EngineState, ModelCard, ModelId, NodeId
from covey.verify.verdicts import VerdictBook

log = logging.getLogger(__name__)

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
                 tiers: Callable[[], TierPolicy] = TierPolicy,
                 fallback: Fallback | None = None) -> None:
        """`tiers`: the mesh's tier policy as this node applies it now (mesh/policy.py)."""
        self.table = table
        self.tiers = tiers
        self.fallback = fallback
        self.relay = relay
        self.mesh = mesh
        self.health = health
        self.node_id = node_id
        self.node_name = node_name
        self.served_by = f"{node_id} ({node_name})"
        self.rng = rng or random.Random()
        self.peer_models: dict[tuple[str, str], ServedModel] = {}
        self.verdicts: VerdictBook | None = None  # issue 14: audits' verdicts (verify/)

    async def dispatch(self, request: web.Request, path: str, model_name: str | None,
                       data: dict[str, Any], raw: bytes, stream: bool,
                       max_tokens: int | None, catalog: list[str]) -> web.StreamResponse:
        model_id = model_name or self.default_model(catalog)
        local = self.table.models.get(ModelId(model_id)) if model_id else None
        policy = self.tiers()
        if model_id is None:
            exc = Unavailable("no node in the mesh serves any model yet", code="no_models")
            exc.extra_headers = sla.evaluate(policy.tier(""), policy.targets_for(""), [],
                                             0).headers()
            raise exc
        now = time.time()
        chosen = plan(model_id, self._local_view(local), self.mesh.peers(now),
                      self._usable, now, self.rng,
                      in_flight={nid: m.in_flight for (nid, _), m in self.peer_models.items()},
                      observed=self._observed(model_id), tokens=max_tokens or 256)
        # The gate decides before routing, so even a stream carries its verdict as headers.
        tier = policy.tier(model_id)
        decision = sla.evaluate(tier, policy.targets_for(model_id),
                                self._figures(chosen, model_id, local),
                                sla.estimate_prompt_tokens(data))
        choice = self._fallback_choice(request, model_id, tier)
        gate = decision.headers()
        try:
            return await self._route(request, path, model_id, local, chosen, data, raw,
                                     stream, catalog, decision, choice, gate)
        except CoveyError as exc:
            exc.extra_headers = {**gate, **exc.extra_headers}
            raise

    async def _route(self, request: web.Request, path: str, model_id: str,
                     local: ServedModel | None, chosen: Plan, data: dict[str, Any],
                     raw: bytes, stream: bool, catalog: list[str], decision: sla.Decision,
                     choice: fallback.Choice, gate: dict[str, str]) -> web.StreamResponse:
        """The provider first when the gate missed and one may take it; else the mesh, and
        a provider when no node of the mesh could take the request at all."""
        provider_error: CoveyError | None = None
        if decision.missed and choice.provider is not None:
            try:
                return await self._provider(request, path, model_id, data, stream, choice,
                                            decision.status, gate)
            except CoveyError as exc:
                if not judge(exc).try_next:
                    raise  # about the client's own request: the mesh would say the same
                provider_error = exc
        status = (fallback.PROVIDER_FAILED if provider_error is not None
                  else fallback.DISABLED if choice.status == fallback.DISABLED
                  else choice.status if decision.missed else fallback.NOT_NEEDED)
        try:
            return await self._mesh(request, path, model_id, local, chosen, data, raw,
                                    stream, catalog,
                                    {**gate, "x-covey-fallback-status": status})
        except (Busy, Unavailable, ModelNotFound) as exc:
            # No node of the mesh could take it (none serves it, all busy or down): a
            # provider may, before the first byte only (these are raised before it).
            if provider_error is not None:
                failed = Unavailable(f"{exc.message}; and {provider_error.message}",
                                     retry_after=2, code="mesh_and_provider_failed")
                failed.extra_headers["x-covey-fallback-status"] = fallback.PROVIDER_FAILED
                raise failed from exc
            if choice.provider is not None:
                try:
                    return await self._provider(request, path, model_id, data, stream, choice,
                                                decision.status, gate)
                except CoveyError as failed:
                    if not judge(failed).try_next:
                        raise
                    both = Unavailable(f"{exc.message}; and {failed.message}", retry_after=2,
                                       code="mesh_and_provider_failed")
                    both.extra_headers["x-covey-fallback-status"] = fallback.PROVIDER_FAILED
                    raise both from failed
            exc.extra_headers["x-covey-fallback-status"] = choice.status
            if choice.status == fallback.OVER_BUDGET:
                spent = Busy(f"{exc.message}; the fallback provider budget is spent, retry "
                             "when it refills", retry_after=choice.retry_after_s,
                             code="fallback_budget_exhausted")
                spent.extra_headers["x-covey-fallback-status"] = choice.status
                raise spent from exc
            raise

    async def _provider(self, request: web.Request, path: str, model_id: str,
                        data: dict[str, Any], stream: bool, choice: fallback.Choice,
                        why: str, gate: dict[str, str]) -> web.StreamResponse:
        """Send the client's own request (only the model renamed) to the chosen provider."""
        assert self.fallback is not None and choice.provider is not None
        provider, now = choice.provider, time.monotonic()
        target = self.fallback.model(provider, model_id)
        body = json.dumps({**data, "model": target.upstream_name}).encode()
        client = self._client(request)
        self.fallback.budget.spend(client, provider.name, now)
        headers = {**gate, "x-covey-fallback-status": fallback.USED,
                   "x-covey-served-by": f"provider:{provider.name}",
                   "x-covey-route": f"provider {provider.name}; gate: {why}"}
        try:
            return await self.relay.forward(request, target, f"/{path}", body, stream, headers)
        except CoveyError as exc:
            self.fallback.budget.refund(client, provider.name, now)
            log.warning("provider %s failed before its first byte: %s", provider.name,
                        type(exc).__name__)
            exc.extra_headers = {"x-covey-fallback-status": fallback.PROVIDER_FAILED}
            exc.message = f"provider {provider.name}: {exc.message}"
            raise

    def _verified(self, c: Candidate, model_id: str) -> str:
        """`x-covey-verified`: this node's own engine is ground truth; a peer is what this
        node's audits concluded (unverified when it does not audit)."""
        if c.local:
            return "verified"
        if self.verdicts is None:
            return "unverified"
        return self.verdicts.header(c.node_id, model_id, time.time())

    def _client(self, request: web.Request) -> str:
        assert self.fallback is not None
        return fallback.client_key(request.headers.get("Authorization"), request.remote,
                                   self.fallback.keyed)

    def _fallback_choice(self, request: web.Request, model_id: str,
                         tier: str) -> fallback.Choice:
        if self.fallback is None:
            return fallback.Choice(fallback.DISABLED)
        return self.fallback.choose(model_id, tier, self._client(request), time.monotonic())

    async def _mesh(self, request: web.Request, path: str, model_id: str,
                    local: ServedModel | None, chosen: Plan, data: dict[str, Any],
                    raw: bytes, stream: bool, catalog: list[str],
                    gate: dict[str, str]) -> web.StreamResponse:
        """Walk the candidates in order (the failover table decides what moves on)."""
        if not chosen.candidates:
            if local is not None and not chosen.serving:
                local.check()  # raises the local reason (loading, failed, busy)
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
            headers = {**gate, "x-covey-served-by": target.served_by or self.served_by,
                       "x-covey-candidates": header_ids,
                       "x-covey-route": _route_reason(c, i, failures),
                       "x-covey-verified": self._verified(c, model_id)}
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

    def _figures(self, chosen: Plan, model_id: str,
                 local: ServedModel | None) -> list[sla.Figures]:
        """The gate's inputs per candidate, in the router's order: this entry's through-mesh
        measurements first, the peer's gossiped figures otherwise."""
        now = time.monotonic()
        records = {r.node_id: r for r in chosen.serving}
        out = []
        for c in chosen.candidates:
            if c.local and local is not None:
                out.append(local_figures(c.node_id, local))
                continue
            handle = self.peer_models.get((c.node_id, model_id))
            record = records.get(c.node_id)
            ad = next((m for m in record.models if m.id == model_id), None) if record else None
            gossip = record.metrics.get(model_id) if record else None
            mine = _meter_figures(handle.meter, now) if handle else (None, None, None, None)
            ttft, rate, prefill, latency = mine
            if ttft is None and gossip is not None and gossip.ttft_ms_p50:
                ttft = gossip.ttft_ms_p50 / 1000
            if rate is None and gossip is not None:
                rate = gossip.tokens_per_s_p50
            ours = handle.in_flight if handle else 0
            theirs = (ad.queue_depth + ad.slots) if ad and ad.queue_depth else 0
            out.append(sla.Figures(c.node_id, ttft, rate, prefill, latency,
                                   max(ours, theirs), c.slots))
        return out

    def meters(self, model_id: str) -> list[ModelMeter]:
        """This entry's measurements of `model_id` relayed to peers."""
        return [m.meter for (_, mid), m in self.peer_models.items() if mid == model_id]

    def observed_speeds(self, node_id: str, model_id: str) -> list[float]:
        """Decode speeds this entry measured on answers relayed from that peer (window)."""
        handle = self.peer_models.get((node_id, model_id))
        return handle.meter.tokens_per_s.values(time.monotonic()) if handle else []

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
        return (self.health is None or self.health.usable(node_id, model_id)) and (
            self.verdicts is None or self.verdicts.routable(node_id, model_id, time.time()))

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


def _meter_figures(meter: ModelMeter, now: float
                   ) -> tuple[float | None, float | None, float | None, float | None]:
    """(TTFT s, decode tokens/s, prefill tokens/s, request latency s) p50s of a meter."""
    ttft = meter.ttft_ms.summary(now).p50
    latency = meter.latency_ms.summary(now).p50
    return (ttft / 1000 if ttft is not None else None, meter.tokens_per_s.summary(now).p50,
            meter.prefill_tokens_per_s.summary(now).p50,
            latency / 1000 if latency is not None else None)


def local_figures(node_id: str, model: ServedModel) -> sla.Figures:
    """The gate's inputs for this node's own copy of a model."""
    ttft, rate, prefill, latency = _meter_figures(model.meter, time.monotonic())
    return sla.Figures(node_id, ttft, rate, prefill, latency, model.in_flight, model.slots)


def _route_reason(c: Candidate, index: int, failures: list[str]) -> str:
    where = "local" if c.local else f"peer {c.node_id}"
    how = "measured" if c.measured else "prior (not yet measured)"
    text = f"{where}; expected {c.expected_s:.2f}s ({how})"
    if index:
        text += f"; after {index} failed candidate(s)"
    return text

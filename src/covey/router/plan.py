"""Which nodes may serve a request, best first: pure, so its rules are unit-tested.

`plan()` takes everything it decides on as arguments (the model, peers' records, the health
view, this node's own copy, this entry's measurements and in-flight counts, `now`, an rng)
and returns the ranked candidates with what it left out. Scoring lives in `select.py`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from covey.mesh.records import NodeRecord
from covey.metrics.samples import ModelMeter, percentile
from covey.router.select import DEFAULT_TOKENS, Candidate, LocalView, rank
from covey.router.table import ModelTable
from covey.router.tiers import Offer
from covey.types import EngineReady, ModelId


@dataclass(frozen=True)
class Plan:
    model_id: str
    candidates: list[Candidate]  # best first
    serving: list[NodeRecord]  # live peers that advertise the model, usable or not
    unproven: list[NodeRecord]  # of those, the ones health does not let a prompt reach


def plan(model_id: str, local: LocalView | None, records: Sequence[NodeRecord],
         usable: Callable[[str, str], bool], now: float, rng: random.Random, *,
         in_flight: Mapping[str, int] | None = None,
         observed: Mapping[str, tuple[float | None, float | None]] | None = None,
         tokens: int = DEFAULT_TOKENS) -> Plan:
    """Candidates for `model_id`. A peer is a candidate when its record is live, it
    advertises the model as ready with an address and a TLS fingerprint to pin, and
    `usable(node_id, model_id)` (its data plane was proven recently) says yes."""
    serving = [r for r in records if r.expires_at > now
               and any(ad.id == model_id for ad in r.models)]
    peers = [r for r in serving if usable(r.node_id, model_id)]
    candidates = rank(model_id, local, peers, in_flight or {}, rng, tokens=tokens,
                      observed=observed)
    return Plan(model_id, candidates, serving,
                [r for r in serving if r not in peers])


def offers(model_ids: Iterable[str], table: ModelTable, peers: Sequence[NodeRecord],
           meters: Callable[[str], list[ModelMeter]], now: float) -> list[Offer]:
    """How well each model is served, for the default-model choice: ready (here or at a live
    peer), this node's through-mesh tokens/s p50 (`meters`, read at monotonic `now`), and
    the best p50 the serving peers gossip."""
    out = []
    for mid in model_ids:
        local = table.models.get(ModelId(mid))
        serving = [r for r in peers
                   if any(ad.id == mid and ad.state == "ready" for ad in r.models)]
        rates = sorted(v for m in meters(mid) for v in m.tokens_per_s.values(now))
        gossiped = [rate for r in serving if mid in r.metrics
                    and (rate := r.metrics[mid].tokens_per_s_p50) is not None]
        out.append(Offer(
            mid, ready=bool(serving) or (local is not None
                                         and isinstance(local.engine.state, EngineReady)),
            measured_tokens_per_s=percentile(rates, 50) if rates else None,
            gossiped_tokens_per_s=max(gossiped) if gossiped else None,
            embeddings_only=(local.card.embeddings_only if local is not None else any(
                ad.id == mid and ad.embeddings_only for r in serving for ad in r.models))))
    return out

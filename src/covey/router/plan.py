"""Which nodes may serve a request, best first: pure, so its rules are unit-tested.

`plan()` takes everything it decides on as arguments (the model, peers' records, the health
view, this node's own copy, this entry's measurements and in-flight counts, `now`, an rng)
and returns the ranked candidates with what it left out. Scoring lives in `select.py`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from covey.mesh.records import NodeRecord
from covey.router.select import DEFAULT_TOKENS, Candidate, LocalView, rank


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

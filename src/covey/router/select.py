"""Which node should serve a request: candidates from live records, best expected time first.

Pure: `rank(...)` takes the local model (if any), peers' records, this entry's in-flight
counts and a random generator, and returns candidates best first. Expected completion time =
queued work + TTFT p50 + tokens ÷ decode p50, from real-traffic measurements; a node without
measurements gets a cautious prior so it still gets some traffic and is measured.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from covey.mesh.records import NodeRecord

PRIOR_TTFT_S = 1.0  # what we assume of a node we have never measured
PRIOR_TOKENS_PER_S = 8.0
NEAR_TIE = 1.15  # within 15 % of the best, this node serves itself (no network hop)
EXPLORE = 0.05  # share of requests sent to a non-best candidate, so its numbers stay fresh
EXPLORE_UNMEASURED = 0.2  # share sent to a never-measured candidate until it is measured
DEFAULT_TOKENS = 256


@dataclass(frozen=True)
class Candidate:
    node_id: str
    name: str
    address: str | None  # None: this node
    fingerprint: str | None
    expected_s: float
    slots: int
    measured: bool

    @property
    def local(self) -> bool:
        return self.address is None


@dataclass(frozen=True)
class LocalView:
    """What rank() needs to know of this node's own copy of the model."""

    node_id: str
    name: str
    ready: bool
    slots: int
    queue_depth: int
    ttft_s: float | None
    tokens_per_s: float | None


def expected_seconds(ttft_s: float | None, tokens_per_s: float | None, queued: int,
                     slots: int, tokens: int) -> float:
    ttft = ttft_s if ttft_s is not None else PRIOR_TTFT_S
    rate = tokens_per_s if tokens_per_s else PRIOR_TOKENS_PER_S
    one = ttft + tokens / rate
    return one * (1 + queued / max(1, slots))


def rank(model_id: str, local: LocalView | None, peers: Sequence[NodeRecord],
         in_flight: Mapping[str, int], rng: random.Random,
         tokens: int = DEFAULT_TOKENS, explore: float = EXPLORE,
         explore_unmeasured: float = EXPLORE_UNMEASURED,
         observed: Mapping[str, tuple[float | None, float | None]] | None = None,
         addresses: Mapping[str, str] | None = None) -> list[Candidate]:
    """Candidates for `model_id`, best first. Peers must advertise the model as ready and
    have room (queued + our in-flight below slots + their queue).

    `addresses` is which of each peer's addresses answers from here (node id → address);
    a peer missing from it is tried at its first address.

    `observed` is what this entry measured itself through the mesh, per peer (TTFT s,
    tokens/s): it includes the network hop, so it wins over the peer's own gossiped figures."""
    out: list[Candidate] = []
    if local is not None and local.ready:
        out.append(Candidate(local.node_id, local.name, None, None,
                             expected_seconds(local.ttft_s, local.tokens_per_s,
                                              local.queue_depth, local.slots, tokens),
                             local.slots, local.tokens_per_s is not None))
    for record in peers:
        ad = next((m for m in record.models if m.id == model_id and m.state == "ready"), None)
        if ad is None or not record.addresses or not record.tls_fingerprint:
            continue
        metrics = record.metrics.get(model_id)
        ttft = metrics.ttft_ms_p50 / 1000 if metrics and metrics.ttft_ms_p50 else None
        rate = metrics.tokens_per_s_p50 if metrics else None
        seen_ttft, seen_rate = (observed or {}).get(record.node_id, (None, None))
        ttft, rate = seen_ttft if seen_ttft is not None else ttft, seen_rate or rate
        queued = ad.queue_depth + in_flight.get(record.node_id, 0)
        address = (addresses or {}).get(record.node_id, record.addresses[0])
        out.append(Candidate(record.node_id, record.name, address,
                             record.tls_fingerprint,
                             expected_seconds(ttft, rate, queued, ad.slots, tokens),
                             ad.slots, rate is not None))
    # A little randomness among near-equals (power of two choices) so that entries acting
    # on the same gossip do not all herd onto one node.
    jittered = sorted(out, key=lambda c: c.expected_s * rng.uniform(0.95, 1.05))
    if jittered and not jittered[0].local:
        mine = next((c for c in jittered if c.local), None)
        if mine is not None and mine.expected_s <= jittered[0].expected_s * NEAR_TIE:
            jittered.remove(mine)
            jittered.insert(0, mine)
    # Without some exploration one unlucky measurement (a cold engine, a busy moment) would
    # keep a fast node from ever being chosen, and so from ever being measured again. A node
    # never measured gets a larger share until its first sample: its prior is a guess.
    unmeasured = [i for i, c in enumerate(jittered) if i and not c.measured]
    if unmeasured and rng.random() < explore_unmeasured:
        jittered.insert(0, jittered.pop(rng.choice(unmeasured)))
    elif len(jittered) > 1 and rng.random() < explore:
        jittered.insert(0, jittered.pop(rng.randrange(1, len(jittered))))
    return jittered

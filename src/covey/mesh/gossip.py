"""Push-pull anti-entropy, pure: what to exchange with a peer, whom to talk to, and an
in-memory simulation that shows convergence in O(log n) rounds.

One exchange: A sends its digest (node id → seq); B answers with its digest and the records
A lacks or holds older; A then sends the records B lacks or holds older. Envelopes travel
byte for byte, so every receiver checks the original signature.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

MAX_DIGEST = 10_000  # entries accepted in one digest from the network
MAX_RECORDS_PER_EXCHANGE = 32  # bounds one message; the rest follows in later rounds
MAX_INCOMING_PER_ROUND = 6  # a node answers this many exchanges a round, then says busy


def plan_exchange(mine: Mapping[str, int], theirs: Mapping[str, int],
                  limit: int | None = None,
                  rng: random.Random | None = None) -> tuple[list[str], list[str]]:
    """(ids to send them, ids to ask them for): newer wins, each side only what it lacks.

    With `limit`, each list is cut to that many, chosen at random when `rng` is given (so
    that different peers fill different gaps), else the first in id order."""
    send = sorted(nid for nid, seq in mine.items() if theirs.get(nid, 0) < seq)
    want = sorted(nid for nid, seq in theirs.items() if mine.get(nid, 0) < seq)
    if limit is not None:
        send, want = (_cut(ids, limit, rng) for ids in (send, want))
    return send, want


def _cut(ids: list[str], limit: int, rng: random.Random | None) -> list[str]:
    if len(ids) <= limit:
        return ids
    return sorted(rng.sample(ids, limit)) if rng else ids[:limit]


def choose_peers(known: Sequence[str], self_id: str, fanout: int,
                 rng: random.Random) -> list[str]:
    candidates = [p for p in known if p != self_id]
    return rng.sample(candidates, min(fanout, len(candidates)))


def heard_from(began: Mapping[str, float], now: float, window_s: float) -> set[str]:
    """Pure: the nodes that began an exchange with this one less than `window_s` ago
    (`began`: node id → when, on the same clock as `now`)."""
    return {nid for nid, at in began.items() if 0 <= now - at < window_s}


def quiet_peers(synced: Mapping[str, tuple[int, float]], version: int, now: float,
                quiet_s: float) -> set[str]:
    """Pure: the peers a gossip call would bring nothing new to, so none is made this round.

    `synced`: node id → (this node's table version, when) at the end of the last exchange
    with it, either way, after which it held every record this node held. While the table
    is at that version (nothing learnt or signed since) and less than `quiet_s` has passed,
    the call could only pull: what the peer learns it calls in with itself, as its own
    version moved. After `quiet_s` it is called anyway, in case that call went elsewhere."""
    return {nid for nid, (at_version, at) in synced.items()
            if at_version == version and 0 <= now - at < quiet_s}


def digest_bytes(digest: Mapping[str, int]) -> int:
    return len(json.dumps(digest, separators=(",", ":")))


# --- simulation ---------------------------------------------------------------------------


@dataclass
class SimNode:
    node_id: str
    held: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # id → (seq, envelope)
    peers: set[str] = field(default_factory=set)

    def digest(self) -> dict[str, int]:
        return {nid: seq for nid, (seq, _) in self.held.items()}


@dataclass(frozen=True)
class SimResult:
    n: int
    fanout: int
    rounds: int
    converged: bool
    mean_bytes_per_node_per_round: float
    max_bytes_per_node_per_round: int


def simulate(envelopes: Mapping[str, tuple[int, bytes]], *, fanout: int, rng: random.Random,
             max_rounds: int, seeds_per_node: int = 2,
             accept: Callable[[str, bytes], bool] | None = None,
             planted: Mapping[str, Mapping[str, tuple[int, bytes]]] | None = None) -> SimResult:
    """Gossip `envelopes` (node id → (seq, signed record)) until every node holds every record.

    Each node starts with its own record and knows node 0 (the inviter) plus a few random
    others, as after joining by invite. Each round every node exchanges with `fanout` random
    known peers; nodes learn peers from the records they receive. `accept(node_id, envelope)`
    stands in for signature verification (False: the receiver drops it). `planted` gives some
    nodes extra entries (a forger's fakes) that they offer but others must refuse; converged
    means every other node holds exactly the genuine records."""
    ids = sorted(envelopes)
    nodes = {nid: SimNode(nid, held={nid: envelopes[nid]}) for nid in ids}
    for holder, extra in (planted or {}).items():
        nodes[holder].held.update(extra)
    for nid in ids:
        nodes[nid].peers = {ids[0], *rng.sample(ids, min(seeds_per_node, len(ids)))} - {nid}
    target = {nid: seq for nid, (seq, _) in envelopes.items()}
    honest = [n for nid, n in nodes.items() if nid not in (planted or {})]
    traffic: list[int] = []
    for round_no in range(1, max_rounds + 1):
        sent = dict.fromkeys(ids, 0)
        incoming = dict.fromkeys(ids, 0)
        for nid in rng.sample(ids, len(ids)):  # random order within a round
            a = nodes[nid]
            for pid in choose_peers(sorted(a.peers), nid, fanout, rng):
                if incoming[pid] >= MAX_INCOMING_PER_ROUND:
                    continue  # busy: the caller tries other peers next round
                incoming[pid] += 1
                b = nodes[pid]
                da, db = a.digest(), b.digest()
                to_b, from_b = plan_exchange(da, db, MAX_RECORDS_PER_EXCHANGE, rng)
                sent[nid] += digest_bytes(da) + sum(len(a.held[x][1]) for x in to_b)
                sent[pid] += digest_bytes(db) + sum(len(b.held[x][1]) for x in from_b)
                _receive(b, {x: a.held[x] for x in to_b}, accept)
                _receive(a, {x: b.held[x] for x in from_b}, accept)
        traffic.extend(sent.values())
        if all(n.digest() == target for n in honest):
            return SimResult(len(ids), fanout, round_no, True, sum(traffic) / len(traffic),
                             max(traffic))
    return SimResult(len(ids), fanout, max_rounds, False, sum(traffic) / max(1, len(traffic)),
                     max(traffic, default=0))


def _receive(node: SimNode, records: Mapping[str, tuple[int, bytes]],
             accept: Callable[[str, bytes], bool] | None) -> None:
    for nid, (seq, envelope) in records.items():
        if accept is not None and not accept(nid, envelope):
            continue
        if node.held.get(nid, (0, b""))[0] < seq:
            node.held[nid] = (seq, envelope)
            node.peers.add(nid)


def log_bound(n: int, factor: float = 3.0) -> int:
    """The O(log n) round bound the tests hold gossip to."""
    return math.ceil(factor * math.log2(max(2, n)))

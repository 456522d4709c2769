"""Auditing peers: at random times, one fresh synthetic prompt run on a peer through the mesh
and on this node's own engine as ground truth, compared (compare.py), concluded (verdicts.py).

What the peer sees: an ordinary signed `/mesh/v1/chat/completions` from this node, the same
endpoint and body shape as a relayed user chat (no probe header), with a generated prompt.
It cannot tell from the headers or the path. The body varies (`audit_bodies`): greedy, with
or without a seed, with log-probabilities only half of the time, a length drawn each time, so
no field marks an audit: a cheat that answered honestly only when asked for logprobs is still
judged on its greedy text the other half (compare.py's text check against the local ground
truth, which always has them).

What this node does NOT do with an audit: it calls the transport directly, not through the
relay, so the audit is in none of this node's measurements, route observations or accounting.
The peer itself counts it like any request it serves: it cannot tell it from one.

Rate: one audit at a time per node, at exponentially distributed intervals (mean
`interval_s`, never under a tenth of it), so the peer cannot predict them; a short
`max_tokens` keeps each one cheap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from covey.mesh.peer_transport import PeerError, PeerTransport, peer_of
from covey.mesh.records import NodeRecord
from covey.router.table import ModelTable, ServedModel
from covey.types import EngineReady, ModelId
from covey.verify.checks import cheap_checks
from covey.verify.compare import DEFAULT, Answer, Comparison, Thresholds, compare, parse_answer
from covey.verify.fingerprint import ask, chat_body
from covey.verify.prompts import audit_prompt
from covey.verify.verdicts import VerdictBook

log = logging.getLogger(__name__)

AUDIT_TOKENS = (10, 16)  # max_tokens, drawn per audit
AUDIT_TOP_K = 5
MAX_AUDIT_ANSWER = 1024 * 1024


@dataclass(frozen=True)
class AuditResult:
    node_id: str
    model_id: str
    comparison: Comparison
    ms: float  # wall time of the whole audit (both sides)
    tokens: int  # completion tokens generated on both sides


def audit_bodies(model_id: str, prompt: str, rng: random.Random
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pure: the ground-truth body for this node's engine (always with logprobs) and the body
    sent to the peer (the same request; logprobs and a seed each only half of the time)."""
    local = chat_body(model_id, prompt, rng.randint(*AUDIT_TOKENS), AUDIT_TOP_K,
                      rng.randint(1, 2**31 - 1))
    peer = dict(local)
    if rng.random() < 0.5:
        del peer["logprobs"], peer["top_logprobs"]
    if rng.random() < 0.5:
        del peer["seed"]
    return local, peer


def targets(table: ModelTable, peers: list[NodeRecord]) -> list[tuple[NodeRecord, ServedModel]]:
    """Pure: the (peer, local model) pairs this node can audit: the peer claims a model id this
    node serves from its own file with a ready engine (its own file is the ground truth)."""
    out = []
    for record in peers:
        for ad in record.models:
            local = table.models.get(ModelId(ad.id))
            # An embedding model answers no chat: nothing to audit this way.
            if (local is not None and local.card.path is not None and ad.state == "ready"
                    and not local.card.embeddings_only
                    and isinstance(local.engine.state, EngineReady)):
                out.append((record, local))
    return out


class Auditor:
    """Audits peers until cancelled. `run()` is the loop; `audit()` is one audit."""

    def __init__(self, table: ModelTable, peers: Callable[[float], list[NodeRecord]],
                 transport: PeerTransport, book: VerdictBook, interval_s: float,
                 timeout_s: float, rng: random.Random | None = None,
                 thresholds: Thresholds = DEFAULT, local_sha: Callable[[str], str | None]
                 = lambda _: None,
                 observed: Callable[[str, str], list[float]] = lambda _n, _m: []) -> None:
        self.table = table
        self.peers = peers
        self.transport = transport
        self.book = book
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.rng = rng or random.Random()
        self.thresholds = thresholds
        self.local_sha = local_sha
        self.observed = observed  # decode speeds measured here on answers from (peer, model)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=5)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while True:
                # Random times (a peer cannot predict the next audit), never closer than a
                # tenth of the mean: the rate limit.
                await asyncio.sleep(max(self.interval_s / 10,
                                        self.rng.expovariate(1 / self.interval_s)))
                peers = self.peers(time.time())
                self.check(peers)
                pairs = targets(self.table, peers)
                if pairs:
                    record, model = self.rng.choice(pairs)
                    await self.audit(session, record, model)

    def check(self, peers: list[NodeRecord]) -> None:
        """The cheap checks of every claim the peers make (pure work, no traffic)."""
        claims = {(r.node_id, ad.id): r for r in peers for ad in r.models
                  if ad.state == "ready"}
        self.book.forget(set(claims))
        for (node_id, model_id), record in claims.items():
            self.book.note(node_id, model_id, cheap_checks(
                record, model_id, peers, self.observed(node_id, model_id)))

    async def audit(self, session: aiohttp.ClientSession, record: NodeRecord,
                    model: ServedModel) -> AuditResult | None:
        """One audit of `model` at `record`'s node; the verdict is recorded and logged."""
        state = model.engine.state
        if not isinstance(state, EngineReady):
            return None
        body, peer_body = audit_bodies(model.id, audit_prompt(self.rng), self.rng)
        started = time.perf_counter()
        # Both sides at once: the audit's wall time is the slower side's, not the sum.
        local, (peer, reason) = await asyncio.gather(
            self._ask_local(session, state.base_url, {**body, "model": model.upstream_name},
                            model.id),
            self._ask_peer(record, peer_body))
        if local is None:
            return None
        ms = (time.perf_counter() - started) * 1000
        if peer is None:
            comparison = Comparison("inconclusive", 0, 0, None, reason)
        else:
            comparison = compare(local, peer, self.thresholds)
        evidence = comparison.evidence()
        ad = next((a for a in record.models if a.id == model.id), None)
        ours = self.local_sha(model.id)
        if ad is not None and ad.sha256 and ours and ad.sha256 != ours:
            evidence += "; its published sha256 differs from ours"
        self.book.record(record.node_id, model.id, comparison.outcome, evidence,
                               time.time())
        # Named by id as well: machines often share a name (a hostname such as "vm").
        log.info("verify: audit of %s on %s (%s): %s (%s); verdict %s", model.id,
                 record.name or "?", record.node_id[:12], comparison.outcome, evidence,
                 self.book.status(record.node_id, model.id, time.time()))
        tokens = len(local.steps) + (len(peer.steps) if peer is not None else 0)
        return AuditResult(record.node_id, model.id, comparison, ms, tokens)

    async def _ask_local(self, session: aiohttp.ClientSession, base_url: str,
                         body: dict[str, Any], model_id: str) -> Answer | None:
        try:
            local = await ask(session, base_url, body)
        # Our own engine is restarting or busy: no ground truth, so no audit this time.
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("verify: no audit of %s this time: own engine did not answer (%s)",
                     model_id, type(exc).__name__)
            return None
        if local is None or not local.steps:
            log.warning("verify: no audit of %s: own engine's answer has no logprobs", model_id)
            return None
        return local

    async def _ask_peer(self, record: NodeRecord, body: dict[str, object]
                        ) -> tuple[Answer | None, str]:
        raw = json.dumps(body).encode()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with await self.transport.post(
                        peer_of(record), "/mesh/v1/chat/completions", raw,
                        timeout_s=self.timeout_s, max_bytes=MAX_AUDIT_ANSWER) as r:
                    status = r.status
                    data = await r.read()
        # The peer did not answer: that proves nothing about its model (health covers it).
        except (PeerError, aiohttp.ClientError, TimeoutError) as exc:
            return None, f"peer did not answer ({type(exc).__name__})"
        if status != 200:
            return None, f"peer answered HTTP {status}"
        try:
            answer = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            answer = None
        parsed = parse_answer(answer) if isinstance(answer, dict) else None
        if parsed is None:
            return None, "peer's answer is not a chat completion"
        return parsed, ""

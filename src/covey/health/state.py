"""One peer's health as a pure state machine: observations in, routing answers out.

`PeerState.observe(observation, now)` returns the next state; nothing here reads a clock,
sleeps or touches the network (`health/monitor.py` does that and feeds the results in). Three
kinds of observation:

- `CheapCheck`: layers 5–10 (roster, TCP, TLS pin, small and large authenticated probes,
  engines ready), run for every live peer every few seconds.
- `TokenProbe`: layer 11 for one model, a synthetic one-token chat across the exact path a
  prompt takes.
- `RealRequest`: a real request to one model on that peer: ok (it streamed an answer) or
  failed before its first byte.

The rules:

- The peer (its path) is up or down. `down_after` consecutive failures (cheap checks that
  fail below the engine layer, or real requests that failed before their first byte) mark it
  down; one success (a passing cheap check or a real request that streamed) marks it up. An
  engine that is down (layer 10) only rules out its model, which the record says too.
- A peer never checked is not usable, and neither is one whose last cheap check is older
  than `fresh_s` (the checker is stuck, so what we know is out of date).
- A lower layer's failure silences the layers above it (`layers.settle`): `why_not` and
  `report` name the first broken layer, not the noise above it.
- Each (peer, model) has a token proof. It needs re-proving (`wants_token_probe`) when it is
  missing or older than `token_stale_s`; a real request that streamed is proof too.
- A failed token probe schedules a re-probe after a backoff (`backoff_s`, doubling per
  consecutive failure, capped at `backoff_max_s`); the monitor re-probes a failing model on
  its own, with no traffic needed, so a model that recovers comes back. One success (probe or
  streamed real request) clears the failures and the backoff.
- The large probe (layer 9, 64 KiB) runs on a peer's first cheap check, after any cheap
  check whose path failed (a layer up to 9), and every `large_every` checks; the checks between
  reuse its last pass (`large_probe_due`). An MTU black hole belongs to the path, which seldom
  changes, and one 64 KiB probe per peer every 2 s was 32 KiB/s each way on an idle mesh.
- `down_after` consecutive token failures remove the model from routing, not one: the probe
  runs while real traffic is in flight, and a single timeout from a busy engine should not
  empty a one-server mesh for seconds. The first failure already schedules the quick
  re-probe (`backoff_s`), so a model that is truly broken is out within about `backoff_s`.
  Real requests that fail count against the peer, not the model: a busy peer answers them
  with a refusal, and that must not pull its model out for a backoff of up to a minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from covey.health import layers as L

TOKEN_STALE_S = 60.0


@dataclass(frozen=True)
class Policy:
    """How health judges a peer. Times in seconds, on the clock the caller passes as `now`."""

    down_after: int = 2  # consecutive failures that mark a peer down or remove a model
    fresh_s: float = 7.0  # a cheap check older than this no longer proves anything
    token_stale_s: float = TOKEN_STALE_S  # a token proof older than this is re-proved
    backoff_s: float = 2.0  # first wait before re-probing a model whose token probe failed
    backoff_max_s: float = 60.0  # the wait doubles per consecutive failure up to this
    large_every: int = 15  # cheap checks per large probe while the path passes (30 s at 2 s)

    def backoff(self, failures: int) -> float:
        """The wait after the `failures`-th consecutive token failure (1-based)."""
        doublings = min(max(failures - 1, 0), 32)  # capped: 2**32 × anything > any max
        return min(self.backoff_max_s, self.backoff_s * 2.0 ** doublings)


def large_probe_due(last_large: L.LayerResult | None, checks_since: int,
                    policy: Policy) -> bool:
    """Whether this cheap check sends the large probe. `last_large`: the layer-9 pass the
    previous checks reused (None: none, or the last check did not pass every layer)."""
    return last_large is None or not last_large.ok or checks_since >= policy.large_every


def large_kept(results: tuple[L.LayerResult, ...] | list[L.LayerResult], probed: bool,
               checks_since: int) -> tuple[L.LayerResult, int] | None:
    """After a cheap check: the layer-9 pass later checks may reuse, with the checks that
    have used it so far (`probed`: this check sent the large probe). None when the path
    failed at or below layer 9 (a check stops at its first failure): the next check probes
    afresh. A peer's engine that is down (layer 10) is not the path: a model stuck failing
    must not bring back a 64 KiB probe every round."""
    large = next((r for r in results if r.layer == 9), None)  # 9: the large probe
    if large is None or not large.ok:
        return None
    return (large, 1) if probed else (large, checks_since + 1)


@dataclass(frozen=True)
class CheapCheck:
    results: tuple[L.LayerResult, ...]


@dataclass(frozen=True)
class TokenProbe:
    model: str
    result: L.LayerResult  # layer 11


@dataclass(frozen=True)
class RealRequest:
    model: str
    ok: bool  # True: it streamed an answer; False: it failed before the first byte


Observation = CheapCheck | TokenProbe | RealRequest


@dataclass(frozen=True)
class ModelHealth:
    """The token proof of one model on one peer."""

    proved_at: float | None = None  # last time a token came back (probe or real traffic)
    failures: int = 0  # consecutive failed token probes
    last_failure: L.LayerResult | None = None
    retry_at: float | None = None  # no re-probe before this (backoff); None: no failure


def path_failure(results: tuple[L.LayerResult, ...] | list[L.LayerResult]
                 ) -> L.LayerResult | None:
    """The first failure below the engine layer: the peer as a whole is unreachable. An
    engine that is down (layer 10) only rules out its model, which the record says too."""
    return L.first_failure([r for r in results if r.layer < 10])


@dataclass(frozen=True)
class PeerState:
    policy: Policy = field(default_factory=Policy)
    results: tuple[L.LayerResult, ...] = ()  # the last cheap check, layers 5–10
    checked_at: float | None = None  # when the last cheap check finished
    failures: int = 0  # consecutive path failures (cheap checks and real requests)
    up: bool = False
    models: dict[str, ModelHealth] = field(default_factory=dict)  # replaced, never mutated

    # --- transitions --------------------------------------------------------------------

    def observe(self, observation: Observation, now: float) -> PeerState:
        """The state after `observation`, made at `now`."""
        if isinstance(observation, CheapCheck):
            checked = replace(self, results=observation.results, checked_at=now)
            failure = path_failure(observation.results)
            return checked._path_ok() if failure is None else checked._path_failed()
        if isinstance(observation, TokenProbe):
            if observation.result.ok:
                return self._proved(observation.model, now)
            return self._token_failed(observation.model, observation.result, now)
        if observation.ok:
            return self._proved(observation.model, now)._path_ok()
        return self._path_failed()

    def _path_ok(self) -> PeerState:
        return replace(self, failures=0, up=True)

    def _path_failed(self) -> PeerState:
        failures = self.failures + 1
        # A peer that never passed stays not-up; one that did goes down after `down_after`.
        return replace(self, failures=failures,
                       up=self.up and failures < self.policy.down_after)

    def _proved(self, model: str, now: float) -> PeerState:
        return replace(self, models={**self.models, model: ModelHealth(proved_at=now)})

    def _token_failed(self, model: str, result: L.LayerResult, now: float) -> PeerState:
        old = self.models.get(model, ModelHealth())
        failures = old.failures + 1
        new = ModelHealth(proved_at=old.proved_at, failures=failures, last_failure=result,
                          retry_at=now + self.policy.backoff(failures))
        return replace(self, models={**self.models, model: new})

    def forget_models(self, keep: set[str]) -> PeerState:
        """Drop the token state of models the peer no longer advertises."""
        if set(self.models) <= keep:
            return self
        return replace(self, models={m: h for m, h in self.models.items() if m in keep})

    # --- questions ----------------------------------------------------------------------

    def path_usable(self, now: float) -> bool:
        """Checked, fresh, and up: the path to the peer carries requests."""
        return (self.checked_at is not None and self.up
                and now - self.checked_at < self.policy.fresh_s)

    def removed(self, model: str) -> bool:
        """Too many consecutive token failures: no prompt goes there until one succeeds."""
        h = self.models.get(model)
        return h is not None and h.failures >= self.policy.down_after

    def usable(self, model: str, now: float) -> bool:
        """May a prompt for `model` go to this peer now?"""
        return self.path_usable(now) and not self.removed(model)

    def wants_token_probe(self, model: str, now: float) -> bool:
        """Should a one-token probe for `model` run now? Only over a usable path (a broken
        path fails every probe, and that is the path's fault, not the model's); after a
        failure, once the backoff has passed; otherwise when the proof is missing or stale."""
        if not self.path_usable(now):
            return False
        h = self.models.get(model)
        if h is None or (h.proved_at is None and h.failures == 0):
            return True
        if h.failures:
            return h.retry_at is None or now >= h.retry_at
        assert h.proved_at is not None
        return now - h.proved_at > self.policy.token_stale_s

    def failing_models(self) -> list[str]:
        """Models with a failed token probe not yet cleared: the monitor re-probes these."""
        return [m for m, h in self.models.items() if h.failures]

    def _token_layer(self, now: float) -> L.LayerResult | None:
        """Layer 11 as known: the first removed model's failure, else the newest proof."""
        for h in self.models.values():
            if h.failures >= self.policy.down_after and h.last_failure is not None:
                wait = max(0.0, (h.retry_at or now) - now)
                return L.failed(11, f"{h.last_failure.detail} ({h.failures} failures in a "
                                    f"row; next try in {wait:.0f}s)", h.last_failure.fix)
        proved = [h.proved_at for h in self.models.values() if h.proved_at is not None]
        if proved and self.up:
            return L.passed(11, f"a token came back {now - max(proved):.0f}s ago")
        return None

    def _settled(self, now: float) -> list[L.LayerResult]:
        token = self._token_layer(now)
        results = [r for r in self.results if r.layer != 11]
        return L.settle(results + ([token] if token else []), L.PEER_LAYERS)

    def why_not(self, model: str, now: float) -> str:
        """Why `usable(model, now)` is False, in words (the lowest broken layer first)."""
        if self.checked_at is None:
            return "not checked yet"
        h = self.models.get(model)
        token = None
        if h is not None and h.failures >= self.policy.down_after and h.last_failure:
            token = h.last_failure
        results = [r for r in self.results if r.layer != 11] + ([token] if token else [])
        failure = L.first_failure(L.settle(results, L.PEER_LAYERS))
        if failure is not None:
            return f"layer {failure.layer} ({failure.name}): {failure.detail}"
        if not self.up:
            return "recovering"
        return "checks are out of date" if now - self.checked_at >= self.policy.fresh_s \
            else "usable"

    def report(self, now: float) -> dict[str, Any]:
        """The JSON shape of this peer's health for /api/status and doctor (see
        `layers.report`); `checked_at` is on the caller's clock (the monitor uses wall time,
        which the status page compares with its own `now`)."""
        return L.report(self._settled(now), self.checked_at)

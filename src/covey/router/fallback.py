"""Falling back to an external provider when the mesh misses its targets or cannot serve.

`choose()` is pure: which provider (if any) may take a request for this model and tier from
this client now, and otherwise why not (`x-covey-fallback-status`):

    fallback-disabled   no provider has its key set (none configured, or the variable unset)
    not-mapped          no enabled provider maps this model for its tier
    over-budget         the client's (or every mapped provider's) hourly budget is spent
    not-needed          the mesh met the targets and served (set by the dispatcher)
    used                a provider served it
    provider-failed     a provider was tried and failed before its first byte; the mesh
                        served instead (or the client got the error naming both)

`Fallback` holds the providers, the budget and a relay handle per (provider, model).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from covey.metrics.samples import ModelMeter
from covey.router.budget import Budget
from covey.router.providers import ProviderConfig
from covey.router.table import ServedModel
from covey.types import EngineReady, EngineState, ModelCard, ModelId

DISABLED = "fallback-disabled"
NOT_MAPPED = "not-mapped"
OVER_BUDGET = "over-budget"
NOT_NEEDED = "not-needed"
USED = "used"
PROVIDER_FAILED = "provider-failed"


@dataclass(frozen=True)
class Choice:
    status: str  # USED when `provider` may be tried, else why not
    provider: ProviderConfig | None = None
    retry_after_s: float | None = None  # over budget: when the budget has room again


def choose(providers: Sequence[ProviderConfig], budget: Budget, model_id: str, tier: str,
           client: str, now: float) -> Choice:
    """The first enabled provider mapping `model_id` for `tier` that the budget allows."""
    enabled = [p for p in providers if p.enabled]
    if not enabled:
        return Choice(DISABLED)
    mapped = [p for p in enabled if model_id in p.models and tier in p.tiers]
    if not mapped:
        return Choice(NOT_MAPPED)
    waits = []
    for p in mapped:
        wait = budget.wait_s(client, p.name, now)
        if wait is None:
            return Choice(USED, p)
        waits.append(wait)
    return Choice(OVER_BUDGET, retry_after_s=max(1.0, min(waits)))


def client_key(authorization: str | None, remote: str | None, keyed: bool) -> str:
    """Whose budget a request spends: the API key's (hashed: never kept in memory as is)
    on a node with keys; else the client's address. On a node without keys a client could
    send any Authorization header, so it does not count there."""
    if keyed and authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:32]
    return "addr:" + (remote or "unknown")


class _ProviderEngine:
    """A provider as the relay sees it: always 'ready' at its base URL."""

    kind = "provider"
    pid = None

    def __init__(self, base_url: str) -> None:
        self.state: EngineState = EngineReady(base_url=base_url)


class Fallback:
    def __init__(self, providers: Sequence[ProviderConfig], budget: Budget, keyed: bool,
                 window_s: float = 3600.0) -> None:
        self.providers = tuple(providers)
        self.budget = budget
        self.keyed = keyed
        self.window_s = window_s
        self._models: dict[tuple[str, str], ServedModel] = {}

    def choose(self, model_id: str, tier: str, client: str, now: float) -> Choice:
        return choose(self.providers, self.budget, model_id, tier, client, now)

    def model(self, provider: ProviderConfig, model_id: str) -> ServedModel:
        """The relay's handle on `model_id` at `provider` (kept: its measurements persist)."""
        key = (provider.name, model_id)
        model = self._models.get(key)
        if model is None:
            card = ModelCard(id=ModelId(model_id), path=None, size_bytes=None,
                             quantization=None, architecture=None, context_length=None)
            model = ServedModel(
                card=card, engine=_ProviderEngine(provider.base_url),
                upstream_name=provider.models[model_id], slots=1_000_000, max_queue=0,
                meter=ModelMeter(window_s=self.window_s),
                served_by=f"provider:{provider.name}", source="provider",
                upstream_headers={"Authorization": f"Bearer {provider.key}"},
                first_byte_timeout_s=provider.timeout_s)
            self._models[key] = model
        return model

    def status(self, now: float) -> list[dict[str, object]]:
        return [{**p.public(), "used_in_window": self.budget.used(p.name, now),
                 "requests_ok": sum(m.meter.requests_ok for (n, _), m in self._models.items()
                                    if n == p.name)}
                for p in self.providers]

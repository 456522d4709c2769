"""The dispatcher with the SLA gate and an external fallback (router/dispatch.py).

The relay is a fake that answers or raises per target (a peer by name, or a provider): this
is about which way a request goes and what its headers say, not the bytes."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from covey.errors import Busy, CoveyError, ModelNotFound, Unavailable, UpstreamFailed
from covey.router.budget import Budget
from covey.router.dispatch import Dispatcher
from covey.router.fallback import Fallback
from covey.router.providers import ProviderConfig
from covey.router.proxy import Relay, UpstreamRejected
from covey.router.table import ModelTable, ServedModel
from covey.router.tiers import CAPACITY, DAILY, Targets, TierPolicy
from covey.types import NodeId
from tests.unit.test_dispatch import FakeMesh, peer_record

MODEL = "m-q4_k_m"
KEY = "sk-provider-secret"


class ScriptedRelay:
    """Each target (a peer's name, or `provider`) raises its scripted error or answers."""

    def __init__(self, script: Mapping[str, CoveyError | None]) -> None:
        self.script = script
        self.tried: list[str] = []
        self.bodies: list[bytes] = []
        self.upstream_headers: list[Mapping[str, str]] = []

    async def forward(self, request: web.Request, model: ServedModel, path: str, body: bytes,
                      stream: bool, headers: Mapping[str, str]) -> web.StreamResponse:
        who = model.peer.name if model.peer is not None else model.source
        self.tried.append(who)
        self.bodies.append(body)
        self.upstream_headers.append(model.upstream_headers)
        error = self.script.get(who)
        if error is not None:
            raise error
        return web.Response(status=200, headers=headers)


def _provider(key: str | None = KEY, tiers: tuple[str, ...] = (DAILY,),
              cap: int | None = None) -> ProviderConfig:
    return ProviderConfig(name="up", base_url="http://127.0.0.1:9/v1", key_env="UP_KEY",
                          models={MODEL: "their-model"}, hourly_cap=cap, tiers=tiers, key=key)


def _policy(tokens_per_s: float, tier: str = DAILY) -> TierPolicy:
    return TierPolicy(rules=((MODEL, tier),), targets={
        DAILY: Targets(3.0, tokens_per_s), CAPACITY: Targets(15.0, tokens_per_s)})


async def _go(peers: dict[str, float], script: dict[str, CoveyError | None], *,
              target_tps: float = 8.0, tier: str = DAILY,
              provider: ProviderConfig | None = None, per_client: int = 20,
              model: str = MODEL, requests: int = 1
              ) -> tuple[list[web.StreamResponse | CoveyError], ScriptedRelay]:
    relay = ScriptedRelay(script)
    fallback = (Fallback([provider], Budget(per_client, 3600.0,
                                            {provider.name: provider.hourly_cap}), keyed=False)
                if provider is not None else None)
    policy = _policy(target_tps, tier)
    records = [peer_record(n, t, ttft_ms=100.0) for n, t in peers.items()]
    dispatcher = Dispatcher(ModelTable(), cast(Relay, relay), cast(Any, FakeMesh(records)),
                            None, NodeId("entry"), "entry", random.Random(1),
                            tiers=lambda: policy, fallback=fallback)
    outcomes: list[web.StreamResponse | CoveyError] = []
    for _ in range(requests):
        data = {"model": model, "messages": [{"role": "user", "content": "hello there"}]}
        raw = json.dumps(data).encode()
        try:
            outcomes.append(await dispatcher.dispatch(
                make_mocked_request("POST", "/v1/chat/completions"), "chat/completions",
                model, data, raw, True, 16, [MODEL]))
        except CoveyError as exc:
            outcomes.append(exc)
    return outcomes, relay


def _headers(outcome: web.StreamResponse | CoveyError) -> Mapping[str, str]:
    return outcome.headers() if isinstance(outcome, CoveyError) else outcome.headers


async def test_meeting_the_targets_stays_on_the_mesh() -> None:
    (out,), relay = await _go({"a": 50.0}, {"a": None}, provider=_provider())
    assert relay.tried == ["a"]
    h = _headers(out)
    assert h["x-covey-sla-status"] == "meets-sla"
    assert h["x-covey-sla-tier"] == "daily-driver"
    assert h["x-covey-sla-candidates"] == "1"
    assert h["x-covey-sla-best-tps"] == "50.0" and h["x-covey-sla-best-ttft-ms"] == "100"
    assert h["x-covey-fallback-status"] == "not-needed"


async def test_a_miss_goes_to_the_provider_with_the_clients_own_request() -> None:
    (out,), relay = await _go({"a": 5.0}, {"a": None}, provider=_provider())
    assert relay.tried == ["provider"]
    h = _headers(out)
    assert h["x-covey-sla-status"] == "tps-too-low"
    assert h["x-covey-fallback-status"] == "used"
    assert h["x-covey-served-by"] == "provider:up"
    # Exactly the client's request, only the model renamed for the provider.
    assert json.loads(relay.bodies[0]) == {
        "model": "their-model", "messages": [{"role": "user", "content": "hello there"}]}
    assert relay.upstream_headers[0] == {"Authorization": f"Bearer {KEY}"}
    assert KEY not in json.dumps(dict(h))


async def test_over_budget_stays_on_the_mesh() -> None:
    outs, relay = await _go({"a": 5.0}, {"a": None}, provider=_provider(), per_client=2,
                            requests=3)
    assert relay.tried == ["provider", "provider", "a"]
    assert [_headers(o)["x-covey-fallback-status"] for o in outs] == [
        "used", "used", "over-budget"]
    assert _headers(outs[2])["x-covey-sla-status"] == "tps-too-low"


async def test_the_providers_hourly_cap_stays_on_the_mesh() -> None:
    outs, relay = await _go({"a": 5.0}, {"a": None}, provider=_provider(cap=1), requests=2)
    assert relay.tried == ["provider", "a"]
    assert _headers(outs[1])["x-covey-fallback-status"] == "over-budget"


@pytest.mark.parametrize(("provider", "tier", "status"), [
    (None, DAILY, "fallback-disabled"),
    (_provider(key=None), DAILY, "fallback-disabled"),  # its key variable is unset
    (_provider(), CAPACITY, "not-mapped"),  # capacity stays on the mesh by default
    (_provider(tiers=(DAILY, CAPACITY)), CAPACITY, "used"),  # unless the config says so
])
async def test_who_may_fall_back(provider: ProviderConfig | None, tier: str,
                                 status: str) -> None:
    (out,), relay = await _go({"a": 0.5}, {"a": None}, provider=provider, tier=tier)
    assert _headers(out)["x-covey-fallback-status"] == status
    assert relay.tried == (["provider"] if status == "used" else ["a"])


async def test_a_model_the_provider_does_not_map() -> None:
    provider = ProviderConfig(name="up", base_url="http://127.0.0.1:9/v1", key_env="K",
                              models={"other": "x"}, key=KEY)
    (out,), relay = await _go({"a": 5.0}, {"a": None}, provider=provider)
    assert relay.tried == ["a"] and _headers(out)["x-covey-fallback-status"] == "not-mapped"


async def test_a_provider_failing_before_its_first_byte_falls_back_to_the_mesh() -> None:
    outs, relay = await _go({"a": 5.0}, {"a": None, "provider": UpstreamFailed("refused")},
                            provider=_provider(), per_client=1, requests=2)
    # The failure did not spend the budget: the second request tries the provider again.
    assert relay.tried == ["provider", "a", "provider", "a"]
    assert [_headers(o)["x-covey-fallback-status"] for o in outs] == ["provider-failed"] * 2
    assert all(isinstance(o, web.Response) for o in outs)


async def test_no_node_serves_the_model_so_the_provider_does() -> None:
    (out,), relay = await _go({}, {}, provider=_provider())
    assert relay.tried == ["provider"]
    h = _headers(out)
    assert h["x-covey-sla-status"] == "no-peer-with-model"
    assert h["x-covey-sla-candidates"] == "0"
    assert h["x-covey-fallback-status"] == "used"


async def test_no_node_and_no_provider_is_a_404_with_the_gates_headers() -> None:
    (out,), _ = await _go({}, {})
    assert isinstance(out, ModelNotFound)
    assert out.headers()["x-covey-sla-status"] == "no-peer-with-model"
    assert out.headers()["x-covey-fallback-status"] == "fallback-disabled"


async def test_every_node_busy_goes_to_the_provider_even_when_the_gate_met() -> None:
    (out,), relay = await _go({"a": 50.0}, {"a": UpstreamRejected(429, "full")},
                              provider=_provider())
    assert relay.tried == ["a", "provider"]
    h = _headers(out)
    assert h["x-covey-sla-status"] == "meets-sla" and h["x-covey-fallback-status"] == "used"


async def test_every_node_busy_and_over_budget_is_a_clear_429() -> None:
    outs, relay = await _go({"a": 50.0}, {"a": UpstreamRejected(429, "full")},
                            provider=_provider(), per_client=1, requests=2)
    assert relay.tried == ["a", "provider", "a"]
    err = outs[1]
    assert isinstance(err, Busy) and err.code == "fallback_budget_exhausted"
    h = err.headers()
    assert 3500 <= int(h["Retry-After"]) <= 3600  # the budget refills in an hour
    assert h["x-covey-fallback-status"] == "over-budget"
    assert h["x-covey-sla-status"] == "meets-sla"


async def test_mesh_and_provider_both_failing_is_one_clear_error() -> None:
    (out,), relay = await _go({"a": 5.0}, {"a": UpstreamFailed("down"),
                                           "provider": UpstreamFailed("refused")},
                              provider=_provider())
    assert relay.tried == ["provider", "a"]
    assert isinstance(out, Unavailable) and out.code == "mesh_and_provider_failed"
    assert "provider up" in out.message and "a: down" in out.message
    assert out.headers()["x-covey-fallback-status"] == "provider-failed"
    assert out.headers()["x-covey-sla-status"] == "tps-too-low"


async def test_the_clients_own_error_from_the_provider_goes_back() -> None:
    (out,), relay = await _go({"a": 5.0}, {"provider": UpstreamRejected(400, "bad tools")},
                              provider=_provider())
    assert relay.tried == ["provider"]
    assert isinstance(out, UpstreamRejected)
    assert out.headers()["x-covey-sla-status"] == "tps-too-low"

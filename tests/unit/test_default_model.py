"""A request that names no model gets the best-served daily-driver model: through the
dispatcher (the mesh) and on a node's own engines (no mesh)."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any, cast

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.api.openai import OpenAIRoutes
from covey.mesh.records import NodeRecord, new_record
from covey.metrics.samples import ModelMeter
from covey.router.dispatch import Dispatcher
from covey.router.proxy import Relay
from covey.router.table import ModelTable, ServedModel
from covey.router.tiers import CAPACITY, DAILY, TierPolicy
from covey.types import EngineReady, ModelCard, ModelId, NodeId

POLICY = TierPolicy(rules=(("chat-*", DAILY), ("big-*", CAPACITY)))


def _peer(name: str, models: dict[str, float]) -> NodeRecord:
    return new_record(Ed25519PrivateKey.generate(), mesh_id="m", seq=1, now=time.time(),
                      ttl_s=60, name=name, addresses=[f"{name}:7070"],
                      tls_fingerprint="ab" * 32,
                      models=[{"id": m, "slots": 2, "state": "ready"} for m in models],
                      metrics={m: {"tokens_per_s_p50": tps, "ttft_ms_p50": 10.0, "samples": 5}
                               for m, tps in models.items()})


class FakeMesh:
    def __init__(self, records: list[NodeRecord]) -> None:
        self.records = records

    def peers(self, now: float) -> list[NodeRecord]:
        return self.records


class RecordingRelay:
    def __init__(self) -> None:
        self.models: list[str] = []

    async def forward(self, request: web.Request, model: ServedModel, path: str, body: bytes,
                      stream: bool, headers: Mapping[str, str],
                      measure: bool = True) -> web.StreamResponse:
        self.models.append(model.upstream_name)
        return web.Response(status=200)


async def _dispatch_without_a_model(records: list[NodeRecord], catalog: list[str]) -> str:
    relay = RecordingRelay()
    dispatcher = Dispatcher(ModelTable(), cast(Relay, relay), cast(Any, FakeMesh(records)),
                            None, NodeId("entry"), "entry", random.Random(1),
                            tiers=lambda: POLICY)
    await dispatcher.dispatch(cast(web.Request, None), "chat/completions", None, {}, b"{}",
                              True, 16, catalog)
    return relay.models[0]


async def test_no_model_gets_the_best_served_daily_driver() -> None:
    records = [_peer("big", {"big-72b": 90.0}),
               _peer("small", {"chat-small": 12.0, "other-1b": 80.0}),
               _peer("mid", {"chat-mid": 30.0})]
    # The catalog lists the capacity model first: the old choice would have been it.
    catalog = ["big-72b", "chat-small", "other-1b", "chat-mid"]
    assert await _dispatch_without_a_model(records, catalog) == "chat-mid"


async def test_without_a_daily_driver_the_first_in_the_catalog() -> None:
    records = [_peer("big", {"big-72b": 90.0}), _peer("small", {"other-1b": 80.0})]
    assert await _dispatch_without_a_model(records, ["other-1b", "big-72b"]) == "other-1b"


def _local(mid: str) -> ServedModel:
    class Ready:
        kind, pid = "llama.cpp", None
        state = EngineReady(base_url="http://127.0.0.1:1")

    card = ModelCard(id=ModelId(mid), path=None, size_bytes=None, quantization=None,
                     architecture=None, context_length=None)
    return ServedModel(card=card, engine=Ready(), upstream_name=mid, slots=1, max_queue=1,
                       meter=ModelMeter(window_s=60))


async def test_a_node_without_a_mesh_defaults_to_its_daily_driver() -> None:
    table = ModelTable()
    for mid in ("big-72b", "chat-small"):  # the table's own default is the first, big-72b
        table.add(_local(mid))
    relay = RecordingRelay()
    routes = OpenAIRoutes(table, cast(Relay, relay), NodeId("solo"), "solo",
                          tiers=lambda: POLICY)
    assert routes.default_model() == "chat-small"
    request = BodyOnly(b'{"messages": [{"role": "user", "content": "hi"}]}')
    await routes._generate(cast(web.Request, request), "chat/completions")
    assert relay.models == ["chat-small"]
    routes.tiers = TierPolicy  # no daily-driver model: the table's default, as before
    assert routes.default_model() == "big-72b"


class BodyOnly(dict[object, object]):
    """All the API reads of a request before it relays: its body (and the keys it sets on
    it, as on an aiohttp request)."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw
        self.headers: dict[str, str] = {}

    async def read(self) -> bytes:
        return self.raw

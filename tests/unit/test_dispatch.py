"""router/dispatch.py: the failover table, and the dispatcher walking its candidates.

Before the first byte, anything a node did (refused, busy, model gone, failed, silent)
moves on to the next candidate; only an error about the client's own request goes back.
After the first byte the relay has already answered (it ends a broken stream in-band), so
the dispatcher never tries another node. The relay here is a fake that raises or answers
per node: this is about the policy, not the bytes."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any, cast

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.errors import (
    BadRequest,
    Busy,
    CoveyError,
    Unavailable,
    UpstreamFailed,
)
from covey.mesh.records import NodeRecord, new_record
from covey.router.dispatch import Dispatcher, Verdict, judge
from covey.router.proxy import Relay, UpstreamRejected
from covey.router.table import ModelTable, ServedModel
from covey.types import NodeId
from covey.verify.verdicts import Policy, VerdictBook

MODEL = "m-q4_k_m"


@pytest.mark.parametrize(("error", "verdict"), [
    # The client's own request: every node would say the same.
    (UpstreamRejected(400, "bad field"), Verdict(try_next=False, peer_fault=False)),
    (UpstreamRejected(413, "too large"), Verdict(try_next=False, peer_fault=False)),
    (UpstreamRejected(422, "unprocessable"), Verdict(try_next=False, peer_fault=False)),
    (BadRequest("embeddings not served"), Verdict(try_next=False, peer_fault=False)),
    # A node's own state: next candidate, and not a broken path.
    (UpstreamRejected(429, "queue full"), Verdict(try_next=True, peer_fault=False, busy=True)),
    (UpstreamRejected(404, "model gone"), Verdict(try_next=True, peer_fault=False)),
    (UpstreamFailed("loading", upstream_status=503), Verdict(try_next=True, peer_fault=False)),
    (Busy("local queue full"), Verdict(try_next=True, peer_fault=False, busy=True)),
    (Unavailable("local engine loading"), Verdict(try_next=True, peer_fault=False)),
    # The path or the engine is broken: next candidate, and it counts against the node.
    (UpstreamRejected(403, "stale request time"), Verdict(try_next=True, peer_fault=True)),
    (UpstreamFailed("connection refused"), Verdict(try_next=True, peer_fault=True)),
    (UpstreamFailed("engine 500", upstream_status=500), Verdict(try_next=True, peer_fault=True)),
    (UpstreamFailed("engine 502", upstream_status=502), Verdict(try_next=True, peer_fault=True)),
])
def test_failover_table(error: CoveyError, verdict: Verdict) -> None:
    assert judge(error) == verdict


def peer_record(name: str, tps: float, ttft_ms: float = 10.0) -> NodeRecord:
    """A live record of a peer serving MODEL at `tps` tokens/s."""
    return new_record(Ed25519PrivateKey.generate(), mesh_id="m", seq=1, now=time.time(),
                      ttl_s=60, name=name, addresses=[f"{name}:7070"],
                      tls_fingerprint="ab" * 32,
                      models=[{"id": MODEL, "slots": 2, "state": "ready"}],
                      metrics={MODEL: {"tokens_per_s_p50": tps, "ttft_ms_p50": ttft_ms,
                                       "samples": 5}})


class FakeMesh:
    def __init__(self, records: list[NodeRecord]) -> None:
        self.records = records

    def peers(self, now: float) -> list[NodeRecord]:
        return self.records


class FakeHealth:
    def __init__(self) -> None:
        self.outcomes: list[tuple[str, bool]] = []

    def usable(self, node_id: str, model: str) -> bool:
        return True

    def about_to_use(self, record: NodeRecord, model: str) -> None:
        pass

    def request_done(self, node_id: str, model: str, ok: bool) -> None:
        self.outcomes.append((node_id, ok))


class ScriptedRelay:
    """Each node (by name) raises its scripted error, or answers 200 (the first byte)."""

    def __init__(self, script: Mapping[str, CoveyError | None]) -> None:
        self.script = script
        self.tried: list[str] = []

    async def forward(self, request: web.Request, model: ServedModel, path: str, body: bytes,
                      stream: bool, headers: Mapping[str, str]) -> web.StreamResponse:
        assert model.peer is not None
        self.tried.append(model.peer.name)
        error = self.script[model.peer.name]
        if error is not None:
            raise error
        return web.Response(status=200, headers=headers)


async def _dispatch(script: dict[str, CoveyError | None], verdicts: VerdictBook | None = None
                    ) -> tuple[web.StreamResponse | CoveyError, list[str], FakeHealth]:
    # Speeds make the order deterministic: fast, then mid, then slow.
    speeds = {"fast": 90.0, "mid": 50.0, "slow": 10.0}
    records = [peer_record(name, speeds[name]) for name in script]
    relay, health = ScriptedRelay(script), FakeHealth()
    # The seeded rng makes the order fixed (its draws skip the 5 % exploration).
    dispatcher = Dispatcher(ModelTable(), cast(Relay, relay), cast(Any, FakeMesh(records)),
                            cast(Any, health), NodeId("entry"), "entry", random.Random(1))
    dispatcher.verdicts = verdicts
    try:
        outcome: web.StreamResponse | CoveyError = await dispatcher.dispatch(
            cast(web.Request, None), "chat/completions", MODEL, {"model": MODEL}, b"{}",
            True, 16, [MODEL])
    except CoveyError as exc:
        outcome = exc
    return outcome, relay.tried, health


async def test_a_busy_node_is_skipped_for_one_with_room() -> None:
    outcome, tried, health = await _dispatch({"fast": UpstreamRejected(429, "full"),
                                              "mid": None, "slow": None})
    assert isinstance(outcome, web.Response) and outcome.status == 200
    assert tried == ["fast", "mid"]
    assert health.outcomes == [(outcome.headers["x-covey-served-by"].split()[0], True)]


async def test_every_node_busy_is_a_429_not_a_503() -> None:
    outcome, tried, _ = await _dispatch({"fast": UpstreamRejected(429, "full"),
                                         "mid": UpstreamRejected(429, "full")})
    assert isinstance(outcome, Busy) and outcome.retry_after
    assert tried == ["fast", "mid"]


async def test_the_clients_own_error_is_not_retried() -> None:
    outcome, tried, health = await _dispatch({"fast": UpstreamRejected(400, "bad tools"),
                                              "mid": None})
    assert isinstance(outcome, UpstreamRejected) and outcome.status == 400
    assert tried == ["fast"] and health.outcomes == []


async def test_only_broken_paths_count_against_a_node() -> None:
    outcome, tried, health = await _dispatch({
        "fast": UpstreamRejected(404, "model gone"), "mid": UpstreamFailed("refused"),
        "slow": None})
    assert isinstance(outcome, web.Response)
    assert tried == ["fast", "mid", "slow"]
    assert [ok for _, ok in health.outcomes] == [False, True]  # mid failed, slow served


async def test_after_the_first_byte_no_other_node_is_tried() -> None:
    """Once a node answered (the response started), a later break is the relay's to report
    in-band: the dispatcher returns that response and tries nobody else."""
    outcome, tried, _ = await _dispatch({"fast": None, "mid": None})
    assert isinstance(outcome, web.Response) and tried == ["fast"]


async def test_every_node_failing_is_a_503_naming_each() -> None:
    outcome, _, _ = await _dispatch({"fast": UpstreamFailed("refused"),
                                     "mid": UpstreamRejected(403, "stale")})
    assert isinstance(outcome, Unavailable) and outcome.code == "all_candidates_failed"
    assert "fast: refused" in outcome.message and "mid: stale" in outcome.message


async def test_a_peers_answer_says_whether_it_was_verified() -> None:
    outcome, tried, _ = await _dispatch({"fast": None}, VerdictBook(Policy()))
    assert isinstance(outcome, web.Response) and tried == ["fast"]
    assert outcome.headers["x-covey-verified"] == "unverified"

"""The router learns from real traffic: of two nodes serving one model, the measurably
slower one gets little traffic after a warm-up.

Fake backends (tests/fake_backend.py) stand in for engines here: the test needs two servers
whose speeds differ by a known, stable factor, which two real engines sharing this machine's
two cores cannot give.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tests.conftest import FakeBackend, NodeProcess, http, mesh_invite, wait_for

MODEL = "fake-model"


def test_slower_node_gets_less_traffic(start_node: Callable[..., NodeProcess],
                                       fake_backend: Callable[..., FakeBackend]) -> None:
    entry = start_node("--no-default-model", name="entry")
    entry.wait_listening()
    servers = {}
    for name, delay in (("fast", 0.01), ("slow", 0.06)):
        backend = fake_backend(models=MODEL, tokens=16, token_delay=delay)
        node = start_node("--no-default-model", "--no-baseline", "--backend", backend.url,
                          "--join", mesh_invite(entry), name=name)
        node.wait_listening()
        servers[node.status()["node"]["id"]] = name

    def both_ready() -> bool:
        row = next((r for r in entry.status()["catalog"] if r["id"] == MODEL), None)
        return row is not None and len(row["nodes"]) == 2

    wait_for(both_ready, 30, "the entry to see both servers ready")

    def chat() -> str:
        code, headers, body = http("POST", entry.url + "/v1/chat/completions", {
            "model": MODEL, "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})
        assert code == 200, body
        return servers[headers["x-covey-served-by"].split()[0]]

    # Warm-up: until each server has answered once, so the entry has measured both (a
    # never-measured node gets 20 % of requests until then).
    warm_up: Counter[str] = Counter()
    for _ in range(60):
        warm_up[chat()] += 1
        if len(warm_up) == 2:
            break
    assert len(warm_up) == 2, warm_up
    measured = Counter(chat() for _ in range(24))
    # 5 % exploration sends ~1 of 24 to the slow node; 6 or more would be a routing bug
    # (the chance of that by exploration alone is below 1e-3).
    assert measured["fast"] >= 19, (warm_up, measured)

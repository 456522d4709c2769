"""The fair-share queue sees who asks: a peer's relayed request is the peer's (never this
node's own), a client's request on the node itself is its own (router/fairshare.py).

A fake backend stands in for the engine: this is about the request path, not the engine.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import FakeBackend, NodeProcess, http, mesh_invite, wait_for

MODEL = "fake-model"


def _chat(url: str) -> int:
    status, _, _ = http("POST", url + "/v1/chat/completions", {
        "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    return status


def test_peer_requests_queue_as_the_peer_and_own_requests_as_own(
        start_node: Callable[..., NodeProcess],
        fake_backend: Callable[..., FakeBackend]) -> None:
    entry = start_node("--no-default-model", name="entry")
    entry.wait_listening()
    server = start_node("--no-default-model", "--no-baseline", "--backend",
                        fake_backend(models=MODEL, tokens=8, token_delay=0.01).url,
                        "--join", mesh_invite(entry), name="server")
    server.wait_listening()
    server.wait_ready(MODEL)
    wait_for(lambda: any(p["health"]["ok"] and p["models"] for p in entry.status()["peers"]),
             30, "the entry to prove the server")

    def waits() -> dict[str, dict[str, int]]:
        return server.model(MODEL)["queue_wait_ms"]

    assert _chat(entry.url) == 200  # relayed by the entry: the entry's request
    assert waits()["own"]["count"] == 0
    assert waits()["rest"]["count"] >= 1  # no ledger yet: a peer's standing is unknown
    assert _chat(server.url) == 200
    assert waits()["own"]["count"] == 1

"""The mesh share counts what the test sent, by who answered, and survives a restart.

An entry and one peer on loopback, each with a fake backend (tests/fake_backend.py) serving
its own model: the entry answers one model itself and relays the other to the peer. This is
about accounting, not networks or engines, so loopback and fake backends (which report
exact prompt and completion tokens) are enough. No provider fallback exists on this
branch: "provider" counts are covered by the unit tests (tests/unit/test_share.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import FakeBackend, NodeProcess, http, mesh_invite, wait_for

LOCAL, REMOTE = "local-model", "peer-model"
LOCAL_TOKENS, REMOTE_TOKENS = 5, 7  # each fake backend's completion length


def _chat(node: NodeProcess, model: str, stream: bool) -> str:
    """Send one chat; returns the id of the node that served it."""
    code, headers, body = http("POST", node.url + "/v1/chat/completions", {
        "model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    assert code == 200, body
    assert not stream or "[DONE]" in body, body
    return headers["x-covey-served-by"].split()[0]


def _counts(window: dict[str, Any]) -> dict[str, Any]:
    """A window without its start time (an hour may turn during the test)."""
    return {k: v for k, v in window.items() if k != "since"}


def test_mesh_share_counts_what_was_sent_and_survives_a_restart(
        start_node: Callable[..., NodeProcess],
        fake_backend: Callable[..., FakeBackend]) -> None:
    local_backend = fake_backend(models=LOCAL, tokens=LOCAL_TOKENS, token_delay=0.001)
    remote_backend = fake_backend(models=REMOTE, tokens=REMOTE_TOKENS, token_delay=0.001)
    entry_args = ("--no-default-model", "--no-baseline", "--backend", local_backend.url)
    entry = start_node(*entry_args, name="entry")
    entry.wait_listening()
    peer = start_node("--no-default-model", "--no-baseline", "--backend", remote_backend.url,
                      "--join", mesh_invite(entry), name="peer")
    peer.wait_listening()
    peer_id = peer.status()["node"]["id"]

    def meshed() -> bool:
        status = entry.status()
        rows = {r["id"]: r for r in status["catalog"]}
        health = next((p.get("health") or {} for p in status["peers"]
                       if p["id"] == peer_id), {})
        return (LOCAL in rows and REMOTE in rows and health.get("ok") is True
                and entry.model(LOCAL)["state"] == "ready")

    wait_for(meshed, 60, "the entry to serve its model and reach the peer's")

    # No traffic yet: counts of zero and no share (never 0 % or 100 %).
    before = entry.status()["mesh_share"]
    for window in before.values():
        assert window["requests"]["total"] == 0
        assert window["share_by_requests"] is None and window["share_by_tokens"] is None

    sent = [(LOCAL, True), (LOCAL, True), (LOCAL, False),
            (REMOTE, True), (REMOTE, False), (REMOTE, False)]
    entry_id = entry.status()["node"]["id"]
    for model, stream in sent:
        assert _chat(entry, model, stream) == (entry_id if model == LOCAL else peer_id)

    share = entry.status()["mesh_share"]
    for window in share.values():
        assert window["requests"] == {"local": 3, "peer": 3, "provider": 0, "mesh": 6,
                                      "total": 6}
        # The fake backends report 1 prompt token and their completion length per answer.
        assert window["prompt_tokens"] == {"local": 3, "peer": 3, "provider": 0, "mesh": 6,
                                           "total": 6}
        assert window["completion_tokens"]["local"] == 3 * LOCAL_TOKENS
        assert window["completion_tokens"]["peer"] == 3 * REMOTE_TOKENS
        # A node that never fell back: 100 %, with its counts.
        assert window["share_by_requests"] == 1.0 and window["share_by_tokens"] == 1.0
    # The peer answered three of them for the entry: the entry counted them, the peer not.
    peer_share = peer.status()["mesh_share"]["24h"]
    assert peer_share["requests"]["total"] == 0 and peer_share["share_by_requests"] is None
    code, _, metrics = http("GET", entry.url + "/metrics")
    assert code == 200
    assert 'covey_mesh_share_ratio{by="requests",window="24h"} 1.0' in metrics
    assert 'covey_mesh_share_requests{source="peer",window="7d"} 3.0' in metrics

    # Restart the entry on the same data dir: the history is still there, unchanged.
    assert entry.stop() == 0
    again = start_node(*entry_args, name="entry", data_dir=entry.data_dir)
    again.wait_listening()
    after = again.status()["mesh_share"]
    assert {k: _counts(w) for k, w in after.items()} == {k: _counts(w)
                                                         for k, w in share.items()}

"""Tiers across real node processes: the creator's policy gossips to a member, signed; the
member only tightens it; /v1/models and /api/status show each model's tier; a request that
names no model gets the best-served daily-driver model.

Fake backends (tests/fake_backend.py) stand in for engines: this is about the policy and
the choice, not the tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.conftest import FakeBackend, NodeProcess, http, mesh_invite, wait_for


def _models(node: NodeProcess) -> dict[str, dict[str, Any]]:
    code, _, body = http("GET", node.url + "/v1/models")
    assert code == 200, body
    return {m["id"]: m["covey"] for m in body["data"]}


def test_the_creators_policy_reaches_members_who_only_tighten(
        start_node: Callable[..., NodeProcess],
        fake_backend: Callable[..., FakeBackend]) -> None:
    creator = start_node("--no-default-model", "--tier", "chat-*=daily-driver",
                         "--tier", "big-*=capacity", "--daily-driver-ttft-s", "5",
                         name="creator")
    creator.wait_listening()
    backend = fake_backend(models="big-72b,chat-small,odd-1b", tokens=4, token_delay=0.01)
    # The member would loosen chat-small to experimental (ignored) and asks a stricter
    # daily-driver speed (honoured); its TTFT target stays at the default, so the creator's
    # looser 5 s stands.
    member = start_node("--no-default-model", "--no-baseline", "--backend", backend.url,
                        "--tier", "chat-small=experimental", "--tier", "odd-*=daily-driver",
                        "--daily-driver-tokens-per-s", "20",
                        "--join", mesh_invite(creator), name="member")
    member.wait_listening()

    def member_adopted() -> bool:
        return _models(member).get("big-72b", {}).get("tier") == "capacity"

    wait_for(member_adopted, 30, "the member to adopt the creator's tier policy")
    mine = _models(member)
    assert mine["chat-small"]["tier"] == "daily-driver"
    assert mine["chat-small"]["targets"] == {"ttft_s": 5.0, "tokens_per_s": 20.0}
    assert mine["odd-1b"]["tier"] == "daily-driver"  # the member's own, stricter move
    assert mine["big-72b"]["targets"] == {"ttft_s": 15.0, "tokens_per_s": 0.8}
    status = member.status()
    local = {m["id"]: m for m in status["models"]}
    assert local["big-72b"]["tier"] == "capacity"
    assert {r["id"]: r["tier"] for r in status["catalog"]}["chat-small"] == "daily-driver"
    shown = subprocess.run([sys.executable, "-m", "covey", "status", "--url", member.url],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any("big-72b" in line and "capacity" in line for line in lines), shown.stdout
    assert any("chat-small" in line and "≤ 5 s TTFT, ≥ 20 tok/s" in line for line in lines)

    def creator_lists_all() -> bool:
        return len(_models(creator)) == 3

    wait_for(creator_lists_all, 30, "the creator to list the member's models")
    theirs = _models(creator)
    assert theirs["odd-1b"]["tier"] == "experimental"  # a member's rules stay its own
    assert theirs["chat-small"]["targets"] == {"ttft_s": 5.0, "tokens_per_s": 8.0}
    # No model named: the one daily-driver model, not the first listed (big-72b).
    assert creator.status()["default_model"] == "chat-small"
    code, _, body = http("POST", creator.url + "/v1/chat/completions", {
        "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert code == 200, body
    assert body["model"] == "chat-small"

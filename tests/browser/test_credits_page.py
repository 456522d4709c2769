"""The status page shows each member's credits (issue 15): the keeper's published balance, and
what this node's own ledger says the member gave and used; in headless Chromium against one
real node, fed a peer and ledger figures through /api/status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from tests.conftest import NodeProcess

pytestmark = [pytest.mark.browser]

GIVER, TAKER, STRANGER = "g" * 52, "t" * 52, "s" * 52


def _peer(node_id: str, name: str, now: float) -> dict[str, Any]:
    return {"id": node_id, "name": name, "addresses": ["10.0.0.2:7070"], "hardware": {},
            "last_seen": now - 1, "expires_at": now + 60, "health": {"ok": True},
            "models": []}


def test_credits_per_member(page: Page, start_node: Callable[..., NodeProcess]) -> None:
    node = start_node("--no-default-model", "--node-name", "keeper")
    node.wait_listening()

    def fed(route: Route) -> None:
        response = route.fetch()
        status = response.json()
        now = status["node"]["started_at"] + status["node"]["uptime_s"]
        status["peers"] = [_peer(GIVER, "giver", now), _peer(TAKER, "taker", now),
                           _peer(STRANGER, "<b>new</b>", now)]
        status["ledger"] = {"keeper": "k" * 52,
                            "local": {GIVER: {"given": 12.5, "used": 2.25, "balance": 10.25},
                                      TAKER: {"given": 0.0, "used": 4.0, "balance": -4.0}},
                            "published": {GIVER: 11.0, TAKER: -4.0}}
        route.fulfill(response=response, json=status)

    page.route("**/api/status", fed)
    page.goto(node.url + "/status")
    giver = page.locator(f'#peers tr[data-peer="{GIVER}"] td.credits')
    expect(giver.locator(".credit-balance")).to_have_text("11.000", timeout=10_000)
    expect(giver.locator(".credit-flow")).to_have_text("gave 12.500 · used 2.250")
    taker = page.locator(f'#peers tr[data-peer="{TAKER}"] td.credits')
    expect(taker.locator(".credit-balance")).to_have_text("-4.000")
    expect(taker.locator(".credit-balance")).to_have_class("credit-balance warn-text")
    expect(page.locator(f'#peers tr[data-peer="{STRANGER}"] td.credits')).to_have_text("—")

"""The status page shows this node's audit verdicts (issue 14), in headless Chromium against
one real node (no engine, no peer): the node's verify mode from its own /api/status, then,
fed a peer and its verdicts through /api/status, a badge per peer and model with the
evidence, "demoted until HH:MM" in enforce mode, and the peer's words as text."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from tests.conftest import NodeProcess

pytestmark = [pytest.mark.browser]

PEER = "p" * 52
GEMMA, SMOL, EVIL = "gemma-3-270m-q4_k_m", "smollm2-135m-instruct-q4_1", "<img src=x>"
EVIDENCE = "top-1 differs at step 1 (no local tie); top-1 0/1; mean |dlogprob| n/a"


def _peer(now: float) -> dict[str, Any]:
    return {"id": PEER, "name": "mallory", "addresses": ["10.0.0.2:7070"],
            "hardware": {"ram_bytes": 8 << 30, "gpu_bytes": None}, "last_seen": now - 1,
            "expires_at": now + 60, "health": {"ok": True, "checked_at": now - 1},
            "models": [{"id": m, "state": "ready"} for m in (GEMMA, SMOL, EVIL)]}


def _entry(model: str, status: str, now: float, **kw: Any) -> dict[str, Any]:
    return {"node_id": PEER, "model": model, "status": status, "audits": 3, "passes": 0,
            "fails": 0, "fails_in_row": 0, "inconclusive": 0, "evidence": "",
            "last_audit_at": now - 30, "demoted_until": None, "demotions": 0, **kw}


def test_verdicts_show_per_peer_and_model(page: Page,
                                          start_node: Callable[..., NodeProcess]) -> None:
    node = start_node("--no-default-model", "--node-name", "auditor")
    node.wait_listening()
    mode = node.status()["verification"]["mode"]
    page.goto(node.url + "/status")
    # The node's own mode, unfed: observe unless the profile turns it off.
    expect(page.locator("#node-facts .verify-mode")).to_have_text(mode, timeout=10_000)

    feed: dict[str, Any] = {"mode": "enforce"}

    def fed(route: Route) -> None:
        response = route.fetch()
        status = response.json()
        now = status["node"]["started_at"] + status["node"]["uptime_s"]
        status["peers"] = [_peer(now)]
        status["verification"] = {"mode": feed["mode"], "fails_to_suspect": 3, "peers": [
            _entry(GEMMA, "suspect", now, fails=3, fails_in_row=3, evidence=EVIDENCE,
                   demoted_until=now + 600, demotions=1),
            _entry(EVIL, "verified", now, passes=3, evidence=EVIL),
            _entry("retired-model", "inconclusive", now, inconclusive=3,
                   evidence="peer did not answer (TimeoutError); top-1 0/0; mean |dlogprob| "
                            "n/a")]}
        route.fulfill(response=response, body=json.dumps(status))

    page.route("**/api/status", fed)
    page.reload()
    expect(page.locator("#node-facts .verify-mode")).to_have_text("enforce", timeout=10_000)
    cell = page.locator(f'#peers tr[data-peer="{PEER}"] td.verified')
    gemma = cell.locator(f'.verdict-line[data-model="{GEMMA}"]')
    expect(gemma.locator(".verdict")).to_have_text("suspect", timeout=10_000)
    expect(gemma.locator(".verdict")).to_have_class(re.compile(r"\bverdict-suspect\b"))
    expect(gemma.locator(".demoted")).to_have_text(re.compile(r"^demoted until \d\d:\d\d$"))
    expect(gemma.locator(".verdict-evidence")).to_have_text(EVIDENCE)
    expect(gemma.locator(".verdict")).to_have_attribute(
        "title", re.compile(r"^3 audits: 0 passed · 3 failed · 0 inconclusive · last audit"))
    smol = cell.locator(f'.verdict-line[data-model="{SMOL}"]')
    expect(smol.locator(".verdict")).to_have_text("unverified")  # claimed, never audited
    expect(smol.locator(".verdict")).to_have_attribute("title", re.compile("no audit yet"))
    # Audited earlier, no longer claimed: still listed.
    retired = cell.locator('.verdict-line[data-model="retired-model"]')
    expect(retired.locator(".verdict")).to_have_text("inconclusive")
    # The peer's words (a model id) and the evidence render as text, never as markup.
    expect(cell.locator(".verdict-verified")).to_have_count(1)
    expect(cell).to_contain_text(EVIL)
    assert page.locator("img").count() == 0

    feed["mode"] = "off"
    expect(cell).to_have_text("not audited (verify off)", timeout=10_000)
    expect(page.locator("#node-facts .verify-mode")).to_have_text("off")

"""The status page's two mesh-share cards (24 h, 7 d) in headless Chromium: "no traffic yet"
before any request, then 100 % with the counts of a node that never fell back; fed other
shares through /api/status, a share that is not whole never reads 100 %, and a node without
counts says so.

One node with a fake backend (tests/fake_backend.py): the cards are about counts, not speed,
so no engine is needed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import screenshot
from tests.conftest import FakeBackend, NodeProcess, http, wait_for

pytestmark = [pytest.mark.browser]

MODEL = "fake-model"


@pytest.fixture
def node(start_node: Callable[..., NodeProcess],
         fake_backend: Callable[..., FakeBackend]) -> Iterator[NodeProcess]:
    backend = fake_backend(models=MODEL, tokens=4, token_delay=0.001)
    node = start_node("--no-default-model", "--no-baseline", "--backend", backend.url)
    node.wait_listening()
    wait_for(lambda: (m := node.find_model(MODEL)) is not None and m["state"] == "ready",
             30, "the backend's model to be listed")
    yield node


def _chat(node: NodeProcess, stream: bool) -> None:
    code, _, body = http("POST", node.url + "/v1/chat/completions", {
        "model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    assert code == 200, body


def test_cards_say_no_traffic_then_show_the_share_and_counts(page: Page,
                                                             node: NodeProcess) -> None:
    page.goto(node.url + "/")
    for card in ("#share-24h", "#share-7d"):
        expect(page.locator(card)).to_contain_text("no traffic yet", timeout=10_000)
        expect(page.locator(card)).not_to_contain_text("%")
    _chat(node, stream=True)
    _chat(node, stream=False)
    for card in ("#share-24h", "#share-7d"):
        # The page polls every 2 s: the counts arrive without a reload.
        expect(page.locator(f"{card} .share-value")).to_have_text("100 %", timeout=10_000)
        expect(page.locator(f"{card} .share-tokens")).to_have_text("100 %")
        expect(page.locator(f"{card} .share-requests")).to_have_text(
            "2: 2 this node · 0 peers · 0 provider")
        # 1 prompt + 4 completion tokens per answer from the fake backend.
        expect(page.locator(f"{card} .share-token-counts")).to_have_text(
            "10: 10 this node · 0 peers · 0 provider")
    screenshot(page, "status-share")


def _window(local: int, provider: int, share: float | None,
            by_tokens: float | None) -> dict[str, Any]:
    counts = {"local": local, "peer": 0, "provider": provider, "mesh": local,
              "total": local + provider}
    zero = dict.fromkeys(counts, 0)
    return {"window_s": 86400, "since": 0, "requests": counts, "prompt_tokens": zero,
            "completion_tokens": zero, "share_by_requests": share,
            "share_by_tokens": by_tokens}


def test_cards_never_round_to_whole_and_say_what_is_missing(page: Page,
                                                            node: NodeProcess) -> None:
    fed: dict[str, Any] = {"24h": _window(999, 1, 0.999, None),
                           "7d": _window(1, 999, 0.001, None)}

    def share(route: Route) -> None:
        response = route.fetch()
        status = response.json()
        status["mesh_share"] = fed
        route.fulfill(response=response, body=json.dumps(status))

    page.route("**/api/status", share)
    page.goto(node.url + "/")
    expect(page.locator("#share-24h .share-value")).to_have_text("99.9 %", timeout=10_000)
    expect(page.locator("#share-7d .share-value")).to_have_text("0.1 %")
    # Requests but no token counts: the token share is missing, not 0 %.
    expect(page.locator("#share-24h .share-tokens")).to_have_text("no measurement yet")
    expect(page.locator("#share-7d .share-requests")).to_have_text(
        "1,000: 1 this node · 0 peers · 999 provider")
    fed.clear()
    fed.update({"24h": None})  # a window missing: said in words
    expect(page.locator("#share-24h")).to_contain_text("not counted on this node",
                                                        timeout=10_000)
    expect(page.locator("#share-7d")).to_contain_text("not counted on this node")

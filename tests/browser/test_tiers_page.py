"""Tiers on the pages, in headless Chromium against a real node whose models come from a fake
backend (no engines): the status page shows each model's tier and groups capacity models
behind a toggle with their expected speed; the chat page picks the daily-driver default."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import FakeBackend, NodeProcess, http, wait_for

pytestmark = [pytest.mark.browser]

DAILY, BIG, HUGE, ODD = "chat-small", "big-72b", "huge-405b", "odd-1b"


@pytest.fixture
def node(start_node: Callable[..., NodeProcess],
         fake_backend: Callable[..., FakeBackend]) -> NodeProcess:
    # The capacity models come first: the table's own default would be big-72b.
    backend = fake_backend(models=f"{BIG},{HUGE},{ODD},{DAILY}", tokens=6, token_delay=0.01)
    node = start_node("--no-default-model", "--no-baseline", "--backend", backend.url,
                      "--tier", "chat-*=daily-driver", "--tier", "big-*=capacity",
                      "--tier", f"{HUGE}=capacity", "--node-name", "tiers")
    node.wait_listening()
    wait_for(lambda: len(node.status()["catalog"]) == 4, 30, "the node to list 4 models")
    return node


def test_status_page_groups_capacity_models(page: Page, node: NodeProcess) -> None:
    code, _, body = http("POST", node.url + "/v1/chat/completions", {
        "model": BIG, "max_tokens": 6, "messages": [{"role": "user", "content": "hi"}]})
    assert code == 200, body
    page.goto(node.url + "/status")
    daily = page.locator(f'#catalog tr[data-model="{DAILY}"]')
    expect(daily.locator(".tier")).to_have_text("daily-driver", timeout=10_000)
    expect(daily.locator(".targets")).to_have_text("≤ 3 s TTFT · ≥ 8 tok/s")
    expect(daily.locator(".default-mark")).to_have_text("default")
    expect(page.locator(f'#catalog tr[data-model="{ODD}"] .tier')).to_have_text("experimental")
    big = page.locator(f'#catalog tr[data-model="{BIG}"]')
    huge = page.locator(f'#catalog tr[data-model="{HUGE}"]')
    expect(big).to_be_hidden()
    expect(huge).to_be_hidden()
    toggle = page.locator("#capacity-toggle")
    expect(toggle).to_have_text("show 2 capacity models")
    # Their expected speed is on the toggle's row: measured for big-72b, none yet for huge.
    speeds = page.locator("#catalog .capacity-speeds")
    expect(speeds).to_contain_text(re.compile(rf"{BIG} \d+(\.\d+)? tok/s"))
    expect(speeds).to_contain_text(f"{HUGE} no measurement yet")
    # Daily-driver rows come first, the capacity group last.
    order = page.locator("#catalog tbody tr[data-model]").evaluate_all(
        "rows => rows.map(r => r.dataset.model)")
    assert order[0] == DAILY and set(order[2:]) == {BIG, HUGE}, order
    toggle.click()
    expect(big).to_be_visible()
    expect(huge.locator(".expected")).to_have_text("expected no measurement yet")
    expect(big.locator(".tier")).to_have_text("capacity")
    expect(big.locator(".targets")).to_have_text("≤ 15 s TTFT · ≥ 0.8 tok/s")
    expect(toggle).to_have_text("hide 2 capacity models")
    # The page redraws every 2 s: the group stays open across redraws.
    uptime = page.locator("#node-facts").inner_text()
    expect(page.locator("#node-facts")).not_to_have_text(uptime, timeout=10_000)
    expect(big).to_be_visible()
    toggle.click()
    expect(big).to_be_hidden()


def test_chat_page_picks_the_daily_driver(page: Page, node: NodeProcess) -> None:
    page.goto(node.url + "/chat")
    expect(page.locator("#model")).to_have_value(DAILY, timeout=10_000)
    expect(page.locator(f'#model option[value="{BIG}"]')).to_contain_text("capacity")

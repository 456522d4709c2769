"""The status and chat pages in headless Chromium against real node processes: live catalog
and peers, streamed chat with who served it, Stop freeing the server's slot, a dead peer's
named failure, and the API-key login.

The tests share one two-node mesh and run in file order: the last mesh test kills the server.
Regenerate docs/screenshots/: `COVEY_SCREENSHOTS=1 .venv/bin/python -m pytest tests/browser`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import BASE_MODEL, MODEL, Mesh, screenshot
from tests.conftest import NodeProcess, http, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.browser]

RATE = re.compile(r"^\d+(\.\d+)? tok/s$")


def _chat(node: NodeProcess, max_tokens: int = 6) -> None:
    code, _, body = http("POST", node.url + "/v1/chat/completions",
                         {"model": MODEL, "stream": True, "max_tokens": max_tokens,
                          "messages": [{"role": "user", "content": "Say hello"}]})
    assert code == 200 and "[DONE]" in body, body


def _in_flight(node: NodeProcess, model: str = MODEL) -> int:
    return int(node.model(model)["in_flight"])


def test_whole_answers_alone_fill_the_catalogs_speed(page: Page, mesh: Mesh) -> None:
    """Many clients never stream. Whole answers alone (the first traffic this mesh sees) fill
    the catalog's tokens/s, from llama.cpp's timings relayed by the serving node; the TTFT
    cell says that only streamed answers have a first token to time."""
    for _ in range(2):
        code, _, body = http("POST", mesh.entry.url + "/v1/chat/completions",
                             {"model": MODEL, "max_tokens": 8,
                              "messages": [{"role": "user", "content": "Say hello"}]})
        assert code == 200 and body["usage"]["completion_tokens"] >= 2, body
    page.goto(mesh.entry.url + "/")
    row = page.locator(f'#catalog tr[data-model="{MODEL}"]')
    expect(row.locator(".tps .rate")).to_have_text(RATE, timeout=10_000)
    expect(row.locator(".tps")).to_contain_text("2 samples")
    expect(row.locator(".tps .sources")).to_have_text("2 engine timings")
    expect(row.locator(".ttft")).to_contain_text("streamed only")
    # The test profile's baseline is 8 tokens long, so 4–16-token answers compare with it.
    expect(row.locator(".efficiency .eff-samples")).to_contain_text("2 comparable samples")


def test_status_page_shows_catalog_and_peers(page: Page, mesh: Mesh) -> None:
    for _ in range(3):  # real traffic through the entry: what the catalog measures
        _chat(mesh.entry)
    page.goto(mesh.entry.url + "/")
    expect(page.locator("#node-name")).to_have_text("entry", timeout=10_000)
    row = page.locator(f'#catalog tr[data-model="{MODEL}"]')
    expect(row.locator(".tps .rate")).to_have_text(RATE, timeout=10_000)
    expect(row.locator(".tps")).to_contain_text("samples")
    expect(row.locator(".ttft")).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))
    expect(row.locator("svg.spark")).to_be_visible()
    expect(row).to_contain_text("server")
    peer = page.locator(f'#peers tr[data-peer="{mesh.server_id}"]')
    expect(peer).to_contain_text("server", timeout=10_000)
    expect(peer).to_contain_text(mesh.server_id[:8])
    expect(peer.locator('td[data-label="Memory"]')).to_have_text(re.compile(r"RAM \d"))
    expect(peer.locator(".health")).to_contain_text("✓", timeout=15_000)
    expect(page.locator("#local")).to_contain_text("serves no models itself")
    # Live: the page redraws from /api/status without a reload.
    uptime = page.locator("#node-facts").inner_text()
    expect(page.locator("#node-facts")).not_to_have_text(uptime, timeout=10_000)
    screenshot(page, "status")


def test_chat_streams_and_names_the_server(page: Page, mesh: Mesh) -> None:
    page.goto(mesh.entry.url + "/chat")
    expect(page.locator("#model")).to_have_value(MODEL, timeout=10_000)
    page.fill("#max-tokens", "12")
    page.fill("#prompt", "Write one short sentence about rain.")
    page.click("#send")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".bubble")).to_have_text(re.compile(r"\S"), timeout=30_000)
    expect(answer).to_have_class(re.compile(r"\bdone\b"), timeout=30_000)
    meta = answer.locator(".meta")
    expect(meta.locator(".served-by")).to_contain_text(mesh.server_id)
    expect(meta).to_contain_text("TTFT")
    expect(meta).to_contain_text("tok/s")
    expect(page.locator("#send")).to_be_enabled()
    screenshot(page, "chat")


def test_stop_ends_the_stream_and_frees_the_slot(page: Page, mesh: Mesh) -> None:
    assert _in_flight(mesh.server, BASE_MODEL) == 0
    page.goto(mesh.entry.url + "/chat")
    expect(page.locator("#model")).to_have_value(MODEL, timeout=10_000)
    # The chat model may finish a count before Stop is pressed; a base model does not.
    page.select_option("#model", BASE_MODEL)
    page.fill("#max-tokens", "4000")  # far more than it can write before Stop
    page.fill("#prompt", "Count from 1 to 1000, separated by commas.")
    page.click("#send")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".bubble")).to_have_text(re.compile(r"\S"), timeout=30_000)
    # The server's slot is busy with this answer (a health probe may briefly hold another).
    assert _in_flight(mesh.server, BASE_MODEL) >= 1
    page.click("#stop")
    expect(answer).to_have_class(re.compile(r"\bdone\b"), timeout=5_000)
    expect(answer.locator(".meta")).to_contain_text("stopped")
    expect(answer.locator(".meta")).not_to_contain_text("max tokens")
    expect(page.locator("#send")).to_be_enabled()
    wait_for(lambda: _in_flight(mesh.server, BASE_MODEL) == 0, 5,
             "the server to free the slot after Stop")


def test_sparse_status_and_vanished_peer(page: Page, mesh: Mesh) -> None:
    """Fed /api/status with no catalog and a peer not checked yet, and then without the
    peer: the page still renders, and the vanished peer shows as gone."""
    drop_peers = False

    def older(route: Route) -> None:
        response = route.fetch()
        status = response.json()
        status.pop("catalog", None)
        for peer in status["peers"]:
            peer.pop("health", None)
        if drop_peers:
            status["peers"] = []
        route.fulfill(response=response, body=json.dumps(status))

    page.route("**/api/status", older)
    page.goto(mesh.entry.url + "/status")
    peer = page.locator(f'#peers tr[data-peer="{mesh.server_id}"]')
    expect(peer.locator(".health")).to_have_text("not checked", timeout=10_000)
    expect(page.locator("#catalog")).to_contain_text("serves no models yet")
    drop_peers = True
    expect(peer.locator(".health")).to_contain_text("✗ gone", timeout=10_000)
    expect(peer).to_have_class(re.compile(r"\bgone\b"))


def test_hostile_peer_fields_render_as_text(page: Page, mesh: Mesh) -> None:
    """A peer's name, model id and failure text are its own words: markup in them is shown
    as text and never runs."""
    evil = '<img src=x onerror="window.pwned=1">'

    def hostile(route: Route) -> None:
        response = route.fetch()
        status = response.json()
        for peer in status["peers"]:
            peer["name"] = evil
            peer["addresses"] = [evil]
            peer["health"] = {"ok": False, "first_failure": {"layer": 6, "name": evil,
                                                             "detail": evil, "fix": evil}}
            for model in peer["models"]:
                model["id"] = evil
        for row in status.get("catalog", []):
            row["id"] = evil
            row["samples"] = evil
            row["nodes"] = [{"id": evil, "name": evil}]
        route.fulfill(response=response, body=json.dumps(status))

    page.route("**/api/status", hostile)
    page.goto(mesh.entry.url + "/status")
    peer = page.locator(f'#peers tr[data-peer="{mesh.server_id}"]')
    expect(peer.locator(".health .fix")).to_have_text(evil, timeout=10_000)
    expect(peer).to_contain_text(evil)
    expect(page.locator("#catalog")).to_contain_text(evil)
    assert page.locator("img").count() == 0
    assert page.evaluate("window.pwned") is None


def test_dead_peer_shows_a_named_failure(page: Page, mesh: Mesh) -> None:
    page.goto(mesh.entry.url + "/status")
    health = page.locator(f'#peers tr[data-peer="{mesh.server_id}"] .health')
    expect(health).to_contain_text("✓", timeout=15_000)
    mesh.server.proc.kill()
    mesh.server.proc.wait()
    # The entry's data-plane check names the first layer that fails and its fix.
    expect(health).to_contain_text(re.compile(r"✗ layer \d+ · \w"), timeout=20_000)
    expect(health.locator(".fix")).to_have_text(re.compile(r"\w"))
    failure = next(p["health"]["first_failure"] for p in mesh.entry.status()["peers"]
                   if p["id"] == mesh.server_id)
    expect(health).to_contain_text(failure["name"])


def test_login_form_when_the_node_needs_a_key(
        page: Page, start_node: Callable[..., NodeProcess]) -> None:
    node = start_node("--no-default-model", "--api-key", "secret", "--node-name", "locked")
    node.wait_listening()
    page.goto(node.url + "/status")
    form = page.locator("#login form")
    expect(form).to_be_visible(timeout=10_000)
    page.fill("#login-key", "wrong")
    page.click("#login button[type=submit]")
    expect(page.locator("#login .login-error")).to_contain_text("refused", timeout=10_000)
    page.fill("#login-key", "secret")
    page.click("#login button[type=submit]")
    expect(form).to_be_hidden(timeout=10_000)
    expect(page.locator("#node-name")).to_have_text("locked", timeout=10_000)
    expect(page.locator("#forget-key")).to_be_visible()
    assert "secret" not in page.url
    # The key is remembered: the chat page asks nothing and lists what the node serves.
    page.goto(node.url + "/chat")
    expect(page.locator("#node-label")).to_have_text("via locked", timeout=10_000)
    expect(page.locator("#login")).to_have_count(0)

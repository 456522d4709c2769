"""Headless Chromium (Debian's /usr/bin/chromium, never a downloaded build) for the page tests,
and a real two-node mesh: a server node with the default embedded chat model (SmolLM2) and an
entry node that serves nothing itself and answers through the server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import FAST, NodeProcess, mesh_invite, wait_for

CHROMIUM = Path(os.environ.get("COVEY_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"
MODEL = "smollm2-135m-instruct-q4_1"
# A base model keeps writing until told to stop: the Stop test needs an answer still running.
BASE_MODEL = "gemma-3-270m-q4_k_m"


@dataclass
class Mesh:
    server: NodeProcess
    entry: NodeProcess
    server_id: str


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context per test (empty localStorage); an uncaught script error fails
    the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture(scope="module")
def mesh(chat_model_path: Path, model_path: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("browser-mesh")
    server = NodeProcess(root / "server", [*FAST, "--node-name", "server",
                                           "--model", str(chat_model_path),
                                           "--model", str(model_path)])
    nodes = [server]
    try:
        server.wait_listening()
        entry = NodeProcess(root / "entry", [*FAST, "--node-name", "entry",
                                             "--no-default-model", "--join",
                                             mesh_invite(server)])
        nodes.append(entry)
        entry.wait_listening()
        server.wait_ready(MODEL)
        server.wait_ready(BASE_MODEL)
        server_id = server.status()["node"]["id"]

        def settled() -> bool:
            """The entry lists both models with the server's native baselines (measured once
            each engine is ready; a baseline still running would slow the tests' answers)
            and has checked the server: the pages show real numbers."""
            status = entry.status()
            rows = {m["id"]: m for m in status.get("catalog", [])}
            peer = next((p for p in status["peers"] if p["id"] == server_id), None)
            return (all(m in rows and rows[m]["baseline_tokens_per_s"] is not None
                        for m in (MODEL, BASE_MODEL))
                    and peer is not None and (peer.get("health") or {}).get("ok") is True)

        wait_for(settled, 90, "the entry to list the models, their baselines and a healthy "
                 "server")
        yield Mesh(server, entry, server_id)
    finally:
        for node in nodes:
            node.stop()


def screenshot(page: Page, name: str) -> None:
    """With COVEY_SCREENSHOTS=1, save docs/screenshots/<name>-1280.png and -390.png."""
    if os.environ.get("COVEY_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

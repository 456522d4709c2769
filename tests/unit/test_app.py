"""api/app.py: the Host/Origin guard that defeats DNS rebinding; which paths need the key."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from covey.api.app import build_app, host_allowed, needs_key
from covey.web import routes as web_routes


@pytest.mark.parametrize(("host", "bind", "extra", "ok"), [
    # loopback names are always served, with or without a port
    ("127.0.0.1", "127.0.0.1", (), True),
    ("127.0.0.1:7272", "127.0.0.1", (), True),
    ("127.0.0.2:7272", "127.0.0.1", (), True),
    ("localhost", "127.0.0.1", (), True),
    ("localhost:7272", "127.0.0.1", (), True),
    ("LocalHost:7272", "127.0.0.1", (), True),
    ("[::1]", "127.0.0.1", (), True),
    ("[::1]:7272", "127.0.0.1", (), True),
    ("localhost:7272", "192.0.2.5", ("covey.lan",), True),
    # another site's name is refused on a loopback bind (DNS rebinding) ...
    ("evil.example", "127.0.0.1", (), False),
    ("evil.example:7272", "127.0.0.1", (), False),
    ("localhost.evil.example", "127.0.0.1", (), False),
    ("127.0.0.1.evil.example:7272", "127.0.0.1", (), False),
    ("evil.example", "::1", (), False),
    # ... unless it is configured
    ("evil.example", "127.0.0.1", ("evil.example",), True),
    ("covey.lan:7272", "127.0.0.1", ("covey.lan",), True),
    ("COVEY.LAN:7272", "127.0.0.1", ("covey.lan",), True),
    ("other.lan", "127.0.0.1", ("covey.lan",), False),
    # the bind address itself
    ("192.0.2.5:7272", "192.0.2.5", (), True),
    ("192.0.2.6:7272", "192.0.2.5", (), False),
    ("[fe80::1]:7272", "[fe80::1]", (), True),
    # a wildcard bind serves any name (an API key is then mandatory)
    ("anything.example", "0.0.0.0", (), True),
    ("evil.example:7272", "::", (), True),
    # empty or garbage
    (None, "127.0.0.1", (), False),
    ("", "127.0.0.1", (), False),
    ("", "0.0.0.0", (), False),
    (":7272", "127.0.0.1", (), False),
    ("[garbage", "127.0.0.1", (), False),
    ("[::1", "127.0.0.1", (), False),
    ("::1", "127.0.0.1", (), False),  # an IPv6 Host must be bracketed
    ("a b", "127.0.0.1", (), False),
])
def test_host_allowed(host: str | None, bind: str, extra: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(host, bind, frozenset(extra)) is ok


@pytest.mark.parametrize(("path", "needs"), [
    ("/", False), ("/status", False), ("/chat", False), ("/health", False),
    ("/static/app.css", False),
    ("/api/status", True), ("/v1/models", True), ("/v1/chat/completions", True),
    ("/metrics", True), ("/statusx", True), ("/static", True), ("/chat/x", True),
])
def test_needs_key(path: str, needs: bool) -> None:
    assert needs_key(path) is needs


async def test_pages_open_data_guarded() -> None:
    """With a key set, the page files come without it; the data and the API do not, and no
    /static/ spelling reaches them."""
    app = build_app(bind_host="127.0.0.1", api_key="secret", allowed_hosts=frozenset(),
                    max_body_bytes=1 << 20)
    app.router.add_get("/api/status", _ok)
    app.router.add_get("/v1/models", _ok)
    app.router.add_get("/metrics", _ok)
    web_routes.add_to(app)
    async with TestClient(TestServer(app)) as client:
        for path in ("/", "/status", "/chat", "/static/app.css", "/static/status.js"):
            r = await client.get(path)
            assert r.status == 200, path
            assert r.headers["Cache-Control"] == "no-cache"
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert (await client.get("/static/chat.js")).content_type == "text/javascript"
        assert (await client.get("/static/app.css")).content_type == "text/css"
        assert (await client.get("/chat")).content_type == "text/html"
        for path in ("/api/status", "/v1/models", "/metrics"):
            assert (await client.get(path)).status == 401, path
            r = await client.get(path, headers={"Authorization": "Bearer secret"})
            assert r.status == 200, path
        for path in ("/static/..%2Fapi%2Fstatus", "/static/../routes.py",
                     "/static/%2E%2E%2Froutes.py", "/static/nope.js", "/static/__init__.py"):
            r = await client.get(path)
            assert r.status in (401, 404), path
            assert "data" not in await r.text()


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"data": 1})

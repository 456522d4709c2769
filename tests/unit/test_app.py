"""api/app.py: the Host/Origin guard that defeats DNS rebinding; which paths need the key."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from covey.api.app import build_app, cross_site, host_allowed, needs_key, origin_allowed
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


@pytest.mark.parametrize(("origin", "bind", "ok"), [
    (None, "127.0.0.1", True),  # curl, the openai client, a same-origin GET
    ("http://localhost:3000", "127.0.0.1", True),
    ("http://127.0.0.1:7272", "127.0.0.1", True),
    ("https://[::1]:7272", "127.0.0.1", True),
    ("http://evil.example", "127.0.0.1", False),
    ("http://localhost.evil.example", "127.0.0.1", False),
    ("", "127.0.0.1", False),
    ("garbage", "127.0.0.1", False),
    ("http://[::1", "127.0.0.1", False),
    # Was a hole: `null` (a sandboxed frame, a file: page, a redirect) passed everywhere.
    ("null", "127.0.0.1", False),
    ("null", "0.0.0.0", False),
    (" Null ", "127.0.0.1", False),
    ("http://anything.example", "0.0.0.0", True),  # wildcard bind: the key guards it
])
def test_origin_allowed(origin: str | None, bind: str, ok: bool) -> None:
    assert origin_allowed(origin, bind, frozenset()) is ok


@pytest.mark.parametrize(("value", "foreign"), [
    (None, False), ("same-origin", False), ("same-site", False), ("none", False),
    ("cross-site", True), ("Cross-Site", True),
])
def test_cross_site(value: str | None, foreign: bool) -> None:
    assert cross_site(value) is foreign


# Was a hole: any body was read as JSON whatever it declared, so a cross-site form or no-cors
# fetch (text/plain, no preflight) could post to an unkeyed node.
@pytest.mark.parametrize(("content_type", "status"), [
    ("application/json", 200),
    ("application/json; charset=utf-8", 200),
    ("Application/JSON", 200),
    (None, 415),
    ("text/plain", 415),
    ("text/plain;charset=UTF-8", 415),
    ("application/x-www-form-urlencoded", 415),
    ("multipart/form-data; boundary=x", 415),
    ("application/jsonx", 415),
])
async def test_posts_must_declare_json(content_type: str | None, status: int) -> None:
    app = build_app(bind_host="127.0.0.1", api_key=None, allowed_hosts=frozenset(),
                    max_body_bytes=1 << 20)
    app.router.add_post("/v1/chat/completions", _ok)
    async with TestClient(TestServer(app)) as client:
        headers = {"Content-Type": content_type} if content_type else {}
        r = await client.post("/v1/chat/completions", data=b"{}", headers=headers,
                              skip_auto_headers=["Content-Type"])
        assert r.status == status
        if status == 415:
            err = (await r.json())["error"]
            assert (err["type"], err["code"]) == ("invalid_request_error",
                                                  "unsupported_media_type")
            assert "application/json" in err["message"]
        # An unknown path stays a 404, whatever the body says it is.
        r = await client.post("/v1/nope", data=b"{}", headers=headers,
                              skip_auto_headers=["Content-Type"])
        assert r.status == 404


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


async def test_pages_may_be_opened_from_another_site() -> None:
    """A link on another site to the status page works; the data behind it does not."""
    app = build_app(bind_host="127.0.0.1", api_key=None, allowed_hosts=frozenset(),
                    max_body_bytes=1 << 20)
    app.router.add_get("/api/status", _ok)
    web_routes.add_to(app)
    async with TestClient(TestServer(app)) as client:
        cross = {"Sec-Fetch-Site": "cross-site"}
        assert (await client.get("/status", headers=cross)).status == 200
        assert (await client.get("/static/app.css", headers=cross)).status == 200
        r = await client.get("/api/status", headers=cross)
        assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden_host"


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"data": 1})

"""The status page and the chat page every node serves (`/`, `/status`, `/chat`, `/static/*`).

The pages are static files: they hold no data and need no API key. Their scripts read
`/api/status`, `/v1/models` and `/v1/chat/completions` with the key the user typed, kept in the
browser's localStorage and sent as `Authorization: Bearer`, never in a URL.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# no-cache: a browser revalidates, so a node upgraded in place never runs yesterday's script.
# The policy allows only this node's own files: a peer's name or model id that slipped past
# escaping still could not run a script, and no other site may frame the pages.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                      "object-src 'none'; base-uri 'none'; "
                                      "frame-ancestors 'none'"}


def static_files(directory: Path = STATIC_DIR) -> dict[str, Path]:
    """Name → path of each servable file. Only these names are ever served, so no request
    path can reach outside the folder (no `..`, no symlinks followed out, no dotfiles)."""
    return {p.name: p for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix in CONTENT_TYPES}


def add_to(app: web.Application) -> None:
    """Route the pages and their files on the client API's app."""
    files = static_files()

    def serve(path: Path) -> web.FileResponse:
        return web.FileResponse(path, headers={**HEADERS,
                                               "Content-Type": CONTENT_TYPES[path.suffix]})

    async def status_page(request: web.Request) -> web.FileResponse:
        return serve(files["status.html"])

    async def chat_page(request: web.Request) -> web.FileResponse:
        return serve(files["chat.html"])

    async def static(request: web.Request) -> web.FileResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return serve(path)

    app.router.add_get("/", status_page)
    app.router.add_get("/status", status_page)
    app.router.add_get("/chat", chat_page)
    app.router.add_get("/static/{name}", static)

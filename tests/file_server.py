"""A static file server for download tests, on 127.0.0.1, in threads of the test process.

It serves a folder's files with HTTP Range (206, 416), and can misbehave on purpose: cut the
connection once after N bytes of a file (`cut_once`), ignore Range (`ignore_range`), or act
as the hub (`hub_cdn`): `/{owner}/{repo}/resolve/{rev}/{file}` answers 302 to the same file
on a second ("CDN") server, with the file's sha256 in `X-Linked-Etag` as the hub sends it.
Every request's path and headers are recorded in `requests`.

Run by hand to measure a pull: `python -m tests.file_server FOLDER [--port N]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from covey.engine.catalog import sha256_file

_RANGE = re.compile(r"bytes=(\d+)-$")
_HUB = re.compile(r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)")


class FileServer:
    def __init__(self, folder: Path, *, port: int = 0, hub_cdn: str | None = None,
                 ignore_range: bool = False, host: str = "127.0.0.1") -> None:
        self.folder = folder
        self.hub_cdn = hub_cdn
        self.ignore_range = ignore_range
        self.cut_once: dict[str, int] = {}  # file name -> bytes sent before the first cut
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def take_cut(self, name: str) -> int | None:
        with self._lock:
            return self.cut_once.pop(name, None)

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((path, headers))


def _handler(server: FileServer) -> Any:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet tests

        def do_GET(self) -> None:
            server.record(self.path, {k.lower(): v for k, v in self.headers.items()})
            path = unquote(urlsplit(self.path).path)
            hub = _HUB.fullmatch(path)
            if server.hub_cdn is not None and hub:
                self._redirect_to_cdn(hub.group(4))
                return
            file = server.folder / path.lstrip("/")
            if "/" in path.lstrip("/") or not file.is_file():
                self._empty(404)
                return
            self._send_file(file)

        def _redirect_to_cdn(self, name: str) -> None:
            file = server.folder / name
            if not file.is_file():
                self._empty(404)
                return
            self.send_response(302)
            self.send_header("Location", f"{server.hub_cdn}/{name}?X-Amz-Signature=abc%2Fdef")
            self.send_header("X-Linked-Etag", f'"{_sha256(file)}"')
            self.send_header("X-Linked-Size", str(file.stat().st_size))
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef01234567"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send_file(self, file: Path) -> None:
            size = file.stat().st_size
            start = 0
            m = _RANGE.fullmatch(self.headers.get("Range", ""))
            if m and not server.ignore_range:
                start = int(m.group(1))
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            cut = server.take_cut(file.name)
            count = size - start if cut is None else min(cut, size - start)
            sent = 0
            # The client may hang up first (a refused download): that ends this answer.
            with file.open("rb") as f, contextlib.suppress(BrokenPipeError,
                                                           ConnectionResetError):
                while sent < count:
                    n = os.sendfile(self.connection.fileno(), f.fileno(), start + sent,
                                    count - sent)
                    if n == 0:
                        break
                    sent += n
            if cut is not None:
                self.close_connection = True  # mid-body: the client sees the stream end short

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


_hashes: dict[tuple[Path, int], str] = {}


def _sha256(file: Path) -> str:
    key = (file, file.stat().st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = sha256_file(file)
    return _hashes[key]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    with FileServer(args.folder, port=args.port, host=args.host) as s:
        print(s.url, flush=True)
        threading.Event().wait()

"""Peer file transfer speed, in process on loopback: MB/s fetching one file from one member
and from two at once (pinned TLS, signed requests, every chunk verified, the whole-file
sha256 checked, the same code a node runs), next to a plain HTTP GET of the same file from
a static aiohttp server (no TLS, no hashing: what `curl` of a static file does).

    python -m covey.bench.peer_fetch --size-mb 256 --json

Medians over `--runs`, the paths rotated each round so drift hits all alike. Loopback on
one machine: the servers and the fetcher share this process's CPU, so the figures are a
floor for the code's own cost; the namespace version (two machines' worth of network) is
the issue's closing bench.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from covey.engine.catalog import sha256_file
from covey.fetch.manifest import CHUNK_SIZE
from covey.fetch.peers import PARALLEL, fetch_from_peers
from covey.fetch.serve import PIECE_BYTES, FileShare
from covey.mesh import identity
from covey.mesh.client import redeem, signer_for
from covey.mesh.membership import InviteBook, parse_invite
from covey.mesh.peer_api import build_peer_app
from covey.mesh.peer_transport import HttpPeerTransport, Peer
from covey.mesh.state import MeshState
from covey.mesh.transport import tls_identity

MB = 1_000_000
_T = TypeVar("_T")


@dataclass
class _Member:
    state: MeshState
    peer: Peer
    runner: web.AppRunner
    transport: HttpPeerTransport | None


async def _serve(state: MeshState, data_dir: Path, files: FileShare) -> _Member:
    tls = tls_identity(state.identity.key, data_dir)
    context = tls.server_context()
    runner = web.AppRunner(build_peer_app(state, tls.fingerprint, files=files),
                           access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    address = f"127.0.0.1:{runner.addresses[0][1]}"
    return _Member(state, Peer(tls.fingerprint, (address,), data_dir.name), runner, None)


class _Loop:
    """Where the serving side runs: this loop, or its own loop in a thread (the servers and
    the fetcher then use two cores, as two machines would; ssl releases the GIL)."""

    def __init__(self, threaded: bool) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        if threaded:
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self.thread.start()

    async def run(self, work: Coroutine[Any, Any, _T]) -> _T:
        if self.loop is None:
            return await work
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def close(self) -> None:
        if self.loop is not None and self.thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


async def _mesh(root: Path, names: list[str], files: dict[str, FileShare],
                servers: _Loop) -> list[_Member]:
    """The first name creates a mesh; the others join it by invite. Every member serves in
    `servers`; the transports are used from the calling loop."""
    (root / names[0]).mkdir()
    ident = identity.load_or_create(root / names[0])
    founder = await servers.run(_serve(
        MeshState.load_or_create(root / names[0], ident, time.time()), root / names[0],
        files[names[0]]))
    members = [founder]
    assert founder.state.authority is not None
    async with HttpPeerTransport(lambda audience, path, body: {}) as joining:
        for name in names[1:]:
            book = InviteBook(founder.state.data_dir / "invites.db")
            token = book.mint(founder.state.authority, founder.peer.addresses[0], time.time(),
                              600, founder.peer.fingerprint).token()
            book.close()
            (root / name).mkdir()
            ident = identity.load_or_create(root / name)
            state, _ = await redeem(joining, parse_invite(token), ident, root / name,
                                    time.time())
            members.append(await servers.run(_serve(state, root / name, files[name])))
    for m in members:
        m.transport = HttpPeerTransport(signer_for(m.state))  # bound to the calling loop
    return members


async def _static(path: Path) -> tuple[web.AppRunner, str]:
    async def get(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/file", get)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/file"


async def _http_get(url: str, target: Path) -> None:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        r.raise_for_status()
        with target.open("wb") as f:
            async for piece in r.content.iter_chunked(1024 * 1024):
                f.write(piece)


async def run(size_mb: int, runs: int, chunk_size: int, parallel: int,
              piece_bytes: int, threaded: bool = True) -> dict[str, Any]:
    servers = _Loop(threaded)
    try:
        return await _run(size_mb, runs, chunk_size, parallel, piece_bytes, servers)
    finally:
        servers.close()


async def _run(size_mb: int, runs: int, chunk_size: int, parallel: int, piece_bytes: int,
               servers: _Loop) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="covey-bench-fetch-") as tmp:
        root = Path(tmp)
        source = root / "model.gguf"
        with source.open("wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(MB))
        sha = await asyncio.to_thread(sha256_file, source)
        size = source.stat().st_size
        files = {n: FileShare(chunk_size=chunk_size, piece_bytes=piece_bytes)
                 for n in ("a", "b", "c")}
        for name in ("a", "c"):
            files[name].register(sha, source)
        a, b, c = await _mesh(root, ["a", "b", "c"], files, servers)
        assert b.transport is not None
        fetcher = b.transport
        await servers.run(files["a"].prepare())  # built once; both sources read the sidecar
        await servers.run(files["c"].prepare())
        static, url = await servers.run(_static(source))
        target = root / "b" / "got.gguf"

        async def one() -> None:
            await fetch_from_peers(sha, size, [a.peer], fetcher, target, parallel=parallel)

        async def two() -> None:
            result = await fetch_from_peers(sha, size, [a.peer, c.peer], fetcher, target,
                                            parallel=parallel)
            assert not result.dropped, result.dropped

        async def plain() -> None:
            await _http_get(url, target)

        paths: dict[str, Callable[[], Awaitable[None]]] = {
            "http_get": plain, "peer_1_source": one, "peer_2_sources": two}
        times: dict[str, list[float]] = {k: [] for k in paths}
        try:
            for _warm in paths.values():  # connections made, caches warm
                await _warm()
                target.unlink()
            for i in range(runs):
                order = list(paths)[i % 3:] + list(paths)[:i % 3]
                for name in order:
                    started = time.perf_counter()
                    await paths[name]()
                    times[name].append(time.perf_counter() - started)
                    if name != "http_get" and i == 0:
                        assert await asyncio.to_thread(sha256_file, target) == sha
                    target.unlink()
        finally:
            await servers.run(static.cleanup())
            for m in (a, b, c):
                if m.transport is not None:
                    await m.transport.close()
                await servers.run(m.runner.cleanup())
    rates = {k: size / MB / statistics.median(v) for k, v in times.items()}
    return {"size_mb": size / MB, "runs": runs, "servers_in_thread": servers.loop is not None,
            "chunk_size": chunk_size,
            "parallel": parallel, "piece_bytes": piece_bytes,
            "mb_per_s": {k: round(v, 1) for k, v in rates.items()},
            "ratio_1_source": round(rates["peer_1_source"] / rates["http_get"], 3),
            "ratio_2_sources": round(rates["peer_2_sources"] / rates["http_get"], 3),
            "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m covey.bench.peer_fetch",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--size-mb", type=int, default=256, help="file size, MB")
    ap.add_argument("--runs", type=int, default=3, help="runs per path (median)")
    ap.add_argument("--chunk-mb", type=float, default=CHUNK_SIZE / 2**20,
                    help="manifest chunk size, MiB")
    ap.add_argument("--parallel", type=int, default=PARALLEL, help="requests per source")
    ap.add_argument("--piece-kb", type=int, default=PIECE_BYTES // 1024,
                    help="bytes the server reads and sends at a time, KiB")
    ap.add_argument("--one-loop", action="store_true",
                    help="run the servers on the fetcher's event loop (default: their own "
                         "loop in a thread, as another machine would)")
    args = ap.parse_args(argv)
    result = asyncio.run(run(args.size_mb, args.runs, int(args.chunk_mb * 2**20),
                             args.parallel, args.piece_kb * 1024, not args.one_loop))
    if args.json:
        print(json.dumps(result))
        return
    for name, rate in result["mb_per_s"].items():
        print(f"{name:16} {rate:8.1f} MB/s")
    print(f"ratio (1 source / http) {result['ratio_1_source']:.3f}   "
          f"(2 sources / http) {result['ratio_2_sources']:.3f}")


if __name__ == "__main__":
    main()

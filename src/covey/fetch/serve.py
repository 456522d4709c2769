"""Sharing this node's model files with members: the serving side of a peer fetch.

    POST /mesh/files/manifest  {"sha256"}           → the file's manifest (JSON)
    POST /mesh/files/chunk     {"sha256", "index"}  → the chunk's raw bytes
                                                      (application/octet-stream)

Only files registered here are offered (the node registers each model it serves, by the
sha256 its signed record publishes), only while sharing is on (`--no-share-models` turns it
off: 403), only to members (the mesh listener's middleware checks that before reading a
body), at most `mbps` overall and per peer (token buckets; 0 = unlimited), with a cap on the
chunks each peer may have in flight. File reads run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from covey.fetch.manifest import (
    CHUNK_SIZE,
    Manifest,
    ManifestError,
    build_manifest,
    is_sha256,
)

log = logging.getLogger(__name__)

MANIFEST_PATH = "/mesh/files/manifest"
CHUNK_PATH = "/mesh/files/chunk"
PIECE_BYTES = 1024 * 1024  # read and sent at a time: bounds memory per request, paces the rate
MAX_PEER_IN_FLIGHT = 16  # chunk requests one peer may have open at once
MAX_IN_FLIGHT = 64  # all peers together
MAX_PEER_BUCKETS = 1024  # idle per-peer buckets beyond this are forgotten (members only)
Clock = Callable[[], float]


class ShareRefused(Exception):
    """A file request this node will not serve; `status` and `code` for the refusal."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def mbps_to_bytes(mbps: float) -> float:
    """Megabits per second → bytes per second (0 stays 0: unlimited)."""
    return mbps * 1_000_000 / 8


@dataclass
class TokenBucket:
    """Pure rate limiter: `reserve(n, now)` takes `n` bytes' worth of tokens (going into
    debt) and says how long the caller must wait before sending them. Rate 0: unlimited."""

    rate: float  # bytes per second
    burst: float  # bytes that may go at once after an idle spell
    tokens: float = 0.0
    stamp: float | None = None

    def reserve(self, n: int, now: float) -> float:
        if self.rate <= 0:
            return 0.0
        if self.stamp is None:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)


def parse_manifest_ask(body: dict[str, Any]) -> str:
    sha256 = body.get("sha256")
    if not is_sha256(sha256):
        raise ShareRefused(400, "invalid_sha256", "sha256 must be 64 lowercase hex digits")
    assert isinstance(sha256, str)
    return sha256


def parse_chunk_ask(body: dict[str, Any]) -> tuple[str, int]:
    sha256 = parse_manifest_ask(body)
    index = body.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ShareRefused(400, "invalid_index", "index must be a chunk number (0 or more)")
    return sha256, index


@dataclass
class _Shared:
    path: Path
    manifest: Manifest | None = None
    stamp: tuple[int, int] | None = None  # (size, mtime_ns) the manifest was made for
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FileShare:
    """Which files this node offers, whether it offers them, and how fast.

    `enabled` may be flipped while running. `mbps` caps what goes out to all peers together,
    `peer_mbps` what goes to each (default: the same as `mbps`); megabits per second, 0 is
    unlimited."""

    def __init__(self, *, enabled: bool = True, mbps: float = 0.0,
                 peer_mbps: float | None = None, clock: Clock = time.monotonic,
                 piece_bytes: int = PIECE_BYTES, chunk_size: int = CHUNK_SIZE) -> None:
        if not (mbps >= 0 and (peer_mbps is None or peer_mbps >= 0)):
            raise ValueError("share rates must be 0 (unlimited) or more megabits per second")
        self.enabled = enabled
        self._clock = clock
        self._piece = piece_bytes
        self._chunk_size = chunk_size
        self._rate = mbps_to_bytes(mbps)
        self._peer_rate = self._rate if peer_mbps is None else mbps_to_bytes(peer_mbps)
        self._overall = TokenBucket(self._rate, max(piece_bytes, self._rate / 4))
        self._peers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._files: dict[str, _Shared] = {}
        self._in_flight: dict[str, int] = {}
        self.sent: dict[str, int] = {}  # peer node id → bytes sent to it

    # --- what is shared ---------------------------------------------------------------

    def register(self, sha256: str, path: Path) -> None:
        """Offer `path` under `sha256` (the sha256 this node publishes for it)."""
        if not is_sha256(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 in lowercase hex")
        self._files[sha256] = _Shared(Path(path))

    def unregister(self, sha256: str) -> None:
        self._files.pop(sha256, None)

    def shared(self) -> dict[str, Path]:
        return {sha: s.path for sha, s in self._files.items()}

    async def prepare(self) -> None:
        """Build (or load) every registered file's manifest now, so the first peer asking
        does not wait for a multi-gigabyte read. Failures are logged and refused later.
        Nothing to do while sharing is off: no peer will ask."""
        if not self.enabled:
            return
        for sha256 in list(self._files):
            try:
                await self.manifest(sha256)
            except ShareRefused as exc:
                log.warning("file share: %s… not offered: %s", sha256[:12], exc.message)

    async def manifest(self, sha256: str) -> Manifest:
        """The manifest of a shared file (built off the event loop the first time and again
        when the file changes). Raises ShareRefused: 403 off, 404 not shared, 409 the file
        on disk is no longer the one registered."""
        if not self.enabled:
            raise ShareRefused(403, "sharing_off", "the owner of this node turned model "
                                                   "sharing off (--no-share-models)")
        shared = self._files.get(sha256)
        if shared is None:
            raise ShareRefused(404, "not_shared", f"this node shares no file with sha256 "
                                                  f"{sha256[:12]}…")
        async with shared.lock:
            try:
                st = await asyncio.to_thread(os.stat, shared.path)
                stamp = (st.st_size, st.st_mtime_ns)
                if shared.manifest is None or shared.stamp != stamp:
                    shared.manifest = await asyncio.to_thread(build_manifest, shared.path,
                                                             self._chunk_size)
                    shared.stamp = stamp
            # The file went away or changed under us: not servable, and not our caller's fault.
            except (OSError, ManifestError) as exc:
                shared.manifest = None
                raise ShareRefused(409, "file_unavailable", f"the shared file cannot be "
                                   f"read: {type(exc).__name__}") from exc
            if shared.manifest.sha256 != sha256:
                raise ShareRefused(409, "file_changed", "the file on disk is no longer the "
                                                        "one this node published")
            return shared.manifest

    # --- sending ----------------------------------------------------------------------

    async def send_chunk(self, request: web.Request, sha256: str, index: int,
                         peer: str) -> web.StreamResponse:
        """Stream chunk `index` of the file to `peer`, paced by the rate limits. Raises
        ShareRefused before anything is sent."""
        manifest = await self.manifest(sha256)
        if index >= len(manifest.chunks):
            raise ShareRefused(400, "invalid_index", f"the file has {len(manifest.chunks)} "
                                                     "chunks")
        offset, length = manifest.span(index)
        if self._in_flight.get(peer, 0) >= MAX_PEER_IN_FLIGHT:
            raise ShareRefused(429, "busy", f"at most {MAX_PEER_IN_FLIGHT} chunk requests "
                                            "in flight per peer")
        if sum(self._in_flight.values()) >= MAX_IN_FLIGHT:
            raise ShareRefused(503, "busy", "this node is sending as many chunks as it will")
        path = self._files[sha256].path
        self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        try:
            try:
                fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
            except OSError as exc:
                raise ShareRefused(409, "file_unavailable", "the shared file cannot be "
                                   f"read: {type(exc).__name__}") from exc
            read: asyncio.Future[bytes] | None = None
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = length
            try:
                await response.prepare(request)
                done = 0
                while done < length:
                    n = min(self._piece, length - done)
                    read = asyncio.ensure_future(
                        asyncio.to_thread(os.pread, fd, n, offset + done))
                    piece = await asyncio.shield(read)
                    if len(piece) != n:  # truncated under us: the peer sees a short answer
                        break
                    if wait := self._reserve(peer, n):
                        await asyncio.sleep(wait)
                    await response.write(piece)
                    done += n
                    self.sent[peer] = self.sent.get(peer, 0) + n
                await response.write_eof()
            # Why: the peer hung up (it had the chunk from another source first, or went
            # away); aiohttp finishes the exchange, there is nobody left to tell.
            except ConnectionError:
                pass
            finally:
                # A read still running in its thread (this handler was cancelled) must not
                # find its descriptor closed, or reused for another file.
                if read is not None and not read.done():
                    read.add_done_callback(lambda _f: os.close(fd))
                else:
                    os.close(fd)
            return response
        finally:
            self._in_flight[peer] -= 1
            if not self._in_flight[peer]:
                del self._in_flight[peer]

    def _reserve(self, peer: str, n: int) -> float:
        now = self._clock()
        if self._rate <= 0 and self._peer_rate <= 0:
            return 0.0
        bucket = self._peers.get(peer)
        if bucket is None:
            bucket = TokenBucket(self._peer_rate, max(self._piece, self._peer_rate / 4))
            while len(self._peers) >= MAX_PEER_BUCKETS and self._peers:
                self._peers.popitem(last=False)
        self._peers[peer] = bucket
        self._peers.move_to_end(peer)
        return max(self._overall.reserve(n, now), bucket.reserve(n, now))

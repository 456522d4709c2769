"""An in-memory PeerTransport for unit tests: each peer is an async function of (path,
headers, body) that answers (status, chunks); nothing touches a socket.

It keeps the real transport's contract: an unpinned peer is refused, every call but the
join is signed for its audience, reads are capped, and `control()` serialises per peer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp

from covey.mesh.peer_transport import MAX_ANSWER, Peer, PeerError, Signer, is_fingerprint

# (path, headers, body) → (status, body chunks)
Handler = Callable[[str, Mapping[str, str], bytes], Awaitable[tuple[int, list[bytes]]]]


class _Content:
    def __init__(self, chunks: list[bytes], cap: int) -> None:
        self._chunks = list(chunks)
        self._left = cap

    def _take(self, chunk: bytes) -> bytes:
        self._left -= len(chunk)
        if self._left < 0:
            raise aiohttp.ClientPayloadError("over the cap")
        return chunk

    async def iter_any(self) -> AsyncIterator[bytes]:
        while self._chunks:
            yield self._take(self._chunks.pop(0))

    async def read(self, n: int = -1) -> bytes:
        data = b"".join(self._chunks)
        self._chunks = []
        return self._take(data if n < 0 else data[:n])


@dataclass
class MemoryResponse:
    status: int
    chunks: list[bytes]
    cap: int
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.content = _Content(self.chunks, self.cap)

    async def read(self) -> bytes:
        data = b"".join(self.chunks)
        if len(data) > self.cap:
            raise PeerError("too_large", f"over the {self.cap} byte cap")
        return data

    def close(self) -> None:
        pass

    async def __aenter__(self) -> MemoryResponse:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        pass


class MemoryTransport:
    def __init__(self, signer: Signer, peers: Mapping[str, Handler]) -> None:
        self.signer = signer
        self.peers = dict(peers)  # fingerprint → handler
        self.calls: list[tuple[str, str, Mapping[str, str]]] = []  # (fingerprint, path, headers)
        self._locks: dict[str, asyncio.Lock] = {}

    async def post(self, peer: Peer, path: str, body: bytes, *, timeout_s: float | None,
                   headers: Mapping[str, str] | None = None, signed: bool = True,
                   max_bytes: int = MAX_ANSWER) -> MemoryResponse:
        if not is_fingerprint(peer.fingerprint):
            raise PeerError("unpinned", f"no signed TLS fingerprint for {peer.label}: unusable")
        handler = self.peers.get(peer.fingerprint)
        if handler is None:
            raise PeerError("connect", f"cannot reach {peer.label}: connection refused")
        sent = {**(headers or {}), **(self.signer(peer.fingerprint, path, body) if signed
                                      else {})}
        self.calls.append((peer.fingerprint, path, sent))
        status, chunks = await handler(path, sent, body)
        return MemoryResponse(status, chunks, max_bytes)

    async def stream(self, peer: Peer, path: str, body: bytes, *, timeout_s: float | None,
                     headers: Mapping[str, str] | None = None,
                     max_bytes: int = MAX_ANSWER) -> MemoryResponse:
        return await self.post(peer, path, body, timeout_s=timeout_s, headers=headers,
                               max_bytes=max_bytes)

    def opened(self, fingerprint: str) -> int:
        return 0

    def address(self, fingerprint: str) -> str | None:
        return None

    def control(self, fingerprint: str) -> asyncio.Lock:
        return self._locks.setdefault(fingerprint, asyncio.Lock())

    async def forget(self, keep: set[str]) -> None:
        for fingerprint in set(self._locks) - keep:
            del self._locks[fingerprint]

"""Kept pinned TLS connections to one peer, for its streamed answers: the relay's hot path.

Through aiohttp's client, a relayed prompt went through its request and connector machinery
on the way out (~0.3 ms of CPU on a 2-core VM), and each chunk of the answer through a
StreamReader, a future, a task step and an async iterator before the relay saw it. Here, as
for the node's own engine (router/engine_stream.py), the request is written to a kept
connection at once and each chunk of the answer is handed to the relay's sink in the callback
it arrived in.

This module holds connections and nothing else: signing, the peer's word that a connection
is this node's, addresses and retries are the peer transport's (mesh/peer_transport.py).
- A new connection's certificate must hash to the peer's pinned fingerprint, or it is closed
  before anything is sent on it (`PinMismatch`).
- An answer that ended whole comes back here (EngineStream's `release`) and its connection
  waits for the next one; one that was cut, or that its client left, is closed, which is how
  the peer learns to stop generating.
- A kept connection that hears anything between answers, or whose peer closes it, is dropped;
  one idle for KEEPALIVE_S is not used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from covey.mesh.addresses import split_address
from covey.router.engine_stream import EngineStream

KEEPALIVE_S = 30.0  # as the peer transport's pool: long before a Covey server drops it (75 s)
MAX_IDLE = 8  # kept connections to one peer between answers


class PinMismatch(Exception):
    """The peer presented a certificate other than the pinned one."""


def client_context() -> ssl.SSLContext:
    """TLS without a certificate authority: a peer's certificate is self-signed, and is
    checked against its pinned fingerprint instead (`KeptConnections.connect`)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(eq=False)
class Kept:
    """One connection to the peer. `bound`: the peer said it is this node's (its unsigned
    requests there are taken as ours)."""

    transport: asyncio.Transport
    address: str
    bound: bool = False
    since: float = 0.0  # monotonic time it last went idle


class _Idle(asyncio.Protocol):
    """A kept connection between answers: a server never speaks first, so anything that
    arrives, or the connection's end, retires it."""

    def __init__(self, owner: KeptConnections, kept: Kept) -> None:
        self.owner, self.kept = owner, kept

    def data_received(self, data: bytes) -> None:
        self.owner.retire(self.kept)

    def eof_received(self) -> bool:
        self.owner.retire(self.kept)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.retire(self.kept)


@dataclass(eq=False)
class KeptConnections:
    """One peer's connections for streamed answers: the idle ones, newest last."""

    fingerprint: str  # hex SHA-256 of the peer's DER certificate
    context: ssl.SSLContext
    connect_s: float
    idle: list[Kept] = field(default_factory=list)
    closed: bool = False

    def take(self, address: str, now: float) -> Kept | None:
        """The newest idle connection to `address`; ones idle too long are closed."""
        for kept in self.idle[::-1]:  # a copy: the loop takes from the list
            if kept.address != address:
                continue
            self.idle.remove(kept)
            if now - kept.since < KEEPALIVE_S and not kept.transport.is_closing():
                return kept
            kept.transport.close()
        return None

    async def connect(self, address: str) -> Kept:
        """A new connection to `address` (host:port), its certificate checked against the pin.
        Raises OSError, TimeoutError, ssl.SSLError or PinMismatch."""
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_s):
            transport, _ = await loop.create_connection(
                asyncio.Protocol, host, port, ssl=self.context)
        tls = transport.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if der is None or hashlib.sha256(der).hexdigest() != self.fingerprint:
            transport.close()
            raise PinMismatch(address)
        kept = Kept(transport, address)
        transport.set_protocol(_Idle(self, kept))
        return kept

    def send(self, kept: Kept, path: str, headers: Mapping[str, str], body: bytes, cap: int,
             who: str) -> EngineStream:
        """POST `body` on `kept`: the answer, whose `started()` says when its headers came.
        A whole answer's connection comes back to the idle ones when the answer is closed."""
        if any("\r" in text or "\n" in text for item in headers.items() for text in item):
            raise ValueError("a header with a line break")  # would forge more of the request
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (f"POST {path} HTTP/1.1\r\nHost: {kept.address}\r\n{fields}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
        answer = EngineStream(request, cap, who=who,
                              release=lambda transport: self._keep(kept, transport))
        kept.transport.set_protocol(answer)
        answer.connection_made(kept.transport)
        return answer

    def retire(self, kept: Kept) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(kept)
        kept.transport.close()

    def close(self) -> None:
        """Close the idle connections; ones carrying an answer close when it is closed."""
        self.closed = True
        idle, self.idle = self.idle, []
        for kept in idle:
            kept.transport.close()

    def _keep(self, kept: Kept, transport: asyncio.Transport) -> None:
        if self.closed or transport.is_closing() or len(self.idle) >= MAX_IDLE:
            transport.close()
            return
        transport.set_protocol(_Idle(self, kept))
        transport.resume_reading()  # a stream pauses reading once its sink says STOP
        kept.since = time.monotonic()
        self.idle.append(kept)

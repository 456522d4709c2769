"""The one way to talk to a peer: pinned TLS, signed requests, a kept connection pool per peer.

Gossip, the data-plane probes, `covey doctor` and the relay all call peers through a
`PeerTransport`, so every call gets the same guarantees:
- pinning is mandatory: a peer is named by the TLS fingerprint its signed record (or the
  invite) carries; there is no way to call one without it;
- requests are signed for their audience, the peer's fingerprint (the join is the one
  unsigned call: the joiner is not a member yet);
- a request goes unsigned on a kept connection the peer has said is this node's already
  (`x-covey-bound`, after a signed request verified on it: mesh/transport.py), so it is signed
  only once its connection is known (`_PeerRequest.send`);
- one bounded pool per peer. aiohttp matches a pooled connection by the identity of its
  `ssl` object, so each pool keeps ONE `aiohttp.Fingerprint`; a new one per request (as
  before) never matched, and every gossip round and probe paid a TLS handshake and left an
  idle socket behind;
- a peer's addresses are tried in order, starting with the one that answered last;
- a streamed answer (`stream`, the relay's) goes on a kept connection of its own, read from
  its socket as the node's own engine is (mesh/peer_stream.py), with the same guarantees;
- what a peer sends back is read with a cap.
Failures are one type, `PeerError`, whose `kind` says what went wrong. Unit tests swap in
`tests/memory_transport.py`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar

import aiohttp
from aiohttp.connector import Connection

from covey.mesh.peer_stream import Kept, KeptConnections, PinMismatch, client_context
from covey.mesh.records import NodeRecord
from covey.mesh.transport import H_BOUND, H_NODE
from covey.router.engine_stream import EngineStream, EngineStreamError

log = logging.getLogger(__name__)

POOL_LIMIT = 64  # connections to one peer at most: prompts in flight plus control calls
KEEPALIVE_S = 30.0  # idle kept connections close long before a Covey server drops them (75 s)
CONNECT_S = 3.0  # per address: a dead address must not eat the whole deadline
MAX_ANSWER = 4 * 1024 * 1024  # a control answer (gossip, probe, join) read at most
MAX_WHOLE = 16 * 1024 * 1024  # a whole (non-streamed) completion relayed from a peer
MAX_STREAM = 256 * 1024 * 1024  # a streamed completion, summed over its chunks

Kind = Literal["unpinned", "connect", "tls", "timeout", "http", "too_large", "malformed",
               "broken"]
# (audience fingerprint, path, body) → the signature headers (see mesh/transport.py)
Signer = Callable[[str, str, bytes], dict[str, str]]
_T = TypeVar("_T")


class PeerError(Exception):
    """A call to a peer that did not give a usable answer.

    kind: unpinned (no fingerprint to pin), connect (no address accepted a connection),
    tls (the key there is not the pinned one), timeout (no answer in time), http (the peer
    answered with an error status: `status`, `code` and its decoded error `answer`),
    too_large (its answer was over the cap), malformed (not the JSON expected), broken (the
    connection failed after it was made)."""

    def __init__(self, kind: Kind, message: str, *, status: int | None = None,
                 code: str | None = None, answer: dict[str, Any] | None = None,
                 address: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.code = code
        self.answer = answer or {}
        self.address = address


@dataclass(frozen=True)
class Peer:
    """Who to call and where: the pinned fingerprint names the node."""

    fingerprint: str
    addresses: tuple[str, ...]
    name: str = ""
    node_id: str = ""

    @property
    def label(self) -> str:
        return self.name or self.node_id[:12] or (self.addresses[0] if self.addresses else "?")


def peer_of(record: NodeRecord) -> Peer:
    """How to call the node behind `record` (with no fingerprint in it, the transport
    refuses to call it: unpinned)."""
    return Peer(record.tls_fingerprint, tuple(record.addresses), record.name, record.node_id)


class Content(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...

    async def read(self, n: int = -1) -> bytes: ...


class PeerResponse(Protocol):
    """What a call returns: aiohttp's response shape, reads capped."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> Content: ...

    async def read(self) -> bytes: ...

    def close(self) -> None: ...

    async def __aenter__(self) -> PeerResponse: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...


class PeerTransport(Protocol):
    async def post(self, peer: Peer, path: str, body: bytes, *, timeout_s: float | None,
                   headers: Mapping[str, str] | None = None, signed: bool = True,
                   max_bytes: int = MAX_ANSWER) -> PeerResponse:
        """Send `body` to `path` at `peer`; the response once its headers arrived (within
        `timeout_s`). Its body reads are capped at `max_bytes`. Raises PeerError."""
        ...

    async def stream(self, peer: Peer, path: str, body: bytes, *, timeout_s: float | None,
                     headers: Mapping[str, str] | None = None,
                     max_bytes: int = MAX_ANSWER) -> PeerResponse | EngineStream:
        """`post` for a streamed answer the caller relays chunk by chunk (signed). Raises
        PeerError."""
        ...

    def opened(self, fingerprint: str) -> int:
        """Connections opened to that peer since start (each one a TLS handshake)."""
        ...

    def address(self, fingerprint: str) -> str | None:
        """The address of that peer that answered last."""
        ...

    def control(self, fingerprint: str) -> asyncio.Lock:
        """Held for a whole control exchange (gossip, probe): one at a time per peer, so an
        idle mesh keeps one kept connection per direction instead of one per overlap."""
        ...

    async def forget(self, keep: set[str]) -> None:
        """Close the pools of peers no longer known (fingerprints not in `keep`)."""
        ...


async def call_json(transport: PeerTransport, peer: Peer, path: str,
                    payload: Mapping[str, Any], timeout_s: float, *, signed: bool = True,
                    max_bytes: int = MAX_ANSWER) -> dict[str, Any]:
    """POST a JSON object and read a JSON object back, all within `timeout_s`.
    A non-200 answer raises PeerError(kind='http') carrying the peer's error body."""
    body = json.dumps(payload).encode()
    try:
        async with asyncio.timeout(timeout_s), transport.control(peer.fingerprint):
            async with await transport.post(peer, path, body, timeout_s=timeout_s,
                                            signed=signed, max_bytes=max_bytes) as r:
                raw = await r.read()
                status = r.status
    except TimeoutError as exc:
        raise PeerError("timeout", f"{peer.label} did not answer {path} within "
                                   f"{timeout_s:g}s") from exc
    try:
        answer = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        answer = None
    if status != 200:
        err = answer.get("error") if isinstance(answer, dict) else None
        err = err if isinstance(err, dict) else {}
        message, code = err.get("message"), err.get("code")
        raise PeerError("http", f"{peer.label} answered {path} with HTTP {status}: "
                                f"{str(message)[:300] if message else 'no reason given'}",
                        status=status, code=str(code)[:64] if code else None,
                        answer=answer if isinstance(answer, dict) else None)
    if not isinstance(answer, dict):
        raise PeerError("malformed", f"{peer.label} answered {path} with something other "
                                     "than a JSON object")
    return answer


# --- the real one --------------------------------------------------------------------------


class _CappedContent:
    def __init__(self, stream: aiohttp.StreamReader, cap: int, label: str) -> None:
        self._stream = stream
        self._left = cap
        self._label = label

    def _take(self, chunk: bytes) -> bytes:
        self._left -= len(chunk)
        if self._left < 0:
            # The relay treats a payload error like any stream that broke mid-answer.
            raise aiohttp.ClientPayloadError(f"{self._label} sent more than the cap")
        return chunk

    async def iter_any(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream.iter_any():
            yield self._take(chunk)

    async def read(self, n: int = -1) -> bytes:
        return self._take(await self._stream.read(n))


class HttpResponse:
    """An aiohttp response whose body reads are capped (a peer's, or an engine's)."""

    def __init__(self, response: aiohttp.ClientResponse, cap: int, label: str) -> None:
        self._response = response
        self._cap = cap
        self._label = label
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self.content = _CappedContent(response.content, cap, label)

    async def read(self) -> bytes:
        length = self._response.content_length
        if length is not None and length > self._cap:
            raise PeerError("too_large", f"{self._label} announced {length} bytes, over the "
                                         f"{self._cap} byte cap")
        chunks, total = [], 0
        async for chunk in self._response.content.iter_any():
            total += len(chunk)
            if total > self._cap:
                raise PeerError("too_large", f"{self._label} sent over {self._cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._response.close()

    async def __aenter__(self) -> HttpResponse:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        # A body read to its end returns the connection to the pool; anything else drops it.
        self._response.release() if exc is None else self._response.close()


@dataclass
class _Sending:
    """One signed call on its way out. aiohttp picks the connection after the request is
    built, so `_PeerRequest.send` asks for its authentication headers only then: a signature,
    or just this node's id on a connection the peer said is this node's."""

    transport: HttpPeerTransport
    audience: str
    path: str
    body: bytes
    force_sign: bool = False
    connection: object | None = None  # the connection it went on (its SSLObject)
    signed: bool = True

    def headers_for(self, connection: object | None) -> dict[str, str]:
        self.connection = connection
        me = self.transport._me
        if (not self.force_sign and me is not None and connection is not None
                and connection in self.transport._bound):
            self.signed = False
            return {H_NODE: me}
        self.signed = True
        headers = self.transport._signer(self.audience, self.path, self.body)
        self.transport._me = headers.get(H_NODE)
        return headers


# The signed call this task is sending (set around each aiohttp call in `_attempt`).
_SENDING: contextvars.ContextVar[_Sending | None] = contextvars.ContextVar(
    "covey_peer_sending", default=None)


class _Opened:
    """The connections one pool has opened: each counted when a first request goes on it."""

    def __init__(self) -> None:
        self.count = 0
        self._seen: weakref.WeakSet[object] = weakref.WeakSet()  # their SSLObjects

    def saw(self, connection: object | None) -> None:
        if connection is not None and connection not in self._seen:
            self._seen.add(connection)
            self.count += 1


class _PeerRequest(aiohttp.ClientRequest):
    """aiohttp's request, authenticated once its connection is known (see `_Sending`).
    Each pool uses a subclass that sets `opened`."""

    opened: _Opened | None = None

    async def send(self, conn: Connection) -> aiohttp.ClientResponse:
        transport = conn.transport
        connection = transport.get_extra_info("ssl_object") if transport is not None else None
        if self.opened is not None:
            self.opened.saw(connection)
        sending = _SENDING.get()
        if sending is not None:
            self.headers.update(sending.headers_for(connection))
        return await super().send(conn)


@dataclass
class _Pool:
    session: aiohttp.ClientSession
    pin: aiohttp.Fingerprint
    opened: _Opened
    streams: KeptConnections
    preferred: str | None = None
    control: asyncio.Lock = field(default_factory=asyncio.Lock)


class HttpPeerTransport:
    """Pinned TLS over aiohttp, one bounded keep-alive pool per peer fingerprint.

    `signer(audience, path, body)` signs a request. Use as an async context manager (or call
    `close()`): it owns every pool's connections."""

    def __init__(self, signer: Signer, *, connect_s: float = CONNECT_S,
                 pool_limit: int = POOL_LIMIT) -> None:
        self._signer = signer
        self._connect_s = connect_s
        self._pool_limit = pool_limit
        self._pools: dict[str, _Pool] = {}
        # Kept connections (their SSLObjects, gone with them) the peer said are this node's,
        # and this node's id as its signer names it (learnt from the first signature).
        self._bound: weakref.WeakSet[object] = weakref.WeakSet()
        self._me: str | None = None
        self._tls = client_context()  # for streams; aiohttp's pools make their own

    async def __aenter__(self) -> HttpPeerTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.streams.close()
            await pool.session.close()

    def opened(self, fingerprint: str) -> int:
        pool = self._pools.get(fingerprint)
        return pool.opened.count if pool else 0

    def address(self, fingerprint: str) -> str | None:
        pool = self._pools.get(fingerprint)
        return pool.preferred if pool else None

    def control(self, fingerprint: str) -> asyncio.Lock:
        if not is_fingerprint(fingerprint):
            return asyncio.Lock()  # post() refuses it anyway: nothing to pin
        return self._pool(fingerprint).control

    async def forget(self, keep: set[str]) -> None:
        """Close the pools of peers no longer known (fingerprints not in `keep`)."""
        for fingerprint in set(self._pools) - keep:
            pool = self._pools.pop(fingerprint)
            pool.streams.close()
            await pool.session.close()

    def _pool(self, fingerprint: str) -> _Pool:
        pool = self._pools.get(fingerprint)
        if pool is None:
            opened = _Opened()
            # A request class of the pool's own counts its connections (a TraceConfig did:
            # aiohttp then awaited a signal at each stage of every request, ~0.15 ms of CPU
            # per request here).
            request_class = type("_PoolRequest", (_PeerRequest,), {"opened": opened})
            pool = _Pool(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_limit,
                                               keepalive_timeout=KEEPALIVE_S),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_s,
                                              sock_read=600),
                auto_decompress=False, request_class=request_class,
                cookie_jar=aiohttp.DummyCookieJar()),  # peers set none
                aiohttp.Fingerprint(bytes.fromhex(fingerprint)), opened,
                KeptConnections(fingerprint, self._tls, self._connect_s))
            self._pools[fingerprint] = pool
        return pool

    def _order(self, pool: _Pool, addresses: tuple[str, ...]) -> list[str]:
        if pool.preferred in addresses:
            return [pool.preferred, *(a for a in addresses if a != pool.preferred)]
        return list(addresses)

    async def post(self, peer: Peer, path: str, body: bytes, *, timeout_s: float | None,
                   headers: Mapping[str, str] | None = None, signed: bool = True,
                   max_bytes: int = MAX_ANSWER) -> HttpResponse:
        async def attempt(pool: _Pool, address: str) -> HttpResponse:
            response = await self._attempt(pool, peer, address, path, body, timeout_s,
                                           headers, signed)
            return HttpResponse(response, max_bytes, peer.label)
        return await self._at_each_address(peer, attempt)

    async def stream(self, peer: Peer, path: str, body: bytes, *, timeout_s: float | None,
                     headers: Mapping[str, str] | None = None,
                     max_bytes: int = MAX_ANSWER) -> EngineStream:
        async def attempt(pool: _Pool, address: str) -> EngineStream:
            return await self._stream_at(pool, peer, address, path, body, timeout_s,
                                         headers or {}, max_bytes)
        return await self._at_each_address(peer, attempt)

    async def _at_each_address(self, peer: Peer,
                               attempt: Callable[[_Pool, str], Awaitable[_T]]) -> _T:
        """`attempt` at the peer's addresses in turn, until one is reached (the one that
        answered last first). Raises PeerError."""
        if not is_fingerprint(peer.fingerprint):
            raise PeerError("unpinned", f"no signed TLS fingerprint for {peer.label}: unusable "
                                        "(there would be nothing to pin)")
        if not peer.addresses:
            raise PeerError("connect", f"{peer.label} advertises no address")
        pool = self._pool(peer.fingerprint)
        failures: list[str] = []
        last: PeerError | None = None
        for address in self._order(pool, peer.addresses[:16]):
            try:
                answer = await attempt(pool, address)
            except PeerError as exc:
                if exc.kind not in ("connect", "tls"):
                    raise  # it was reached: another address would only repeat the work
                failures.append(f"{address}: {exc}")
                last = exc
                continue
            if pool.preferred != address:
                if pool.preferred is not None:
                    log.info("peer %s: now reached at %s", peer.label, address)
                pool.preferred = address
            return answer
        assert last is not None
        raise PeerError(last.kind, f"cannot reach {peer.label} at " + "; ".join(failures),
                        address=last.address)

    async def _stream_at(self, pool: _Pool, peer: Peer, address: str, path: str, body: bytes,
                         timeout_s: float | None, headers: Mapping[str, str],
                         cap: int) -> EngineStream:
        """One streamed call at `address`, as `_attempt` for aiohttp's: signed on a new
        connection, unsigned on one the peer said is ours, signed again if it says no more."""
        retry = resign = False
        while True:
            # After a kept connection failed, a new one: another kept one may be as stale.
            kept = None if retry else pool.streams.take(address, time.monotonic())
            fresh = kept is None
            answer: EngineStream | None = None
            try:
                # The deadline covers connecting too, as aiohttp's for `post` does.
                async with asyncio.timeout(timeout_s):
                    if kept is None:
                        kept = await self._connect_stream(pool, address)
                    signed = resign or not kept.bound or self._me is None
                    if signed:
                        auth = self._signer(peer.fingerprint, path, body)
                        self._me = auth.get(H_NODE)
                    else:
                        auth = {H_NODE: self._me or ""}
                    answer = pool.streams.send(kept, path, {"Content-Type": "application/json",
                                                            **headers, **auth},
                                               body, cap, who=peer.label)
                    await answer.started()
            except EngineStreamError as exc:
                if answer is not None:
                    answer.close()
                if not fresh and not retry:
                    # A kept connection the peer had just closed: it never saw this
                    # request, so one more try on a fresh connection is safe.
                    retry = True
                    continue
                raise PeerError("broken", str(exc), address=address) from exc
            except TimeoutError as exc:
                if answer is not None:
                    answer.close()
                raise PeerError("timeout", f"{peer.label} sent nothing within "
                                           f"{timeout_s:g}s", address=address) from exc
            except BaseException:
                if answer is not None:
                    answer.close()
                elif kept is not None:  # nothing was sent on it: it must not linger
                    kept.transport.close()
                raise
            said = answer.headers.get(H_BOUND)
            if not signed and said == "0" and not resign:
                kept.bound = False  # refused as a caller: sign the call after all
                answer.close()
                resign = True
                continue
            if signed and said == "1":
                kept.bound = True
            return answer

    async def _connect_stream(self, pool: _Pool, address: str) -> Kept:
        try:
            kept = await pool.streams.connect(address)
        except PinMismatch as exc:
            raise PeerError("tls", "presented a different TLS key than the one pinned "
                                   "(not the same node, or a man in the middle)",
                            address=address) from exc
        except TimeoutError as exc:
            raise PeerError("connect", f"connect timed out after {self._connect_s:g}s",
                            address=address) from exc
        except ssl.SSLError as exc:
            raise PeerError("tls", f"TLS failed: {exc.reason or exc}", address=address) from exc
        except (OSError, ValueError) as exc:
            raise PeerError("connect", _why(exc) if isinstance(exc, OSError) else str(exc),
                            address=address) from exc
        pool.opened.saw(kept.transport.get_extra_info("ssl_object"))
        return kept

    async def _attempt(self, pool: _Pool, peer: Peer, address: str, path: str, body: bytes,
                       timeout_s: float | None, headers: Mapping[str, str] | None,
                       signed: bool) -> aiohttp.ClientResponse:
        retry = resign = False
        while True:
            sent = {"Content-Type": "application/json", **(headers or {})}
            # Signed per attempt (each carries its own nonce), once its connection is known.
            sending = _Sending(self, peer.fingerprint, path, body, resign) if signed else None
            token = _SENDING.set(sending)
            try:
                # asyncio.timeout, not wait_for: no task per request on the relay's path.
                async with asyncio.timeout(timeout_s):
                    response = await pool.session.post(f"https://{address}{path}", data=body,
                                                       headers=sent, ssl=pool.pin)
            except aiohttp.ServerFingerprintMismatch as exc:
                raise PeerError("tls", "presented a different TLS key than the one pinned "
                                       "(not the same node, or a man in the middle)",
                                address=address) from exc
            except aiohttp.ClientConnectorError as exc:
                raise PeerError("connect", _why(exc.os_error), address=address) from exc
            except aiohttp.ConnectionTimeoutError as exc:
                raise PeerError("connect", f"connect timed out after {self._connect_s:g}s",
                                address=address) from exc
            except aiohttp.ServerDisconnectedError as exc:
                # A kept connection the peer had just closed: it never saw this request,
                # so one more try on a fresh connection is safe.
                if retry:
                    raise PeerError("broken", f"{peer.label} closed the connection",
                                    address=address) from exc
                retry = True
                continue
            except TimeoutError as exc:
                raise PeerError("timeout", f"{peer.label} sent nothing within "
                                           f"{timeout_s:g}s", address=address) from exc
            except aiohttp.ClientError as exc:
                raise PeerError("broken", f"{type(exc).__name__}: {exc}",
                                address=address) from exc
            finally:
                _SENDING.reset(token)
            if sending is None:
                return response
            if not sending.signed and response.headers.get(H_BOUND) == "0" and not resign:
                # The peer refused us as a caller (this connection is not, or no longer,
                # taken as ours; our certificate lapsed there): sign the call after all.
                self._bound.discard(sending.connection)
                response.release()
                resign = True
                continue
            if sending.signed and sending.connection is not None \
                    and response.headers.get(H_BOUND) == "1":
                self._bound.add(sending.connection)
            return response


def _why(error: OSError) -> str:
    """A connect failure in words a user can act on."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "connect timed out"
    return error.strerror or str(error)


_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def is_fingerprint(text: object) -> bool:
    """A TLS fingerprint as records carry it: 64 lowercase hex digits (checked on every call
    to a peer, so by one regex match rather than per character)."""
    return isinstance(text, str) and _FINGERPRINT.fullmatch(text) is not None


# Engines and attached backends are not peers, but the relay reads both the same way.
async def engine_post(session: aiohttp.ClientSession, url: str, body: bytes,
                      headers: Mapping[str, str], cap: int) -> HttpResponse:
    """POST to an engine on this machine; its answer is read like a peer's."""
    response = await session.post(url, data=body, headers=dict(headers))
    return HttpResponse(response, cap, url)

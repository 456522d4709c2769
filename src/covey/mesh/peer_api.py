"""The mesh listener's control endpoints (served over TLS from the node key):

    POST /mesh/join      redeem an invite (authority only; the one unsigned endpoint,
                         protected by the invite's one-time secret)
    POST /mesh/gossip    signed; body {"digest"}: answers with the records the caller lacks
                         and this node's digest
    POST /mesh/records   signed; body {"records"}: records this node lacked
    POST /mesh/probe     signed; any JSON body: echoes its size and hash, and lists this
                         node's engines (the data-plane check, `covey.health`)

Signed requests are checked in two steps: membership and freshness from the headers before
the body is read (a stranger cannot make this node read a large one), then the signature over
the body and replays. Every body is capped and validated; refusals are JSON
`{"error": {...}}` with 400/403 (503 when the replay cache is full).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from covey.errors import CoveyError, error_body
from covey.mesh.gossip import MAX_DIGEST, MAX_RECORDS_PER_EXCHANGE, plan_exchange
from covey.mesh.membership import InviteBook, MembershipError
from covey.mesh.records import RecordRejected
from covey.mesh.sealed import SealError, b64d, b64e
from covey.mesh.state import CERT_TTL_S, MeshState
from covey.mesh.transport import H_CERT, MAX_CERT_HEADER, PeerRefused, RequestVerifier
from covey.router.proxy import T_RECEIVED

MAX_BODY = 4 * 1024 * 1024
OPEN_PATHS = frozenset({"/mesh/join"})
Clock = Callable[[], float]
PEER = web.RequestKey("peer", str)  # the verified calling node id
BODY = web.RequestKey("json", dict)  # the decoded JSON object body


def _refuse(status: int, code: str, message: str) -> web.Response:
    return web.json_response(error_body(message, "permission_error" if status == 403
                                        else "invalid_request_error", code), status=status)


def build_peer_app(state: MeshState, audience: str, clock: Clock = time.time,
                   serve: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
                   engines: Callable[[], dict[str, dict[str, Any]]] | None = None
                   ) -> web.Application:
    """The mesh listener's app. `audience` is this node's TLS fingerprint: signed requests
    must name it. `serve` handles peers' inference calls (/mesh/v1/...); `engines` tells
    probes each local model's state."""
    verifier = RequestVerifier(state.info.mesh_id, state.is_member, audience)

    def refused(exc: PeerRefused) -> web.Response:
        if exc.reason == "not_member" and state.revocations_envelope:
            # Public and authority-signed: tells a revoked caller that it was revoked.
            return web.json_response(
                {**error_body(str(exc), "permission_error", exc.reason),
                 "revocations": b64e(state.revocations_envelope)}, status=403)
        if exc.status == 503:
            return web.json_response(error_body(str(exc), "server_error", exc.reason),
                                     status=503, headers={"Retry-After": "2"})
        return _refuse(403, exc.reason, str(exc))

    @web.middleware
    async def authenticate(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
        request[T_RECEIVED] = time.perf_counter()
        claim = None
        if request.path not in OPEN_PATHS:
            cert = request.headers.get(H_CERT, "")
            if 0 < len(cert) <= MAX_CERT_HEADER:
                with contextlib.suppress(SealError):  # a bad one simply admits nobody
                    state.admit_cert(b64d(cert), clock())
            try:
                claim = verifier.claim(request.headers, clock())
            except PeerRefused as exc:
                return refused(exc)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refuse(413, "payload_too_large", "body over the mesh limit")
        if claim is not None:
            try:
                request[PEER] = verifier.check(claim, request.method, request.path_qs, body,
                                               clock())
            except PeerRefused as exc:
                return refused(exc)
        if request.path.startswith("/mesh/v1/"):
            try:  # inference: the OpenAI handlers read the body themselves
                return await handler(request)
            except CoveyError as exc:
                return web.json_response(exc.body(), status=exc.status, headers=exc.headers())
        try:
            decoded = json.loads(body) if body else {}
            if not isinstance(decoded, dict):
                raise ValueError("not an object")
            request[BODY] = decoded
        except (ValueError, UnicodeDecodeError):
            return _refuse(400, "invalid_json", "body must be a JSON object")
        return await handler(request)

    async def join(request: web.Request) -> web.Response:
        if state.authority is None:
            return _refuse(403, "not_authority", "this node cannot admit members; use an "
                                                 "invite from the node that created the mesh")
        data = request[BODY]
        try:
            public_key = b64d(str(data.get("public_key", "")))
            book = InviteBook(state.data_dir / "invites.db")
            try:
                cert = book.redeem(state.authority, str(data.get("invite_id", ""))[:64],
                                   str(data.get("secret", ""))[:128], public_key, clock(),
                                   CERT_TTL_S)
            finally:
                book.close()
        except (MembershipError, SealError) as exc:
            return _refuse(403, getattr(exc, "reason", "malformed"), str(exc))
        return web.json_response({
            "cert": b64e(cert), "mesh_id": state.info.mesh_id,
            "authority_public_key": b64e(state.info.authority_public_key),
            "records": [b64e(h.envelope) for h in _held(state)]})

    async def gossip(request: web.Request) -> web.Response:
        theirs = request[BODY].get("digest")
        if not isinstance(theirs, dict) or len(theirs) > MAX_DIGEST:
            return _refuse(400, "invalid_digest", "digest must be an object of node id → seq")
        digest = {str(k): v for k, v in theirs.items() if isinstance(v, int)}
        send, _ = plan_exchange(state.table.digest(), digest, MAX_RECORDS_PER_EXCHANGE)
        records = [b64e(h.envelope) for nid in send if (h := state.table.get(nid))]
        return web.json_response({"digest": state.table.digest(), "records": records})

    async def records(request: web.Request) -> web.Response:
        raw = request[BODY].get("records")
        if not isinstance(raw, list) or len(raw) > MAX_RECORDS_PER_EXCHANGE:
            return _refuse(400, "invalid_records", "records must be a short list")
        return web.json_response({"accepted": apply_records(state, raw, clock())})

    async def probe(request: web.Request) -> web.Response:
        body = await request.read()  # already read (and its hash verified) by the middleware
        return web.json_response({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                                  "models": engines() if engines else {}})

    app = web.Application(middlewares=[authenticate], client_max_size=MAX_BODY)
    app.router.add_post("/mesh/probe", probe)
    app.router.add_post("/mesh/join", join)
    app.router.add_post("/mesh/gossip", gossip)
    app.router.add_post("/mesh/records", records)
    if serve is not None:
        app.router.add_post("/mesh/v1/{path:.+}", serve)
    return app


def apply_records(state: MeshState, encoded: list[Any], now: float) -> int:
    """Apply base64url envelopes; bad, stale or foreign ones are skipped. Returns how many
    were new."""
    accepted = 0
    for item in encoded:
        if not isinstance(item, str):
            continue
        try:
            state.accept(b64d(item), now)
            accepted += 1
        # Each record stands alone: a stale or forged one must not stop the rest.
        except (RecordRejected, SealError):
            continue
    return accepted


def _held(state: MeshState) -> list[Any]:
    return [h for nid in state.table.digest() if (h := state.table.get(nid))]

"""The mesh listener's control endpoints (served over TLS from the node key):

    POST /mesh/join      redeem an invite (the one unsigned endpoint, protected by the
                         invite's one-time secret); a member that is not the mesh's creator
                         forwards it to the creator, signed as itself, and relays the
                         certificate after checking it
    POST /mesh/invite    signed; the creator mints an invite whose first contacts are the
                         caller's (body {"ttl_s", "contacts"}), then its own
    POST /mesh/renew     signed; body {"request"}: a member's sealed renewal request; the
                         creator answers {"cert"}, a member forwards it to the creator
    POST /mesh/gossip    signed; body {"digest"}: answers with the records the caller lacks
                         and this node's digest
    POST /mesh/records   signed; body {"records"}: records this node lacked
    POST /mesh/probe     signed; any JSON body: echoes its size and hash, and lists this
                         node's engines (the data-plane check, `covey.health`)
    POST /mesh/ledger/countersign
                         signed; a provider's receipt for a request this node relayed to it:
                         answers {"receipt"} countersigned (ledger/service.py)
    POST /mesh/ledger/receipts
                         signed; on the ledger's keeper: a countersigned receipt from one of
                         its two parties, for the mesh ledger; answers {"status"}
    POST /mesh/ledger/consistency, /mesh/ledger/cosign, /mesh/ledger/inclusion
                         signed; on the keeper: a consistency proof between two tree sizes
                         for a witness, a witness's cosignature of a checkpoint, and
                         receipts' entries with inclusion proofs for a member's audit
                         (ledger/witness.py, ledger/audit.py)
    POST /mesh/memory/search
                         signed; read-only search of the memories this node shares
                         (memory/sharing.py): 503 when it shares none, 403 for a project
                         it does not share, 409 for another embedding model
    POST /mesh/files/manifest, /mesh/files/chunk
                         signed; a shared model file's manifest, and one chunk's raw bytes
                         (fetch/serve.py): 403 when sharing is off, 404 for a file this
                         node does not share

Signed requests are checked in two steps: membership and freshness from the headers before
the body is read (a stranger cannot make this node read a large one), then the signature over
the body and replays. Every body is capped and validated; refusals are JSON
`{"error": {...}}` with 400/403 (503 when the replay cache is full).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from covey.errors import CoveyError, error_body
from covey.fetch.serve import (
    CHUNK_PATH,
    MANIFEST_PATH,
    FileShare,
    ShareRefused,
    parse_chunk_ask,
    parse_manifest_ask,
)
from covey.ledger.receipts import ReceiptRejected
from covey.ledger.service import COUNTERSIGN_PATH, KEEPER_PATH, LedgerService
from covey.ledger.witness import CONSISTENCY_PATH, COSIGN_PATH, INCLUSION_PATH
from covey.memory.records import MemoryInputError
from covey.memory.service import PEER_PATH as MEMORY_PATH
from covey.memory.service import MemoryService
from covey.memory.sharing import Refused, parse_peer_query
from covey.mesh.authority import AuthorityLink, AuthorityOffline, contacts_of
from covey.mesh.gossip import MAX_DIGEST, MAX_RECORDS_PER_EXCHANGE, plan_exchange
from covey.mesh.membership import Contact, InviteBook, MembershipError
from covey.mesh.peer_transport import PeerError
from covey.mesh.renewal import grant
from covey.mesh.sealed import SealError, b64d, b64e
from covey.mesh.state import MeshState, apply_records
from covey.mesh.transport import (
    H_BOUND,
    H_CERT,
    MAX_CERT_HEADER,
    PeerRefused,
    RequestVerifier,
)
from covey.router.proxy import T_RECEIVED

MAX_BODY = 4 * 1024 * 1024
MAX_INVITE_TTL_S = 7 * 24 * 3600.0
OPEN_PATHS = frozenset({"/mesh/join"})
Clock = Callable[[], float]
PEER = web.RequestKey("peer", str)  # the verified calling node id
BODY = web.RequestKey("json", dict)  # the decoded JSON object body
BOUND = web.RequestKey("bound", bool)  # the connection is the verified caller's
# The app's verifier: the mesh listener (mesh/peer_serve.py) checks the requests it serves
# itself with it, so a connection proved there is proved here too, and a nonce seen once.
VERIFIER = web.AppKey("verifier", RequestVerifier)


def _tls_of(request: web.Request) -> object | None:
    """The request's TLS connection (its SSLObject), None when it did not come over TLS: a
    connection whose first signed request verified vouches for the same node's later ones."""
    transport = request.transport
    return transport.get_extra_info("ssl_object") if transport is not None else None


def admit_caller_cert(state: MeshState, headers: Mapping[str, str], now: float) -> None:
    """Learn the caller's member certificate (`x-covey-cert`, on a signed request) before its
    claim is checked: a member this node has not heard of yet is then known."""
    cert = headers.get(H_CERT, "")
    if 0 < len(cert) <= MAX_CERT_HEADER:
        with contextlib.suppress(SealError):  # a bad one simply admits nobody
            state.admit_cert(b64d(cert), now)


def _refuse(status: int, code: str, message: str) -> web.Response:
    kind = ("permission_error" if status == 403 else "server_error" if status >= 500
            else "invalid_request_error")
    return web.json_response(error_body(message, kind, code), status=status)


def build_peer_app(state: MeshState, audience: str, clock: Clock = time.time,
                   serve: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
                   engines: Callable[[], dict[str, dict[str, Any]]] | None = None,
                   authority: AuthorityLink | None = None,
                   ledger: LedgerService | None = None,
                   memory: MemoryService | None = None,
                   files: FileShare | None = None) -> web.Application:
    """The mesh listener's app. `audience` is this node's TLS fingerprint: signed requests
    must name it. `serve` handles peers' inference calls (/mesh/v1/...); `engines` tells
    probes each local model's state; `authority` reaches the mesh's creator (on members, to
    forward joins and renewals); `files` offers this node's model files to members."""
    verifier = RequestVerifier(state.info.mesh_id, state.is_member, audience)

    def refused(exc: PeerRefused) -> web.Response:
        if exc.status == 503:
            return web.json_response(error_body(str(exc), "server_error", exc.reason),
                                     status=503, headers={"Retry-After": "2"})
        if exc.reason == "not_member" and state.revocations_envelope:
            # Public and authority-signed: tells a revoked caller that it was revoked.
            response = web.json_response(
                {**error_body(str(exc), "permission_error", exc.reason),
                 "revocations": b64e(state.revocations_envelope)}, status=403)
        else:
            response = _refuse(403, exc.reason, str(exc))
        # Refused as a caller, not for what it asked: an unsigned call is signed and sent
        # once more (its connection is not, or no longer, taken as the caller's).
        response.headers[H_BOUND] = "0"
        return response

    @web.middleware
    async def authenticate(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
        request[T_RECEIVED] = time.perf_counter()
        claim, connection = None, _tls_of(request)
        if request.path not in OPEN_PATHS:
            admit_caller_cert(state, request.headers, clock())
            try:
                claim = verifier.claim(request.headers, clock(), connection=connection)
            except PeerRefused as exc:
                return refused(exc)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refuse(413, "payload_too_large", "body over the mesh limit")
        if claim is not None:
            try:
                request[PEER] = verifier.check(claim, request.method, request.path_qs, body,
                                               clock(), connection=connection)
            except PeerRefused as exc:
                return refused(exc)
            request[BOUND] = verifier.vouches(connection, request[PEER])
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

    async def forwarded(work: Awaitable[bytes]) -> bytes | web.Response:
        """Run a call to the mesh's creator; its failures become refusals for our caller."""
        try:
            return await work
        except AuthorityOffline as exc:
            return _refuse(503, "creator_offline", str(exc))
        except PeerError as exc:
            error = exc.answer.get("error")
            if isinstance(error, dict):  # the creator refused: pass its reason on
                return _refuse(403, str(error.get("code") or "refused")[:64],
                               str(error.get("message") or exc)[:1000])
            return _refuse(502, "creator_failed", str(exc))

    async def join(request: web.Request) -> web.Response:
        data = request[BODY]
        try:
            public_key = b64d(str(data.get("public_key", ""))[:64])
        except SealError:
            public_key = b""
        if len(public_key) != 32:
            return _refuse(400, "malformed", "the joining node's key is not an Ed25519 key")
        if state.authority is None:
            if authority is None:
                return _refuse(403, "not_authority", "this node cannot admit members; use an "
                                                     "invite from the node that created the "
                                                     "mesh")
            # Only the three fields a join has, each bounded, travel on to the creator.
            forward = {"invite_id": str(data.get("invite_id", ""))[:64],
                       "secret": str(data.get("secret", ""))[:128],
                       "public_key": b64e(public_key)}
            got = await forwarded(authority.join(forward, public_key))
            if isinstance(got, web.Response):
                return got
            cert = got
        else:
            try:
                book = InviteBook(state.data_dir / "invites.db")
                try:
                    cert = book.redeem(state.authority, str(data.get("invite_id", ""))[:64],
                                       str(data.get("secret", ""))[:128], public_key, clock(),
                                       state.cert_validity_s)
                finally:
                    book.close()
            except MembershipError as exc:
                return _refuse(403, exc.reason, str(exc))
        return web.json_response({
            "cert": b64e(cert), "mesh_id": state.info.mesh_id,
            "authority_public_key": b64e(state.info.authority_public_key),
            "records": [b64e(h.envelope) for h in _held(state)]})

    async def invite(request: web.Request) -> web.Response:
        if state.authority is None:
            return _refuse(403, "not_authority", "only the mesh's creator mints invites")
        data = request[BODY]
        ttl_s, raw = data.get("ttl_s", 3600.0), data.get("contacts", [])
        if not isinstance(ttl_s, int | float) or not 0 < ttl_s <= MAX_INVITE_TTL_S:
            return _refuse(400, "invalid_ttl", f"ttl_s must be 0..{MAX_INVITE_TTL_S:.0f}")
        if not isinstance(raw, list) or len(raw) > 16:
            return _refuse(400, "invalid_contacts", "contacts must be a list of at most 16")
        try:
            theirs = [Contact.model_validate(c) for c in raw]
        except ValueError:
            return _refuse(400, "invalid_contacts", "a contact is not {address, fingerprint}")
        held = state.table.get(state.identity.node_id)
        contacts = theirs + contacts_of(held.record if held else None)
        if not contacts:
            return _refuse(503, "no_address", "the creator has not published its addresses "
                                              "yet; try again in a moment")
        book = InviteBook(state.data_dir / "invites.db")
        try:
            token = book.mint(state.authority, contacts, clock(), float(ttl_s)).token()
        finally:
            book.close()
        return web.json_response({"invite": token})

    async def renew(request: web.Request) -> web.Response:
        ask = request[BODY].get("request")
        if not isinstance(ask, str):
            return _refuse(400, "invalid_request", "body must be {\"request\": ...}")
        if state.authority is None:
            if authority is None:
                return _refuse(403, "not_authority", "this node cannot reach the creator")
            got = await forwarded(authority.renew(ask))
            if isinstance(got, web.Response):
                return got
            return web.json_response({"cert": b64e(got)})
        try:
            cert = grant(state, ask, clock())
        except MembershipError as exc:
            return _refuse(403, exc.reason, str(exc))
        return web.json_response({"cert": b64e(cert)})

    async def gossip(request: web.Request) -> web.Response:
        theirs = request[BODY].get("digest")
        if not isinstance(theirs, dict) or len(theirs) > MAX_DIGEST:
            return _refuse(400, "invalid_digest", "digest must be an object of node id → seq")
        digest = {str(k): v for k, v in theirs.items() if isinstance(v, int)}
        state.gossiped_in[request[PEER]] = time.monotonic()  # a verified member's id
        # The caller's own record, when it changed since the last exchange: taken before the
        # digest below, so the caller sees it arrived and need not push it in a second call.
        pushed = request[BODY].get("records", [])
        if not isinstance(pushed, list) or len(pushed) > MAX_RECORDS_PER_EXCHANGE:
            return _refuse(400, "invalid_records", "records must be a short list")
        # What this node held of the caller's record before the push: a copy of the caller's
        # data dir shows there as a seq the caller never signed (MeshState.check_own_seq).
        # A node calls only with news, so its push is newer and the digest shows its own.
        before = state.table.get(request[PEER])
        apply_records(state, pushed, clock())
        send, _ = plan_exchange(state.table.digest(), digest, MAX_RECORDS_PER_EXCHANGE)
        records = [b64e(h.envelope) for nid in send if (h := state.table.get(nid))]
        # The caller holds all this node holds once it has the answer, unless it was cut.
        state.note_synced(request[PEER], time.monotonic(),
                          complete=len(send) < MAX_RECORDS_PER_EXCHANGE)
        answer: dict[str, Any] = {"digest": state.table.digest(), "records": records}
        if before is not None:
            answer["held"] = before.record.seq
        return web.json_response(answer)

    async def records(request: web.Request) -> web.Response:
        raw = request[BODY].get("records")
        if not isinstance(raw, list) or len(raw) > MAX_RECORDS_PER_EXCHANGE:
            return _refuse(400, "invalid_records", "records must be a short list")
        before = state.table.version
        accepted = apply_records(state, raw, clock())
        state.took_from(request[PEER], before)
        return web.json_response({"accepted": accepted})

    async def probe(request: web.Request) -> web.Response:
        body = await request.read()  # already read (and its hash verified) by the middleware
        return web.json_response({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                                  "models": engines() if engines else {}})

    async def countersign(request: web.Request) -> web.Response:
        if ledger is None:
            return _refuse(404, "no_ledger", "this node keeps no ledger")
        try:
            wire = await ledger.countersign(json.dumps(request[BODY]).encode(), request[PEER])
        except ReceiptRejected as exc:
            return _refuse(400, exc.reason, str(exc))
        return web.json_response({"receipt": wire.decode()})

    async def receipts(request: web.Request) -> web.Response:
        if ledger is None:
            return _refuse(404, "no_ledger", "this node keeps no ledger")
        try:
            status = await asyncio.to_thread(ledger.accept, json.dumps(request[BODY]).encode(),
                                             request[PEER])
        except ReceiptRejected as exc:
            return _refuse(400, exc.reason, str(exc))
        return web.json_response({"status": status})

    def keeper_call(work: Callable[[LedgerService, web.Request], Any]
                    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A witness's call to the keeper (ledger/witness.py): blocking ledger work in a
        thread; its refusals are 400s, but sizes it cannot prove are a 409."""
        async def handle(request: web.Request) -> web.Response:
            if ledger is None:
                return _refuse(404, "no_ledger", "this node keeps no ledger")
            try:
                answer = await asyncio.to_thread(work, ledger, request)
            except ReceiptRejected as exc:
                return _refuse(409 if exc.reason == "bad_sizes" else 400, exc.reason,
                               str(exc))
            return web.json_response(answer)
        return handle

    consistency = keeper_call(lambda lg, r: lg.consistency(r[BODY]))
    inclusion = keeper_call(lambda lg, r: lg.inclusion(r[BODY]))
    cosign = keeper_call(lambda lg, r: {"status": lg.take_cosignature(r[BODY], r[PEER])})

    async def memory_search(request: web.Request) -> web.Response:
        if memory is None:
            return _refuse(503, "memory_off", "this node keeps no memory (started with "
                                              "--no-memory)")
        try:
            body: dict[str, Any] = request[BODY]
            query = parse_peer_query(body)
            answer = await memory.answer_peer(query, request[PEER])
        except MemoryInputError as exc:
            return _refuse(400, "invalid_query", str(exc))
        except Refused as exc:
            return _refuse(exc.status, exc.code, exc.message)
        return web.json_response(answer)

    async def file_manifest(request: web.Request) -> web.Response:
        if files is None:
            return _refuse(404, "not_shared", "this node shares no model files")
        try:
            manifest = await files.manifest(parse_manifest_ask(request[BODY]))
        except ShareRefused as exc:
            return _refuse(exc.status, exc.code, exc.message)
        return web.json_response(manifest.to_json())

    async def file_chunk(request: web.Request) -> web.StreamResponse:
        if files is None:
            return _refuse(404, "not_shared", "this node shares no model files")
        try:
            sha256, index = parse_chunk_ask(request[BODY])
            return await files.send_chunk(request, sha256, index, request[PEER])
        except ShareRefused as exc:  # raised before the answer started
            return _refuse(exc.status, exc.code, exc.message)

    async def say_bound(request: web.Request, response: web.StreamResponse) -> None:
        if request.get(BOUND):  # the caller may send its next requests here unsigned
            response.headers[H_BOUND] = "1"

    app = web.Application(middlewares=[authenticate], client_max_size=MAX_BODY)
    app[VERIFIER] = verifier
    app.on_response_prepare.append(say_bound)
    app.router.add_post(MANIFEST_PATH, file_manifest)
    app.router.add_post(CHUNK_PATH, file_chunk)
    app.router.add_post(MEMORY_PATH, memory_search)
    app.router.add_post(CONSISTENCY_PATH, consistency)
    app.router.add_post(COSIGN_PATH, cosign)
    app.router.add_post(INCLUSION_PATH, inclusion)
    app.router.add_post(COUNTERSIGN_PATH, countersign)
    app.router.add_post(KEEPER_PATH, receipts)
    app.router.add_post("/mesh/probe", probe)
    app.router.add_post("/mesh/join", join)
    app.router.add_post("/mesh/invite", invite)
    app.router.add_post("/mesh/renew", renew)
    app.router.add_post("/mesh/gossip", gossip)
    app.router.add_post("/mesh/records", records)
    if serve is not None:
        app.router.add_post("/mesh/v1/{path:.+}", serve)
    return app


def _held(state: MeshState) -> list[Any]:
    return [h for nid in state.table.digest() if (h := state.table.get(nid))]

"""The client API application: guards (Host/Origin, API key, content type, body size) and
error shaping.

Every error leaving the API is OpenAI-shaped and made by `covey.errors`; unexpected
exceptions are logged (without request content) and answered with a generic 500.

The guards run in the middleware, before any handler: a request another site's page sent
(foreign Origin, `Origin: null`, `Sec-Fetch-Site: cross-site`) or one without the key on a
keyed node is refused before it can cause any work, outbound probes included. A POST must
declare `application/json`: a cross-site form or `no-cors` fetch can only send
`text/plain`, form or multipart bodies without a preflight, so this shuts that door even for
a browser that sends no Origin.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from covey.config import is_loopback
from covey.errors import (
    CoveyError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
)
from covey.router.proxy import T_RECEIVED
from covey.router.sla import NOT_EVALUATED

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Liveness and the web pages' files need no key: they reveal nothing (the pages fetch their
# data from /api/status and /v1/*, which do need it).
OPEN_PATHS = frozenset({"/health", "/", "/status", "/chat"})
OPEN_PREFIXES = ("/static/",)


def needs_key(path: str) -> bool:
    """Pure: must a request for `path` carry the API key (when one is set)?"""
    return path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)


# Asked on every request with the same few Host values; bounded, as the header is the client's.
@functools.lru_cache(maxsize=256)
def host_allowed(host: str | None, bind_host: str, extra: frozenset[str]) -> bool:
    """Pure: may a request naming `host` (a Host header or an Origin's host) be served?

    Loopback names always; the bind address and configured names; any name when bound to a
    wildcard address (then an API key is mandatory). This defeats DNS rebinding, where a
    page on evil.example resolves its own name to 127.0.0.1 and calls the local API.
    """
    if not host:
        return False
    name = _hostname(host)
    if name is None:
        return False
    if is_loopback(name) or name in extra or name == bind_host.strip("[]").lower():
        return True
    return bind_host in ("0.0.0.0", "::", "")


def origin_allowed(origin: str | None, bind_host: str, extra: frozenset[str]) -> bool:
    """Pure: may a request carrying this `Origin` header be served?

    No Origin (curl, the openai client, a same-origin GET) passes. `null` is the origin of a
    sandboxed frame, a `file:` page or a redirect chain: any site can make a browser send
    it, so it is foreign. Otherwise the origin's host must be one `host_allowed` serves.
    """
    if origin is None:
        return True
    origin = origin.strip()
    if origin.lower() == "null":
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return host_allowed(netloc, bind_host, extra)


def cross_site(fetch_site: str | None) -> bool:
    """Pure: does a browser's `Sec-Fetch-Site` say another site made this request? It does
    so even where no Origin is sent (an `<img>` or a `no-cors` GET)."""
    return fetch_site is not None and fetch_site.strip().lower() == "cross-site"


def is_json(content_type: str) -> bool:
    """Pure: does a Content-Type (aiohttp's parsed mime type, lower case) declare JSON?"""
    return content_type == "application/json"


def _hostname(host: str) -> str | None:
    try:
        return urlsplit("//" + host).hostname
    except ValueError:
        return None


# Endpoints whose every answer carries the SLA gate's verdict (router/sla.py).
GATED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def _gated(request: web.Request, response: web.Response) -> web.Response:
    """An error answered before the gate ran (the guard or the body's parser refused it):
    it still says so, so that every answer on a gated endpoint carries the status."""
    if request.path in GATED_PATHS and "x-covey-sla-status" not in response.headers:
        response.headers["x-covey-sla-status"] = NOT_EVALUATED
    return response


def build_app(*, bind_host: str, api_key: str | None, allowed_hosts: frozenset[str],
              max_body_bytes: int) -> web.Application:
    extra = frozenset(h.lower() for h in allowed_hosts)
    expected_auth = f"Bearer {api_key}".encode() if api_key else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[T_RECEIVED] = time.perf_counter()
        try:
            if not host_allowed(request.host, bind_host, extra):
                raise Forbidden(f"Host {request.host!r} is not served here; add it with "
                                "--allowed-host if this is intended")
            origin = request.headers.get("Origin")
            if not origin_allowed(origin, bind_host, extra):
                raise Forbidden(f"Origin {origin!r} may not call this API")
            guarded = needs_key(request.path)
            # A page may be opened from a link on another site; its data and every endpoint
            # that does work may not be fetched from one.
            if guarded and cross_site(request.headers.get("Sec-Fetch-Site")):
                raise Forbidden("another site's page may not call this API "
                                "(Sec-Fetch-Site: cross-site)")
            if expected_auth and guarded:
                given = request.headers.get("Authorization", "").encode()
                if not hmac.compare_digest(given, expected_auth):
                    raise Unauthorized("missing or wrong API key; send "
                                       "`Authorization: Bearer <key>`")
            # Only a routed POST: an unknown path is better answered 404 than 415.
            if request.method == "POST" and request.match_info.http_exception is None \
                    and not is_json(request.content_type):
                raise UnsupportedMediaType(
                    f"Content-Type {request.headers.get('Content-Type', '(none)')!r} is not "
                    "supported; send `Content-Type: application/json`")
            if (request.content_length or 0) > max_body_bytes:
                raise _too_large(max_body_bytes)
            return await handler(request)
        except CoveyError as exc:
            return _gated(request, web.json_response(exc.body(), status=exc.status,
                                                     headers=exc.headers()))
        except web.HTTPRequestEntityTooLarge:
            big = _too_large(max_body_bytes)
            return _gated(request, web.json_response(big.body(), status=big.status))
        except web.HTTPNotFound:
            nf = NotFound(f"no such endpoint: {request.method} {request.path}")
            return web.json_response(nf.body(), status=nf.status)
        except web.HTTPMethodNotAllowed:
            na = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
            return _gated(request, web.json_response(na.body(), status=na.status))
        except web.HTTPException as exc:
            return _gated(request, web.json_response(
                error_body(exc.reason, "invalid_request_error", None), status=exc.status))
        # Last resort: a bug must not become a stack trace for the client or a dead node.
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return _gated(request, web.json_response(
                error_body("internal error; see the node's log", "server_error",
                           "internal_error"), status=500))

    return web.Application(middlewares=[guard], client_max_size=max_body_bytes)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the {limit} byte limit")

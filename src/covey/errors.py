"""Covey's exception tree, and the one place OpenAI-style error bodies are made.

    CoveyError                      base; carries an HTTP status and an OpenAI error type
    ├── BadRequest                  400: malformed JSON, schema violations (names the field)
    ├── Unauthorized                401: missing or wrong API key
    ├── Forbidden                   403: Host/Origin names another site (DNS rebinding)
    ├── ModelNotFound               404: unknown model id (lists the available ids)
    ├── PayloadTooLarge             413: body over the configured limit
    ├── UnsupportedMediaType        415: a POST body not declared `application/json`
    ├── Busy                        429: every slot busy and the queue full (Retry-After)
    ├── UpstreamFailed              502: the engine failed or vanished mid-request
    ├── Unavailable                 503: the model exists but cannot serve now (Retry-After)
    ├── ConfigError                 a setting has a bad value; never reaches HTTP
    └── FetchError                  a model file could not be fetched (network, disk space,
                                    sha256 mismatch); never reaches HTTP

Third-party errors are translated to these at the boundary that meets them
(`raise Unavailable(...) from exc`); status codes are chosen by class, never by message text.
"""

from __future__ import annotations

import json
from typing import Any


class CoveyError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        if code is not None:
            self.code = code
        # Headers decided before the error (the SLA gate's verdict): they go out with it.
        self.extra_headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return dict(self.extra_headers)
        return {**self.extra_headers, "Retry-After": str(max(1, round(self.retry_after)))}


class BadRequest(CoveyError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(CoveyError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(CoveyError):
    status, type, code = 403, "permission_error", "forbidden_host"


class ModelNotFound(CoveyError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class NotFound(CoveyError):
    status, type, code = 404, "invalid_request_error", "not_found"


class MethodNotAllowed(CoveyError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class PayloadTooLarge(CoveyError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class UnsupportedMediaType(CoveyError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class Busy(CoveyError):
    status, type, code = 429, "rate_limit_error", "queue_full"


class UpstreamFailed(CoveyError):
    """`upstream_status`: the engine's or peer's own 5xx, when it answered with one (None: it
    did not answer at all)."""

    status, type, code = 502, "server_error", "upstream_failed"

    def __init__(self, message: str, *, retry_after: float | None = None,
                 upstream_status: int | None = None, code: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after, code=code)
        self.upstream_status = upstream_status


class Unavailable(CoveyError):
    status, type, code = 503, "server_error", "model_unavailable"


class ConfigError(CoveyError):
    """A setting has a bad value. Raised before anything listens; the CLI prints it."""


class FetchError(CoveyError):
    """A model file could not be fetched: the server refused or vanished, the disk is too
    full, or the bytes do not match the sha256. The message says which, and what to do."""


def error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error shape: `{"error": {"message", "type", "code", "param"}}`."""
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def sse_error_event(exc: CoveyError) -> bytes:
    """An in-band error for a stream that already started, followed by the end marker.

    The openai client raises `APIError` when it reads an event whose JSON has `error`.
    """
    return b"data: " + json.dumps(exc.body()).encode() + b"\n\ndata: [DONE]\n\n"

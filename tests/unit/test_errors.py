"""errors.py: every error's status, OpenAI type and code; the one error body shape."""

from __future__ import annotations

import json

import pytest

from covey import errors


@pytest.mark.parametrize(("cls", "status", "type_", "code"), [
    (errors.CoveyError, 500, "server_error", "internal_error"),
    (errors.BadRequest, 400, "invalid_request_error", "invalid_request"),
    (errors.Unauthorized, 401, "authentication_error", "invalid_api_key"),
    (errors.Forbidden, 403, "permission_error", "forbidden_host"),
    (errors.ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (errors.NotFound, 404, "invalid_request_error", "not_found"),
    (errors.MethodNotAllowed, 405, "invalid_request_error", "method_not_allowed"),
    (errors.PayloadTooLarge, 413, "invalid_request_error", "payload_too_large"),
    (errors.Busy, 429, "rate_limit_error", "queue_full"),
    (errors.UpstreamFailed, 502, "server_error", "upstream_failed"),
    (errors.Unavailable, 503, "server_error", "model_unavailable"),
    (errors.ConfigError, 500, "server_error", "internal_error"),
])
def test_error_classes(cls: type[errors.CoveyError], status: int, type_: str,
                       code: str) -> None:
    exc = cls("why")
    assert issubclass(cls, errors.CoveyError)
    assert (exc.status, exc.type, exc.code) == (status, type_, code)
    assert str(exc) == exc.message == "why"
    assert exc.body() == {"error": {"message": "why", "type": type_, "code": code,
                                    "param": None}}
    assert exc.headers() == {}


def test_body_carries_param_and_code_override() -> None:
    exc = errors.BadRequest("bad", param="messages", code="invalid_json")
    assert exc.body() == {"error": {"message": "bad", "type": "invalid_request_error",
                                    "code": "invalid_json", "param": "messages"}}
    assert errors.BadRequest.code == "invalid_request"  # the class default is untouched


@pytest.mark.parametrize(("retry_after", "header"), [
    (0, "1"), (0.2, "1"), (0.5, "1"), (1.0, "1"), (1.4, "1"), (1.6, "2"), (2, "2"),
    (7.0, "7"), (29.6, "30"),
])
def test_retry_after_is_whole_seconds_at_least_one(retry_after: float, header: str) -> None:
    assert errors.Unavailable("x", retry_after=retry_after).headers() == {"Retry-After": header}
    assert errors.Busy("x", retry_after=retry_after).headers() == {"Retry-After": header}


def test_error_body_shape() -> None:
    assert errors.error_body("m", "t", None) == {
        "error": {"message": "m", "type": "t", "code": None, "param": None}}


@pytest.mark.parametrize("exc", [errors.UpstreamFailed("gone"),
                                 errors.Unavailable("later", retry_after=3),
                                 errors.BadRequest("x", param="model")])
def test_sse_error_event_ends_the_stream(exc: errors.CoveyError) -> None:
    event = errors.sse_error_event(exc)
    assert event.startswith(b"data: {") and event.endswith(b"\n\ndata: [DONE]\n\n")
    first, done, rest = event.split(b"\n\n")
    assert (done, rest) == (b"data: [DONE]", b"")
    assert json.loads(first.removeprefix(b"data: ")) == exc.body()

"""Pure API rules: Host/Origin guard, request validation, admission, error shapes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from covey import errors
from covey.api.app import host_allowed
from covey.api.schemas import ChatRequest, parse
from covey.engine.remote import MAX_MODELS, parse_model_list
from covey.engine.supervisor import next_backoff
from covey.metrics.samples import ModelMeter
from covey.router.table import ModelTable, ServedModel
from covey.types import (
    EngineFailed,
    EngineReady,
    EngineStarting,
    EngineState,
    ModelCard,
    ModelId,
)


@pytest.mark.parametrize(("host", "bind", "extra", "ok"), [
    ("127.0.0.1:7272", "127.0.0.1", (), True),
    ("localhost", "127.0.0.1", (), True),
    ("[::1]:7272", "127.0.0.1", (), True),
    ("evil.example", "127.0.0.1", (), False),
    ("evil.example:7272", "127.0.0.1", (), False),
    ("covey.lan:7272", "127.0.0.1", ("covey.lan",), True),
    ("anything.example", "0.0.0.0", (), True),
    ("192.0.2.5:7272", "192.0.2.5", (), True),
    ("", "127.0.0.1", (), False),
    ("[garbage", "127.0.0.1", (), False),
])
def test_host_allowed(host: str, bind: str, extra: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(host, bind, frozenset(extra)) is ok


@pytest.mark.parametrize(("raw", "code", "param"), [
    (b"{", "invalid_json", None),
    (b"[1]", "invalid_json", None),
    (b'{"messages": []}', "invalid_request", "messages"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "invalid_request",
     "stream"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "invalid_request",
     "max_tokens"),
])
def test_parse_errors(raw: bytes, code: str, param: str | None) -> None:
    with pytest.raises(errors.BadRequest) as info:
        parse(raw, ChatRequest)
    assert info.value.code == code and info.value.param == param


def test_parse_keeps_unknown_fields() -> None:
    req, data = parse(json.dumps({"messages": [{"role": "user", "content": "x"}],
                                  "ignore_eos": True}).encode(), ChatRequest)
    assert req.model is None and data["ignore_eos"] is True


@dataclass
class _Engine:
    state: EngineState
    kind: str = "llama.cpp"
    pid: int | None = None


def _served(name: str, state: EngineState, slots: int = 1, queue: int = 1) -> ServedModel:
    card = ModelCard(id=ModelId(name), path=None, size_bytes=None, quantization=None,
                     architecture=None, context_length=None)
    return ServedModel(card=card, engine=_Engine(state), upstream_name=name, slots=slots,
                       max_queue=queue, meter=ModelMeter(window_s=60))


@pytest.mark.parametrize(("state", "retry_after", "text"), [
    (EngineStarting(attempt=2), 2, r"loading \(attempt 2\)"),
    (EngineFailed("file gone", retry_in=7.0), 7.0, "file gone"),
    (EngineFailed("bad file"), None, "bad file"),
])
def test_not_ready_is_503(state: EngineState, retry_after: float | None, text: str) -> None:
    with pytest.raises(errors.Unavailable, match=text) as info:
        _served("m", state).admit()
    assert info.value.status == 503 and info.value.retry_after == retry_after


def test_admission_capacity() -> None:
    m = _served("m", EngineReady("http://e/v1"), slots=2, queue=1)
    assert [m.admit() for _ in range(3)] == ["http://e/v1"] * 3
    assert m.queue_depth == 1
    with pytest.raises(errors.Busy) as info:
        m.admit()
    assert info.value.status == 429 and info.value.headers() == {"Retry-After": "2"}
    m.release()
    m.admit()


def test_resolve() -> None:
    table = ModelTable()
    with pytest.raises(errors.Unavailable, match="serves no models"):
        table.resolve(None)
    table.add(_served("loading", EngineStarting()))
    table.add(_served("ready", EngineReady("http://e/v1")))
    assert table.resolve(None).id == "ready"  # the first ready model is the default
    assert table.resolve("loading").id == "loading"
    with pytest.raises(errors.ModelNotFound, match="available: loading, ready"):
        table.resolve("nope")


@pytest.mark.parametrize(("previous", "stable", "expected"), [
    (None, False, 0.5), (0.5, False, 1.0), (16.0, False, 30.0), (16.0, True, 0.5),
])
def test_backoff(previous: float | None, stable: bool, expected: float) -> None:
    assert next_backoff(previous, 0.5, 30.0, stable) == expected


def test_model_list_parsing() -> None:
    assert parse_model_list({"data": [{"id": "a"}, {"id": "a"}, {"id": "b"}, {"id": 3},
                                      {"id": "x" * 300}, "junk"]}) == ("a", "b")
    assert len(parse_model_list({"data": [{"id": f"m{i}"} for i in range(1000)]})) == MAX_MODELS
    for bad in (None, [], {"data": "x"}, {}):
        with pytest.raises(ValueError):
            parse_model_list(bad)


@pytest.mark.parametrize(("cls", "status"), [
    (errors.BadRequest, 400), (errors.Unauthorized, 401), (errors.Forbidden, 403),
    (errors.ModelNotFound, 404), (errors.PayloadTooLarge, 413), (errors.Busy, 429),
    (errors.UpstreamFailed, 502), (errors.Unavailable, 503),
])
def test_error_shapes(cls: type[errors.CoveyError], status: int) -> None:
    exc = cls("why", param="p", retry_after=0.2)
    assert exc.status == status
    assert exc.body() == {"error": {"message": "why", "type": cls.type, "code": cls.code,
                                    "param": "p"}}
    assert exc.headers() == {"Retry-After": "1"}


def test_sse_error_event_ends_the_stream() -> None:
    event = errors.sse_error_event(errors.UpstreamFailed("gone"))
    assert event.startswith(b"data: {") and event.endswith(b"data: [DONE]\n\n")
    assert json.loads(event.split(b"\n\n")[0][6:])["error"]["message"] == "gone"

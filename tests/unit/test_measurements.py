"""Rolling windows, percentiles and stream timing: pure functions, time passed in by hand."""

from __future__ import annotations

import pytest

from covey.metrics.samples import ModelMeter, RollingWindow, median, percentile
from covey.metrics.timing import CONTENT, completion_tokens_from_tail, measure
from covey.types import Percentiles


def test_window_percentiles_and_expiry() -> None:
    w = RollingWindow(window_s=10)
    assert w.summary(now=0) == Percentiles(count=0, p50=None, p95=None)
    for i, v in enumerate([5.0, 1.0, 3.0, 2.0, 4.0]):
        w.add(v, now=float(i))
    assert w.summary(now=4) == Percentiles(count=5, p50=3.0, p95=5.0)
    assert w.summary(now=12.5).count == 2  # samples at t=3 and t=4 remain
    assert w.summary(now=100).p50 is None


def test_window_cap() -> None:
    w = RollingWindow(window_s=1e9, max_samples=3)
    for i in range(10):
        w.add(float(i), now=float(i))
    assert w.values(now=10) == [7.0, 8.0, 9.0]


@pytest.mark.parametrize(("values", "pct", "expected"), [
    ([1.0], 50, 1.0), ([1.0, 2.0], 50, 1.0), ([1.0, 2.0, 3.0, 4.0], 95, 4.0),
    ([float(i) for i in range(1, 101)], 99, 99.0),
])
def test_percentile(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0]) == 2.5


def test_meter_keeps_missing_missing() -> None:
    m = ModelMeter(window_s=60)
    m.record(None, None, 5, now=0)
    assert m.requests_ok == 1 and m.completion_tokens == 5
    assert m.ttft_ms.summary(0).p50 is None and m.tokens_per_s.summary(0).count == 0


@pytest.mark.parametrize(("t_first", "t_last", "tokens", "ttft", "tps"), [
    (1.1, 2.1, 11, 100.0, 10.0),
    (None, None, 0, None, None),
    (1.1, 1.1, 5, 100.0, None),  # every token in one read: speed cannot be seen
    (1.1, 2.1, 1, 100.0, None),
])
def test_measure(t_first: float | None, t_last: float | None, tokens: int,
                 ttft: float | None, tps: float | None) -> None:
    r = measure(1.0, t_first, t_last, tokens)
    assert r.ttft_ms == pytest.approx(ttft) if ttft is not None else r.ttft_ms is None
    assert r.tokens_per_s == pytest.approx(tps) if tps is not None else r.tokens_per_s is None


@pytest.mark.parametrize(("tail", "tokens"), [
    (b'data: {"choices":[],"timings":{"predicted_n":7}}\n\ndata: [DONE]\n\n', 7),
    (b'data: {"choices":[],"usage":{"completion_tokens":9}}\n\ndata: [DONE]\n\n', 9),
    (b'ge":{"completion_tokens":3}}\n\ndata: [DONE]\n\n', None),  # starts mid-event
    (b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n', None),
])
def test_tokens_from_tail(tail: bytes, tokens: int | None) -> None:
    assert completion_tokens_from_tail(tail) == tokens


@pytest.mark.parametrize(("chunk", "is_token"), [
    (b'"delta":{"content":"Hi"}', True), (b'"text":" Paris"', True),
    (b'"delta":{"role":"assistant","content":null}', False), (b'"content":""', False),
])
def test_content_detection(chunk: bytes, is_token: bool) -> None:
    assert (CONTENT.search(chunk) is not None) is is_token

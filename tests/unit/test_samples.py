"""metrics/samples.py: rolling windows and nearest-rank percentiles, time passed in by hand."""

from __future__ import annotations

import random

import pytest

from covey.metrics.samples import ModelMeter, RollingWindow, Speed, median, percentile, series
from covey.types import Percentiles

EMPTY = Percentiles(count=0, p50=None, p95=None)


@pytest.mark.parametrize(("values", "pct", "expected"), [
    ([1.0], 50, 1.0),
    ([1.0], 95, 1.0),
    ([1.0, 2.0], 50, 1.0),  # rank ceil(1.0) = 1
    ([1.0, 2.0, 3.0], 50, 2.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    ([1.0, 2.0, 3.0, 4.0], 95, 4.0),
    ([float(i) for i in range(1, 21)], 95, 19.0),  # rank ceil(19.0) = 19
    ([float(i) for i in range(1, 101)], 99, 99.0),
    ([float(i) for i in range(1, 101)], 100, 100.0),
    ([1.0, 2.0, 3.0], 0, 1.0),  # rank is at least 1
])
def test_percentile_is_nearest_rank(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected


@pytest.mark.parametrize(("values", "expected"), [
    ([], EMPTY),
    ([7.0], Percentiles(count=1, p50=7.0, p95=7.0)),
    ([5.0, 1.0, 3.0, 2.0, 4.0], Percentiles(count=5, p50=3.0, p95=5.0)),
    ([float(v) for v in range(20, 0, -1)], Percentiles(count=20, p50=10.0, p95=19.0)),
])
def test_summary(values: list[float], expected: Percentiles) -> None:
    w = RollingWindow(window_s=60)
    for v in values:
        w.add(v, now=0.0)
    assert w.summary(now=0.0) == expected


@pytest.mark.parametrize(("now", "remaining"), [
    (4.0, [5.0, 1.0, 3.0, 2.0, 4.0]),
    (10.0, [5.0, 1.0, 3.0, 2.0, 4.0]),  # a sample exactly window_s old is kept
    (10.5, [1.0, 3.0, 2.0, 4.0]),
    (12.5, [2.0, 4.0]),
    (14.0, [4.0]),
    (14.1, []),
    (100.0, []),
])
def test_expiry_by_injected_now(now: float, remaining: list[float]) -> None:
    w = RollingWindow(window_s=10)
    for t, v in enumerate([5.0, 1.0, 3.0, 2.0, 4.0]):
        w.add(v, now=float(t))
    assert w.values(now=now) == remaining
    assert w.summary(now=now).count == len(remaining)


def test_everything_expired_is_empty() -> None:
    w = RollingWindow(window_s=10)
    w.add(1.0, now=0.0)
    assert w.summary(now=100.0) == EMPTY


def test_adding_expires_old_samples() -> None:
    w = RollingWindow(window_s=10)
    w.add(1.0, now=0.0)
    w.add(2.0, now=50.0)
    assert w.values(now=50.0) == [2.0]


@pytest.mark.parametrize(("max_samples", "added", "kept"), [
    (3, 10, [7.0, 8.0, 9.0]),
    (3, 3, [0.0, 1.0, 2.0]),
    (1, 5, [4.0]),
])
def test_max_samples_drops_the_oldest(max_samples: int, added: int, kept: list[float]) -> None:
    w = RollingWindow(window_s=1e9, max_samples=max_samples)
    for i in range(added):
        w.add(float(i), now=float(i))
    assert w.values(now=float(added)) == kept


@pytest.mark.parametrize(("values", "expected"), [
    ([1.0], 1.0),
    ([3.0, 1.0, 2.0], 2.0),
    ([4.0, 1.0], 2.5),
    ([10.0, 2.0, 4.0, 8.0], 6.0),
])
def test_median(values: list[float], expected: float) -> None:
    before = list(values)
    assert median(values) == expected
    assert values == before  # the caller's list is not reordered


@pytest.mark.parametrize(("ttft", "tps", "ttft_count", "tps_count"), [
    (None, None, 0, 0),
    (120.0, None, 1, 0),
    (None, 30.0, 0, 1),
    (120.0, 30.0, 1, 1),
])
def test_meter_keeps_missing_missing(ttft: float | None, tps: float | None, ttft_count: int,
                                     tps_count: int) -> None:
    m = ModelMeter(window_s=60)
    m.record(ttft, tps, 5, now=0.0)
    m.record(ttft, tps, 7, now=1.0)
    assert (m.requests_ok, m.requests_failed, m.completion_tokens) == (2, 0, 12)
    assert m.ttft_ms.summary(1.0).count == 2 * ttft_count
    assert m.tokens_per_s.summary(1.0).count == 2 * tps_count
    assert (m.ttft_ms.summary(1.0).p50 is None) is (ttft is None)


def test_meter_windows_use_its_window() -> None:
    m = ModelMeter(window_s=60)
    m.record(100.0, 20.0, 3, now=0.0)
    assert m.ttft_ms.summary(now=60.0).count == 1
    assert m.tokens_per_s.summary(now=61.0) == EMPTY


def test_series_is_a_median_per_bucket_with_gaps_left_out() -> None:
    samples = [(0.0, 1.0), (10.0, 3.0), (50.0, 5.0), (170.0, 7.0), (175.0, 9.0)]
    # now=180, 60 s buckets by age: t=0 is 3 buckets old, t=10 and 50 are 2, t=170 and 175
    # are 0; bucket 1 has no samples and is left out.
    assert series(samples, 180.0, 60.0) == [(0.0, 1.0), (60.0, 4.0), (180.0, 8.0)]
    assert series([], 180.0, 60.0) == []


def test_meter_keeps_each_speed_with_its_kind_and_length() -> None:
    m = ModelMeter(window_s=60)
    m.record(None, 40.0, 100, now=0.0, source="engine", latency_ms=2500.0)
    m.record(120.0, 50.0, 8, now=1.0)  # a stream
    m.record(None, None, 3, now=2.0, latency_ms=300.0)  # nothing to time: counted only
    assert m.speeds.samples(2.0) == [Speed(40.0, 100, "engine"), Speed(50.0, 8, "stream")]
    assert m.tokens_per_s.summary(2.0).count == 2
    assert m.latency_ms.summary(2.0).count == 2
    assert m.speeds.samples(60.5) == [Speed(50.0, 8, "stream")]  # the window applies


def test_percentiles_stay_those_of_the_samples_in_the_window() -> None:
    """The window keeps its values sorted as they come and go (no sort per summary): its
    percentiles must equal those of sorting what is left, through expiry, the sample cap
    and repeated values."""
    rng = random.Random(7)
    window = RollingWindow(window_s=50.0, max_samples=40)
    for step in range(600):
        now = step * 0.5
        window.add(float(rng.choice([rng.randint(0, 9), rng.random() * 100])), now)
        if step % 7 == 0:
            left = sorted(window.values(now))
            got = window.summary(now)
            assert got.count == len(left)
            assert got.p50 == percentile(left, 50) and got.p95 == percentile(left, 95)
    assert window.summary(1e9) == Percentiles(count=0, p50=None, p95=None)


def test_a_nan_sample_leaves_the_window_like_any_other() -> None:
    window = RollingWindow(window_s=10.0)
    window.add(float("nan"), 0.0)
    window.add(3.0, 5.0)
    assert window.summary(12.0) == Percentiles(count=1, p50=3.0, p95=3.0)

"""metrics/efficiency.py: efficiency compares only decode samples as long as the baseline's."""

from __future__ import annotations

import pytest

from covey.metrics.efficiency import Efficiency, comparable, efficiency, max_tokens, min_tokens
from covey.metrics.samples import Speed


@pytest.mark.parametrize(("baseline_tokens", "expected"), [
    (128, 64), (127, 64), (8, 4), (2, 2), (1, 2),  # never fewer than two tokens
])
def test_min_tokens_is_half_the_baseline(baseline_tokens: int, expected: int) -> None:
    assert min_tokens(baseline_tokens) == expected


@pytest.mark.parametrize(("baseline_tokens", "expected"), [(128, 256), (8, 16), (1, 2)])
def test_max_tokens_is_twice_the_baseline(baseline_tokens: int, expected: int) -> None:
    assert max_tokens(baseline_tokens) == expected


@pytest.mark.parametrize(("speed", "ok"), [
    (Speed(50.0, 64, "stream"), True),
    (Speed(50.0, 128, "engine"), True),
    (Speed(50.0, 63, "stream"), False),  # too short to compare with a 128-token baseline
    (Speed(50.0, 10, "engine"), False),
    (Speed(50.0, 256, "stream"), True),
    (Speed(50.0, 257, "engine"), False),  # a long answer decodes slower per token
    (Speed(50.0, 2000, "stream"), False),
    (Speed(50.0, 128, "clock"), False),  # prompt time inside: not a decode rate
])
def test_comparable(speed: Speed, ok: bool) -> None:
    assert comparable(speed, 128) is ok


def test_short_answers_do_not_drag_an_idle_node_down() -> None:
    """The case that read ~75 %: many short chat answers decode slower than the 128-token
    baseline. Only the long ones are compared, and the count says how many."""
    short = [Speed(75.0, 12, "stream")] * 10 + [Speed(70.0, 20, "engine")] * 5
    long = [Speed(99.0, 128, "stream"), Speed(98.0, 100, "engine"), Speed(97.0, 64, "stream")]
    clock = [Speed(40.0, 128, "clock")] * 4
    got = efficiency(short + long + clock, 100.0, 128)
    assert got == Efficiency(pytest.approx(0.98), 3)
    # What the old rule (every sample's p50 ÷ native) read for the same traffic:
    everything = sorted(s.tokens_per_s for s in short + long + clock)
    assert everything[len(everything) // 2] / 100.0 < 0.8


def test_a_slowed_node_reads_lower() -> None:
    assert efficiency([Speed(50.0, 128, "stream")] * 5, 100.0, 128) == Efficiency(0.5, 5)


@pytest.mark.parametrize(("speeds", "native", "expected"), [
    ([], 100.0, Efficiency(None, 0)),
    ([Speed(90.0, 8, "stream")], 100.0, Efficiency(None, 0)),  # none comparable
    ([Speed(90.0, 128, "stream")], None, Efficiency(None, 1)),  # no baseline yet
    ([Speed(90.0, 128, "stream")], 0.0, Efficiency(None, 1)),
])
def test_missing_stays_missing(speeds: list[Speed], native: float | None,
                               expected: Efficiency) -> None:
    assert efficiency(speeds, native, 128) == expected


@pytest.mark.parametrize(("rates", "suspect"), [
    ([20.0, 20.0, 20.0], True),  # 2× native over 3 comparable samples: the baseline is off
    ([20.0, 20.0], False),  # too few samples to call it
    ([12.0, 12.0, 12.0], False),  # 1.2×: within what a noisy baseline can be
    ([9.0, 10.0, 11.0], False),
])
def test_a_ratio_far_above_native_flags_the_baseline(rates: list[float], suspect: bool) -> None:
    """Was a hole: a baseline taken on a busy machine made the page read 597 %."""
    eff = efficiency([Speed(r, 128, "stream") for r in rates], 10.0, 128)
    assert eff.baseline_suspect is suspect

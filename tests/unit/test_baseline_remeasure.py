"""metrics/baseline.py `too_low`: a baseline is measured again when this node's own
comparable answers run clearly faster than it, once the engine is idle, and not too often."""

from __future__ import annotations

from covey.metrics.baseline import REMEASURE_AFTER_S, too_low
from covey.types import Baseline, EngineReady
from tests.unit.test_table import _served

NOW, WALL = 1000.0, 1_800_000_000.0


def _model(rate: float, in_flight: int = 0, age_s: float = 2 * REMEASURE_AFTER_S):
    model = _served("m", EngineReady(base_url="http://127.0.0.1:9/v1"), slots=2, queue=2)
    model.baseline = Baseline(tokens_per_s=10.0, ttft_ms=50.0, measured_at=WALL - age_s,
                              runs=3)
    for _ in range(3):
        model.meter.record(5.0, rate, 128, NOW)
    model.in_flight = in_flight
    return model


def test_answers_twice_as_fast_as_native_ask_for_a_new_baseline() -> None:
    assert too_low(_model(20.0), 128, NOW, WALL)


def test_not_while_busy_not_too_often_and_not_when_plausible() -> None:
    assert not too_low(_model(20.0, in_flight=1), 128, NOW, WALL)
    assert not too_low(_model(20.0, age_s=60), 128, NOW, WALL)
    assert not too_low(_model(11.0), 128, NOW, WALL)

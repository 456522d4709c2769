"""engine/supervisor.py: restart backoff (the pure part of supervision)."""

from __future__ import annotations

import pytest

from covey.engine.supervisor import next_backoff


@pytest.mark.parametrize(("previous", "stable", "expected"), [
    (None, False, 0.5),  # the first crash
    (None, True, 0.5),
    (0.5, False, 1.0),  # doubles per crash
    (1.0, False, 2.0),
    (16.0, False, 30.0),  # capped
    (30.0, False, 30.0),
    (16.0, True, 0.5),  # a stable engine starts over
    (30.0, True, 0.5),
])
def test_backoff(previous: float | None, stable: bool, expected: float) -> None:
    assert next_backoff(previous, 0.5, 30.0, stable) == expected


def test_backoff_sequence() -> None:
    delays: list[float] = []
    previous = None
    for _ in range(8):
        previous = next_backoff(previous, 0.5, 30.0, was_stable=False)
        delays.append(previous)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]

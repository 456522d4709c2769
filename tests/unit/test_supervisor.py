"""engine/supervisor.py: restart backoff and which load failures are final (the pure part
of supervision)."""

from __future__ import annotations

import signal

import pytest

from covey.engine.llamacpp import EXIT_LOAD_FAILED
from covey.engine.supervisor import load_failure_is_final, next_backoff


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


@pytest.mark.parametrize(("code", "final"), [
    (EXIT_LOAD_FAILED, True),  # the child reported llama.cpp's load error: the file is bad
    (-signal.SIGKILL, False),  # the OOM killer, or a person
    (-signal.SIGTERM, False),
    (-signal.SIGSEGV, False),
    (0, False),  # exited without a word
    (1, False),  # an unexpected Python error in the child
    (137, False),
])
def test_only_a_reported_load_error_is_final(code: int, final: bool) -> None:
    assert load_failure_is_final(code) is final

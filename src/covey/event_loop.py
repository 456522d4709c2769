"""The event loop `covey serve` (and the bench's floor relay) runs on: uvloop when installed.

A relay wakes once per token per stream; uvloop's libuv loop costs a fraction of the standard
loop's Python-level work per wake-up (issue 11: the node's CPU per relayed chunk against a bare
pipe's). The standard loop is the fallback, so a platform without a uvloop wheel still runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """(name, loop factory): uvloop's when it imports, else the standard loop's."""
    try:
        import uvloop
    # Not installed (or no wheel for this platform): the standard loop does the same work.
    except ImportError:
        return "asyncio", asyncio.new_event_loop
    return "uvloop", uvloop.new_event_loop


def name() -> str:
    return factory()[0]


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like asyncio.run, on the loop `factory` picks."""
    with asyncio.Runner(loop_factory=factory()[1]) as runner:
        return runner.run(main)

"""A component's bug is logged and the component restarted; it never takes the node down."""

from __future__ import annotations

import asyncio

import pytest

from covey.node import keep_running


async def test_failing_component_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("a bug")

    await asyncio.wait_for(keep_running(flaky, "flaky", delay_s=0), timeout=5)
    assert len(calls) == 3
    assert caplog.text.count("component flaky failed") == 2


async def test_cancellation_still_stops_it() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(keep_running(forever, "forever"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_startup_heap_is_frozen_after_its_garbage_is_collected() -> None:
    """What starting up built is left out of later collections (a full one walked it all and
    stalled a serving node for tens of ms); young garbage is collected first, not kept."""
    import gc
    import weakref

    from covey.node import freeze_startup_heap

    class Cycle:
        other: object = None

    a, b = Cycle(), Cycle()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    before = gc.get_freeze_count()
    try:
        freeze_startup_heap()
        assert gone() is None  # collected, not frozen for good
        assert gc.get_freeze_count() > before
        # Later collections walk only what came after (the permanent generation is skipped).
        assert len(gc.get_objects()) < gc.get_freeze_count()
    finally:
        gc.unfreeze()

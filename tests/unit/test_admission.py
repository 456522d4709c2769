"""router/admission.py (through ServedModel.acquire/release): a local engine's waiting room.
Order by standing, cancellation while waiting, and no slot leaked on any path.

The clock is a list the test moves by hand. `turn()` gives the event loop one turn (no time
passes): a task woken by a released slot runs to its next await.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from covey import errors
from covey.metrics.samples import ModelMeter
from covey.router.admission import Admission
from covey.router.fairshare import Policy
from covey.router.table import ServedModel
from covey.types import EngineFailed, EngineReady, EngineState, ModelCard, ModelId

URL = "http://127.0.0.1:9/v1"
BALANCES = {"rich": 500.0, "modest": 10.0, "broke": -20.0}


@dataclass
class FakeEngine:
    state: EngineState
    kind: str = "llama.cpp"
    pid: int | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _model(clock: Clock, slots: int = 1, queue: int = 8) -> ServedModel:
    card = ModelCard(id=ModelId("m"), path=None, size_bytes=None, quantization=None,
                     architecture=None, context_length=None)
    m = ServedModel(card=card, engine=FakeEngine(EngineReady(URL)), upstream_name="m",
                    slots=slots, max_queue=queue, meter=ModelMeter(window_s=3600))
    m.admission = Admission(Policy(age_step_s=10.0), clock=clock)
    return m


async def turn() -> None:
    await asyncio.sleep(0)


def _idle(m: ServedModel) -> bool:
    return (m.in_flight, m.admission.running, m.admission.waiting) == (0, 0, 0)


async def _queue(m: ServedModel, consumers: list[str | None]) -> list[asyncio.Task[str]]:
    tasks = []
    for c in consumers:
        tasks.append(asyncio.create_task(m.acquire(c, BALANCES.get)))
        await turn()
    return tasks


async def _drain(m: ServedModel, tasks: list[asyncio.Task[str]],
                 names: list[str | None]) -> list[str | None]:
    """Release slots one by one; the consumers in the order they entered the engine."""
    order: list[str | None] = []
    pending = dict(zip(tasks, names, strict=True))
    while pending:
        m.release()
        await turn()
        for t in [t for t in pending if t.done()]:
            order.append(pending.pop(t))
    return order


async def test_a_contended_engine_serves_own_then_members_by_balance_then_the_rest() -> None:
    clock = Clock()
    m = _model(clock)
    await m.acquire()  # the engine's one slot is taken
    names: list[str | None] = ["stranger", "broke", "modest", None, "rich", "stranger2"]
    tasks = await _queue(m, names)
    assert m.admission.waiting_by_class() == {"own": 1, "member": 2, "rest": 3}
    order = await _drain(m, tasks, names)
    assert order == [None, "rich", "modest", "stranger", "broke", "stranger2"]
    m.release()
    assert _idle(m)


async def test_without_standing_the_queue_is_first_come_first_served() -> None:
    m = _model(Clock())
    await m.acquire()
    names: list[str | None] = ["b", "a", "c"]
    tasks = [asyncio.create_task(m.acquire(n)) for n in names]  # no standing: all "rest"
    await turn()
    assert await _drain(m, tasks, names) == names
    m.release()
    assert _idle(m)


async def test_an_aged_waiter_passes_newcomers() -> None:
    clock = Clock()
    m = _model(clock)
    await m.acquire()
    old = await _queue(m, ["stranger"])
    clock.now = 25.0  # over two age steps: ahead of even this node's own new requests
    new = await _queue(m, [None, "rich"])
    assert await _drain(m, old + new, ["stranger", None, "rich"]) == [
        "stranger", None, "rich"]
    m.release()
    summary = m.admission.wait_summary(clock.now)
    assert summary["rest"] == {"count": 1, "p50": 25_000.0, "max": 25_000.0}
    assert summary["own"]["count"] == 2  # the first one entered at once (0 ms)


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    m = _model(Clock(), slots=1, queue=2)
    await m.acquire()
    tasks = await _queue(m, [None, "rich"])
    tasks[0].cancel()  # its client went away
    await turn()
    assert tasks[0].cancelled()
    assert (m.in_flight, m.admission.waiting) == (2, 1)
    m.release()
    await turn()
    assert tasks[1].result() == URL  # the slot went to the one still waiting
    m.release()
    assert _idle(m)


async def test_a_waiter_cancelled_as_its_slot_arrives_passes_it_on() -> None:
    m = _model(Clock(), slots=1, queue=2)
    await m.acquire()
    first, second = await _queue(m, [None, None])
    m.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it could run
    await turn()
    assert first.cancelled()
    await turn()
    assert second.result() == URL
    assert (m.in_flight, m.admission.running, m.admission.waiting) == (1, 1, 0)
    m.release()
    assert _idle(m)


async def test_a_full_queue_is_busy_and_takes_nothing() -> None:
    m = _model(Clock(), slots=1, queue=1)
    await m.acquire()
    waiting = await _queue(m, ["rich"])
    with pytest.raises(errors.Busy):
        await m.acquire(None)  # own requests too: the queue is bounded for everyone
    assert (m.in_flight, m.admission.waiting) == (2, 1)
    m.release()
    await turn()
    assert waiting[0].result() == URL
    m.release()
    assert _idle(m)


async def test_an_engine_that_failed_while_requests_waited_refuses_them() -> None:
    m = _model(Clock(), slots=1, queue=2)
    await m.acquire()
    waiting = await _queue(m, [None, "rich"])
    assert isinstance(m.engine, FakeEngine)
    m.engine.state = EngineFailed("crashed", retry_in=3.0)
    m.release()
    await turn()
    await turn()
    for t in waiting:
        with pytest.raises(errors.Unavailable, match="crashed"):
            t.result()
    assert _idle(m)


async def test_many_requests_cancelled_at_random_leak_nothing() -> None:
    """Requests come, wait, enter, finish or are cancelled in a seeded random order."""
    rng = random.Random(7)
    m = _model(Clock(), slots=3, queue=10)
    held: list[asyncio.Task[str]] = []
    for _ in range(400):
        action = rng.random()
        if action < 0.45:
            if m.in_flight < m.slots + m.max_queue:
                held.append(asyncio.create_task(m.acquire(rng.choice([None, "rich", "x"]),
                                                          BALANCES.get)))
        elif action < 0.75:
            inside = [t for t in held if t.done() and not t.cancelled()]
            if inside:
                done = rng.choice(inside)
                held.remove(done)
                m.release()
        else:
            waiting = [t for t in held if not t.done()]
            if waiting:  # its client went away
                victim = rng.choice(waiting)
                victim.cancel()
                held.remove(victim)
        await turn()
        assert m.admission.running <= m.slots
        assert m.in_flight == m.admission.running + m.admission.waiting
    while held:  # finish whatever entered; everything else then enters in turn
        inside = [t for t in held if t.done()]
        assert inside, "waiters left with no request inside the engine"
        for t in inside:
            held.remove(t)
            m.release()
        await turn()
    assert _idle(m)


async def test_the_rest_leave_headroom_while_a_contributor_is_about() -> None:
    """Four slots, a headroom of two: with this node's own client about, a stranger takes a
    second slot but not a third; a member arriving then enters at once, past it; when the
    contributors' window lapses the timer lets the stranger in without any release."""
    clock = Clock()
    timers: list[tuple[float, Callable[[], None]]] = []
    m = _model(clock, slots=4)
    m.admission = Admission(Policy(age_step_s=10.0, headroom_window_s=5.0), clock=clock,
                            schedule=lambda t, fn: timers.append((t, fn)))
    await m.acquire()  # this node's own client
    first = await _queue(m, ["stranger"])
    assert first[0].done() and m.admission.running == 2
    held = await _queue(m, ["stranger"])
    assert not held[0].done() and m.admission.running == 2
    assert [t for t, _ in timers] == [5.0]  # the window lapses 5 s after the own request
    member = await _queue(m, ["rich"])
    assert member[0].done() and m.admission.running == 3 and not held[0].done()
    assert len(timers) == 1  # the pending timer still comes first
    clock.now = 5.0
    timers[0][1]()
    await turn()
    assert held[0].done() and m.admission.running == 4
    for _ in range(4):
        m.release()
    assert _idle(m)


async def test_without_contributors_the_rest_use_every_slot() -> None:
    m = _model(Clock(), slots=4)
    m.admission = Admission(Policy(age_step_s=10.0), clock=Clock())
    tasks = await _queue(m, ["stranger", "broke", "stranger", "stranger2"])
    assert all(t.done() for t in tasks) and m.admission.running == 4
    for _ in range(4):
        m.release()
    assert _idle(m)

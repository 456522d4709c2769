"""router/table.py: admission (ready, under capacity, waiting for a slot) and which model a
request means."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from covey import errors
from covey.metrics.samples import ModelMeter
from covey.router.table import ModelTable, ServedModel
from covey.types import (
    EngineFailed,
    EngineReady,
    EngineStarting,
    EngineState,
    EngineStopped,
    ModelCard,
    ModelId,
)

URL = "http://127.0.0.1:9/v1"


@dataclass
class FakeEngine:
    state: EngineState
    kind: str = "llama.cpp"
    pid: int | None = None


def _served(name: str, state: EngineState, slots: int = 1, queue: int = 1) -> ServedModel:
    card = ModelCard(id=ModelId(name), path=None, size_bytes=None, quantization=None,
                     architecture=None, context_length=None)
    return ServedModel(card=card, engine=FakeEngine(state), upstream_name=name, slots=slots,
                       max_queue=queue, meter=ModelMeter(window_s=60))


@pytest.mark.parametrize(("state", "retry_after", "text"), [
    (EngineStarting(), 2, r"model 'm' is loading \(attempt 1\); retry shortly"),
    (EngineStarting(attempt=3), 2, r"loading \(attempt 3\)"),
    (EngineFailed("file gone", retry_in=7.0), 7.0, "model 'm' cannot serve: file gone"),
    (EngineFailed("crashed", retry_in=0.5), 0.5, "crashed"),
    (EngineFailed("bad file"), None, "bad file"),
    (EngineStopped(), None, "not running"),
])
async def test_not_ready_is_unavailable(state: EngineState, retry_after: float | None,
                                        text: str) -> None:
    model = _served("m", state)
    with pytest.raises(errors.Unavailable, match=text) as info:
        await model.acquire()
    assert (info.value.status, info.value.code) == (503, "model_not_ready")
    assert info.value.retry_after == retry_after
    assert model.in_flight == 0
    with pytest.raises(errors.Unavailable, match=text):
        model.check()


async def _fill(m: ServedModel, n: int) -> list[asyncio.Task[str]]:
    """Start n acquires; return once each holds a slot or waits in the queue."""
    tasks = [asyncio.create_task(m.acquire()) for _ in range(n)]
    await asyncio.sleep(0)  # each runs to its slot or its place in the queue
    return tasks


@pytest.mark.parametrize(("slots", "queue"), [(1, 0), (1, 1), (2, 1), (4, 16)])
async def test_capacity_is_slots_plus_queue(slots: int, queue: int) -> None:
    m = _served("m", EngineReady(URL), slots=slots, queue=queue)
    tasks = await _fill(m, slots + queue)
    assert [t.result() for t in tasks[:slots]] == [URL] * slots
    assert not any(t.done() for t in tasks[slots:])  # the rest wait in Covey
    assert m.in_flight == slots + queue and m.queue_depth == queue
    assert (m.admission.running, m.admission.waiting) == (slots, queue)
    with pytest.raises(errors.Busy, match=f"{slots} slots in use and {queue} requests queued"
                       ) as info:
        await m.acquire()
    assert info.value.status == 429 and info.value.retry_after == 2
    assert info.value.headers() == {"Retry-After": "2"}
    with pytest.raises(errors.Busy):
        m.check()
    assert m.in_flight == slots + queue  # a refused request takes nothing
    for _ in range(slots + queue):
        m.release()
        await asyncio.sleep(0)
    assert all(t.done() for t in tasks)
    assert (m.in_flight, m.admission.running, m.admission.waiting) == (0, 0, 0)


async def test_release_frees_slots_and_queue() -> None:
    m = _served("m", EngineReady(URL), slots=2, queue=2)
    tasks = await _fill(m, 3)
    assert m.queue_depth == 1
    m.release()
    await asyncio.sleep(0)
    assert tasks[2].result() == URL  # the waiter took the freed slot
    assert (m.in_flight, m.queue_depth) == (2, 0)
    m.release()
    m.release()
    assert (m.in_flight, m.queue_depth) == (0, 0)


async def test_peer_copies_count_without_waiting() -> None:
    m = _served("m", EngineReady(URL), slots=1, queue=2)
    m.source = "peer"
    assert [m.admit(), await m.acquire(), await m.acquire()] == [URL] * 3
    assert (m.in_flight, m.admission.running, m.admission.waiting) == (3, 0, 0)
    for _ in range(3):
        m.release()
    assert m.in_flight == 0


def test_admit_is_not_for_local_engines() -> None:
    with pytest.raises(TypeError, match="acquire"):
        _served("m", EngineReady(URL)).admit()


def _table(*models: ServedModel) -> ModelTable:
    table = ModelTable()
    for model in models:
        table.add(model)
    return table


@pytest.mark.parametrize(("states", "default"), [
    ({"a": EngineReady(URL)}, "a"),
    ({"a": EngineStarting(), "b": EngineReady(URL)}, "b"),  # the first ready model
    ({"a": EngineReady(URL), "b": EngineReady(URL)}, "a"),
    ({"a": EngineFailed("x"), "b": EngineStarting()}, "a"),  # none ready: the first one
])
def test_resolve_none_is_the_default(states: dict[str, EngineState], default: str) -> None:
    table = _table(*(_served(name, state) for name, state in states.items()))
    assert table.resolve(None).id == default


def test_resolve_by_id_and_alias() -> None:
    table = _table(_served("loading", EngineStarting()), _served("ready", EngineReady(URL)))
    table.aliases["gpt-4o"] = ModelId("ready")
    assert table.resolve("loading").id == "loading"  # a named model even when not ready
    assert table.resolve("gpt-4o").id == "ready"


@pytest.mark.parametrize(("ids", "available"), [
    (("zeta", "alpha"), "available: alpha, zeta"),
    ((), "available: none"),
])
def test_unknown_model_lists_the_available_ids(ids: tuple[str, ...], available: str) -> None:
    table = _table(*(_served(name, EngineReady(URL)) for name in ids))
    with pytest.raises(errors.ModelNotFound, match=f"model 'nope' not found; {available}$"
                       ) as info:
        table.resolve("nope")
    assert (info.value.status, info.value.param) == (404, "model")


def test_empty_table_is_unavailable() -> None:
    with pytest.raises(errors.Unavailable, match="serves no models") as info:
        ModelTable().resolve(None)
    assert (info.value.status, info.value.code) == (503, "no_models")


def test_removed_models_are_gone() -> None:
    table = _table(_served("a", EngineReady(URL)))
    table.remove(ModelId("a"))
    table.remove(ModelId("never-there"))
    with pytest.raises(errors.Unavailable):
        table.resolve(None)

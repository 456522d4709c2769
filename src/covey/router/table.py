"""The models this node can route to, each with its engine, load and measurements.

`ModelTable.resolve()` and `ServedModel.acquire()` are the single-node routing decisions:
which model a request means, and whether it may enter now (ready, under capacity). A local
engine's requests past its slots wait in its `Admission` queue, in fair-share order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from covey.errors import Busy, ModelNotFound, Unavailable
from covey.mesh.peer_transport import Peer
from covey.metrics.samples import ModelMeter
from covey.router.admission import Admission
from covey.router.fairshare import Policy, Standing, no_standing
from covey.types import (
    Baseline,
    EngineFailed,
    EngineReady,
    EngineStarting,
    EngineState,
    ModelCard,
    ModelId,
)


class Engine(Protocol):
    """What the router needs from an engine: where it is and whether it can serve."""

    kind: str

    @property
    def state(self) -> EngineState: ...

    @property
    def pid(self) -> int | None: ...


@dataclass
class ServedModel:
    """A model this node can send requests to: on a local engine, or on a peer's node."""

    card: ModelCard
    engine: Engine
    upstream_name: str  # the model name the engine expects in request bodies
    slots: int
    max_queue: int
    meter: ModelMeter
    baseline: Baseline | None = None
    in_flight: int = 0
    # For a peer's copy: who serves it, and the peer to call (through the peer transport).
    served_by: str | None = None
    peer: Peer | None = None
    # Who answers, for accounting: this node's engine or backend, a peer, or an external
    # provider (SLA fallback).
    source: Literal["local", "peer", "provider"] = "local"
    # For a provider: its Authorization header (never shown: repr=False) and how long it may
    # take to start answering.
    upstream_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    first_byte_timeout_s: float | None = None
    # A local engine's waiting room (unused for a peer's copy or a provider: they queue on
    # their side).
    admission: Admission = field(init=False, repr=False)
    fair_share: Policy = field(default_factory=Policy, repr=False)  # the waiting room's rules

    def __post_init__(self) -> None:
        self.admission = Admission(self.fair_share, window_s=self.meter.window_s)

    @property
    def id(self) -> ModelId:
        return self.card.id

    @property
    def queue_depth(self) -> int:
        return max(0, self.in_flight - self.slots)

    def check(self) -> str:
        """Raise Unavailable (not ready) or Busy (slots and queue full); return the engine
        URL. Takes nothing: `acquire()` does."""
        state = self.engine.state
        if not isinstance(state, EngineReady):
            raise Unavailable(unavailable_reason(self.id, state),
                              retry_after=_retry_after(state), code="model_not_ready")
        if self.in_flight >= self.slots + self.max_queue:
            raise Busy(f"model {self.id!r} is busy: {self.slots} slots in use and "
                       f"{self.max_queue} requests queued; retry shortly",
                       retry_after=2)
        return state.base_url

    def admit(self) -> str:
        """Count a request to a peer's copy or a provider (they queue on their side); raise
        as `check()` does. The caller must call `release()` once the request ends."""
        if self.source == "local":
            raise TypeError("a local engine's requests wait in its queue: use acquire()")
        base_url = self.check()
        self.in_flight += 1
        return base_url

    async def acquire(self, consumer: str | None = None,
                      standing: Standing = no_standing) -> str:
        """Wait for a slot, raising as `check()` does; return the engine URL. `consumer`:
        None for this node's own client, else the requesting peer's node id (its standing
        orders the queue, see `router/fairshare.py`). A peer's copy or a provider does not
        wait here. Once this returns, the caller must call `release()` exactly once, however
        the request ends; if it raises (cancelled included), it holds nothing."""
        if self.source != "local":
            return self.admit()
        self.check()
        self.in_flight += 1
        try:
            await self.admission.enter(self.slots, consumer,
                                       None if consumer is None else standing(consumer))
        except BaseException:  # cancelled while waiting (the client left): take nothing
            self.in_flight -= 1
            raise
        state = self.engine.state
        if not isinstance(state, EngineReady):
            # The engine stopped or restarted while this request waited.
            self.release()
            raise Unavailable(unavailable_reason(self.id, state),
                              retry_after=_retry_after(state), code="model_not_ready")
        return state.base_url

    def release(self) -> None:
        self.in_flight -= 1
        if self.source == "local":
            self.admission.leave(self.slots)


def unavailable_reason(model: ModelId, state: EngineState) -> str:
    if isinstance(state, EngineStarting):
        return f"model {model!r} is loading (attempt {state.attempt}); retry shortly"
    if isinstance(state, EngineFailed):
        return f"model {model!r} cannot serve: {state.reason}"
    return f"model {model!r} is not running (the node is stopping)"


def _retry_after(state: EngineState) -> float | None:
    if isinstance(state, EngineStarting):
        return 2
    if isinstance(state, EngineFailed):
        return state.retry_in
    return None


@dataclass
class ModelTable:
    """Models by id, in the order they were configured; the first is the default."""

    models: dict[ModelId, ServedModel] = field(default_factory=dict)
    aliases: dict[str, ModelId] = field(default_factory=dict)

    def add(self, model: ServedModel) -> None:
        self.models[model.id] = model

    def remove(self, model_id: ModelId) -> None:
        self.models.pop(model_id, None)

    def default(self) -> ServedModel | None:
        """The first ready model, else the first; chat-capable models before embedding
        models (a request that names no model is most often a chat)."""
        ordered = sorted(self.models.values(), key=lambda m: m.card.embeddings_only)
        for model in ordered:
            if isinstance(model.engine.state, EngineReady):
                return model
        return next(iter(ordered), None)

    def resolve(self, name: str | None) -> ServedModel:
        """The model a request names (exact id or alias), or the default when it names none."""
        if name is None:
            model = self.default()
            if model is None:
                raise Unavailable("this node serves no models; start it with --model PATH or "
                                  "--backend URL", code="no_models")
            return model
        model_id = self.aliases.get(name, ModelId(name))
        model = self.models.get(model_id)
        if model is None:
            available = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model {name!r} not found; available: {available}",
                                param="model")
        return model

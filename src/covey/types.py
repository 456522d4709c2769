"""Wire and state types shared across components.

Frozen dataclasses inside the node; `None` means "no measurement yet", never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NewType

NodeId = NewType("NodeId", str)
ModelId = NewType("ModelId", str)
RequestId = NewType("RequestId", str)


# --- engine lifecycle: one of these at a time, never a bag of booleans ---


@dataclass(frozen=True)
class EngineStarting:
    """The engine is loading (first start, or a restart after a crash)."""

    attempt: int = 1
    kind: Literal["starting"] = "starting"


@dataclass(frozen=True)
class EngineReady:
    """The engine answers `/health` at `base_url` (an OpenAI-compatible root, ending in /v1)."""

    base_url: str
    pid: int | None = None
    kind: Literal["ready"] = "ready"


@dataclass(frozen=True)
class EngineFailed:
    """The engine cannot serve. `retry_in` is seconds until the next attempt, or None for never."""

    reason: str
    retry_in: float | None = None
    kind: Literal["failed"] = "failed"


@dataclass(frozen=True)
class EngineStopped:
    """The node is shutting down, or the engine was never started."""

    kind: Literal["stopped"] = "stopped"


EngineState = EngineStarting | EngineReady | EngineFailed | EngineStopped


@dataclass(frozen=True)
class ModelCard:
    """Static facts about a model, read from its GGUF header or from the attached backend."""

    id: ModelId
    path: Path | None  # the GGUF file, None for attached backends
    size_bytes: int | None
    quantization: str | None
    architecture: str | None
    context_length: int | None  # what the model was trained for, not what we configure
    declares_pooling: bool = False  # the GGUF names an embedding pooling (embedding models do)
    # An embedding model (it declares a pooling, or its attention is not causal): its engine
    # starts in embedding mode by itself, and it answers /v1/embeddings, never a chat.
    embeddings_only: bool = False


@dataclass(frozen=True)
class Percentiles:
    """Rolling-window summary of one measurement; fields are None until a sample exists."""

    count: int
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class Baseline:
    """Native speed measured straight against the engine, with no node in the path."""

    tokens_per_s: float
    ttft_ms: float
    measured_at: float  # unix seconds
    runs: int

"""Attach to an OpenAI-compatible server the user already runs (llama-server, Ollama, vLLM).

The backend owns its models; we poll its `/models` list and mirror what it serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from covey.types import EngineFailed, EngineReady, EngineStarting, EngineState, EngineStopped

log = logging.getLogger(__name__)

MAX_MODELS = 256  # a hostile or broken backend must not make us track unbounded ids
MAX_ID_LENGTH = 256


class RemoteBackend:
    """One attached server. `models` holds the ids it listed on the last successful poll."""

    kind = "attached"

    def __init__(self, base_url: str, poll_s: float = 5.0,
                 on_models: Callable[[RemoteBackend], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.poll_s = poll_s
        self.models: tuple[str, ...] = ()
        self._state: EngineState = EngineStopped()
        self._on_models = on_models
        self.pid: int | None = None

    @property
    def state(self) -> EngineState:
        return self._state

    async def run(self) -> None:
        self._state = EngineStarting()
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                while True:
                    await self.poll(session)
                    await asyncio.sleep(self.poll_s)
            finally:
                self._state = EngineStopped()

    async def poll(self, session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(self.base_url + "/models") as r:
                if r.status != 200:
                    raise _BadAnswer(f"GET /models answered HTTP {r.status}")
                body = await r.json(content_type=None)
            ids = parse_model_list(body)
        except (aiohttp.ClientError, TimeoutError, ValueError, _BadAnswer) as exc:
            # An unreachable backend is a state to show, not an error to raise.
            reason = f"attached backend {self.base_url} unreachable: {_short(exc)}"
            if not isinstance(self._state, EngineFailed) or self._state.reason != reason:
                log.warning("%s", reason)
            self._state = EngineFailed(reason=reason, retry_in=self.poll_s)
            return
        if not isinstance(self._state, EngineReady):
            log.info("attached backend %s ready with %d model(s)", self.base_url, len(ids))
        self._state = EngineReady(base_url=self.base_url)
        if ids != self.models:
            self.models = ids
            if self._on_models:
                self._on_models(self)


class _BadAnswer(Exception):
    pass


def parse_model_list(body: object) -> tuple[str, ...]:
    """Ids from an OpenAI `/models` answer; validated, capped, order kept."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ValueError("GET /models did not return an OpenAI model list")
    ids: list[str] = []
    for entry in body["data"][:MAX_MODELS]:
        if isinstance(entry, dict):
            mid = entry.get("id")
            if isinstance(mid, str) and 0 < len(mid) <= MAX_ID_LENGTH and mid not in ids:
                ids.append(mid)
    return tuple(ids)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "…"

"""Native baseline: the engine's own speed with no node in the path.

Three deterministic chats (temperature 0, seed 42) straight to the engine once it is ready and
has settled, after one uncounted warm-up chat; the median is published. Cached in
`<data_dir>/baselines.json` keyed by the model file's size and mtime, redone after `refresh_s`
or when the file changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from covey.metrics.efficiency import efficiency
from covey.metrics.probe import deterministic_chat, stream_chat
from covey.metrics.samples import median
from covey.router.table import ServedModel
from covey.types import Baseline, EngineReady

log = logging.getLogger(__name__)

RUNS = 3
CACHE_FILE = "baselines.json"
REMEASURE_AFTER_S = 600.0  # a baseline called too low is measured again at most this often


def too_low(model: ServedModel, baseline_tokens: int, now: float, wall: float) -> bool:
    """Pure: should a baseline be measured again because this node's own comparable answers
    run clearly faster than it (it was taken under load), now that the engine is idle?"""
    baseline = model.baseline
    if baseline is None or model.in_flight or wall - baseline.measured_at < REMEASURE_AFTER_S:
        return False
    eff = efficiency(model.meter.speeds.samples(now), baseline.tokens_per_s, baseline_tokens)
    return eff.baseline_suspect


def cache_key(model: ServedModel) -> str | None:
    path = model.card.path
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{model.id}|{st.st_size}|{st.st_mtime_ns}"


def load_cached(data_dir: Path, key: str, now: float, refresh_s: float) -> Baseline | None:
    try:
        entry = json.loads((data_dir / CACHE_FILE).read_text())[key]
        baseline = Baseline(tokens_per_s=float(entry["tokens_per_s"]),
                            ttft_ms=float(entry["ttft_ms"]),
                            measured_at=float(entry["measured_at"]), runs=int(entry["runs"]))
    # A missing, old-format or hand-edited cache is simply measured again.
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if now - baseline.measured_at > refresh_s:
        return None
    return baseline


def store(data_dir: Path, key: str, baseline: Baseline) -> None:
    path = data_dir / CACHE_FILE
    try:
        entries: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    entries[key] = asdict(baseline)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(path)


def forget(data_dir: Path, key: str) -> None:
    """Drop a cached baseline, so the keeper measures it again."""
    path = data_dir / CACHE_FILE
    try:
        entries: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if entries.pop(key, None) is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(path)


async def measure_baseline(session: aiohttp.ClientSession, model: ServedModel,
                           max_tokens: int) -> Baseline | None:
    state = model.engine.state
    if not isinstance(state, EngineReady) or model.card.embeddings_only:
        return None  # an embedding model decodes no tokens: there is no speed to measure
    ttfts: list[float] = []
    rates: list[float] = []
    body = deterministic_chat(model.upstream_name, max_tokens, model.engine.kind == "llama.cpp")
    # One run first, not counted: a fresh engine's first chats touch its weights for the first
    # time and decoded at half speed here, which made every later answer look "efficient".
    await stream_chat(session, state.base_url, body)
    for _ in range(RUNS):
        stats = await stream_chat(session, state.base_url, body)
        if stats.ttft_ms is not None and stats.tokens_per_s is not None:
            ttfts.append(stats.ttft_ms)
            rates.append(stats.tokens_per_s)
    if not rates:
        return None
    return Baseline(tokens_per_s=median(rates), ttft_ms=median(ttfts),
                    measured_at=time.time(), runs=len(rates))


class BaselineKeeper:
    """Keeps one model's baseline present and fresh. `run()` loops until cancelled."""

    def __init__(self, model: ServedModel, data_dir: Path, max_tokens: int, settle_s: float,
                 refresh_s: float,
                 fingerprint: Callable[[aiohttp.ClientSession, ServedModel], Awaitable[None]]
                 | None = None) -> None:
        self.fingerprint = fingerprint  # taken with each baseline (verify/fingerprint.py)
        self.model = model
        self.data_dir = data_dir
        self.max_tokens = max_tokens
        self.settle_s = settle_s
        self.refresh_s = refresh_s

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=600, sock_connect=5)
        # Same reason as the relay's: one connection per request to llama.cpp.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while True:
                await self._settled()
                # The fingerprint first: once a baseline shows, this node's own requests to
                # its engine are over (tests and the bench wait for it to mean idle).
                if self.fingerprint is not None:
                    try:
                        await self.fingerprint(session, self.model)
                    # Like the baseline: the engine may restart meanwhile; next round.
                    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                        log.warning("model %s: fingerprint failed (%s)", self.model.id,
                                    type(exc).__name__)
                if self.model.card.embeddings_only:
                    # No chat to time (measure_baseline): the fingerprint was all there is.
                    return
                key = cache_key(self.model)
                cached = load_cached(self.data_dir, key, time.time(), self.refresh_s) \
                    if key else None
                if cached is not None:
                    self.model.baseline = cached
                else:
                    await self._measure(session, key)
                await self._wait_until_stale(key)

    async def _settled(self) -> None:
        """Ready, and still ready `settle_s` later (a fresh engine is slow for a moment)."""
        while True:
            # Polled: two engine kinds report state; a 0.5 s look is cheap and simple.
            while not isinstance(self.model.engine.state, EngineReady):  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            ready = self.model.engine.state
            await asyncio.sleep(self.settle_s)
            if self.model.engine.state is ready:
                return

    async def _measure(self, session: aiohttp.ClientSession, key: str | None) -> None:
        try:
            baseline = await measure_baseline(session, self.model, self.max_tokens)
        # The engine may restart or refuse mid-baseline; try again on the next round.
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("model %s: native baseline failed (%s); will retry",
                        self.model.id, type(exc).__name__)
            await asyncio.sleep(30)
            return
        if baseline is None:
            return
        self.model.baseline = baseline
        log.info("model %s: native baseline %.1f tok/s, TTFT %.0f ms (median of %d)",
                 self.model.id, baseline.tokens_per_s, baseline.ttft_ms, baseline.runs)
        if key:
            store(self.data_dir, key, baseline)

    async def _wait_until_stale(self, key: str | None) -> None:
        """Until the baseline is older than refresh_s, or the model file changed."""
        measured = self.model.baseline.measured_at if self.model.baseline else time.time()
        while time.time() - measured < self.refresh_s:
            await asyncio.sleep(10)
            if key is not None and cache_key(self.model) != key:
                log.info("model %s: file changed; baseline will be measured again",
                         self.model.id)
                return
            if too_low(self.model, self.max_tokens, time.monotonic(), time.time()):
                log.info("model %s: answers here run faster than the native baseline "
                         "(%.1f tok/s, taken under load?); measuring it again",
                         self.model.id, self.model.baseline.tokens_per_s
                         if self.model.baseline else 0.0)
                if key is not None:
                    forget(self.data_dir, key)
                return
